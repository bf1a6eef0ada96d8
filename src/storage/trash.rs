//! Destroying volumes, snapshots and projects of the file-system backends: the name is freed
//! at once, the data deleted after.
//!
//! A destroy renames what it destroys into `<dir>/.trash/<pid>-<random>` (one rename per
//! volume or snapshot, so nothing is ever half-deleted under its own name), then deletes it
//! there. A crash leaves only trash, which [`DataDir::prepare`] and later destroys clear: they
//! delete every trash entry whose process is gone (the pid in its name), never one another
//! velo is still deleting. Temporary names left by a crashed build of a volume or snapshot
//! (`.<name>.tmp-…`) go with that volume or snapshot.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::io::Errno;

use super::btrfs::ioctl as btrfs;
use super::layout::{self, DataDir, TRASH};
use super::remove::{self, Subvolumes};
use super::{Result, SnapshotRef, StorageError, VolumeId};
use crate::fsx;
use crate::names::ProjectName;

impl DataDir {
    /// Destroys a volume, its snapshots, and what crashed builds of them left.
    pub fn destroy_volume(&self, v: &VolumeId) -> Result<()> {
        let Some(project) = self.open_project(&v.project, false)? else {
            return Ok(());
        };
        let leaf = v.in_project();
        let mut trashed =
            self.trash_matching(project.as_fd(), &self.project_path(&v.project), |n| {
                n == leaf.as_bytes() || n.starts_with(layout::temp_prefix(&leaf).as_bytes())
            })?;
        if let Some(snapshots) = self.open_snapshots(&v.project, false)? {
            let (mine, temp) = (format!("{leaf}@"), format!(".{leaf}@"));
            let path = self.snapshots_path(&v.project);
            trashed.extend(self.trash_matching(snapshots.as_fd(), &path, |n| {
                n.starts_with(mine.as_bytes()) || n.starts_with(temp.as_bytes())
            })?);
        }
        self.purge(trashed)
    }

    pub fn destroy_snapshot(&self, s: &SnapshotRef) -> Result<()> {
        let Some(snapshots) = self.open_snapshots(&s.volume.project, false)? else {
            return Ok(());
        };
        let leaf = layout::snapshot_leaf(s);
        let path = self.snapshots_path(&s.volume.project);
        let trashed = self.trash_matching(snapshots.as_fd(), &path, |n| {
            n == leaf.as_bytes() || n.starts_with(layout::temp_prefix(&leaf).as_bytes())
        })?;
        self.purge(trashed)
    }

    pub fn destroy_project(&self, p: &ProjectName) -> Result<()> {
        let root = self.open_root()?;
        let trashed =
            self.trash_matching(root.as_fd(), &self.dir, |n| n == p.as_str().as_bytes())?;
        self.purge(trashed)
    }

    /// Moves every entry of `dir` (shown as `path`) whose name `matches` into the trash;
    /// returns their trash names.
    fn trash_matching(
        &self,
        dir: BorrowedFd<'_>,
        path: &std::path::Path,
        matches: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<OsString>> {
        let names = layout::list(dir).map_err(StorageError::io("listing", path))?;
        let mut trashed = Vec::new();
        for name in names.iter().filter(|n| matches(n.as_bytes())) {
            if let Some(moved) = self.move_to_trash(dir, name, &path.join(name))? {
                trashed.push(moved);
            }
        }
        Ok(trashed)
    }

    /// Renames `name` in `parent` into the trash; `None` if it is gone already.
    fn move_to_trash(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &std::path::Path,
    ) -> Result<Option<OsString>> {
        // A read-only subvolume cannot move to another directory.
        if self.subvolumes == Subvolumes::Btrfs
            && !btrfs::unfreeze_at(parent, name)
                .map_err(StorageError::io("making writable", path))?
        {
            return Ok(None);
        }
        let trash = self.open_trash()?;
        let unique = format!("{}-{}", std::process::id(), remove::rand_suffix());
        match rustix::fs::renameat(parent, name, trash.as_fd(), unique.as_str()) {
            Ok(()) => Ok(Some(unique.into())),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(StorageError::io("moving to the trash", path)(e.into())),
        }
    }

    fn open_trash(&self) -> Result<OwnedFd> {
        let root = self.open_root()?;
        let path = self.dir.join(TRASH);
        match fsx::open_dir_at(root.as_fd(), TRASH) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match fsx::create_dir_at(root.as_fd(), TRASH, 0o700) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        fsx::open_dir_at(root.as_fd(), TRASH)
                    }
                    made => made,
                }
            }
            opened => opened,
        }
        .map_err(StorageError::io("opening", path))
    }

    /// Deletes these trash entries, then what crashed processes left there.
    fn purge(&self, trashed: Vec<OsString>) -> Result<()> {
        if !trashed.is_empty() {
            let trash = self.open_trash()?;
            for name in trashed {
                let path = self.dir.join(TRASH).join(&name);
                remove::remove_at(trash.as_fd(), &name, self.subvolumes)
                    .map_err(StorageError::io("deleting", path))?;
            }
        }
        self.purge_stale_trash();
        Ok(())
    }

    /// Deletes the trash entries of processes that are gone. Best effort: what cannot be
    /// deleted now stays for a later try, and shows in the inventory meanwhile.
    pub fn purge_stale_trash(&self) {
        let Ok(root) = self.open_root() else { return };
        let Ok(trash) = fsx::open_dir_at(root.as_fd(), TRASH) else {
            return;
        };
        let Ok(names) = layout::list(trash.as_fd()) else {
            return;
        };
        for name in names.iter().filter(|n| !deleter_lives(n)) {
            let _ = remove::remove_at(trash.as_fd(), name, self.subvolumes);
        }
    }
}

/// Whether the process that put this entry in the trash may still be deleting it.
fn deleter_lives(name: &OsStr) -> bool {
    let pid = name
        .to_str()
        .and_then(|n| n.split_once('-'))
        .and_then(|(pid, _)| pid.parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw);
    match pid {
        None => false,
        Some(pid) if pid.as_raw_nonzero().get() == std::process::id() as i32 => true,
        Some(pid) => !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trash_entry_is_stale_once_its_process_is_gone() {
        let mine = format!("{}-00ff", std::process::id());
        assert!(deleter_lives(OsStr::new(&mine)));
        assert!(deleter_lives(OsStr::new("1-00ff")), "init lives");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        assert!(!deleter_lives(OsStr::new(&format!("{gone}-00ff"))));
        for odd in ["", "x-1", "-1-2", "0-1", "junk"] {
            assert!(!deleter_lives(OsStr::new(odd)), "{odd}");
        }
    }
}
