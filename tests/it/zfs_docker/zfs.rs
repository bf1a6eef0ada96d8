//! What only ZFS storage has: copy-on-write clones whose space velo reports as ZFS counts
//! it, and the properties of velo's base dataset.

use crate::util::{Backend, Sandbox, sh};

#[test]
fn a_fresh_branch_is_copy_on_write() {
    let sb = Sandbox::only(Backend::ZfsDocker);
    let p = sb.create_project("cow");
    sb.sql(
        &format!("{p}/main"),
        "CREATE TABLE filler AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g",
    );
    sb.ok(&["branch", "create", &format!("{p}/dev")]);
    // Stopped, the branch writes nothing, so ZFS and velo read the same figure.
    sb.ok(&["branch", "stop", &format!("{p}/dev")]);
    let main_used = zfs_used(&sb.dataset(&p, "main", 0));
    let dev_used = zfs_used(&sb.dataset(&p, "dev", 0));
    assert!(
        dev_used * 20 < main_used,
        "branch uses {dev_used} bytes, parent {main_used}: not a small fraction"
    );
    assert_eq!(
        sb.json(&["branch", "get", &format!("{p}/dev")])["used_bytes"],
        dev_used
    );
}

/// Volumes carry setuid=off, devices=off and exec=off from velo's base dataset, so a program
/// a database superuser leaves in a volume cannot gain privileges through it.
#[test]
fn the_base_dataset_allows_no_setuid_devices_or_programs() {
    let sb = Sandbox::only(Backend::ZfsDocker);
    let p = sb.create_project("props");
    let props = sh(
        "zfs",
        &[
            "get",
            "-H",
            "-o",
            "value",
            "setuid,devices,exec",
            &sb.base(),
        ],
    );
    assert_eq!(props, "off\noff\noff");
    let inherited = sh(
        "zfs",
        &[
            "get",
            "-H",
            "-o",
            "source",
            "setuid",
            &sb.dataset(&p, "main", 0),
        ],
    );
    assert_eq!(inherited, format!("inherited from {}", sb.base()));
}

/// `used` of a dataset in bytes.
fn zfs_used(dataset: &str) -> u64 {
    sh("zfs", &["get", "-H", "-p", "-o", "value", "used", dataset])
        .parse()
        .unwrap()
}
