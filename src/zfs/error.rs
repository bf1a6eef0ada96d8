//! Typed errors for `zfs`/`zpool`, classified from the command's stderr.
//!
//! The exit status decides failure; stderr only decides which failure. Samples of both
//! OpenZFS 2.x and zfs-fuse messages are in the tests below.

use std::fmt;

/// What kind of failure a `zfs`/`zpool` run reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZfsErrorKind {
    NotFound,
    AlreadyExists,
    Busy,
    HasDependents,
    HasChildren,
    NoSpace,
    PermissionDenied,
    /// The ZFS service is not there: the kernel module is not loaded or the zfs-fuse daemon is
    /// not running.
    NotRunning,
    NoSuchPool,
    /// A non-root `zfs create`/`zfs clone` made the dataset but could not mount it (only root
    /// may mount on Linux): velo mounts it through its sudoers entry.
    CreatedNotMounted,
    AlreadyMounted,
    NotMounted,
    /// This ZFS has no such command (zfs-fuse has no `zfs allow` and no `zfs version`).
    Unsupported,
    Other,
}

/// A failed `zfs` or `zpool` command, with everything needed to understand it.
#[derive(Debug, thiserror::Error)]
pub enum ZfsError {
    #[error(
        "`{program}` is not installed (looked on PATH and in /usr/local/sbin, /usr/sbin and /sbin): install OpenZFS (zfsutils-linux) or zfs-fuse, or name the program with VELO_ZFS/VELO_ZPOOL"
    )]
    NotInstalled {
        program: String,
        source: std::io::Error,
    },
    #[error("could not run `{argv}`")]
    Spawn {
        argv: String,
        source: std::io::Error,
    },
    #[error("`{argv}` failed ({status}): {stderr}{hint}", hint = hint(*.kind))]
    Failed {
        argv: String,
        status: String,
        stderr: String,
        kind: ZfsErrorKind,
    },
    #[error("`{argv}` printed output velo cannot read: {line:?}")]
    Parse { argv: String, line: String },
}

impl ZfsError {
    pub fn kind(&self) -> ZfsErrorKind {
        match self {
            ZfsError::Failed { kind, .. } => *kind,
            ZfsError::NotInstalled { .. } => ZfsErrorKind::NotRunning,
            _ => ZfsErrorKind::Other,
        }
    }
}

fn hint(kind: ZfsErrorKind) -> &'static str {
    match kind {
        ZfsErrorKind::NoSpace => {
            "\nhint: the pool is full: delete branches or snapshots (`velo snapshot cleanup`), or grow the pool"
        }
        ZfsErrorKind::NotRunning => {
            "\nhint: start ZFS: `modprobe zfs` for OpenZFS, or start the `zfs-fuse` daemon"
        }
        ZfsErrorKind::PermissionDenied => {
            "\nhint: run `sudo velo setup` once to delegate velo's ZFS permissions to your user, then `velo doctor`"
        }
        ZfsErrorKind::NoSuchPool => "\nhint: check `zpool list`; import the pool or pass --pool",
        _ => "",
    }
}

/// Classifies a failed command's stderr.
pub fn classify(stderr: &str) -> ZfsErrorKind {
    let s = stderr.to_ascii_lowercase();
    let has = |needle: &str| s.contains(needle);
    if has("modules are not loaded")
        || has("zfs-fuse daemon")
        || has("failed to initialize zfs library")
        || has("/dev/zfs and /proc/self/mounts are required")
    {
        ZfsErrorKind::NotRunning
    } else if has("successfully created") {
        ZfsErrorKind::CreatedNotMounted
    } else if has("already mounted") {
        ZfsErrorKind::AlreadyMounted
    } else if has("not currently mounted") {
        ZfsErrorKind::NotMounted
    } else if has("pyzfs.py not found") || has("unrecognized command") {
        ZfsErrorKind::Unsupported
    } else if has("no such pool") {
        ZfsErrorKind::NoSuchPool
    } else if has("dependent clones") {
        ZfsErrorKind::HasDependents
    } else if has("has children") {
        ZfsErrorKind::HasChildren
    } else if has("does not exist") {
        ZfsErrorKind::NotFound
    } else if has("already exists") {
        ZfsErrorKind::AlreadyExists
    } else if has("busy") {
        ZfsErrorKind::Busy
    } else if has("out of space") || has("no space left") {
        ZfsErrorKind::NoSpace
    } else if has("permission denied") || has("operation not permitted") {
        ZfsErrorKind::PermissionDenied
    } else {
        ZfsErrorKind::Other
    }
}

impl fmt::Display for ZfsErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ZfsErrorKind::*;

    #[test]
    fn classifies_captured_messages() {
        let samples = [
            (
                "cannot open 'tank/velo/x': dataset does not exist",
                NotFound,
            ),
            (
                "cannot create 'tank/velo': dataset already exists",
                AlreadyExists,
            ),
            ("cannot destroy 'tank/velo/a/b.0': dataset is busy", Busy),
            (
                "cannot unmount '/tank/velo/a': Device or resource busy",
                Busy,
            ),
            (
                "cannot destroy 'tank/velo/a/main.0@s1': snapshot has dependent clones\nuse '-R' to destroy the following datasets:\ntank/velo/a/dev.0",
                HasDependents,
            ),
            (
                "cannot destroy 'tank/velo/a': filesystem has children\nuse '-r' to destroy the following datasets:",
                HasChildren,
            ),
            ("cannot create 'tank/velo/a/b.0': out of space", NoSpace),
            (
                "cannot create 'tank/velo/a': permission denied",
                PermissionDenied,
            ),
            (
                "The ZFS modules are not loaded.\nTry running '/sbin/modprobe zfs' as root to load them.",
                NotRunning,
            ),
            (
                "connect: No such file or directory\nPlease make sure that the zfs-fuse daemon is running.\ninternal error: failed to initialize ZFS library",
                NotRunning,
            ),
            ("cannot open 'nopool': no such pool", NoSuchPool),
            (
                "filesystem successfully created, but it may only be mounted by root",
                CreatedNotMounted,
            ),
            (
                "cannot mount '/tank/velo/a/dev.1': permission denied\nclone successfully created, but not mounted",
                CreatedNotMounted,
            ),
            (
                "cannot mount 'tank/velo/a': filesystem already mounted",
                AlreadyMounted,
            ),
            (
                "cannot unmount 'tank/velo/a': not currently mounted",
                NotMounted,
            ),
            (
                "internal error: /usr/lib/zfs/pyzfs.py not found",
                Unsupported,
            ),
            ("unrecognized command 'version'", Unsupported),
            ("internal error: Invalid argument", Other),
        ];
        for (stderr, want) in samples {
            assert_eq!(classify(stderr), want, "{stderr}");
        }
    }
}
