//! What only the Docker runtime (on ZFS) has: images and their first pull, the Docker
//! daemon and `zfs` as programs velo needs, and the confinement of its containers. The
//! native runtime's counterparts: `native::processes`.

use std::process::{Command, Output};

use serde_json::Value;

use crate::util::{Backend, Sandbox};

#[test]
fn a_missing_image_leaves_nothing() {
    let sb = Sandbox::only(Backend::ZfsDocker);
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
    assert!(sb.volumes(&p).is_empty());
    assert!(sb.servers(&p).is_empty());
    assert!(sb.state()["projects"].get(&p).is_none());
}

#[test]
fn missing_tools_and_daemons_are_clear_errors_that_leave_nothing() {
    let mut sb = Sandbox::only(Backend::ZfsDocker);
    let name = sb.project("res");
    let create = [
        "project",
        "create",
        &name,
        "--pool",
        &sb.rig.pool.clone(),
        "--image",
        &sb.rig.image.clone(),
    ];
    sb.set_env("VELO_ZFS", "/nonexistent/zfs");
    sb.set_env("VELO_ZPOOL", "/nonexistent/zpool");
    let err = sb.fails(&create);
    assert!(
        err.contains("is not installed") && err.contains("install OpenZFS"),
        "{err}"
    );
    sb.clear_env();
    sb.set_env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let err = sb.fails(&create);
    assert!(
        err.contains("cannot reach the Docker daemon") && err.contains("start it"),
        "{err}"
    );
    sb.clear_env();
    assert!(sb.state()["projects"].get(&name).is_none());
    assert!(sb.volumes(&name).is_empty());
    assert!(sb.servers(&name).is_empty());
}

#[test]
fn servers_run_unprivileged_without_the_password_in_their_environment() {
    let sb = Sandbox::only(Backend::ZfsDocker);
    let p = sb.create_project("priv");
    sb.ok(&["branch", "create", &format!("{p}/dev")]);
    let password = sb.json(&["branch", "password", &format!("{p}/main")])["password"]
        .as_str()
        .unwrap()
        .to_string();
    for name in sb.servers(&p) {
        let out = Command::new("docker")
            .args(["inspect", &name])
            .output()
            .unwrap();
        let inspect: Value = serde_json::from_slice(&out.stdout).unwrap();
        let c = &inspect[0];
        let text = c.to_string();
        assert!(!text.contains(&password), "{name} holds the password");
        assert!(!text.contains("POSTGRES_PASSWORD"), "{name}");
        assert_eq!(
            c["HostConfig"]["CapDrop"],
            serde_json::json!(["ALL"]),
            "{name}"
        );
        assert_eq!(c["HostConfig"]["CapAdd"], serde_json::json!([]), "{name}");
        assert_eq!(
            c["HostConfig"]["SecurityOpt"],
            serde_json::json!(["no-new-privileges"]),
            "{name}"
        );
        assert_eq!(c["HostConfig"]["PidsLimit"], 1024, "{name}");
        let user = c["Config"]["User"].as_str().unwrap();
        assert!(
            !user.is_empty() && !user.starts_with("0:"),
            "{name} runs as {user}"
        );
        assert_eq!(c["Config"]["Entrypoint"], serde_json::json!(["postgres"]));
        assert!(
            c["Mounts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["Type"] == "bind"),
            "{name} has a Docker volume: {}",
            c["Mounts"]
        );
        let pid = c["State"]["Pid"].as_u64().unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(!String::from_utf8_lossy(&environ).contains(&password));
    }
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap()
}

#[test]
fn the_first_run_pulls_its_image() {
    let registry = std::env::var("VELO_TEST_REGISTRY")
        .expect("VELO_TEST_REGISTRY is not set: run the tests through scripts/test.sh");
    let sb = Sandbox::only(Backend::ZfsDocker);
    let image = format!("{registry}/velo-test/postgres:17");
    // Only the tag goes: the layers stay, shared with the rig's own images.
    let _ = docker(&["rmi", &image]);
    assert!(!docker(&["image", "inspect", &image]).status.success());

    let p = sb.project("pull");
    let pool = sb.rig.pool.as_str();
    let out = sb.run(&["project", "create", &p, "--pool", pool, "--image", &image]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("- Pull {image}")), "{err}");
    assert!(docker(&["image", "inspect", &image]).status.success());
    assert_eq!(sb.json(&["project", "get", &p])["image"], image.as_str());

    // A registry that does not answer: a clear error, and nothing left.
    let gone = sb.project("nopull");
    let missing = "127.0.0.1:5999/velo-test/postgres:17";
    let out = sb.run(&[
        "project", "create", &gone, "--pool", pool, "--image", missing,
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    for says in ["does not answer", "--image", "docker load"] {
        assert!(err.contains(says), "{says}: {err}");
    }
    assert!(sb.state()["projects"].get(&gone).is_none());
    assert!(sb.volumes(&gone).is_empty());
    assert!(sb.servers(&gone).is_empty());
}
