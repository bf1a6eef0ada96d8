//! What only the Docker runtime (on ZFS) has: images, the Docker daemon and `zfs` as
//! programs velo needs, and the confinement of its containers. The native runtime's
//! counterparts: `native::processes`.

use std::process::Command;

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
    assert!(
        err.contains("docker pull velo-test/no-such-image:1"),
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
