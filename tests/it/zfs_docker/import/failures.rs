//! Imports that must fail: every bad source, velo killed mid-import, a full storage; each a
//! clear error, the right exit code, and nothing left behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{assert_no_trace, create_args, fails_with, sandbox, text};
use crate::util::source::{Source, free_port};

#[test]
fn bad_sources_fail_clearly_and_leave_nothing_behind() {
    let mut sb = sandbox();
    let src = Source::start(&sb.rig.image);
    src.sql(
        "postgres",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g",
    );
    let name = sb.project("bad");
    let nobody = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    let wrong = src
        .url_with_password("postgres")
        .replace(&src.password, "wrong");
    let cases = [
        (nobody, None, "cannot reach the source at 127.0.0.1:"),
        (wrong, None, "refused the password of user `postgres`"),
        (
            src.url("postgres"),
            None,
            "asks for a password and none was given",
        ),
        (
            src.url("nope"),
            Some(&src.password),
            "has no database `nope`",
        ),
    ];
    for (url, password, want) in cases {
        sb.clear_env();
        sb.set_env("HOME", "/nonexistent");
        if let Some(p) = password {
            sb.set_env("PGPASSWORD", p);
        }
        let mut args = create_args(&sb, &name);
        args.extend(["--from", &url]);
        let err = fails_with(&sb, 1, &args);
        assert!(err.contains(want), "{url}: {err}");
        assert!(err.contains("nothing was left behind"), "{err}");
        assert_no_trace(&sb, &name);
    }
    sb.clear_env();

    // A plain SQL dump is not one velo restores, and says which it does.
    let plain = sb.home().join("plain.sql");
    let plain_arg = plain.display().to_string();
    let dumped = src
        .client("pg_dump")
        .args(["-f", &plain_arg, "postgres"])
        .output()
        .unwrap();
    assert!(dumped.status.success(), "{}", text(&dumped));
    let mut args = create_args(&sb, &name);
    args.extend(["--from-dump", &plain_arg]);
    let err = fails_with(&sb, 1, &args);
    assert!(
        err.contains("plain SQL dump") && err.contains("pg_dump -Fc"),
        "{err}"
    );
    assert_no_trace(&sb, &name);

    // Bytes that are no dump at all; a dump that is not there; a URL that is none: the last
    // two are usage errors.
    let junk = sb.home().join("junk.dump");
    std::fs::write(&junk, b"PGDMP? not really\n").unwrap();
    let junk_arg = junk.display().to_string();
    let mut args = create_args(&sb, &name);
    args.extend(["--from-dump", &junk_arg]);
    let err = fails_with(&sb, 1, &args);
    assert!(err.contains("no dump pg_dump made"), "{err}");
    assert_no_trace(&sb, &name);
    let mut args = create_args(&sb, &name);
    args.extend(["--from-dump", "/nonexistent/x.dump"]);
    let err = fails_with(&sb, 2, &args);
    assert!(err.contains("does not exist: --from-dump takes"), "{err}");
    let mut args = create_args(&sb, &name);
    args.extend(["--from", "mysql://root@127.0.0.1/x"]);
    fails_with(&sb, 2, &args);
    assert_no_trace(&sb, &name);

    // A source newer than the project's server (the rig's PostgreSQL 14 image has the client
    // programs of 15, which read the source, but its server cannot take their dump).
    sb.set_env("PGPASSWORD", &src.password);
    let url = src.url("postgres");
    let args = [
        "project",
        "create",
        &name,
        "--pool",
        &sb.rig.pool,
        "--image",
        "velo-test/postgres:14",
        "--from",
        &url,
    ];
    let err = fails_with(&sb, 1, &args);
    assert!(
        err.contains("newer than the project's server (PostgreSQL 14)")
            && err.contains("--pg-version 15"),
        "{err}"
    );
    assert_no_trace(&sb, &name);
    sb.clear_env();

    // velo killed mid-import (its dump made, its import server running, the password file
    // written): the next command takes everything back.
    sb.set_env("PGPASSWORD", &src.password);
    let url = src.url("postgres");
    let mut args = create_args(&sb, &name);
    args.extend(["--from", &url]);
    let paused = sb.paused("restore", &args);
    let secrets = sb.home().join("run").join(format!("import.{name}.main"));
    assert!(
        secrets.join("pgpass").is_file(),
        "no password file while importing"
    );
    assert_eq!(
        sb.servers(&name),
        [format!("velo-{name}.main.import")],
        "the import server runs"
    );
    paused.kill9();
    sb.clear_env();
    let out = sb.run(&["status"]);
    assert!(
        text(&out).contains("was interrupted; rolling it back"),
        "{}",
        text(&out)
    );
    assert_no_trace(&sb, &name);

    // A source that goes away mid-import: pg_dump waits for a lock the test holds, then the
    // source is killed.
    let mut holder = src
        .client("psql")
        .args(["-X", "-q", "-d", "postgres", "-c"])
        .arg("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600);")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'velo-import' AND wait_event_type = 'Lock'";
    sb.set_env("PGPASSWORD", &src.password);
    let url = src.url("postgres");
    let mut args = create_args(&sb, &name);
    args.extend(["--from", &url]);
    let out = std::thread::scope(|s| {
        let import = s.spawn(|| sb.run(&args));
        let started = Instant::now();
        while src.sql("postgres", waiting) == "0" {
            assert!(
                started.elapsed() < Duration::from_secs(60) && !import.is_finished(),
                "pg_dump never waited for the lock"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        src.kill();
        import.join().unwrap()
    });
    let _ = holder.kill();
    let _ = holder.wait();
    let err = text(&out);
    assert!(!out.status.success());
    assert!(err.contains("went away during the import"), "{err}");
    assert_no_trace(&sb, &name);

    // A source newer than the image's client programs.
    let newer = Source::start("velo-test/postgres:16");
    sb.set_env("PGPASSWORD", &newer.password);
    let url = newer.url("postgres");
    let mut args = create_args(&sb, &name);
    args.extend(["--from", &url]);
    let err = fails_with(&sb, 1, &args);
    assert!(
        err.contains("the source runs PostgreSQL 16, newer than the client tools here")
            && err.contains("client programs are PostgreSQL 16 or newer"),
        "{err}"
    );
    assert_no_trace(&sb, &name);
}

/// A tmpfs mount of `size`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", text(&out));
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn a_full_storage_fails_clearly_and_leaves_nothing_behind() {
    let mut sb = sandbox();
    let src = Source::start(&sb.rig.image);
    src.pgbench_init("postgres", 5);
    // A file system with room for the cluster velo prepares and its copies, not for the data.
    let tiny = Tmpfs::mount(&sb.home().join("tiny"), "160m");
    sb.set_env("PGPASSWORD", &src.password);
    let name = sb.project("full");
    let (url, dir) = (src.url("postgres"), tiny.0.display().to_string());
    let err = fails_with(
        &sb,
        1,
        &[
            "project",
            "create",
            &name,
            "--storage",
            "copy",
            "--data-dir",
            &dir,
            "--image",
            &sb.rig.image,
            "--from",
            &url,
        ],
    );
    assert!(err.contains("the storage is full"), "{err}");
    assert!(err.contains("nothing was left behind"), "{err}");
    assert!(
        err.contains("- Dump postgres"),
        "the import itself filled it: {err}"
    );
    assert_no_trace(&sb, &name);
    let left: Vec<_> = std::fs::read_dir(&tiny.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.iter().all(|n| !n.to_string_lossy().starts_with(&name)),
        "volumes left: {left:?}"
    );
}
