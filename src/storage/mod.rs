//! Where branch data lives: one interface, [`Storage`], over copy-on-write backends.
//!
//! A *volume* holds one branch generation (its `pgdata` directory and nothing else); a
//! *snapshot* is a read-only image of a volume that new volumes are cloned from. Volumes and
//! snapshots are named by what velo knows ([`VolumeId`], [`SnapshotRef`]); each backend maps
//! those names onto its own (a ZFS dataset, a Btrfs subvolume, a directory tree), so nothing
//! outside this module builds a backend's name, and a name velo did not derive from validated
//! parts can never reach a destroy.
//!
//! The backends differ in what they promise, and say so in [`Capabilities`]: the operations
//! branch their logic on a capability, never on a backend's name.
//!
//! Backends: ZFS ([`crate::zfs`]), Btrfs subvolumes ([`btrfs`]), and directory trees copied
//! with reflinks or plainly ([`tree`]); the last two share one data directory layout.
//!
//! This module knows nothing of PostgreSQL, containers or velo's state.

#[cfg(test)]
pub mod fake;
pub mod zfs;

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::Serialize;

use crate::names::ProjectName;
pub use crate::names::{SnapshotRef, VolumeId};

pub mod btrfs;
mod layout;
mod remove;
mod rename;
mod trash;
pub mod tree;
pub mod treecopy;

/// What a backend can promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// A snapshot captures the whole volume at one instant (ZFS, Btrfs), so a snapshot of a
    /// running server's data is crash-consistent. Without it (a reflink or plain copy, made
    /// file by file) a running server must be held in backup mode while it is copied.
    pub atomic_snapshot: bool,
    /// A clone depends on the snapshot it was made from (ZFS): neither that snapshot nor its
    /// volume can be destroyed while the clone exists.
    pub clone_pins_source: bool,
    /// Snapshots and clones copy the data itself, so their time and space grow with its size
    /// (the plain-copy backend, the last resort).
    pub copies_data: bool,
}

/// A volume or snapshot as a backend sees it: for `velo repair`'s inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The backend's own name (a dataset, a path): what users see in reports.
    pub name: String,
    /// The volume it is, if the name has velo's shape (`None` for a snapshot's own entry
    /// too: see [`Entry::snapshot`]).
    pub volume: Option<VolumeId>,
    /// The snapshot it is, if it is a snapshot of velo's shape.
    pub snapshot: Option<SnapshotRef>,
    /// Whether its files can be reached now (a ZFS dataset is mounted and its mount alive).
    pub available: Availability,
    /// For a clone that pins its source: the snapshot it was cloned from (backend name).
    pub origin: Option<String>,
    /// The velo home that made it, where the backend records one; `None` when unmarked.
    pub home: Option<String>,
}

/// Whether a volume's files can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Available {
        path: PathBuf,
    },
    /// Not mounted (after a reboot or a restart of the ZFS daemon).
    Unmounted {
        path: PathBuf,
    },
    /// Mounted, but the mount is dead (a zfs-fuse daemon that is gone).
    Dead {
        path: PathBuf,
    },
    /// A snapshot: never reached directly.
    NotApplicable,
}

/// Everything of one storage that looks like velo's, for drift detection.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// False when the storage itself is gone (a ZFS pool not imported, a data directory that
    /// vanished): nothing in it can then be judged.
    pub present: bool,
    pub entries: Vec<Entry>,
}

/// Space and health of a storage as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    /// What `velo status` shows in its first column: a pool, a file system.
    pub name: String,
    pub health: String,
    pub used: u64,
    pub available: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Zfs(#[from] crate::zfs::ZfsError),
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The operation makes no sense for this backend; velo's operations never ask it.
    #[error("{backend} storage cannot {what}")]
    Unsupported {
        backend: &'static str,
        what: &'static str,
    },
    #[error("{0}")]
    Refused(String),
}

impl StorageError {
    /// Whether the storage ran out of space (freeing some may make the same call succeed).
    pub fn is_no_space(&self) -> bool {
        match self {
            StorageError::Zfs(e) => e.kind() == crate::zfs::ZfsErrorKind::NoSpace,
            StorageError::Io { source, .. } => source.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }

    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StorageError::Io {
            action,
            path,
            source,
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Where a backend says what it did on the way (`mounting tank/velo/…`).
pub type Note<'n> = dyn for<'a> Fn(&'a str) + Sync + 'n;

/// A copy-on-write store of volumes and their snapshots.
///
/// Every destroy treats "already gone" as success (the journal may replay it), and every
/// create fails if the target exists.
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// One line for `project get` and `velo doctor`: the backend and where it keeps data.
    fn describe(&self) -> String;

    fn capabilities(&self) -> Capabilities;

    /// Makes sure the storage's own root exists (the base dataset, the data directory), with
    /// the properties and permissions velo relies on.
    async fn prepare(&self) -> Result<()>;

    /// Creates an empty volume, ready to use; returns where its files are.
    async fn create_volume(&self, v: &VolumeId) -> Result<PathBuf>;

    /// Snapshots a volume. Atomic only where [`Capabilities::atomic_snapshot`] says so.
    async fn snapshot(&self, s: &SnapshotRef) -> Result<()>;

    /// For backends without atomic snapshots: completes a snapshot taken while its source was
    /// being written under PostgreSQL's backup API. Copies the paths in `late` (relative to
    /// the volume, e.g. `pgdata/pg_wal`) from the volume into the snapshot again, and adds
    /// `files` (relative path, contents), owned like the directory they go into.
    async fn complete_snapshot(
        &self,
        s: &SnapshotRef,
        late: &[&str],
        files: &[(&str, &[u8])],
    ) -> Result<()>;

    /// Makes a new volume from a snapshot; returns where its files are.
    async fn clone_snapshot(&self, from: &SnapshotRef, into: &VolumeId) -> Result<PathBuf>;

    /// Destroys a volume and its snapshots.
    async fn destroy_volume(&self, v: &VolumeId) -> Result<()>;

    /// Renames a volume, with its snapshots, to `to` (in the same project), leaving it
    /// available under the new name. Clones made from its snapshots keep working. A volume
    /// already renamed (`from` gone, `to` there) is success, so the journal may replay it;
    /// `to` existing beside `from` is an error, like any create onto an existing name.
    async fn rename_volume(&self, from: &VolumeId, to: &VolumeId) -> Result<()>;

    /// Volumes cloned from snapshots of `v` that must not be in use while `v` is renamed:
    /// zfs-fuse refuses to rename a dataset while a clone of one of its snapshots is mounted
    /// (the rename then unmounts and remounts them itself). Every other backend renames a
    /// volume whatever its clones do, and says none.
    async fn clones_blocking_rename(&self, _v: &VolumeId) -> Result<Vec<VolumeId>> {
        Ok(Vec::new())
    }

    async fn destroy_snapshot(&self, s: &SnapshotRef) -> Result<()>;

    /// Destroys everything of a project (after its servers are gone).
    async fn destroy_project(&self, project: &ProjectName) -> Result<()>;

    /// Where the volume's files are if it can be reached now.
    async fn path(&self, v: &VolumeId) -> Result<Option<PathBuf>>;

    /// Makes a volume reachable again (mounts it after a reboot, clearing a dead mount first)
    /// and returns its path. Says what it did through `note`.
    async fn ensure_available(&self, v: &VolumeId, note: &Note<'_>) -> Result<PathBuf>;

    /// Space used by each volume and snapshot of a project, by backend name, where the
    /// backend can tell.
    async fn usage(&self, project: &ProjectName) -> Result<BTreeMap<String, u64>>;

    /// The backend name of a volume or snapshot (for reports and `usage` lookups).
    fn name_of(&self, v: &VolumeId) -> String;
    fn snapshot_name_of(&self, s: &SnapshotRef) -> String;

    async fn space(&self) -> Result<Space>;

    /// What the storage holds of velo's, for `velo repair`.
    async fn inventory(&self) -> Result<Inventory>;
}
