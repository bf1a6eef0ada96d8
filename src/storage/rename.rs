//! Renaming a volume of the file-system backends (Btrfs subvolumes, directory trees), with
//! its snapshots: `<project>/<branch>.<generation>` and every
//! `<project>/.snapshots/<branch>.<generation>@<id>` take the new branch's name.
//!
//! Each is one `rename(2)` within its directory, refusing to replace anything
//! (`RENAME_NOREPLACE`); Btrfs moves a subvolume, read-only snapshots included, within a
//! directory like any directory. The snapshots move first and the volume last, so a rename cut
//! short leaves the volume under its old name, and running it again, or the rename back,
//! moves exactly what is left.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::AtFlags;
use rustix::io::Errno;

use super::layout::{self, DataDir};
use super::{Result, SnapshotRef, StorageError, VolumeId};
use crate::fsx;

impl DataDir {
    /// Renames volume `from` and its snapshots to `to` (see [`super::Storage::rename_volume`]).
    pub fn rename_volume(&self, from: &VolumeId, to: &VolumeId) -> Result<()> {
        if from.project != to.project {
            return Err(StorageError::Refused(format!(
                "cannot rename {from} into another project ({to})"
            )));
        }
        let project = self.open_project(&from.project, false)?;
        let project = project.ok_or_else(|| gone(&self.volume_path(from)))?;
        let (old, new) = (from.in_project(), to.in_project());
        let exists = |name: &str| present(project.as_fd(), name, &self.volume_path(from));
        match (exists(&old)?, exists(&new)?) {
            // Renamed already; snapshots still under the old name are what a rename the
            // other way left when it was cut short.
            (false, true) => return self.rename_snapshots(from, to),
            (true, false) => {}
            (true, true) => {
                return Err(StorageError::io("renaming onto", self.volume_path(to))(
                    io::ErrorKind::AlreadyExists.into(),
                ));
            }
            (false, false) => return Err(gone(&self.volume_path(from))),
        }
        self.rename_snapshots(from, to)?;
        fsx::rename_new_at(project.as_fd(), &old, project.as_fd(), &new)
            .map_err(StorageError::io("renaming", self.volume_path(from)))?;
        rustix::fs::fsync(&project)
            .map_err(|e| StorageError::io("syncing", self.project_path(&from.project))(e.into()))
    }

    /// Moves every snapshot of `from` still under its name to `to`'s name.
    fn rename_snapshots(&self, from: &VolumeId, to: &VolumeId) -> Result<()> {
        let Some(snapshots) = self.open_snapshots(&from.project, false)? else {
            return Ok(());
        };
        let path = self.snapshots_path(&from.project);
        let names = layout::list(snapshots.as_fd()).map_err(StorageError::io("listing", &path))?;
        for name in names {
            let Some(s) = name
                .to_str()
                .and_then(|n| layout::parse_snapshot_leaf(&from.project, n))
                .filter(|s| s.volume == *from)
            else {
                continue;
            };
            let moved = SnapshotRef {
                volume: to.clone(),
                id: s.id.clone(),
            };
            fsx::rename_new_at(
                snapshots.as_fd(),
                &name,
                snapshots.as_fd(),
                layout::snapshot_leaf(&moved),
            )
            .map_err(StorageError::io("renaming", self.snapshot_path(&s)))?;
        }
        rustix::fs::fsync(&snapshots).map_err(|e| StorageError::io("syncing", &path)(e.into()))
    }
}

/// Whether `name` exists in `dir` (a link counts: it is never followed, nor replaced).
fn present(dir: BorrowedFd<'_>, name: &str, shown: &std::path::Path) -> Result<bool> {
    match rustix::fs::statat(dir, OsStr::new(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(StorageError::io("reading", shown)(e.into())),
    }
}

fn gone(path: &std::path::Path) -> StorageError {
    StorageError::io("no volume at", path)(io::ErrorKind::NotFound.into())
}
