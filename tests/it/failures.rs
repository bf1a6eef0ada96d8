//! Failures part-way leave nothing behind; bad input changes nothing.

use crate::util::Sandbox;

/// Asserts a project has exactly main and nothing of `branch` anywhere.
fn assert_no_trace(sb: &Sandbox, project: &str, branch: &str) {
    let tree = sb.zfs_tree(project);
    assert_eq!(
        tree,
        vec![sb.dataset(project, "main", 0)],
        "datasets or snapshots left behind"
    );
    assert_eq!(sb.containers(project), vec![format!("velo-{project}.main")]);
    assert!(
        sb.state()["projects"][project]["branches"]
            .get(branch)
            .is_none()
    );
}

#[test]
fn a_missing_image_leaves_nothing() {
    let sb = Sandbox::new();
    let p = sb.project("noimg");
    let err = sb.fails(&[
        "project",
        "create",
        &p,
        "--pool",
        &sb.rig.pool,
        "--image",
        "velo-test/no-such-image:1",
    ]);
    // Not on the host, and not to be had from its registry (Docker Hub, which the rig does
    // not reach, or which does not have it).
    assert!(
        err.contains("image `velo-test/no-such-image:1` is not on this host")
            && err.contains("--image")
            && err.contains("docker load"),
        "{err}"
    );
    assert!(sb.zfs_tree(&p).is_empty());
    assert!(sb.containers(&p).is_empty());
    assert!(sb.state()["projects"].get(&p).is_none());
}

#[test]
fn failures_at_each_step_of_branch_create_roll_back() {
    let mut sb = Sandbox::new();
    let p = sb.create_project("rollback");
    let dev = format!("{p}/dev");

    // The clone fails: the snapshot taken before it is destroyed again.
    let zfs = sb.failing_zfs("clone");
    sb.set_env("VELO_ZFS", zfs.to_str().unwrap());
    let err = sb.fails(&["branch", "create", &dev]);
    assert!(
        err.contains("injected failure") && err.contains("nothing was left behind"),
        "{err}"
    );
    assert_no_trace(&sb, &p, "dev");

    // The snapshot fails.
    let zfs = sb.failing_zfs("snapshot");
    sb.clear_env();
    sb.set_env("VELO_ZFS", zfs.to_str().unwrap());
    sb.fails(&["branch", "create", &dev]);
    assert_no_trace(&sb, &p, "dev");

    // PostgreSQL never becomes ready (a deadline too short): container, clone and snapshot go.
    sb.clear_env();
    sb.set_env("VELO_READY_TIMEOUT", "1ms");
    let err = sb.fails(&["branch", "create", &dev]);
    assert!(err.contains("did not become ready"), "{err}");
    assert_no_trace(&sb, &p, "dev");

    // And the same request succeeds once nothing is injected.
    sb.clear_env();
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
    let before_tree = sb.zfs_tree(&p);
    let port = sb.port(&dev);

    let zfs = sb.failing_zfs("clone");
    sb.set_env("VELO_ZFS", zfs.to_str().unwrap());
    let err = sb.fails(&["branch", "reset", &dev]);
    assert!(err.contains("the branch is as it was"), "{err}");
    sb.clear_env();
    assert_eq!(sb.users(&dev), "m,mine");
    assert_eq!(sb.zfs_tree(&p), before_tree);

    // Failing after the container was swapped: the old container comes back on the old data.
    sb.set_env("VELO_READY_TIMEOUT", "1ms");
    sb.fails(&["branch", "reset", &dev]);
    sb.clear_env();
    sb.ok(&["branch", "start", &dev]);
    assert_eq!(sb.users(&dev), "m,mine");
    assert_eq!(sb.port(&dev), port);
    assert_eq!(sb.zfs_tree(&p), before_tree);
    assert!(sb.state()["projects"][&p]["branches"]["dev"]["busy"].is_null());
}

#[test]
fn a_delete_whose_data_cannot_be_destroyed_is_finished_later() {
    let mut sb = Sandbox::new();
    let p = sb.create_project("delfail");
    let dev = format!("{p}/dev");
    sb.ok(&["branch", "create", &dev]);
    let zfs = sb.failing_zfs("destroy");
    sb.set_env("VELO_ZFS", zfs.to_str().unwrap());
    // The delete answers once the server is gone and the branch forgotten; the destroy that
    // fails is the background velo's, and it says so in its log.
    sb.ok(&["branch", "delete", &dev]);
    assert!(sb.state()["projects"][&p]["branches"].get("dev").is_none());
    let log = std::fs::read_to_string(sb.home().join("background.log")).unwrap();
    assert!(log.contains("injected failure"), "{log}");
    // Every command tries again (and here fails again), and `velo status` shows what is left.
    let status = sb.json(&["status"]);
    let pending = status["pending"].as_array().cloned().unwrap_or_default();
    assert_eq!(pending.len(), 1, "{status}");
    assert_eq!(pending[0]["branches"][0], "dev", "{status}");
    sb.clear_env();
    sb.ok(&["branch", "list", &p]);
    assert_no_trace(&sb, &p, "dev");
}

#[test]
fn bad_names_are_refused_and_change_nothing() {
    let sb = Sandbox::new();
    let long = "a".repeat(41);
    let hostile = [
        "a/b",
        "..",
        "a b",
        "a;rm -rf",
        "$(id)",
        "a`id`",
        "Demo",
        "dévelo",
        "-rf",
        "--help-me",
        "a.b",
        "a_b",
        "1st",
        "end-",
        &long,
        "all",
        "head",
        "",
    ];
    for name in hostile {
        let out = sb.run(&[
            "project",
            "create",
            name,
            "--pool",
            &sb.rig.pool,
            "--image",
            &sb.rig.image,
        ]);
        assert!(!out.status.success(), "accepted project name {name:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error"), "{name:?}: {err}");
    }
    for name in ["ok/..", "ok/a b", "ok/-x", "ok/A", "ok", "ok/a/b", "/dev"] {
        let err = sb.fails(&["branch", "create", name]);
        assert!(err.contains("error"), "{name:?}: {err}");
    }
    assert!(sb.state().is_null(), "bad input wrote state");

    let p = sb.create_project("dup");
    let err = sb.fails(&[
        "project",
        "create",
        &p,
        "--pool",
        &sb.rig.pool,
        "--image",
        &sb.rig.image,
    ]);
    assert!(err.contains("already exists"), "{err}");
    let err = sb.fails(&["branch", "create", &format!("{p}/main")]);
    assert!(err.contains("already exists"), "{err}");
    let err = sb.fails(&[
        "branch",
        "create",
        &format!("{p}/x"),
        "--parent",
        &format!("{p}/nope"),
    ]);
    assert!(err.contains("does not exist"), "{err}");
    let err = sb.fails(&["branch", "create", "nosuchproject/x"]);
    assert!(
        err.contains("project `nosuchproject` does not exist"),
        "{err}"
    );
    let err = sb.fails(&["branch", "reset", &format!("{p}/main")]);
    assert!(err.contains("no parent"), "{err}");
    let err = sb.fails(&["project", "create", "x", "--pool", "no-such-pool"]);
    assert!(err.contains("not imported"), "{err}");
    let err = sb.fails(&["project", "create", "x", "--pg-version", "13"]);
    assert!(err.contains("PostgreSQL 14 or newer"), "{err}");
    assert_eq!(
        sb.run(&["project", "create", "x", "--pg-version", "13"])
            .status
            .code(),
        Some(2),
        "a usage error"
    );
    let err = sb.fails(&["project", "create", "x", "--pg-version", "fifteen"]);
    assert!(err.contains("major version number"), "{err}");
    assert_eq!(sb.state()["projects"].as_object().unwrap().len(), 1);
}

#[test]
fn every_command_has_help_and_errors_are_chains() {
    let sb = Sandbox::new();
    let commands: &[&[&str]] = &[
        &[],
        &["project"],
        &["project", "create"],
        &["project", "list"],
        &["project", "get"],
        &["project", "delete"],
        &["branch"],
        &["branch", "create"],
        &["branch", "list"],
        &["branch", "get"],
        &["branch", "delete"],
        &["branch", "reset"],
        &["branch", "start"],
        &["branch", "stop"],
        &["branch", "restart"],
        &["branch", "password"],
        &["status"],
        &["repair"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = sb.ok(&args);
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
    let err = sb.fails(&["branch", "get", "nope/dev"]);
    assert!(err.starts_with("error: "), "{err}");
    let out = sb.run(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}
