//! A physical import (`--physical`, pg_basebackup): an exact copy of the source taken while
//! pgbench writes to it (every database and role, the source's own system identifier), masked
//! before any branch sees it, branched and refreshed; the sources it cannot copy; and a user of
//! the docker group who is not root.

use std::path::PathBuf;
use std::process::Command;

use super::{
    MASK, PGBENCH_CONSISTENT, assert_no_trace, create_args, fails_with, files_holding, sandbox,
    text, watch,
};
use crate::util::rig::image_for;
use crate::util::sh;
use crate::util::source::Source;

const SYSTEM_ID: &str = "SELECT system_identifier FROM pg_control_system()";

#[test]
fn a_physical_import_under_load_is_an_exact_masked_copy_and_refreshes() {
    let mut sb = sandbox();
    let src = Source::start(&sb.rig.image);
    src.pgbench_init("postgres", 1);
    src.sql(
        "postgres",
        "CREATE TABLE people (id int PRIMARY KEY, name text, email text); \
         INSERT INTO people SELECT g, 'name ' || g, 'user' || g || '@example.com' FROM generate_series(1, 2000) g; \
         CREATE ROLE reader LOGIN PASSWORD 'reader-pw';",
    );
    src.sql("postgres", "CREATE DATABASE other");
    // Settings of the source's that must not come along: one that would not even start here.
    src.sql(
        "postgres",
        "ALTER SYSTEM SET shared_preload_libraries = 'no_such_library'",
    );
    src.sql("postgres", "ALTER SYSTEM SET work_mem = '77MB'");
    src.sql(
        "other",
        "CREATE TABLE notes AS SELECT g AS id FROM generate_series(1, 300) g",
    );
    let mask = sb.home().join("mask.sql");
    std::fs::write(&mask, MASK).unwrap();
    let mask_arg = mask.display().to_string();
    let mut load = src.pgbench_writing("postgres");

    let name = sb.project("phys");
    sb.set_env("PGPASSWORD", &src.password);
    let seen = watch(&src.password);
    let url = src.url("postgres");
    let mut args = create_args(&sb, &name);
    args.extend(["--from", &url, "--physical", "--after-import", &mask_arg]);
    let out = sb.run(&args);
    let leaks = seen.finish();
    let _ = load.kill();
    let _ = load.wait();
    assert!(out.status.success(), "import failed:\n{}", text(&out));
    assert!(leaks.is_empty(), "the password was visible: {leaks:?}");
    assert!(text(&out).contains("- Copy"), "{}", text(&out));

    let main = format!("{name}/main");
    // The source's own cluster, at one consistent moment while pgbench wrote.
    assert_eq!(sb.sql(&main, SYSTEM_ID), src.sql("postgres", SYSTEM_ID));
    assert_eq!(sb.sql(&main, PGBENCH_CONSISTENT), "t");
    assert_eq!(
        sb.sql(
            &main,
            "SELECT count(*) FROM pg_roles WHERE rolname = 'reader'"
        ),
        "1"
    );
    assert_eq!(
        sb.sql(
            &main,
            "SELECT datname FROM pg_database WHERE datname = 'other'"
        ),
        "other"
    );
    let unmasked = "SELECT count(*) FROM people WHERE email NOT LIKE '%@masked.invalid'";
    assert_eq!(sb.sql(&main, unmasked), "0");
    assert_eq!(
        sb.sql(&main, "SHOW work_mem"),
        "4MB",
        "the source's settings came along"
    );
    // velo's password works; the source's is nowhere in the home.
    assert_eq!(sb.sql(&main, "SELECT current_user"), "postgres");
    assert_eq!(
        files_holding(sb.home(), &src.password),
        Vec::<PathBuf>::new(),
        "the password is in the home"
    );
    let got = sb.json(&["project", "get", &name]);
    assert_eq!(got["imported"]["physical"], true, "{got}");

    // A branch, then a refresh: a new exact copy for main, the branch keeps its data.
    let dev = format!("{name}/dev");
    sb.ok(&["branch", "create", &dev]);
    sb.sql(
        &dev,
        "INSERT INTO people VALUES (99999, 'dev', 'dev@example.com')",
    );
    src.sql(
        "postgres",
        "INSERT INTO people VALUES (100000, 'later', 'later@example.com')",
    );
    sb.ok(&["project", "refresh", &name]);
    let ids = "SELECT string_agg(id::text, ',' ORDER BY id) FROM people WHERE id > 2000";
    assert_eq!(sb.sql(&main, ids), "100000");
    assert_eq!(sb.sql(&dev, ids), "99999");
    assert_eq!(sb.sql(&main, unmasked), "0", "the refresh masks again");
    sb.assert_consistent(&name);
}

#[test]
fn sources_a_physical_import_cannot_copy_fail_clearly_and_leave_nothing_behind() {
    let mut sb = sandbox();
    let src = Source::start(&sb.rig.image);
    src.sql(
        "postgres",
        "CREATE ROLE plain LOGIN PASSWORD 'plain-pw'; CREATE ROLE copier LOGIN REPLICATION PASSWORD 'copier-pw'",
    );
    let name = sb.project("nophys");
    let as_user = |user: &str| format!("postgres://{user}@127.0.0.1:{}/postgres", src.port);
    let cases = [
        ("plain", "plain-pw", "user `plain` may not replicate"),
        ("copier", "wrong", "refused the password of user `copier`"),
    ];
    for (user, password, want) in cases {
        sb.clear_env();
        sb.set_env("HOME", "/nonexistent");
        sb.set_env("PGPASSWORD", password);
        let url = as_user(user);
        let mut args = create_args(&sb, &name);
        args.extend(["--from", &url, "--physical"]);
        let err = fails_with(&sb, 1, &args);
        assert!(err.contains(want), "{user}: {err}");
        assert!(err.contains("nothing was left behind"), "{err}");
        assert_no_trace(&sb, &name);
    }

    // No superuser role of the name velo manages projects as: another superuser renames it.
    src.sql(
        "postgres",
        "CREATE ROLE admin SUPERUSER LOGIN PASSWORD 'admin-pw'",
    );
    let renamed = src
        .client("psql")
        .env("PGUSER", "admin")
        .env("PGPASSWORD", "admin-pw")
        .args([
            "-X",
            "-q",
            "-d",
            "postgres",
            "-c",
            "ALTER ROLE postgres RENAME TO boss",
        ])
        .output()
        .unwrap();
    assert!(renamed.status.success(), "{}", text(&renamed));
    sb.set_env("PGPASSWORD", "copier-pw");
    let url = as_user("copier");
    let mut args = create_args(&sb, &name);
    args.extend(["--from", &url, "--physical"]);
    let err = fails_with(&sb, 1, &args);
    assert!(
        err.contains("no superuser role `postgres`") && err.contains("CREATE ROLE postgres"),
        "{err}"
    );
    assert_no_trace(&sb, &name);

    // A source of another major than the project's.
    let old = Source::start(&image_for(14));
    sb.set_env("PGPASSWORD", &old.password);
    let url = old.url("postgres");
    let mut args = create_args(&sb, &name);
    args.extend(["--from", &url, "--physical"]);
    let err = fails_with(&sb, 1, &args);
    assert!(
        err.contains("runs PostgreSQL 14") && err.contains("--pg-version 14"),
        "{err}"
    );
    assert_no_trace(&sb, &name);

    // --physical reads a server: not a dump, and not with the logical import's options.
    let usage = fails_with(
        &sb,
        2,
        &["project", "create", &name, "--physical", "--from-dump", "x"],
    );
    assert!(usage.contains("--physical"), "{usage}");
    let usage = fails_with(
        &sb,
        2,
        &[
            "project",
            "create",
            &name,
            "--from",
            &url,
            "--physical",
            "--with-roles",
        ],
    );
    assert!(usage.contains("--with-roles"), "{usage}");
}

#[test]
fn a_source_that_goes_away_mid_copy_fails_clearly_and_leaves_nothing_behind() {
    let mut sb = sandbox();
    let src = Source::start(&sb.rig.image);
    src.pgbench_init("postgres", 10);
    let name = sb.project("gone");
    sb.set_env("PGPASSWORD", &src.password);
    let url = src.url("postgres");
    let mut args = create_args(&sb, &name);
    args.extend(["--from", &url, "--physical"]);
    let copying = "SELECT count(*) FROM pg_stat_progress_basebackup \
                   WHERE phase = 'streaming database files'";
    let out = std::thread::scope(|s| {
        let import = s.spawn(|| sb.run(&args));
        let started = std::time::Instant::now();
        while src.sql("postgres", copying) == "0" {
            assert!(
                started.elapsed().as_secs() < 60 && !import.is_finished(),
                "pg_basebackup was never seen copying"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        src.kill();
        import.join().unwrap()
    });
    let err = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("went away during the import"), "{err}");
    assert!(err.contains("nothing was left behind"), "{err}");
    assert_no_trace(&sb, &name);
}

/// A user who is not root but may use Docker (the docker group, as `velo setup` makes them):
/// the programs that read the source, and main's server, run as the image's postgres uid,
/// which must be able to read the password file velo's user wrote.
#[test]
fn a_docker_group_user_copies_and_follows_with_a_password() {
    let _sb = sandbox();
    let src = Source::start(&image_for(15));
    src.sql("postgres", "CREATE TABLE t AS SELECT 42 AS x");
    let dir = tempfile::Builder::new()
        .prefix("velo-it-")
        .tempdir_in(crate::util::rig::var("VELO_TEST_BTRFS_DIR"))
        .unwrap();
    let chown = Command::new("chown")
        .arg("velo-ci:velo-ci")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(chown.status.success());
    let docker_gid = sh("getent", &["group", "docker"])
        .split(':')
        .nth(2)
        .unwrap()
        .to_string();
    let home = dir.path();
    let velo = |args: &[&str], password: bool| {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            "velo-ci",
            "--regid",
            "velo-ci",
            "--groups",
            &docker_gid,
        ])
        .arg(env!("CARGO_BIN_EXE_velo"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("VELO_HOME", home.join("velo"))
        .env("VELO_BACKGROUND", "0");
        if password {
            cmd.env("PGPASSWORD", &src.password);
        }
        cmd.output().unwrap()
    };
    let data = home.join("data").display().to_string();
    let url = src.url("postgres");
    for (name, how) in [("phys", "--physical"), ("fol", "--follow")] {
        let args = [
            "project",
            "create",
            name,
            "--storage",
            "btrfs",
            "--data-dir",
            &data,
            "--runtime",
            "docker",
            "--image",
            &image_for(15),
            "--from",
            &url,
            how,
        ];
        let out = velo(&args, true);
        assert!(out.status.success(), "{how}:\n{}", text(&out));
        let main = format!("{name}/main");
        let out = velo(
            &[
                "branch",
                "psql",
                &main,
                "--",
                "-A",
                "-t",
                "-c",
                "SELECT x FROM t",
            ],
            false,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "42",
            "{}",
            text(&out)
        );
        if how == "--follow" {
            follower_checkpoints(&src, &main, &velo);
        }
        let out = velo(&["project", "delete", name, "--force"], false);
        assert!(out.status.success(), "{}", text(&out));
    }
}

/// A branch of follower `main`, far from its last restartpoint, made by a user whose servers
/// run as another uid (the password file is that uid's): the source is asked for a checkpoint
/// all the same, and main makes its restartpoint there.
fn follower_checkpoints(
    src: &Source,
    main: &str,
    velo: &dyn Fn(&[&str], bool) -> std::process::Output,
) {
    let checkpoint = "SELECT checkpoint_lsn FROM pg_control_checkpoint()";
    let before = src.sql("postgres", checkpoint);
    src.sql("postgres", crate::util::source::FILLER);
    let replayed = "SELECT count(*) FROM pg_class WHERE relname = 'filler'";
    let started = std::time::Instant::now();
    loop {
        let out = velo(
            &["branch", "psql", main, "--", "-A", "-t", "-c", replayed],
            false,
        );
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 60,
            "main never replayed the filler"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let branch = main.replace("/main", "/fresh");
    let out = velo(&["branch", "create", &branch], false);
    assert!(out.status.success(), "{}", text(&out));
    let after = src.sql("postgres", checkpoint);
    assert_ne!(
        before,
        after,
        "the source was not asked for a checkpoint:\n{}",
        text(&out)
    );
    let out = velo(
        &["branch", "psql", main, "--", "-A", "-t", "-c", checkpoint],
        false,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), after);
}
