//! Which storage and which runtime serve a project, as the state records them: chosen at
//! `project create` and fixed for the project's life, so every later command talks to the
//! same backends whatever the host's defaults have become.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a project's branches keep their data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StorageRecord {
    /// ZFS datasets under `base` in `pool`.
    Zfs {
        pool: String,
        base: String,
        layout: ZfsLayout,
    },
    /// Btrfs subvolumes under `dir`.
    Btrfs { dir: PathBuf },
    /// Directory trees under `dir`, copied file by file with `FICLONE`.
    Reflink { dir: PathBuf },
    /// Directory trees under `dir`, copied in full.
    Copy { dir: PathBuf },
}

/// How a project's datasets are named under the base.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ZfsLayout {
    /// `<base>/<project>.<branch>.<generation>`: every dataset a direct child of the user's
    /// base, so a mountpoint is never inside a directory the user owns (docs/security.md).
    Flat,
    /// `<pool>/velo/<project>/<branch>.<generation>`: projects made by velo before 0.2.
    Nested,
}

impl StorageRecord {
    /// The backend's name as users type it (`--storage`).
    pub fn kind(&self) -> &'static str {
        match self {
            StorageRecord::Zfs { .. } => "zfs",
            StorageRecord::Btrfs { .. } => "btrfs",
            StorageRecord::Reflink { .. } => "reflink",
            StorageRecord::Copy { .. } => "copy",
        }
    }
}

impl fmt::Display for StorageRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageRecord::Zfs { base, .. } => write!(f, "zfs {base}"),
            StorageRecord::Btrfs { dir }
            | StorageRecord::Reflink { dir }
            | StorageRecord::Copy { dir } => {
                write!(f, "{} {}", self.kind(), dir.display())
            }
        }
    }
}

/// What runs a project's servers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RuntimeRecord {
    /// Containers of `image` on the local Docker engine.
    Docker { image: String },
    /// The host's PostgreSQL binaries in `bindir`, run as velo's user.
    Native { bindir: PathBuf },
}

impl RuntimeRecord {
    /// The runtime's name as users type it (`--runtime`).
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeRecord::Docker { .. } => "docker",
            RuntimeRecord::Native { .. } => "native",
        }
    }
}

impl fmt::Display for RuntimeRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeRecord::Docker { image } => write!(f, "docker {image}"),
            RuntimeRecord::Native { bindir } => write!(f, "native {}", bindir.display()),
        }
    }
}
