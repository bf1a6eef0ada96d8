//! An import on the native runtime, by the rig's user who is not root: the host's client
//! programs of the server's major, a clear error naming the package when they are missing; a
//! logical import, then a physical one.

use std::path::Path;
use std::process::{Command, Output};

use crate::util::rig::{self, Backend};
use crate::util::source::Source;

/// The only major whose client programs this host has (Debian's PostgreSQL 15).
const MAJOR: u32 = 15;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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
        .env("VELO_PG_ROOT", rig::var("VELO_PG_ROOT"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn a_user_imports_on_the_native_runtime_with_the_hosts_client_programs() {
    assert!(
        Backend::from_env().is_native(),
        "a test of the native runtime (scripts/test.sh)"
    );
    // The source is a Docker container: a shared hold on the rig keeps the tests that restart
    // dockerd from killing it mid-import (the native suites take no hold otherwise).
    let _hold = crate::util::hold::RigHold::take(false);
    let src = Source::start(&rig::image_for(MAJOR));
    src.pgbench_init("postgres", 1);
    let dir = rig::var("VELO_TEST_XFS_DIR");
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
    let create = |name: &str, major: &str, more: &[&str]| {
        let mut args = vec![
            "project",
            "create",
            name,
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
        ];
        args.extend(more);
        as_user(home, &env, &args)
    };
    // No pg_dump of PostgreSQL 16 on this host: said so, with how to get it.
    let out = create("imp", "16", &[]);
    let err = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("`pg_dump` of PostgreSQL 16") && err.contains("postgresql-client-16"),
        "{err}"
    );
    let list = as_user(home, &[], &["project", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");

    let out = create("imp", "15", &[]);
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

    // A physical copy: pg_basebackup of the host, run as the user, into the user's own files.
    let out = create("phys", "15", &["--physical"]);
    assert!(
        out.status.success(),
        "physical import failed:\n{}",
        text(&out)
    );
    let sql_on = |branch: &str, q: &str| {
        let out = as_user(
            home,
            &[],
            &["branch", "psql", branch, "--", "-A", "-t", "-c", q],
        );
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let sql = |q: &str| sql_on("phys/main", q);
    let system_id = "SELECT system_identifier FROM pg_control_system()";
    assert_eq!(sql(system_id), src.sql("postgres", system_id));
    assert_eq!(sql("SELECT count(*) FROM pgbench_accounts"), "100000");
    let out = as_user(home, &[], &["branch", "create", "phys/dev"]);
    assert!(out.status.success(), "{}", text(&out));

    // A follower: main a standby of the source, run by the user; a branch of it is promoted.
    let out = create("fol", "15", &["--follow"]);
    assert!(out.status.success(), "follow failed:\n{}", text(&out));
    let checkpoint = "SELECT checkpoint_lsn FROM pg_control_checkpoint()";
    let before = src.sql("postgres", checkpoint);
    src.sql("postgres", crate::util::source::FILLER);
    src.sql("postgres", "CREATE TABLE marks AS SELECT 7 AS id");
    let started = std::time::Instant::now();
    while sql_on(
        "fol/main",
        "SELECT count(*) FROM pg_tables WHERE tablename = 'marks'",
    ) != "1"
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "main did not follow"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Main replayed the filler since its last restartpoint: the source is asked for a
    // checkpoint (the user reads the password file main reads), and main restartpoints there.
    let out = as_user(home, &[], &["branch", "create", "fol/dev"]);
    assert!(out.status.success(), "{}", text(&out));
    let after = src.sql("postgres", checkpoint);
    assert_ne!(before, after, "the source was not asked for a checkpoint");
    assert_eq!(sql_on("fol/main", checkpoint), after);
    assert_eq!(sql_on("fol/dev", "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(sql_on("fol/dev", "SELECT id FROM marks"), "7");
    let out = as_user(
        home,
        &[("VELO_BACKGROUND", "0")],
        &["project", "delete", "fol", "--force"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = as_user(
        home,
        &[("VELO_BACKGROUND", "0")],
        &["project", "delete", "phys", "--force"],
    );
    assert!(out.status.success(), "{}", text(&out));
}
