//! Importing projects from a real source PostgreSQL (a container the test starts, on
//! 127.0.0.1, asking for a password): a logical import while pgbench writes to the source,
//! masking, a refresh that keeps branches, a dump file. The failures are in `failures.rs`; an
//! import on the native runtime is `native::import`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::util::source::{Source, fingerprints};
use crate::util::{Backend, Sandbox};

mod failures;
mod follow;
mod physical;

/// The major of the imports here: the rig's only image whose client programs (pg_dump,
/// pg_restore) are of its own server's major (the others carry Debian's of 15).
const MAJOR: u32 = 15;

/// A ZFS and Docker sandbox with PostgreSQL [`MAJOR`].
fn sandbox() -> Sandbox {
    assert_eq!(
        Backend::from_env(),
        Backend::ZfsDocker,
        "the import tests run on zfs-docker (scripts/test.sh)"
    );
    Sandbox::on(Backend::ZfsDocker, MAJOR)
}

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
        sb.volumes(name).is_empty(),
        "datasets left: {:?}",
        sb.volumes(name)
    );
    assert!(sb.servers(name).is_empty(), "containers left");
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
    let mut sb = sandbox();
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
    let mut load = src.pgbench_writing("postgres");

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
    let sb = sandbox();
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
