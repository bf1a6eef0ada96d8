//! Importing projects from a real source PostgreSQL (a container the test starts, on
//! 127.0.0.1, asking for a password): a logical import while pgbench writes to the source,
//! masking, a refresh that keeps branches, a dump file, and an import by a user who is not
//! root, on the native runtime. The failures are in `failures.rs`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::source::{Source, fingerprints};
use crate::util::Sandbox;

mod failures;

/// pgbench's own check: every transaction moved the three balances by its history row's delta,
/// so a copy torn between two moments breaks it.
const PGBENCH_CONSISTENT: &str = "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history) \
     AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history) \
     AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)";

const MASK: &str = "UPDATE people SET email = 'user' || id || '@masked.invalid';";

/// Looks for `secret` in the command line and environment of every process but velo's own
/// (the test hands velo the password in its environment) until stopped.
struct Watch {
    stop: Arc<AtomicBool>,
    seen: std::thread::JoinHandle<std::collections::BTreeSet<String>>,
}

fn watch(secret: &str) -> Watch {
    let stop = Arc::new(AtomicBool::new(false));
    let (secret, until) = (secret.as_bytes().to_vec(), stop.clone());
    let velo = std::fs::canonicalize(env!("CARGO_BIN_EXE_velo")).unwrap();
    let seen = std::thread::spawn(move || {
        let mut seen = std::collections::BTreeSet::new();
        while !until.load(Ordering::SeqCst) {
            for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                let dir = entry.path();
                let is_pid = dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.parse::<u32>().is_ok());
                if !is_pid || std::fs::read_link(dir.join("exe")).is_ok_and(|e| e == velo) {
                    continue;
                }
                for file in ["cmdline", "environ"] {
                    let bytes = std::fs::read(dir.join(file)).unwrap_or_default();
                    if bytes.windows(secret.len()).any(|w| w == secret.as_slice()) {
                        let cmd = std::fs::read(dir.join("cmdline")).unwrap_or_default();
                        seen.insert(format!(
                            "{} {file}: {}",
                            dir.display(),
                            String::from_utf8_lossy(&cmd)
                        ));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        seen
    });
    Watch { stop, seen }
}

impl Watch {
    fn finish(self) -> std::collections::BTreeSet<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.seen.join().unwrap()
    }
}

fn create_args<'a>(sb: &'a Sandbox, name: &'a str) -> Vec<&'a str> {
    vec![
        "project",
        "create",
        name,
        "--pool",
        &sb.rig.pool,
        "--image",
        &sb.rig.image,
    ]
}

/// Nothing of project `name` is left: no record, dataset, container (helpers included), or
/// import directory in the home.
fn assert_no_trace(sb: &Sandbox, name: &str) {
    let projects = sb.json(&["project", "list"]);
    assert_eq!(projects, serde_json::json!([]), "a project was left");
    assert!(
        sb.zfs_tree(name).is_empty(),
        "datasets left: {:?}",
        sb.zfs_tree(name)
    );
    assert!(sb.containers(name).is_empty(), "containers left");
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=dev.velo.home={}", sb.home().display()))
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "containers of this home left");
    let run = sb.home().join("run");
    let leftovers: Vec<_> = std::fs::read_dir(&run)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().contains("import")),
        "import directories left in {}: {leftovers:?}",
        run.display()
    );
}

/// Runs velo, which must fail with exit code `code` (1: a failure, 2: a usage error); returns
/// its stderr.
fn fails_with(sb: &Sandbox, code: i32, args: &[&str]) -> String {
    let out = sb.run(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "velo {args:?}:\n{}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir` that holds `secret` (sockets and other non-files skipped).
fn files_holding(dir: &Path, secret: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let (path, kind) = (entry.path(), entry.file_type().unwrap());
        if kind.is_dir() {
            found.extend(files_holding(&path, secret));
        } else if kind.is_file()
            && std::fs::read(&path)
                .is_ok_and(|b| b.windows(secret.len()).any(|w| w == secret.as_bytes()))
        {
            found.push(path);
        }
    }
    found
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_logical_import_under_load_is_consistent_masked_and_refreshed() {
    let mut sb = Sandbox::new();
    let src = Source::start(&sb.rig.image);
    src.pgbench_init("postgres", 1);
    src.sql(
        "postgres",
        "CREATE SCHEMA app; \
         CREATE TABLE app.orders AS SELECT g AS id, g * 1.5 AS total FROM generate_series(1, 5000) g; \
         ALTER TABLE app.orders ADD PRIMARY KEY (id); \
         CREATE TABLE people (id int PRIMARY KEY, name text, email text); \
         INSERT INTO people SELECT g, 'name ' || g, 'user' || g || '@example.com' FROM generate_series(1, 2000) g;",
    );
    let mask = sb.home().join("mask.sql");
    std::fs::write(&mask, MASK).unwrap();
    let mut load = src.pgbench_load("postgres");
    let started = Instant::now();
    while src.sql("postgres", "SELECT count(*) FROM pgbench_history") == "0" {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "pgbench wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let name = sb.project("imp");
    sb.set_env("PGPASSWORD", &src.password);
    let seen = watch(&src.password);
    let url = src.url("postgres");
    let mut args = create_args(&sb, &name);
    let mask_arg = mask.display().to_string();
    args.extend(["--from", &url, "--jobs", "2", "--after-import", &mask_arg]);
    let out = sb.run(&args);
    let leaks = seen.finish();
    let _ = load.kill();
    let _ = load.wait();
    assert!(out.status.success(), "import failed:\n{}", text(&out));
    assert!(leaks.is_empty(), "the password was visible: {leaks:?}");
    let shown = text(&out);
    assert!(shown.contains("- Dump postgres 6/6 tables"), "{shown}");
    assert!(shown.contains("- Restore postgres 6/6 tables"), "{shown}");

    let main = format!("{name}/main");
    // One consistent moment of the source, taken while pgbench wrote.
    assert_eq!(sb.sql(&main, PGBENCH_CONSISTENT), "t");
    let copied: u64 = sb
        .sql(&main, "SELECT count(*) FROM pgbench_history")
        .parse()
        .unwrap();
    let now: u64 = src
        .sql("postgres", "SELECT count(*) FROM pgbench_history")
        .parse()
        .unwrap();
    assert!(
        copied > 0 && copied <= now,
        "history: {copied} copied, {now} now"
    );
    // Tables nobody wrote to are identical; people but for the masked addresses.
    let quiet = [("public.people", "id, name")];
    let static_prints = |prints: Vec<(String, String)>| {
        prints
            .into_iter()
            .filter(|(t, _)| t == "app.orders" || t == "public.people")
            .collect::<Vec<_>>()
    };
    assert_eq!(
        static_prints(fingerprints(&|q| sb.sql(&main, q), &quiet)),
        static_prints(fingerprints(&|q| src.sql("postgres", q), &quiet))
    );
    let unmasked = "SELECT count(*) FROM people WHERE email NOT LIKE '%@masked.invalid'";
    assert_eq!(sb.sql(&main, unmasked), "0");

    // The source's password is kept nowhere, shown nowhere.
    let state = std::fs::read_to_string(sb.home().join("state.json")).unwrap();
    assert!(!state.contains(&src.password));
    assert_eq!(
        files_holding(sb.home(), &src.password),
        Vec::<PathBuf>::new(),
        "the password is in the home (state, logs, work files)"
    );
    let got = sb.json(&["project", "get", &name]);
    assert!(!got.to_string().contains(&src.password));
    assert_eq!(got["imported"]["url"], url.as_str());
    assert_eq!(got["imported"]["after_import"], mask_arg.as_str());

    // A branch, then a refresh: main gets the source's current data, the branch keeps its own.
    let dev = format!("{name}/dev");
    sb.ok(&["branch", "create", &dev]);
    sb.sql(
        &dev,
        "INSERT INTO people VALUES (99999, 'dev only', 'dev@example.com')",
    );
    src.sql(
        "postgres",
        "INSERT INTO people VALUES (100000, 'later', 'later@example.com')",
    );
    // This time the password comes from ~/.pgpass.
    sb.clear_env();
    let before = sb.state()["projects"][&name].clone();
    let home = tempfile::tempdir().unwrap();
    let pgpass = home.path().join(".pgpass");
    std::fs::write(
        &pgpass,
        format!(
            "127.0.0.1:{}:postgres:postgres:{}\n",
            src.port, src.password
        ),
    )
    .unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    sb.set_env("HOME", &home.path().display().to_string());
    // A refresh that fails (its masking SQL does) leaves main as it was.
    let bad = sb.home().join("bad.sql");
    std::fs::write(&bad, "UPDATE people SET no_such_column = 1;").unwrap();
    let bad_arg = bad.display().to_string();
    let err = fails_with(
        &sb,
        1,
        &["project", "refresh", &name, "--after-import", &bad_arg],
    );
    assert!(
        err.contains("no_such_column") && err.contains("nothing was left behind"),
        "{err}"
    );
    assert_eq!(
        sb.state()["projects"][&name],
        before,
        "a failed refresh changed the state"
    );
    sb.assert_consistent(&name);
    assert_eq!(sb.sql(&main, unmasked), "0");
    let seen = watch(&src.password);
    let out = sb.run(&["project", "refresh", &name]);
    let leaks = seen.finish();
    assert!(out.status.success(), "refresh failed:\n{}", text(&out));
    assert!(leaks.is_empty(), "the password was visible: {leaks:?}");
    assert_eq!(
        fingerprints(&|q| sb.sql(&main, q), &quiet),
        fingerprints(&|q| src.sql("postgres", q), &quiet),
        "after a refresh with the source quiet, main is the source"
    );
    assert_eq!(sb.sql(&main, unmasked), "0", "the refresh masks again");
    let ids = "SELECT string_agg(id::text, ',' ORDER BY id) FROM people WHERE id > 2000";
    assert_eq!(sb.sql(&main, ids), "100000");
    assert_eq!(sb.sql(&dev, ids), "99999");
    sb.assert_consistent(&name);
}

#[test]
fn a_dump_file_imports_masked_and_refreshes_from_the_same_file() {
    let sb = Sandbox::new();
    let src = Source::start(&sb.rig.image);
    src.pgbench_init("postgres", 1);
    src.sql(
        "postgres",
        "CREATE TABLE people (id int PRIMARY KEY, name text, email text); \
         INSERT INTO people SELECT g, 'name ' || g, 'user' || g || '@example.com' FROM generate_series(1, 500) g;",
    );
    let dump = sb.home().join("src.dump");
    let dump_arg = dump.display().to_string();
    let out = src
        .client("pg_dump")
        .args(["-Fc", "-f", &dump_arg, "postgres"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mask = sb.home().join("mask.sql");
    std::fs::write(&mask, MASK).unwrap();
    let mask_arg = mask.display().to_string();
    let name = sb.project("dump");
    let mut args = create_args(&sb, &name);
    args.extend([
        "--from-dump",
        &dump_arg,
        "--after-import",
        &mask_arg,
        "--json",
    ]);
    let started = Instant::now();
    let out = sb.run(&args);
    let took = started.elapsed();
    assert!(out.status.success(), "import failed:\n{}", text(&out));
    eprintln!("import of a pgbench -s 1 dump: {took:?}");
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["branch"], "main", "{record}");
    assert!(
        text(&out).contains("- Restore postgres 5/5 tables"),
        "{}",
        text(&out)
    );

    let main = format!("{name}/main");
    let quiet = [("public.people", "id, name")];
    assert_eq!(
        fingerprints(&|q| sb.sql(&main, q), &quiet),
        fingerprints(&|q| src.sql("postgres", q), &quiet)
    );
    let unmasked = "SELECT count(*) FROM people WHERE email NOT LIKE '%@masked.invalid'";
    assert_eq!(sb.sql(&main, unmasked), "0");
    let got = sb.json(&["project", "get", &name]);
    assert_eq!(got["imported"]["dump"], dump_arg.as_str());

    // A refresh reads the same file again: main loses what was written to it since.
    sb.sql(&main, "DELETE FROM people");
    sb.ok(&["project", "refresh", &name]);
    assert_eq!(sb.sql(&main, "SELECT count(*) FROM people"), "500");
    assert_eq!(sb.sql(&main, unmasked), "0");
    sb.assert_consistent(&name);
}

/// Runs velo as the rig's user who is not root, in `home`.
fn as_user(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "velo-ci", "--regid", "velo-ci", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_velo"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("VELO_HOME", home.join("velo"))
        .env("VELO_CONFIG", home.join("config.json"))
        .env(
            "VELO_PG_ROOT",
            std::env::var("VELO_PG_ROOT").expect("VELO_PG_ROOT (scripts/test.sh sets it)"),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn a_user_imports_on_the_native_runtime_with_the_hosts_client_programs() {
    let sb = Sandbox::new();
    let src = Source::start(&sb.rig.image);
    src.pgbench_init("postgres", 1);
    let dir =
        std::env::var("VELO_TEST_XFS_DIR").expect("VELO_TEST_XFS_DIR (scripts/test.sh sets it)");
    let scratch = tempfile::Builder::new()
        .prefix("velo-it-")
        .tempdir_in(dir)
        .unwrap();
    let out = Command::new("chown")
        .args(["velo-ci:velo-ci"])
        .arg(scratch.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let home = scratch.path();
    let data = home.join("data").display().to_string();
    let url = src.url("postgres");
    let env = [("PGPASSWORD", src.password.as_str())];
    let create = |major: &str| {
        as_user(
            home,
            &env,
            &[
                "project",
                "create",
                "imp",
                "--runtime",
                "native",
                "--pg-version",
                major,
                "--storage",
                "reflink",
                "--data-dir",
                &data,
                "--from",
                &url,
            ],
        )
    };
    // No pg_dump of PostgreSQL 16 on this host: said so, with how to get it.
    let out = create("16");
    let err = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("`pg_dump` of PostgreSQL 16") && err.contains("postgresql-client-16"),
        "{err}"
    );
    let list = as_user(home, &[], &["project", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");

    let out = create("15");
    assert!(
        out.status.success(),
        "native import failed:\n{}",
        text(&out)
    );
    let creds = as_user(home, &[], &["branch", "password", "imp/main", "--json"]);
    let creds: serde_json::Value = serde_json::from_slice(&creds.stdout).unwrap();
    let count = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args([
            "-p",
            &creds["port"].to_string(),
            "-c",
            "SELECT count(*) FROM pgbench_accounts",
        ])
        .env("PGPASSWORD", creds["password"].as_str().unwrap())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&count.stdout).trim(),
        "100000",
        "{}",
        text(&count)
    );
    let out = as_user(
        home,
        &[("VELO_BACKGROUND", "0")],
        &["project", "delete", "imp"],
    );
    assert!(out.status.success(), "{}", text(&out));
}
