//! Failures injected into a storage step, real ones: on ZFS a `zfs` that fails one verb
//! (`VELO_ZFS`); in a data directory (btrfs, reflink, copy) the directory the step writes
//! made immutable (`chattr +i`), so the kernel refuses the step with EPERM.

use std::path::PathBuf;

use super::Sandbox;
use super::rig::Backend;

/// The storage step to fail.
#[derive(Debug, Clone, Copy)]
pub enum Fault<'a> {
    /// Taking a snapshot of a volume.
    Snapshot,
    /// Making a volume from a snapshot.
    Clone,
    /// Destroying the volume of `branch`'s generation `generation`.
    Destroy { branch: &'a str, generation: u64 },
}

impl Sandbox {
    /// Makes the following velo commands fail at `fault` in `project`, until [`Sandbox::heal`];
    /// returns what the error then says.
    pub fn inject(&mut self, project: &str, fault: Fault) -> &'static str {
        if self.backend() == Backend::ZfsDocker {
            let verb = match fault {
                Fault::Snapshot => "snapshot",
                Fault::Clone => "clone",
                Fault::Destroy { .. } => "destroy",
            };
            let zfs = self.failing_zfs(verb);
            self.set_env("VELO_ZFS", zfs.to_str().unwrap());
            return "injected failure";
        }
        let dir = self.data_dir().join(project);
        let snapshots = dir.join(".snapshots");
        let path = match fault {
            // Where snapshots go, or, while there are none, where their directory would.
            Fault::Snapshot if snapshots.is_dir() => snapshots,
            Fault::Snapshot => dir,
            // A clone goes into the project's directory, after a snapshot into its own.
            Fault::Clone => {
                assert!(
                    snapshots.is_dir(),
                    "the project has no snapshot yet: a clone fault would fail the snapshot"
                );
                dir
            }
            Fault::Destroy { branch, generation } => dir.join(format!("{branch}.{generation}")),
        };
        assert!(path.is_dir(), "{} is missing", path.display());
        super::sh("chattr", &["+i", path.to_str().unwrap()]);
        self.immutable.push(path);
        "Operation not permitted"
    }

    /// Undoes every injected failure (never panics: it also runs on drop).
    pub fn heal(&mut self) {
        self.clear_env();
        for path in self.immutable.drain(..) {
            let undone = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&path)
                .status();
            if !undone.is_ok_and(|s| s.success()) {
                eprintln!("could not make {} mutable again", path.display());
            }
        }
    }

    /// A script that runs the real `zfs` but fails `zfs <verb> …`.
    fn failing_zfs(&self, verb: &str) -> PathBuf {
        let path = self.home().join(format!("zfs-failing-{verb}"));
        let real = super::sh("sh", &["-c", "command -v zfs"]);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nif [ \"$1\" = {verb} ]; then echo \"cannot {verb}: injected failure\" >&2; exit 1; fi\nexec {real} \"$@\"\n"
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}
