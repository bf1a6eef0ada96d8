//! A follower (`--follow`): main a hot standby streaming from a source that pgbench writes to,
//! branches that are promoted snapshots of it with the project's password, lag reported and
//! enforced, and the source's password only where main's server reads it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{PGBENCH_CONSISTENT, create_args, fails_with, sandbox, text, watch};
use crate::util::Sandbox;
use crate::util::source::{FILLER, Source};

/// SQL on a branch through `velo branch psql` (velo's socket: no password, which a follower's
/// main, whose passwords are the source's, needs).
fn on_socket(sb: &Sandbox, branch: &str, sql: &str) -> String {
    let out = sb.run(&["branch", "psql", branch, "--", "-X", "-A", "-t", "-c", sql]);
    assert!(out.status.success(), "{sql}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until `branch` (over velo's socket) answers `want` to `sql`.
fn until(sb: &Sandbox, branch: &str, sql: &str, want: &str) {
    let started = Instant::now();
    loop {
        let got = on_socket(sb, branch, sql);
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{branch} answers {got:?} to {sql:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_follower_streams_and_its_branches_are_fresh_promoted_copies() {
    let mut sb = sandbox();
    let src = Source::start(&sb.rig.image);
    src.pgbench_init("postgres", 1);
    src.sql("postgres", "CREATE TABLE marks (id int PRIMARY KEY)");
    let mut load = src.pgbench_writing("postgres");

    let name = sb.project("fol");
    sb.set_env("PGPASSWORD", &src.password);
    let seen = watch(&src.password);
    let url = src.url("postgres");
    let mut args = create_args(&sb, &name);
    args.extend(["--from", &url, "--follow"]);
    let out = sb.run(&args);
    sb.clear_env();
    assert!(out.status.success(), "follow failed:\n{}", text(&out));
    let main = format!("{name}/main");
    assert_eq!(on_socket(&sb, &main, "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(on_socket(&sb, &main, "SHOW max_connections"), "120");
    let system_id = "SELECT system_identifier FROM pg_control_system()";
    assert_eq!(
        on_socket(&sb, &main, system_id),
        src.sql("postgres", system_id)
    );

    // A row committed on the source reaches main, and a branch cut then has it: promoted,
    // writable, consistent, with the project's password. Main has replayed much WAL since its
    // last restartpoint (the filler's), so the source is asked for a checkpoint first, and
    // main makes its restartpoint there: the branch replays only what came after.
    let checkpoint = "SELECT checkpoint_lsn FROM pg_control_checkpoint()";
    let before = src.sql("postgres", checkpoint);
    src.sql("postgres", FILLER);
    src.sql("postgres", "INSERT INTO marks VALUES (1)");
    until(&sb, &main, "SELECT count(*) FROM marks WHERE id = 1", "1");
    let got = sb.json(&["branch", "get", &main]);
    assert_eq!(got["replication"]["streaming"], true, "{got}");
    assert!(got["replication"]["lag_seconds"].is_number(), "{got}");
    let dev = format!("{name}/dev");
    sb.ok(&["branch", "create", &dev, "--max-lag", "30s"]);
    let after = src.sql("postgres", checkpoint);
    assert_ne!(before, after, "the source was not asked for a checkpoint");
    assert_eq!(
        on_socket(&sb, &main, checkpoint),
        after,
        "main made no restartpoint at the source's checkpoint"
    );
    assert_eq!(sb.sql(&dev, "SELECT count(*) FROM marks WHERE id = 1"), "1");
    assert_eq!(sb.sql(&dev, "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(sb.sql(&dev, PGBENCH_CONSISTENT), "t");
    sb.sql(&dev, "INSERT INTO marks VALUES (-1)");
    let doctor = text(&sb.run(&["doctor"]));
    let line = doctor
        .lines()
        .find(|l| l.contains(&format!("{main} server answers")))
        .unwrap_or_default();
    assert!(
        line.contains("follows") && line.contains("streaming"),
        "{doctor}"
    );

    // Main goes on following; a reset brings the branch its new data.
    src.sql("postgres", "INSERT INTO marks VALUES (2)");
    until(&sb, &main, "SELECT count(*) FROM marks WHERE id = 2", "1");
    assert_eq!(
        sb.sql(
            &dev,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM marks"
        ),
        "-1,1"
    );
    sb.ok(&["branch", "reset", &dev]);
    assert_eq!(
        sb.sql(
            &dev,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM marks"
        ),
        "1,2"
    );
    // A stopped branch reset stays stopped, and has the project's password when it starts.
    sb.ok(&["branch", "stop", &dev]);
    sb.ok(&["branch", "reset", &dev]);
    assert_eq!(sb.json(&["branch", "get", &dev])["container"], "stopped");
    sb.ok(&["branch", "start", &dev]);
    assert_eq!(sb.sql(&dev, "SELECT count(*) FROM marks"), "2");

    // The source's password: a file only main's server reads, mounted into main alone.
    let leaks = seen.finish();
    assert!(leaks.is_empty(), "the password was visible: {leaks:?}");
    let passfile = sb.home().join("follow").join(&name).join("pgpass");
    let meta = std::fs::metadata(&passfile).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let pg_uid = sb.state()["projects"][&name]["pg_uid"].as_u64().unwrap();
    assert_eq!(u64::from(meta.uid()), pg_uid, "owned by the server's uid");
    let mounts = |branch: &str| {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{range .Mounts}}{{.Source}} {{end}}"])
            .arg(format!("velo-{name}.{branch}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(mounts("main").contains("/follow/"), "{}", mounts("main"));
    assert!(!mounts("dev").contains("/follow/"), "{}", mounts("dev"));
    let state = std::fs::read_to_string(sb.home().join("state.json")).unwrap();
    assert!(!state.contains(&src.password));

    // What a standby cannot do, each said plainly.
    let err = fails_with(&sb, 1, &["branch", "password", &main]);
    assert!(
        err.contains("standby") && err.contains("velo branch psql"),
        "{err}"
    );
    let err = fails_with(&sb, 1, &["project", "refresh", &name]);
    assert!(err.contains("nothing to refresh"), "{err}");
    let err = fails_with(
        &sb,
        1,
        &["branch", "create", &format!("{name}/old"), "--pitr", "1m"],
    );
    assert!(err.contains("no history to recover"), "{err}");

    // The source goes away: main stops streaming, falls behind, and --max-lag refuses.
    let _ = load.kill();
    let _ = load.wait();
    src.kill();
    std::thread::sleep(Duration::from_secs(3));
    let status = sb.json(&["status"]);
    let row = status["branches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["branch"] == "main" && b["project"] == name.as_str())
        .cloned()
        .unwrap();
    assert_eq!(row["replication"]["streaming"], false, "{row}");
    let late = format!("{name}/late");
    let err = fails_with(&sb, 1, &["branch", "create", &late, "--max-lag", "1s"]);
    assert!(err.contains("more than --max-lag 1s"), "{err}");
    let out = sb.run(&["branch", "create", &late]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("behind its source"), "{}", text(&out));

    sb.ok(&["project", "delete", &name, "--force"]);
    assert!(
        !sb.home().join("follow").join(&name).exists(),
        "the password file was left"
    );
}

#[test]
fn a_follower_that_cannot_stream_replays_the_sources_wal_archive() {
    let mut sb = sandbox();
    let archive = tempfile::tempdir().unwrap();
    // The source's server writes there, main's reads it: both the image's postgres uid.
    std::fs::set_permissions(archive.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let src = Source::start_archiving(&sb.rig.image, Some(archive.path()));
    src.sql(
        "postgres",
        "CREATE ROLE copier LOGIN REPLICATION PASSWORD 'copier-pw'; CREATE TABLE marks (id int)",
    );
    let name = sb.project("arch");
    let url = format!("postgres://copier@127.0.0.1:{}/postgres", src.port);
    let wal = archive.path().display().to_string();
    sb.set_env("PGPASSWORD", "copier-pw");
    let mut args = create_args(&sb, &name);
    args.extend(["--from", &url, "--follow", "--source-wal", &wal]);
    let out = sb.run(&args);
    sb.clear_env();
    assert!(out.status.success(), "follow failed:\n{}", text(&out));
    let main = format!("{name}/main");
    src.sql("postgres", "INSERT INTO marks VALUES (1)");
    until(&sb, &main, "SELECT count(*) FROM marks", "1");

    // Streaming is cut for good (the role may no longer replicate); what the source archives
    // still reaches main.
    src.sql(
        "postgres",
        "ALTER ROLE copier NOREPLICATION; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_replication",
    );
    let started = Instant::now();
    while src.sql("postgres", "SELECT count(*) FROM pg_stat_replication") != "0" {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "main still streams"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    src.sql("postgres", FILLER);
    src.sql("postgres", "INSERT INTO marks VALUES (2)");
    src.sql("postgres", "SELECT pg_switch_wal()");
    until(&sb, &main, "SELECT count(*) FROM marks", "2");
    let got = sb.json(&["branch", "get", &main]);
    assert_eq!(got["replication"]["streaming"], false, "{got}");
    // Far from its last restartpoint, but the role may not ask the source for a checkpoint:
    // the branch is made all the same, and velo says what to grant.
    let dev = format!("{name}/dev");
    let out = sb.run(&["branch", "create", &dev]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("GRANT pg_checkpoint TO copier"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.sql(&dev, "SELECT count(*) FROM marks"), "2");
    sb.ok(&["project", "delete", &name, "--force"]);
}

#[test]
fn a_follower_with_a_slot_catches_up_after_a_stop_and_drops_its_slot_when_deleted() {
    let mut sb = sandbox();
    let src = Source::start(&sb.rig.image);
    src.sql("postgres", "CREATE TABLE marks (id int)");
    let name = sb.project("slot");
    sb.set_env("PGPASSWORD", &src.password);
    let url = src.url("postgres");
    let mut args = create_args(&sb, &name);
    args.extend(["--from", &url, "--follow", "--slot"]);
    let out = sb.run(&args);
    sb.clear_env();
    assert!(out.status.success(), "follow failed:\n{}", text(&out));
    let slots = "SELECT string_agg(slot_name || ':' || active, ',') FROM pg_replication_slots";
    let slot = src.sql("postgres", slots);
    assert!(
        slot.starts_with("velo_") && slot.ends_with(":true"),
        "{slot}"
    );
    let got = sb.json(&["project", "get", &name]);
    assert_eq!(
        got["imported"]["slot"]
            .as_str()
            .map(|s| format!("{s}:true")),
        Some(slot.clone()),
        "{got}"
    );

    // Main stopped: the slot keeps the source's WAL across segment switches and checkpoints,
    // so main catches up when it starts again.
    let main = format!("{name}/main");
    sb.ok(&["branch", "stop", &main]);
    for id in 1..=3 {
        src.sql("postgres", &format!("INSERT INTO marks VALUES ({id})"));
        src.sql("postgres", "SELECT pg_switch_wal()");
        src.sql("postgres", "CHECKPOINT");
    }
    sb.ok(&["branch", "start", &main]);
    until(&sb, &main, "SELECT count(*) FROM marks", "3");

    sb.ok(&["project", "delete", &name]);
    assert_eq!(
        src.sql("postgres", slots),
        "",
        "the slot was left on the source"
    );
}
