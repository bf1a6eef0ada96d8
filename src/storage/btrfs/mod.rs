//! Volumes as Btrfs subvolumes: a volume is a subvolume, a snapshot a read-only snapshot of
//! it, a clone a writable snapshot of that snapshot. Every snapshot is atomic and costs no
//! copy, and a clone does not depend on its snapshot.
//!
//! All of it works for a user who is not root but owns the data directory: creating and
//! snapshotting subvolumes needs no privilege (a snapshot needs only ownership of its
//! source). Deleting one whole needs the mount option `user_subvol_rm_allowed` (and a
//! read-only snapshot made writable first, which its owner may do); without that option velo
//! empties the subvolume file by file and removes it with `rmdir`, which the kernel allows
//! for an empty subvolume: correct, but its cost grows with the data's size.
//!
//! This module touches only its data directory; the ioctls are in [`ioctl`].

pub mod ioctl;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::layout::{self, DataDir, blocking};
use super::remove::Subvolumes;
use super::{Capabilities, Inventory, Result, SnapshotRef, Space, Storage, StorageError, VolumeId};
use crate::names::ProjectName;
pub use ioctl::is_btrfs;

/// Volumes as Btrfs subvolumes under one data directory.
#[derive(Debug, Clone)]
pub struct BtrfsStorage {
    data: DataDir,
}

impl BtrfsStorage {
    /// A store in `dir`, which must be on Btrfs, for the velo home labelled `home`.
    pub fn new(dir: impl Into<PathBuf>, home: impl Into<String>) -> Self {
        Self {
            data: DataDir {
                dir: dir.into(),
                home: home.into(),
                subvolumes: Subvolumes::Btrfs,
            },
        }
    }

    fn create_now(&self, v: &VolumeId) -> Result<PathBuf> {
        let project = self.data.open_project(&v.project, true)?;
        let project = project.ok_or_else(|| missing(&self.data.project_path(&v.project)))?;
        let path = self.data.volume_path(v);
        self.data
            .build(project.as_fd(), &v.in_project(), &path, |tmp| {
                ioctl::create_subvolume(project.as_fd(), tmp)
                    .map_err(StorageError::io("creating the subvolume", &path))?;
                let made = crate::fsx::open_dir_at(project.as_fd(), tmp)
                    .map_err(StorageError::io("opening", &path))?;
                rustix::fs::fchmod(&made, rustix::fs::Mode::from_raw_mode(0o700))
                    .map_err(|e| StorageError::io("setting the mode of", &path)(e.into()))
            })?;
        Ok(path)
    }

    fn snapshot_now(&self, s: &SnapshotRef) -> Result<()> {
        let source = self.data.open_volume(&s.volume)?;
        let snapshots = self.data.open_snapshots(&s.volume.project, true)?;
        let snapshots =
            snapshots.ok_or_else(|| missing(&self.data.snapshots_path(&s.volume.project)))?;
        let name = layout::snapshot_leaf(s);
        snapshot(
            source.as_fd(),
            snapshots.as_fd(),
            &name,
            true,
            &self.data.snapshot_path(s),
        )
    }

    fn clone_now(&self, from: &SnapshotRef, into: &VolumeId) -> Result<PathBuf> {
        let source = self.data.open_snapshot(from)?;
        let project = self.data.open_project(&into.project, true)?;
        let project = project.ok_or_else(|| missing(&self.data.project_path(&into.project)))?;
        let path = self.data.volume_path(into);
        snapshot(
            source.as_fd(),
            project.as_fd(),
            &into.in_project(),
            false,
            &path,
        )?;
        Ok(path)
    }
}

/// One atomic snapshot: it appears whole under its final name, or not at all.
fn snapshot(
    source: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    name: &str,
    read_only: bool,
    path: &Path,
) -> Result<()> {
    ioctl::snapshot(source, parent, OsStr::new(name), read_only)
        .map_err(StorageError::io("snapshotting into", path))
}

fn missing(path: &Path) -> StorageError {
    StorageError::io("opening", path)(std::io::ErrorKind::NotFound.into())
}

/// Refuses a data directory that is not on Btrfs.
fn check_btrfs(dir: &Path, fd: BorrowedFd<'_>) -> Result<()> {
    match ioctl::fd_is_btrfs(fd) {
        Ok(true) => Ok(()),
        Ok(false) => Err(StorageError::Refused(format!(
            "data directory {} is not on Btrfs: choose a directory on a Btrfs file system, or another storage backend",
            dir.display()
        ))),
        Err(e) => Err(StorageError::io("reading the file system of", dir)(e)),
    }
}

#[async_trait]
impl Storage for BtrfsStorage {
    fn describe(&self) -> String {
        format!("btrfs at {}", self.data.dir.display())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_snapshot: true,
            clone_pins_source: false,
            copies_data: false,
        }
    }

    async fn prepare(&self) -> Result<()> {
        let data = self.data.clone();
        blocking(&self.data.dir, move || {
            data.prepare(|fd| check_btrfs(&data.dir, fd))
        })
        .await
    }

    async fn create_volume(&self, v: &VolumeId) -> Result<PathBuf> {
        let (me, v) = (self.clone(), v.clone());
        blocking(&self.data.dir, move || me.create_now(&v)).await
    }

    async fn snapshot(&self, s: &SnapshotRef) -> Result<()> {
        let (me, s) = (self.clone(), s.clone());
        blocking(&self.data.dir, move || me.snapshot_now(&s)).await
    }

    async fn complete_snapshot(
        &self,
        _s: &SnapshotRef,
        _late: &[&str],
        _files: &[(&str, &[u8])],
    ) -> Result<()> {
        Err(StorageError::Unsupported {
            backend: "btrfs",
            what: "complete a snapshot: its snapshots are atomic",
        })
    }

    async fn clone_snapshot(&self, from: &SnapshotRef, into: &VolumeId) -> Result<PathBuf> {
        let (me, from, into) = (self.clone(), from.clone(), into.clone());
        blocking(&self.data.dir, move || me.clone_now(&from, &into)).await
    }

    async fn destroy_volume(&self, v: &VolumeId) -> Result<()> {
        let (data, v) = (self.data.clone(), v.clone());
        blocking(&self.data.dir, move || data.destroy_volume(&v)).await
    }

    async fn rename_volume(&self, from: &VolumeId, to: &VolumeId) -> Result<()> {
        let (data, from, to) = (self.data.clone(), from.clone(), to.clone());
        blocking(&self.data.dir, move || data.rename_volume(&from, &to)).await
    }

    async fn destroy_snapshot(&self, s: &SnapshotRef) -> Result<()> {
        let (data, s) = (self.data.clone(), s.clone());
        blocking(&self.data.dir, move || data.destroy_snapshot(&s)).await
    }

    async fn destroy_project(&self, project: &ProjectName) -> Result<()> {
        let (data, p) = (self.data.clone(), project.clone());
        blocking(&self.data.dir, move || data.destroy_project(&p)).await
    }

    async fn path(&self, v: &VolumeId) -> Result<Option<PathBuf>> {
        Ok(self.data.path(v))
    }

    async fn ensure_available(
        &self,
        v: &VolumeId,
        _note: &(dyn Fn(&str) + Sync),
    ) -> Result<PathBuf> {
        self.data.ensure_available(v)
    }

    /// Empty: what a subvolume holds alone is known only to Btrfs quota groups, which cost
    /// on every write and need root to read.
    async fn usage(&self, _project: &ProjectName) -> Result<BTreeMap<String, u64>> {
        Ok(BTreeMap::new())
    }

    fn name_of(&self, v: &VolumeId) -> String {
        self.data.volume_path(v).display().to_string()
    }

    fn snapshot_name_of(&self, s: &SnapshotRef) -> String {
        self.data.snapshot_path(s).display().to_string()
    }

    async fn space(&self) -> Result<Space> {
        self.data.space(self.describe())
    }

    async fn inventory(&self) -> Result<Inventory> {
        let data = self.data.clone();
        blocking(&self.data.dir, move || data.inventory()).await
    }
}
