//! The command line itself, run once (as root, on the zfs-docker suite): names velo refuses,
//! help for every command, errors as chains, and a home that is not safe to use.

use std::process::Command;

use crate::util::{Backend, Sandbox, velo_exe};

#[test]
fn bad_names_are_refused_and_change_nothing() {
    let sb = Sandbox::only(Backend::ZfsDocker);
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
    let sb = Sandbox::only(Backend::ZfsDocker);
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

#[test]
fn root_refuses_a_home_another_user_could_replace() {
    let sb = Sandbox::only(Backend::ZfsDocker);
    let theirs = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(theirs.path(), Some(65534), Some(65534)).unwrap();
    let run = |home: &std::path::Path| {
        Command::new(velo_exe())
            .args(["project", "list"])
            .env("VELO_HOME", home)
            .env("VELO_CONFIG", sb.home().join("config.json"))
            .output()
            .unwrap()
    };
    let inside = theirs.path().join("velo");
    let out = run(&inside);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("not safe to use"),
        "{err}"
    );
    assert!(err.contains("uid 65534"), "{err}");
    assert!(!inside.exists(), "nothing was made there");
    // A home that is a link (to anywhere) is refused too.
    let link = sb.home().join("link");
    std::os::unix::fs::symlink(sb.home(), &link).unwrap();
    let out = run(&link);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("symbolic link"),
        "{err}"
    );
}
