//! Crash safety: velo killed (SIGKILL) or interrupted (SIGINT/SIGTERM) at each step of a
//! command; the next velo command rolls it back (or, for deletes, forward), and afterwards the
//! state agrees with the storage and the runtime.

use crate::util::Sandbox;

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
    let sb = Sandbox::new();
    let p = sb.create_project("crd");
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
