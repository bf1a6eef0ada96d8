//! The daemons under ZFS and Docker restarting (a host reboot as velo sees it), found and
//! repaired. Exclusive: every other ZFS and Docker test waits meanwhile.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use crate::util::world::{self, repair};
use crate::util::{Sandbox, rig_up_command, sh};

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
        // rig-up mounts what is not mounted, parents first (zfs-fuse's `mount -a` does not
        // order them, and a child mounted first blocks its parent for every later test).
        if !std::thread::panicking() {
            self.0.rig_up();
            return;
        }
        // A second panic while unwinding would abort the whole test binary: report instead.
        let out = rig_up_command(&self.0.rig).output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("rig-up failed after a failed test: {out:?}");
        }
    }
}

fn wait_until(what: &str, ready: impl FnMut() -> bool) {
    world::wait_until(what, Duration::from_secs(90), ready);
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
