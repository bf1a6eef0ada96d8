//! `velo repair` on every backend: drift made by hand (servers removed or stopped, volumes
//! destroyed, a ZFS dataset unmounted, a port taken, orphans), found and repaired. Daemons
//! restarting: `zfs_docker::daemons`; a native server's processes dying: `native::processes`.

use std::collections::BTreeSet;
use std::net::TcpListener;

use crate::util::world::{found, repair, zfs_retrying};
use crate::util::{Backend, Sandbox};

#[test]
fn drift_made_by_hand_is_found_and_repaired() {
    let sb = Sandbox::new();
    let other = Sandbox::new();
    let theirs = other.create_project("theirs");
    let p = sb.create_project("drift");
    let main = format!("{p}/main");
    sb.sql(
        &main,
        "CREATE TABLE users (id serial, name text); INSERT INTO users (name) VALUES ('Alice')",
    );
    let br = |b: &str| format!("{p}/{b}");
    // Only ZFS mounts volumes: elsewhere a volume is always reachable.
    let zfs = sb.backend() == Backend::ZfsDocker;
    let mut made = vec!["gone", "stopped", "port", "destroyed"];
    if zfs {
        made.push("unmounted");
    }
    for b in &made {
        sb.ok(&["branch", "create", &br(b)]);
    }
    assert_eq!(sb.ok(&["repair"]), "", "a fresh project has no drift");
    // A branch the state forgets (a state file restored from a backup): its server, volume
    // and base snapshot become orphans.
    let backup = std::fs::read(sb.home().join("state.json")).unwrap();
    sb.ok(&["branch", "create", &br("extra")]);
    let extra_origin = sb.state()["projects"][&p]["branches"]["extra"]["origin"]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(sb.home().join("state.json"), backup).unwrap();

    sb.remove_server(&p, "gone");
    sb.stop_server(&p, "stopped");
    if zfs {
        sb.stop_server(&p, "unmounted");
        zfs_retrying(&["unmount", &sb.dataset(&p, "unmounted", 0)]);
    }
    sb.ok(&["branch", "stop", &br("port")]);
    let old_port = sb.port(&br("port"));
    let _listener = TcpListener::bind(("127.0.0.1", old_port as u16)).unwrap();
    sb.remove_server(&p, "destroyed");
    sb.destroy_volume(&p, "destroyed", 0);

    let (ok, findings) = repair(&sb, &[]);
    assert!(!ok, "drift must exit non-zero");
    let extra = sb.storage_name(&p, "extra.0");
    let extra_snap = sb.storage_name(&p, &format!("main.0@{extra_origin}"));
    let mut want: BTreeSet<_> = [
        found(&br("gone"), "container-gone", "found"),
        found(&br("stopped"), "stopped", "found"),
        found(&br("port"), "port-taken", "found"),
        found(&br("destroyed"), "data-gone", "found"),
        found(&format!("velo-{p}.extra"), "orphan-container", "found"),
        found(&extra, "orphan-dataset", "found"),
        found(&extra_snap, "orphan-snapshot", "found"),
    ]
    .into();
    if zfs {
        want.insert(found(&br("unmounted"), "unmounted", "found"));
        want.insert(found(&br("unmounted"), "stopped", "found"));
    }
    assert_eq!(findings, want);
    assert!(
        !format!("{findings:?}").contains(&theirs),
        "another home's project is not this home's drift"
    );

    // --fix repairs all but the orphans that hold data.
    let (ok, findings) = repair(&sb, &["--fix"]);
    assert!(!ok);
    let left: BTreeSet<_> = findings
        .iter()
        .filter(|(_, _, status)| status != "fixed")
        .cloned()
        .collect();
    assert_eq!(
        left,
        [
            found(&extra, "orphan-dataset", "needs --force"),
            found(&extra_snap, "orphan-snapshot", "needs --force"),
        ]
        .into()
    );
    assert!(sb.volumes(&p).contains(&"extra.0".to_string()));
    assert!(!sb.servers(&p).contains(&format!("velo-{p}.extra")));

    let (ok, _) = repair(&sb, &["--fix", "--force"]);
    assert!(ok);
    assert_eq!(repair(&sb, &[]), (true, BTreeSet::new()));

    let tree = sb.volumes(&p);
    assert!(
        !tree.contains(&"extra.0".to_string()) && !tree.contains(&format!("main.0@{extra_origin}")),
        "{tree:?}"
    );
    assert!(
        sb.state()["projects"][&p]["branches"]
            .get("destroyed")
            .is_none()
    );
    let mut running = vec!["main", "gone", "stopped"];
    if zfs {
        running.push("unmounted");
    }
    for b in running {
        assert_eq!(sb.users(&br(b)), "Alice", "{b}");
    }
    let moved = sb.port(&br("port"));
    assert_ne!(moved, old_port);
    let b = &sb.state()["projects"][&p]["branches"]["port"];
    assert_eq!(b["desired"], "stopped", "a stopped branch stays stopped");
    sb.ok(&["branch", "start", &br("port")]);
    assert_eq!(sb.users(&br("port")), "Alice");
    assert!(other.json(&["branch", "list"]).as_array().unwrap().len() == 1);
    sb.assert_consistent(&p);
}
