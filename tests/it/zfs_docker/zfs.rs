//! What only ZFS storage has: copy-on-write clones whose space velo reports as ZFS counts
//! it, the properties of velo's base dataset, names another velo home holds on the same pool,
//! and `zfs` found outside cron's PATH.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{Backend, Sandbox, sh, velo_exe};

#[test]
fn a_fresh_branch_is_copy_on_write() {
    let sb = Sandbox::only(Backend::ZfsDocker);
    let p = sb.create_project("cow");
    sb.sql(
        &format!("{p}/main"),
        "CREATE TABLE filler AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g",
    );
    sb.ok(&["branch", "create", &format!("{p}/dev")]);
    sb.ok(&["branch", "stop", &format!("{p}/dev")]);
    let main_used = zfs_used(&sb.dataset(&p, "main", 0));
    let dev = sb.dataset(&p, "dev", 0);
    let dev_used = zfs_used(&dev);
    assert!(
        dev_used * 20 < main_used,
        "branch uses {dev_used} bytes, parent {main_used}: not a small fraction"
    );
    // Stopped, the branch writes nothing more, but ZFS counts its last writes when their
    // transaction group commits, seconds later: velo reports ZFS's figure once it holds still.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before = zfs_used(&dev);
        let reported = sb.json(&["branch", "get", &format!("{p}/dev")])["used_bytes"].as_u64();
        let after = zfs_used(&dev);
        if before == after && reported == Some(after) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "velo reports {reported:?} bytes for the branch, ZFS {before} then {after}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
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

#[test]
fn a_name_another_velo_home_holds_is_never_destroyed() {
    let (mine, theirs) = (
        Sandbox::only(Backend::ZfsDocker),
        Sandbox::only(Backend::ZfsDocker),
    );
    let p = theirs.create_project("held");
    theirs.sql(
        &format!("{p}/main"),
        "CREATE TABLE precious AS SELECT 1 AS x",
    );
    // A second home of the same user asks for the same project name on the same pool: the
    // create fails on the taken name, saying whose it is, and its undo leaves theirs alone.
    let err = mine.fails(&[
        "project",
        "create",
        &p,
        "--pool",
        &mine.rig.pool,
        "--image",
        &mine.rig.image,
    ]);
    assert!(err.contains("belongs to the velo home"), "{err}");
    mine.ok(&["repair", "--fix", "--force"]);
    assert_eq!(
        theirs.sql(&format!("{p}/main"), "SELECT x FROM precious"),
        "1"
    );
    theirs.assert_consistent(&p);
}

#[test]
fn cron_finds_zfs_outside_its_path() {
    let sb = Sandbox::only(Backend::ZfsDocker);
    let p = sb.create_project("cron");
    let main = format!("{p}/main");
    // The README's crontab lines, with cron's environment.
    let cron_lines: &[&[&str]] = &[
        &["snapshot", "create", &main],
        &["snapshot", "cleanup", "--all", "--days", "7"],
        &["wal", "cleanup", &main, "--days", "7"],
    ];
    for args in cron_lines {
        let out = Command::new(velo_exe())
            .args(*args)
            .env_clear()
            .env("HOME", sb.home())
            .env("PATH", "/usr/bin:/bin")
            .env("VELO_HOME", sb.home())
            .env("VELO_CONFIG", sb.home().join("config.json"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
        assert!(err.is_ascii(), "plain output for cron mail: {err}");
    }
    assert_eq!(
        sb.state()["projects"][&p]["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// `used` of a dataset in bytes.
fn zfs_used(dataset: &str) -> u64 {
    sh("zfs", &["get", "-H", "-p", "-o", "value", "used", dataset])
        .parse()
        .unwrap()
}
