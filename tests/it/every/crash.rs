//! Crash safety: velo killed (SIGKILL) or interrupted (SIGINT/SIGTERM) at each step of a
//! command; the next velo command rolls it back (or, for deletes, forward), and afterwards the
//! state agrees with the storage and the runtime.

use crate::util::{self, Sandbox};

/// Runs any velo command, which first recovers what a dead command left; returns its stderr.
fn recover(sb: &Sandbox, project: &str) -> String {
    let out = sb.run(&["branch", "list", project]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn kill_9_at_each_step_of_branch_create_is_rolled_back() {
    let sb = Sandbox::new();
    let p = sb.create_project("crc");
    for step in [
        "snapshot",
        "clone",
        "archive",
        "container",
        "start",
        "ready",
        "commit",
    ] {
        let branch = format!("{p}/dev");
        sb.paused(step, &["branch", "create", &branch]).kill9();
        let said = recover(&sb, &p);
        assert!(
            said.contains("`velo branch create` on") && said.contains("rolling it back"),
            "after a kill at {step}: {said}"
        );
        assert!(
            sb.state()["projects"][&p]["branches"].get("dev").is_none(),
            "after a kill at {step}"
        );
        sb.assert_consistent(&p);
    }
    // Nothing is left that would stop the same create now.
    sb.ok(&["branch", "create", &format!("{p}/dev")]);
    sb.assert_consistent(&p);
}

#[test]
fn kill_9_at_each_step_of_reset_and_restore_leaves_the_branch_as_it_was() {
    let sb = Sandbox::new();
    let p = sb.create_project("crr");
    let (main, dev) = (format!("{p}/main"), format!("{p}/dev"));
    sb.sql(
        &main,
        "CREATE TABLE users (id int, name text); INSERT INTO users VALUES (1, 'ann')",
    );
    sb.ok(&["branch", "create", &dev]);
    sb.sql(&dev, "INSERT INTO users VALUES (2, 'dev-only')");
    let snap = sb.ok(&["snapshot", "create", &dev]).trim().to_string();
    sb.sql(&dev, "INSERT INTO users VALUES (3, 'after-snap')");
    let port = sb.port(&dev);
    let cases: [(&[&str], &str); 9] = [
        (&["branch", "reset", &dev], "snapshot"),
        (&["branch", "reset", &dev], "clone"),
        (&["branch", "reset", &dev], "archive"),
        (&["branch", "reset", &dev], "swap"),
        (&["branch", "reset", &dev], "container"),
        (&["branch", "reset", &dev], "start"),
        (&["branch", "reset", &dev], "commit"),
        (&["branch", "restore", &dev, &snap], "swap"),
        (&["branch", "restore", &dev, &snap], "start"),
    ];
    for (args, step) in cases {
        sb.paused(step, args).kill9();
        let said = recover(&sb, &p);
        assert!(
            said.contains("rolling it back"),
            "{args:?} at {step}: {said}"
        );
        // Shown only if a check below fails.
        eprintln!("{args:?} killed at {step}; the next command said: {said}");
        sb.assert_consistent(&p);
        // Running again, on the same port, with the same data.
        sb.ok(&["branch", "start", &dev]);
        assert_eq!(sb.port(&dev), port);
        assert_eq!(
            sb.users(&dev),
            "ann,dev-only,after-snap",
            "{args:?} at {step}"
        );
    }
    sb.ok(&["branch", "restore", &dev, &snap]);
    assert_eq!(sb.users(&dev), "ann,dev-only");
    sb.ok(&["branch", "reset", &dev]);
    assert_eq!(sb.users(&dev), "ann");
    sb.assert_consistent(&p);
}

#[test]
fn kill_9_during_a_delete_is_finished_by_the_next_command() {
    let mut sb = Sandbox::new();
    let p = sb.create_project("crd");
    // Every step in the command itself (the data's part included), as with the background off.
    sb.set_env("VELO_BACKGROUND", "0");
    for step in ["delete-container", "delete-data", "delete-forget"] {
        let dev = format!("{p}/dev");
        sb.ok(&["branch", "create", &dev]);
        sb.ok(&["branch", "create", &format!("{p}/sub"), "--parent", &dev]);
        sb.paused(step, &["branch", "delete", &dev, "--force"])
            .kill9();
        let said = recover(&sb, &p);
        assert!(said.contains("finishing it"), "at {step}: {said}");
        let branches = sb.state()["projects"][&p]["branches"].clone();
        assert!(
            branches.get("dev").is_none() && branches.get("sub").is_none(),
            "at {step}"
        );
        sb.assert_consistent(&p);
    }
}

#[test]
fn a_delete_answers_first_and_a_killed_background_is_finished_by_the_next_command() {
    let mut sb = Sandbox::new();
    let p = sb.create_project("bgd");
    let dev = format!("{p}/dev");
    sb.ok(&["branch", "create", &dev]);
    sb.sql(&dev, "CREATE TABLE gone AS SELECT 1 AS x");
    // The background velo inherits the hook and stops before destroying anything.
    sb.set_env("VELO_TEST_PAUSE_AT", "delete-data");
    let out = sb.run_unsettled(&["branch", "delete", &dev]);
    sb.clear_env();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    let log = sb.home().join("background.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("paused at delete-data")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no background velo paused"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The branch is gone at once; its data is still there, and `velo status` says so.
    assert!(sb.state()["projects"][&p]["branches"].get("dev").is_none());
    let data = "dev.0".to_string();
    assert!(sb.volumes(&p).contains(&data), "{:?}", sb.volumes(&p));
    // (Unsettled: `sb.json` would wait for the paused background velo.)
    let pending = sb.pending_now();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["branches"][0], "dev", "{pending:?}");
    let pid = pending[0]["pid"].as_u64().unwrap();
    assert_eq!(
        util::background_of(sb.home()),
        Some(pid as u32),
        "{pending:?}"
    );
    // A new branch of the same name waits for the old one's data to go ...
    let creating = sb.spawn(&["branch", "create", &dev]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(sb.volumes(&p).contains(&data), "the create waited");
    // ... and when the background velo dies, finishes the delete itself and goes on.
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = creating.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("waiting for velo to finish deleting"),
        "{said}"
    );
    assert!(said.contains("finishing it"), "{said}");
    assert_eq!(
        sb.sql(
            &dev,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'gone'"
        ),
        "0"
    );
    sb.assert_consistent(&p);
}

#[test]
fn sigint_and_sigterm_roll_back_before_exiting() {
    let sb = Sandbox::new();
    let p = sb.create_project("sig");
    let dev = format!("{p}/dev");
    let (code, said) = sb
        .paused("ready", &["branch", "create", &dev])
        .signal("INT");
    assert_eq!(code, Some(130), "{said}");
    assert!(said.contains("interrupted"), "{said}");
    assert!(sb.state()["projects"][&p]["branches"].get("dev").is_none());
    sb.assert_consistent(&p);

    sb.ok(&["branch", "create", &dev]);
    let port = sb.port(&dev);
    let (code, said) = sb
        .paused("start", &["branch", "reset", &dev])
        .signal("TERM");
    assert_eq!(code, Some(130), "{said}");
    assert!(said.contains("the branch is as it was"), "{said}");
    sb.assert_consistent(&p);
    assert_eq!(sb.port(&dev), port);
    sb.ok(&["branch", "start", &dev]);
    assert_eq!(sb.sql(&dev, "SELECT 1"), "1");
}

#[test]
fn a_snapshot_waits_for_a_reset_in_progress() {
    let sb = Sandbox::new();
    let p = sb.create_project("snw");
    let dev = format!("{p}/dev");
    sb.ok(&["branch", "create", &dev]);
    let reset = sb.paused("start", &["branch", "reset", &dev]);
    // With no time to wait it fails at once, naming the command that holds the branch.
    let err = sb.fails(&["snapshot", "create", &dev, "--wait", "0s"]);
    assert!(
        err.contains("busy") && err.contains("branch reset"),
        "{err}"
    );
    // With time, it waits for the reset (here: until the reset is interrupted and undone).
    let waiting = sb.spawn(&["snapshot", "create", &dev, "--wait", "5m"]);
    let (code, _) = reset.signal("INT");
    assert_eq!(code, Some(130));
    let out = waiting.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("waiting up to"), "{said}");
    sb.assert_consistent(&p);
}
