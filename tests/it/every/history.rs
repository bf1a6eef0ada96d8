//! Snapshots, restore, WAL archiving and point-in-time recovery, on every backend.

use std::thread::sleep;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};

use crate::util::Sandbox;

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[test]
fn restore_brings_back_a_dropped_table_and_keeps_later_snapshots() {
    let sb = Sandbox::new();
    let p = sb.create_project("restore");
    let dev = format!("{p}/dev");
    sb.sql(
        &format!("{p}/main"),
        "CREATE TABLE users (id serial, name text); INSERT INTO users (name) VALUES ('a'), ('b')",
    );
    sb.ok(&["branch", "create", &dev]);
    let id = sb.ok(&["snapshot", "create", &dev, "--label", "before-migration"]);
    assert_eq!(id.trim().len(), 12, "prints the id: {id}");
    sb.sql(
        &dev,
        "DROP TABLE users; CREATE TABLE later (x int); INSERT INTO later VALUES (42)",
    );
    let later = sb
        .ok(&["snap", "create", &dev, "--label", "after-drop"])
        .trim()
        .to_string();

    let port = sb.port(&dev);
    let before_restore = now();
    sb.ok(&["branch", "restore", &dev, "before-migration"]);
    assert_eq!(sb.users(&dev), "a,b");
    assert_eq!(sb.port(&dev), port, "restore keeps the port");
    // dev's history now starts at the restore: a moment before it is out of reach, not
    // silently answered with the snapshot's data.
    let err = sb.fails(&[
        "branch",
        "create",
        &format!("{p}/x"),
        "--pitr",
        &before_restore,
        "--parent",
        &dev,
    ]);
    assert!(err.contains("before the oldest snapshot"), "{err}");

    // The snapshot taken after the restore point is still listed and restorable.
    let listed = sb.json(&["snapshot", "list", &dev]);
    let labels: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, vec!["before-migration", "after-drop"]);
    sb.ok(&["branch", "restore", &dev, &later[..6]]);
    assert_eq!(sb.sql(&dev, "SELECT x FROM later"), "42");
    sb.ok(&["branch", "restore", &dev, &id.trim()[..8]]);
    assert_eq!(sb.users(&dev), "a,b");

    // A new branch from a snapshot; the snapshot cannot be deleted while the branch exists.
    sb.ok(&[
        "branch",
        "create",
        &format!("{p}/fix"),
        "--from-snapshot",
        "after-drop",
    ]);
    assert_eq!(sb.sql(&format!("{p}/fix"), "SELECT x FROM later"), "42");
    let err = sb.fails(&["snapshot", "delete", "after-drop"]);
    assert!(err.contains(&format!("{p}/fix")), "{err}");
    sb.ok(&["branch", "delete", &format!("{p}/fix")]);
    sb.ok(&["snapshot", "rm", "after-drop"]);
    // dev runs on a clone of before-migration now: velo keeps it, and says why.
    let err = sb.fails(&["snapshot", "delete", "before-migration"]);
    assert!(err.contains("restored from it"), "{err}");
    sb.ok(&["branch", "delete", &dev]);
    assert_eq!(sb.json(&["snapshot", "list"]), serde_json::json!([]));
    // Everything of dev is gone from the storage: its generations and snapshots.
    let tree = sb.volumes(&p);
    assert!(tree.iter().all(|n| !n.starts_with("dev.")), "{tree:?}");
    assert!(tree.iter().all(|n| !n.contains('@')), "{tree:?}");
}

#[test]
fn snapshot_errors_are_clear() {
    let sb = Sandbox::new();
    let p = sb.create_project("snaperr");
    let main = format!("{p}/main");
    sb.ok(&["snapshot", "create", &main, "--label", "one"]);
    let err = sb.fails(&["snapshot", "create", &main, "--label", "one"]);
    assert!(
        err.contains("already has a snapshot labelled `one`"),
        "{err}"
    );
    let err = sb.fails(&["snapshot", "create", &main, "--label", "Bad Label"]);
    assert!(err.contains("label"), "{err}");
    let err = sb.fails(&["snapshot", "delete", "no-such-snapshot"]);
    assert!(err.contains("no snapshot"), "{err}");
    let err = sb.fails(&["branch", "restore", &main, "nope"]);
    assert!(err.contains("has no snapshot `nope`"), "{err}");

    // Under 4 characters is never taken as an id prefix.
    let id = sb.json(&["snapshot", "list", &main])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let err = sb.fails(&["snapshot", "delete", &id[..3]]);
    assert!(err.contains("no snapshot"), "{err}");

    // A branch's base snapshot is velo's own.
    sb.ok(&["branch", "create", &format!("{p}/dev")]);
    let base = sb.state()["projects"][&p]["branches"]["dev"]["origin"]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let err = sb.fails(&[
        "branch",
        "create",
        &format!("{p}/x"),
        "--from-snapshot",
        &base,
    ]);
    assert!(err.contains("base snapshot"), "{err}");
    // The labelled snapshot was not changed by any of this.
    assert_eq!(sb.json(&["snapshot", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn a_label_used_in_two_projects_is_ambiguous_without_an_id() {
    let sb = Sandbox::new();
    let p = sb.create_project("ambig");
    let q = sb.create_project("ambig2");
    let id = sb.ok(&[
        "snapshot",
        "create",
        &format!("{p}/main"),
        "--label",
        "same",
    ]);
    sb.ok(&[
        "snapshot",
        "create",
        &format!("{q}/main"),
        "--label",
        "same",
    ]);
    let err = sb.fails(&["snapshot", "delete", "same"]);
    assert!(err.contains("several projects"), "{err}");
    assert_eq!(sb.json(&["snapshot", "list"]).as_array().unwrap().len(), 2);
    sb.ok(&["snapshot", "delete", id.trim()]);
    sb.ok(&["snapshot", "delete", "same"]);
    assert_eq!(sb.json(&["snapshot", "list"]), serde_json::json!([]));
}

#[test]
fn snapshot_cleanup_keeps_young_and_needed_snapshots() {
    let sb = Sandbox::new();
    let p = sb.create_project("cleanup");
    let main = format!("{p}/main");
    let old = sb
        .ok(&["snapshot", "create", &main, "--label", "old"])
        .trim()
        .to_string();
    let kept = sb
        .ok(&["snapshot", "create", &main, "--label", "cloned"])
        .trim()
        .to_string();
    sb.ok(&[
        "branch",
        "create",
        &format!("{p}/dev"),
        "--from-snapshot",
        "cloned",
    ]);

    // Age them: --days 0 treats everything taken before now as old.
    let dry = sb.ok(&["snapshot", "cleanup", &main, "--days", "0", "--dry-run"]);
    assert!(dry.contains(&old) && !dry.contains(&kept), "{dry}");
    assert_eq!(
        sb.json(&["snapshot", "list"]).as_array().unwrap().len(),
        2,
        "dry run deleted"
    );

    // Young snapshots stay with --days 30.
    sb.ok(&["snapshot", "cleanup", "--all", "--days", "30"]);
    assert_eq!(sb.json(&["snapshot", "list"]).as_array().unwrap().len(), 2);

    sb.ok(&["snapshot", "cleanup", "--all", "--days", "0"]);
    let left = sb.json(&["snapshot", "list"]);
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["id"], kept.as_str());
    // State and storage agree: the old snapshot is gone from both, dev's base stays.
    let snaps: Vec<String> = sb
        .volumes(&p)
        .into_iter()
        .filter(|n| n.contains('@'))
        .collect();
    assert!(snaps.iter().all(|n| !n.ends_with(&old)), "{snaps:?}");
    assert!(snaps.iter().any(|n| n.ends_with(&kept)), "{snaps:?}");
}

/// The PITR precision test: a target between two inserts sees exactly the first.
#[test]
fn pitr_recovers_exactly_to_the_moment() {
    let sb = Sandbox::new();
    let p = sb.create_project("pitr");
    let main = format!("{p}/main");
    sb.sql(&main, "CREATE TABLE events (id serial, what text)");
    sb.ok(&["snapshot", "create", &main, "--label", "base"]);
    sleep(Duration::from_millis(1100));
    sb.sql(&main, "INSERT INTO events (what) VALUES ('first')");
    sleep(Duration::from_millis(1100));
    let between = now();
    sleep(Duration::from_millis(1100));
    sb.sql(&main, "INSERT INTO events (what) VALUES ('second')");
    sleep(Duration::from_millis(1100));
    let after = now();
    sb.sql(&main, "SELECT pg_switch_wal()");

    sb.ok(&["branch", "create", &format!("{p}/mid"), "--pitr", &between]);
    assert_eq!(
        sb.sql(
            &format!("{p}/mid"),
            "SELECT string_agg(what, ',' ORDER BY id) FROM events"
        ),
        "first"
    );
    assert_eq!(
        sb.sql(&format!("{p}/mid"), "SELECT pg_is_in_recovery()"),
        "f"
    );
    // velo took its recovery settings out of postgresql.auto.conf again (the running server
    // keeps them until a restart: they are postmaster settings).
    let left = sb.sql(
        &format!("{p}/mid"),
        "SELECT count(*) FROM pg_file_settings WHERE name IN ('restore_command', 'recovery_target_time', 'recovery_target_action')",
    );
    assert_eq!(left, "0");

    sb.ok(&["branch", "create", &format!("{p}/late"), "--pitr", &after]);
    assert_eq!(
        sb.sql(
            &format!("{p}/late"),
            "SELECT string_agg(what, ',' ORDER BY id) FROM events"
        ),
        "first,second"
    );

    // A recovered branch archives into its own directory, never its source's.
    let info = sb.json(&["wal", "info", &main]);
    assert!(info[0]["segments"].as_u64().unwrap() >= 1, "{info}");
    let main_dir = info[0]["archive_dir"].as_str().unwrap().to_string();
    let histories = std::fs::read_dir(&main_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".history")
        })
        .count();
    assert_eq!(
        histories, 0,
        "a PITR branch wrote a timeline into its source's archive"
    );

    // Out of range: before the oldest snapshot, in the future.
    let err = sb.fails(&[
        "branch",
        "create",
        &format!("{p}/x"),
        "--pitr",
        "2001-01-01T00:00:00Z",
    ]);
    assert!(
        err.contains("before the oldest snapshot") && err.contains(" to "),
        "{err}"
    );
    let err = sb.fails(&[
        "branch",
        "create",
        &format!("{p}/x"),
        "--pitr",
        "2999-01-01T00:00:00Z",
    ]);
    assert!(err.contains("in the future"), "{err}");
    let err = sb.fails(&[
        "branch",
        "create",
        &format!("{p}/x"),
        "--pitr",
        "not a time",
    ]);
    assert!(err.contains("RFC 3339"), "{err}");
    assert!(sb.state()["projects"][&p]["branches"].get("x").is_none());
}

/// PITR of a branch made from a branch: from its own base snapshot, and twice from a later
/// snapshot that carries a user's setting in postgresql.auto.conf, which must survive.
#[test]
fn pitr_from_a_child_branch() {
    let sb = Sandbox::new();
    let p = sb.create_project("pitr2");
    let (main, dev) = (format!("{p}/main"), format!("{p}/dev"));
    let rows = |b: &str| sb.sql(b, "SELECT string_agg(v::text, ',' ORDER BY v) FROM t");
    sb.sql(&main, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)");
    sb.ok(&["branch", "create", &dev]);
    sleep(Duration::from_millis(1100));
    sb.sql(&dev, "INSERT INTO t VALUES (2)");
    sleep(Duration::from_millis(1100));
    let early = now();
    sleep(Duration::from_millis(1100));
    sb.sql(&dev, "ALTER SYSTEM SET work_mem = '7MB'");
    sb.sql(&dev, "SELECT pg_reload_conf()");
    sb.ok(&["snapshot", "create", &dev]);
    sleep(Duration::from_millis(1100));
    sb.sql(&dev, "INSERT INTO t VALUES (3)");
    sleep(Duration::from_millis(1100));
    let late = now();
    sleep(Duration::from_millis(1100));
    sb.sql(&dev, "INSERT INTO t VALUES (4)");

    // Before dev's first snapshot: recovered from the base dev was made from.
    let b = format!("{p}/early");
    sb.ok(&["branch", "create", &b, "--pitr", &early, "--parent", &dev]);
    assert_eq!(rows(&b), "1,2");
    assert_eq!(sb.sql(&b, "SHOW work_mem"), "4MB");

    for name in ["late1", "late2"] {
        let b = format!("{p}/{name}");
        sb.ok(&["branch", "create", &b, "--pitr", &late, "--parent", &dev]);
        assert_eq!(rows(&b), "1,2,3");
        assert_eq!(
            sb.sql(&b, "SHOW work_mem"),
            "7MB",
            "the user's auto.conf setting is kept"
        );
        assert_eq!(sb.json(&["branch", "get", &b])["parent"], "dev");
        // Recovered branches are promoted to a new timeline and writable.
        assert_eq!(
            sb.sql(&b, "SELECT timeline_id FROM pg_control_checkpoint()"),
            "2"
        );
        sb.sql(&b, "INSERT INTO t VALUES (9)");
    }
    // A recovered branch's history starts at its promotion: it has no base to replay from yet.
    let err = sb.fails(&[
        "branch",
        "create",
        &format!("{p}/again"),
        "--pitr",
        &now(),
        "--parent",
        &format!("{p}/late1"),
    ]);
    assert!(err.contains("take a snapshot first"), "{err}");
    assert_eq!(rows(&dev), "1,2,3,4", "the source is untouched");
    // Deleting dev needs --force (the recovered branches hang off it) and cleans everything.
    sb.fails(&["branch", "delete", &dev]);
    sb.ok(&["branch", "delete", &dev, "--force"]);
    assert_eq!(sb.volumes(&p), ["main.0"]);
}

#[test]
fn wal_cleanup_keeps_what_the_oldest_snapshot_needs() {
    let sb = Sandbox::new();
    let p = sb.create_project("walclean");
    let main = format!("{p}/main");
    sb.sql(&main, "CREATE TABLE t (v int)");
    // Produce a few archived segments, then a snapshot, then more.
    for i in 0..3 {
        sb.sql(
            &main,
            &format!("INSERT INTO t VALUES ({i}); SELECT pg_switch_wal()"),
        );
    }
    sleep(Duration::from_millis(500));
    sb.ok(&["snapshot", "create", &main, "--label", "keep"]);
    sleep(Duration::from_millis(1100));
    sb.sql(&main, "INSERT INTO t VALUES (100)");
    sleep(Duration::from_millis(1100));
    let target = now();
    sb.sql(&main, "SELECT pg_switch_wal()");
    sleep(Duration::from_millis(500));

    let before = sb.json(&["wal", "info", &main])[0]["segments"]
        .as_u64()
        .unwrap();
    let dry = sb.ok(&["wal", "cleanup", &main, "--days", "0", "--dry-run"]);
    assert_eq!(
        sb.json(&["wal", "info", &main])[0]["segments"]
            .as_u64()
            .unwrap(),
        before,
        "dry run deleted"
    );
    sb.ok(&["wal", "cleanup", &main, "--days", "0"]);
    let after = sb.json(&["wal", "info", &main])[0]["segments"]
        .as_u64()
        .unwrap();
    assert_eq!(
        before - after,
        dry.lines()
            .filter(|l| l.starts_with("would delete"))
            .count() as u64
    );
    assert!(after >= 1);
    // A PITR to just after the snapshot still works.
    sb.ok(&["branch", "create", &format!("{p}/back"), "--pitr", &target]);
    assert_eq!(sb.sql(&format!("{p}/back"), "SELECT max(v) FROM t"), "100");
    let info = sb.json(&["wal", "info", &main]);
    assert!(info[0]["gaps"].as_array().unwrap().is_empty(), "{info}");
    assert!(info[0]["recoverable_from"].is_string(), "{info}");
}

/// A branch's base (the snapshot it was cloned from) is where PITR of it starts; resetting its
/// parent must not take that snapshot away, on storage whose clones do not need it either.
#[test]
fn pitr_of_a_branch_still_starts_from_its_base_after_its_parent_was_reset() {
    let sb = Sandbox::new();
    let p = sb.create_project("base");
    let (mid, leaf) = (format!("{p}/mid"), format!("{p}/leaf"));
    sb.ok(&["branch", "create", &mid]);
    sb.sql(&mid, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)");
    sb.ok(&["branch", "create", &leaf, "--parent", &mid]);
    sleep(Duration::from_millis(1100));
    sb.sql(&leaf, "INSERT INTO t VALUES (2)");
    sleep(Duration::from_millis(1100));
    let target = now();
    sb.ok(&["branch", "reset", &mid]);
    sb.assert_consistent(&p);
    let back = format!("{p}/back");
    sb.ok(&[
        "branch", "create", &back, "--pitr", &target, "--parent", &leaf,
    ]);
    assert_eq!(
        sb.sql(&back, "SELECT string_agg(v::text, ',' ORDER BY v) FROM t"),
        "1,2"
    );
}
