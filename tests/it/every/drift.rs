//! `velo repair`: drift made by hand (containers removed or stopped, datasets unmounted or
//! destroyed, a port taken, orphans) and by daemons restarting, found and repaired.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::Sandbox;

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `velo repair --json [extra…]`: its exit status and its findings as (where, kind, status).
fn repair(sb: &Sandbox, extra: &[&str]) -> (bool, BTreeSet<(String, String, String)>) {
    let mut args = vec!["repair", "--json"];
    args.extend_from_slice(extra);
    let out = sb.run(&args);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "velo {args:?} printed no JSON:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let findings = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap().to_string();
            (s("where"), s("kind"), s("status"))
        })
        .collect();
    assert_eq!(report["clean"].as_bool(), Some(out.status.success()));
    (out.status.success(), findings)
}

fn found(place: &str, kind: &str, status: &str) -> (String, String, String) {
    (place.into(), kind.into(), status.into())
}

/// Runs `zfs <args>` until it succeeds: zfs-fuse answers "busy" for a moment after a
/// container let go of a dataset, or after an unmount.
fn zfs_retrying(args: &[&str]) {
    for _ in 0..50 {
        if Command::new("zfs").args(args).status().unwrap().success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("zfs {args:?} kept failing");
}

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
    for b in ["gone", "stopped", "unmounted", "port", "destroyed"] {
        sb.ok(&["branch", "create", &br(b)]);
    }
    assert_eq!(sb.ok(&["repair"]), "", "a fresh project has no drift");
    // A branch the state forgets (a state file restored from a backup): its container,
    // dataset and base snapshot become orphans.
    let backup = std::fs::read(sb.home().join("state.json")).unwrap();
    sb.ok(&["branch", "create", &br("extra")]);
    let extra_origin = sb.state()["projects"][&p]["branches"]["extra"]["origin"]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(sb.home().join("state.json"), backup).unwrap();

    sh("docker", &["rm", "-f", &format!("velo-{p}.gone")]);
    sh("docker", &["stop", &format!("velo-{p}.stopped")]);
    sh("docker", &["stop", &format!("velo-{p}.unmounted")]);
    zfs_retrying(&["unmount", &sb.dataset(&p, "unmounted", 0)]);
    sb.ok(&["branch", "stop", &br("port")]);
    let old_port = sb.port(&br("port"));
    let _listener = TcpListener::bind(("127.0.0.1", old_port as u16)).unwrap();
    sh("docker", &["rm", "-f", &format!("velo-{p}.destroyed")]);
    let destroyed = sb.dataset(&p, "destroyed", 0);
    zfs_retrying(&["unmount", &destroyed]);
    zfs_retrying(&["destroy", "-r", &destroyed]);

    let (ok, findings) = repair(&sb, &[]);
    assert!(!ok, "drift must exit non-zero");
    let extra_ds = sb.dataset(&p, "extra", 0);
    let extra_snap = format!("{}@{extra_origin}", sb.dataset(&p, "main", 0));
    let want: BTreeSet<_> = [
        found(&br("gone"), "container-gone", "found"),
        found(&br("stopped"), "stopped", "found"),
        found(&br("unmounted"), "unmounted", "found"),
        found(&br("unmounted"), "stopped", "found"),
        found(&br("port"), "port-taken", "found"),
        found(&br("destroyed"), "data-gone", "found"),
        found(&format!("velo-{p}.extra"), "orphan-container", "found"),
        found(&extra_ds, "orphan-dataset", "found"),
        found(&extra_snap, "orphan-snapshot", "found"),
    ]
    .into();
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
            found(&extra_ds, "orphan-dataset", "needs --force"),
            found(&extra_snap, "orphan-snapshot", "needs --force"),
        ]
        .into()
    );
    assert!(sb.zfs_tree(&p).contains(&extra_ds));
    assert!(!sb.containers(&p).contains(&format!("velo-{p}.extra")));

    let (ok, _) = repair(&sb, &["--fix", "--force"]);
    assert!(ok);
    assert_eq!(repair(&sb, &[]), (true, BTreeSet::new()));

    let tree = sb.zfs_tree(&p);
    assert!(
        !tree.contains(&extra_ds) && !tree.contains(&extra_snap),
        "{tree:?}"
    );
    assert!(
        sb.state()["projects"][&p]["branches"]
            .get("destroyed")
            .is_none()
    );
    for b in ["main", "gone", "stopped", "unmounted"] {
        assert_eq!(sb.users(&br(b)), "Alice", "{b}");
    }
    let moved = sb.port(&br("port"));
    assert_ne!(moved, old_port);
    let b = &sb.state()["projects"][&p]["branches"]["port"];
    assert_eq!(b["desired"], "stopped", "a stopped branch stays stopped");
    sb.ok(&["branch", "start", &br("port")]);
    assert_eq!(sb.users(&br("port")), "Alice");
    assert!(other.json(&["branch", "list"]).as_array().unwrap().len() == 1);
}

/// Puts the rig back up when the test ends, even when it fails: dead FUSE mounts lazily
/// unmounted (deepest first), every dataset mounted, then `scripts/rig-up.sh`.
struct RigRestore<'a>(&'a Sandbox);

impl Drop for RigRestore<'_> {
    fn drop(&mut self) {
        let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut fuse: Vec<&str> = table
            .lines()
            .filter_map(|l| match l.split(' ').collect::<Vec<_>>().as_slice() {
                [_, path, "fuse.zfs", ..] => Some(*path),
                _ => None,
            })
            .collect();
        fuse.sort_by(|a, b| b.cmp(a));
        for path in fuse {
            // read_dir, not stat: a dead mount's root can still answer a stat.
            if std::fs::read_dir(path).is_err() {
                let _ = Command::new("umount").args(["-l", path]).status();
            }
        }
        let _ = Command::new("zfs").args(["mount", "-a"]).status();
        if !std::thread::panicking() {
            self.0.rig_up();
            return;
        }
        // A second panic while unwinding would abort the whole test binary: report instead.
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rig-up.sh");
        let out = Command::new(script)
            .env("VELO_TEST_POOL", &self.0.rig.pool)
            .env("VELO_TEST_IMAGE", &self.0.rig.image)
            .output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("rig-up failed after a failed test: {out:?}");
        }
    }
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(90), "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn pid_in(file: &str) -> String {
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

/// A host reboot as velo sees it: dockerd stops (its containers with it), the zfs-fuse daemon
/// dies (leaving dead FUSE mounts) and both come back without anything being remounted or
/// restarted. `branch start` works, and `repair --fix` brings the rest back.
#[test]
fn a_reboot_of_both_daemons_is_found_and_repaired() {
    let sb = Sandbox::exclusive();
    let _restore = RigRestore(&sb);
    let p = sb.create_project("reboot");
    let (main, dev, idle) = (format!("{p}/main"), format!("{p}/dev"), format!("{p}/idle"));
    sb.sql(
        &main,
        "CREATE TABLE users (id serial, name text); INSERT INTO users (name) VALUES ('Alice')",
    );
    sb.ok(&["branch", "create", &dev]);
    sb.ok(&["branch", "create", &idle]);
    let driver = sh("docker", &["info", "--format", "{{.Driver}}"]);

    let dockerd = pid_in("/var/run/docker.pid");
    sh("kill", &[&dockerd]);
    wait_until("dockerd stops", || !succeeds("kill", &["-0", &dockerd]));
    // A host going down lets its file systems write out what was fsynced. zfs-fuse, killed
    // with -9, loses what it has not yet committed to a transaction group, fsynced or not
    // (PostgreSQL's shutdown checkpoint then fails to start: "could not read file
    // pg_logical/replorigin_checkpoint"). A snapshot commits the pool's open transaction group.
    let flush = format!("{}@reboot-flush", sb.rig.pool);
    sh("zfs", &["snapshot", &flush]);
    sh("zfs", &["destroy", &flush]);
    let zfs_fuse = pid_in("/run/zfs-fuse.pid");
    sh("kill", &["-9", &zfs_fuse]);
    wait_until("zfs-fuse dies", || !succeeds("kill", &["-0", &zfs_fuse]));

    sh(
        "sh",
        &[
            "-c",
            "ulimit -v unlimited; ulimit -c 0; ulimit -l unlimited 2>/dev/null; ulimit -s unlimited; \
             rm -f /run/zfs-fuse.pid; cd / && /usr/sbin/zfs-fuse --pidfile /run/zfs-fuse.pid </dev/null >/dev/null 2>&1",
        ],
    );
    let pool = sb.rig.pool.clone();
    wait_until("zfs-fuse answers", || succeeds("zpool", &["list", &pool]));
    sh(
        "sh",
        &[
            "-c",
            &format!(
                "rm -f /var/run/docker.pid; setsid -f dockerd --storage-driver={driver} </dev/null >>/var/log/velo-rig-dockerd.log 2>&1"
            ),
        ],
    );
    wait_until("dockerd answers", || succeeds("docker", &["info"]));

    let (ok, findings) = repair(&sb, &[]);
    assert!(!ok);
    let kinds_of = |b: &str| -> BTreeSet<String> {
        findings
            .iter()
            .filter(|(w, _, _)| *w == b)
            .map(|(_, k, _)| k.clone())
            .collect()
    };
    for b in [&main, &dev, &idle] {
        assert_eq!(
            kinds_of(b),
            ["stopped".to_string(), "unmounted".to_string()].into(),
            "{b}: {findings:?}"
        );
    }
    let text = String::from_utf8_lossy(&sb.run(&["repair"]).stdout).into_owned();
    assert!(
        text.contains("the runtime or the host was restarted"),
        "{text}"
    );

    // `branch start` mounts what it needs and starts.
    sb.ok(&["branch", "start", &dev]);
    assert_eq!(sb.users(&dev), "Alice");

    let (ok, findings) = repair(&sb, &["--fix"]);
    assert!(ok, "{findings:?}");
    assert_eq!(repair(&sb, &[]), (true, BTreeSet::new()));
    for b in [&main, &dev, &idle] {
        assert_eq!(sb.users(b), "Alice", "{b}");
    }
}
