//! Failures part-way leave nothing behind.

use crate::util::{Fault, Sandbox};

/// Asserts a project has exactly main with the volumes and snapshots `before`, and nothing of
/// `branch` anywhere.
fn assert_no_trace(sb: &Sandbox, project: &str, branch: &str, before: &[String]) {
    assert_eq!(
        sb.volumes(project),
        before,
        "volumes or snapshots left behind"
    );
    assert_eq!(sb.servers(project), [format!("velo-{project}.main")]);
    assert!(
        sb.state()["projects"][project]["branches"]
            .get(branch)
            .is_none()
    );
}

#[test]
fn failures_at_each_step_of_branch_create_roll_back() {
    let mut sb = Sandbox::new();
    let p = sb.create_project("rollback");
    let dev = format!("{p}/dev");

    // The snapshot fails.
    let said = sb.inject(&p, Fault::Snapshot);
    let err = sb.fails(&["branch", "create", &dev]);
    assert!(err.contains(said), "{err}");
    sb.heal();
    assert_no_trace(&sb, &p, "dev", &["main.0".to_string()]);

    // A snapshot of main that the failures below must leave alone.
    let kept = sb.ok(&["snapshot", "create", &format!("{p}/main")]);
    let before = vec!["main.0".to_string(), format!("main.0@{}", kept.trim())];

    // The clone fails: the snapshot taken before it is destroyed again.
    let said = sb.inject(&p, Fault::Clone);
    let err = sb.fails(&["branch", "create", &dev]);
    assert!(
        err.contains(said) && err.contains("nothing was left behind"),
        "{err}"
    );
    assert!(err.contains("Clone"), "the clone failed: {err}");
    sb.heal();
    assert_no_trace(&sb, &p, "dev", &before);

    // PostgreSQL never becomes ready (the clone carries a setting it cannot start with):
    // server, clone and snapshot go.
    let main = format!("{p}/main");
    sb.sql(&main, "ALTER SYSTEM SET shared_buffers = '4TB'");
    let err = sb.fails(&["branch", "create", &dev]);
    assert!(err.contains("did not become ready"), "{err}");
    assert_no_trace(&sb, &p, "dev", &before);

    // And the same request succeeds once nothing is injected.
    sb.sql(&main, "ALTER SYSTEM RESET shared_buffers");
    sb.ok(&["branch", "create", &dev]);
}

#[test]
fn a_failed_reset_leaves_the_branch_as_it_was() {
    let mut sb = Sandbox::new();
    let p = sb.create_project("resetfail");
    let (main, dev) = (format!("{p}/main"), format!("{p}/dev"));
    sb.sql(
        &main,
        "CREATE TABLE users (id serial, name text); INSERT INTO users (name) VALUES ('m')",
    );
    sb.ok(&["branch", "create", &dev]);
    sb.sql(&dev, "INSERT INTO users (name) VALUES ('mine')");
    let before_tree = sb.volumes(&p);
    let port = sb.port(&dev);

    sb.inject(&p, Fault::Clone);
    let err = sb.fails(&["branch", "reset", &dev]);
    assert!(err.contains("the branch is as it was"), "{err}");
    sb.heal();
    assert_eq!(sb.users(&dev), "m,mine");
    assert_eq!(sb.volumes(&p), before_tree);

    // Failing after the container was swapped: the old container comes back on the old data.
    // The first readiness probe comes before any deadline, so on a loaded host, where
    // `docker start` can return after the server is up, a 1 ms wait may still succeed (and
    // reset the branch): then the next try is the one that counts.
    let failed = (0..5).find_map(|_| {
        let before = (sb.users(&dev), sb.volumes(&p));
        sb.set_env("VELO_READY_TIMEOUT", "1ms");
        let out = sb.run(&["branch", "reset", &dev]);
        sb.clear_env();
        (!out.status.success()).then_some(before)
    });
    let (users, tree) = failed.expect("a reset given 1 ms to be ready fails within 5 tries");
    sb.ok(&["branch", "start", &dev]);
    assert_eq!(sb.users(&dev), users);
    assert_eq!(sb.port(&dev), port);
    assert_eq!(sb.volumes(&p), tree);
    assert!(sb.state()["projects"][&p]["branches"]["dev"]["busy"].is_null());
}

#[test]
fn a_delete_whose_data_cannot_be_destroyed_is_finished_later() {
    let mut sb = Sandbox::new();
    let p = sb.create_project("delfail");
    let dev = format!("{p}/dev");
    sb.ok(&["branch", "create", &dev]);
    let said = sb.inject(
        &p,
        Fault::Destroy {
            branch: "dev",
            generation: 0,
        },
    );
    // The delete answers once the server is gone and the branch forgotten; the destroy that
    // fails is the background velo's, and it says so in its log.
    sb.ok(&["branch", "delete", &dev]);
    assert!(sb.state()["projects"][&p]["branches"].get("dev").is_none());
    let log = std::fs::read_to_string(sb.home().join("background.log")).unwrap();
    assert!(log.contains(said), "{log}");
    // Every command tries again (and here fails again), and `velo status` shows what is left.
    let status = sb.json(&["status"]);
    let pending = status["pending"].as_array().cloned().unwrap_or_default();
    assert_eq!(pending.len(), 1, "{status}");
    assert_eq!(pending[0]["branches"][0], "dev", "{status}");
    sb.heal();
    sb.ok(&["branch", "list", &p]);
    assert_no_trace(&sb, &p, "dev", &["main.0".to_string()]);
}
