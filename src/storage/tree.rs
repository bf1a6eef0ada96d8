//! Volumes and snapshots as plain directory trees, copied file by file: with reflinks
//! (`FICLONE`: XFS made with `-m reflink=1`, Btrfs, bcachefs), which share the data until it
//! is written, or as plain copies on any file system, the last resort.
//!
//! A snapshot is made while its source may be written, so it is not atomic: velo holds a
//! running server in backup mode meanwhile and then completes the snapshot
//! ([`Storage::complete_snapshot`]). The copy itself is [`treecopy`](super::treecopy), which
//! is safe against whatever the database superuser plants in the tree. This module touches
//! only its data directory.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use rustix::fs::{AtFlags, Dir, FileType};
use rustix::io::Errno;

use super::layout::{self, DataDir, blocking};
use super::remove::{self, Subvolumes};
pub use super::treecopy::Mode;
use super::treecopy::{self, CopyReport};
use super::{Capabilities, Inventory, Result, SnapshotRef, Space, Storage, StorageError, VolumeId};
use crate::fsx;
use crate::names::ProjectName;

/// Volumes as directory trees under one data directory, snapshotted by copying.
#[derive(Debug, Clone)]
pub struct TreeStorage {
    data: DataDir,
    mode: Mode,
}

impl TreeStorage {
    /// A store in `dir` for the velo home labelled `home`.
    pub fn new(dir: impl Into<PathBuf>, mode: Mode, home: impl Into<String>) -> Self {
        Self {
            data: DataDir {
                dir: dir.into(),
                home: home.into(),
                subvolumes: Subvolumes::No,
            },
            mode,
        }
    }

    fn backend(&self) -> &'static str {
        match self.mode {
            Mode::Reflink => "reflink",
            Mode::Copy => "copy",
        }
    }
}

/// Whether reflinks work in `dir`: clones one small temporary file into another there.
pub fn reflink_works(dir: &Path) -> bool {
    let Ok(dir) = fsx::open_dir(dir) else {
        return false;
    };
    let names = [
        layout::temp_name("reflink-probe-a"),
        layout::temp_name("reflink-probe-b"),
    ];
    let works = probe_reflink(dir.as_fd(), &names).is_ok();
    for name in &names {
        let _ = fsx::remove_at(dir.as_fd(), name);
    }
    works
}

fn probe_reflink(dir: BorrowedFd<'_>, names: &[String; 2]) -> io::Result<()> {
    use std::io::Write;
    fsx::create_new_at(dir, &names[0], 0o600)?.write_all(b"velo reflink probe")?;
    let fsx::Found::Regular(source, _) = fsx::open_regular_at(dir, &names[0])? else {
        return Err(io::ErrorKind::NotFound.into());
    };
    let copy = fsx::create_new_at(dir, &names[1], 0o600)?;
    Ok(rustix::fs::ioctl_ficlone(&copy, &source)?)
}

impl TreeStorage {
    /// Copies the tree `src` (shown as `shown_as`) as `name` in `parent`, built under a
    /// temporary name and synced before it takes its own.
    fn copy_into(
        &self,
        src: BorrowedFd<'_>,
        shown_as: &Path,
        parent: BorrowedFd<'_>,
        name: &str,
        path: &Path,
    ) -> Result<CopyReport> {
        let mut report = CopyReport::default();
        self.data.build(parent, name, path, |tmp| {
            let dst = fsx::create_dir_at(parent, tmp, 0o700)
                .map_err(StorageError::io("creating", path))?;
            report = treecopy::copy_tree(src, dst.as_fd(), self.mode, shown_as)?;
            // One sync of the file system makes the whole copy durable.
            rustix::fs::syncfs(&dst).map_err(|e| StorageError::io("syncing", path)(e.into()))
        })?;
        Ok(report)
    }

    fn snapshot_now(&self, s: &SnapshotRef) -> Result<CopyReport> {
        let src = self.data.open_volume(&s.volume)?;
        let snapshots = self.data.open_snapshots(&s.volume.project, true)?;
        let snapshots =
            snapshots.ok_or_else(|| missing(&self.data.snapshots_path(&s.volume.project)))?;
        let (name, path) = (layout::snapshot_leaf(s), self.data.snapshot_path(s));
        self.copy_into(
            src.as_fd(),
            &self.data.volume_path(&s.volume),
            snapshots.as_fd(),
            &name,
            &path,
        )
    }

    fn clone_now(&self, from: &SnapshotRef, into: &VolumeId) -> Result<PathBuf> {
        let src = self.data.open_snapshot(from)?;
        let project = self.data.open_project(&into.project, true)?;
        let project = project.ok_or_else(|| missing(&self.data.project_path(&into.project)))?;
        let path = self.data.volume_path(into);
        let shown_as = self.data.snapshot_path(from);
        self.copy_into(
            src.as_fd(),
            &shown_as,
            project.as_fd(),
            &into.in_project(),
            &path,
        )?;
        Ok(path)
    }

    fn create_now(&self, v: &VolumeId) -> Result<PathBuf> {
        let project = self.data.open_project(&v.project, true)?;
        let project = project.ok_or_else(|| missing(&self.data.project_path(&v.project)))?;
        let path = self.data.volume_path(v);
        let made = fsx::create_dir_at(project.as_fd(), v.in_project(), 0o700)
            .map_err(StorageError::io("creating", &path))?;
        rustix::fs::fchmod(&made, rustix::fs::Mode::from_raw_mode(0o700))
            .map_err(|e| StorageError::io("setting the mode of", &path)(e.into()))?;
        Ok(path)
    }

    fn complete_now(&self, s: &SnapshotRef, late: &[&str], files: &[(&str, &[u8])]) -> Result<()> {
        let volume = self.data.open_volume(&s.volume)?;
        let snapshot = self.data.open_snapshot(s)?;
        let (volume_path, snapshot_path) =
            (self.data.volume_path(&s.volume), self.data.snapshot_path(s));
        for rel in late {
            let (parents, name) = split_relative(rel)?;
            let src = walk(volume.as_fd(), &parents, &volume_path)?;
            let dst = walk(snapshot.as_fd(), &parents, &snapshot_path)?;
            let shown_as = volume_path.join(parents.iter().collect::<PathBuf>());
            self.recopy(
                src.as_fd(),
                dst.as_fd(),
                name,
                &shown_as,
                &snapshot_path.join(rel),
            )?;
        }
        for (rel, contents) in files {
            let (parents, name) = split_relative(rel)?;
            let dst = walk(snapshot.as_fd(), &parents, &snapshot_path)?;
            let st = rustix::fs::fstat(&dst)
                .map_err(|e| StorageError::io("reading", &snapshot_path)(e.into()))?;
            fsx::replace_at(
                dst.as_fd(),
                name,
                contents,
                0o600,
                Some((st.st_uid, st.st_gid)),
            )
            .map_err(StorageError::io("writing", snapshot_path.join(rel)))?;
        }
        rustix::fs::syncfs(&snapshot)
            .map_err(|e| StorageError::io("syncing", &snapshot_path)(e.into()))
    }

    /// Replaces `name` in `dst` by a fresh copy of `name` in `src` (or by nothing, if it is
    /// gone from `src`): copied under a temporary name first, then swapped in.
    fn recopy(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &str,
        shown_as: &Path,
        path: &Path,
    ) -> Result<()> {
        let fail = |action| StorageError::io(action, path);
        let exists = match rustix::fs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => true,
            Err(Errno::NOENT) => false,
            Err(e) => return Err(fail("reading")(e.into())),
        };
        let tmp = layout::temp_name(name);
        if exists {
            let tmp = OsStr::new(&tmp);
            let copied = treecopy::copy_entry(src, OsStr::new(name), dst, tmp, self.mode, shown_as);
            if copied.is_err() {
                // The copy's error is the one to report; what is left goes with the snapshot.
                let _ = remove::remove_at(dst, tmp, Subvolumes::No);
            }
            copied?;
        }
        remove::remove_at(dst, OsStr::new(name), Subvolumes::No).map_err(fail("replacing"))?;
        if exists {
            rustix::fs::renameat(dst, tmp.as_str(), dst, name)
                .map_err(|e| fail("replacing")(e.into()))?;
        }
        Ok(())
    }

    fn usage_now(&self, p: &ProjectName) -> Result<BTreeMap<String, u64>> {
        let mut usage = BTreeMap::new();
        if self.mode != Mode::Copy {
            return Ok(usage);
        }
        for entry in self.data.inventory()?.entries {
            let path = match (&entry.volume, &entry.snapshot) {
                (Some(v), _) if &v.project == p => self.data.volume_path(v),
                (_, Some(s)) if &s.volume.project == p => self.data.snapshot_path(s),
                _ => continue,
            };
            let size = fsx::open_dir(&path)
                .and_then(tree_size)
                .map_err(StorageError::io("measuring", &path))?;
            usage.insert(entry.name, size);
        }
        Ok(usage)
    }
}

fn missing(path: &Path) -> StorageError {
    StorageError::io("opening", path)(io::ErrorKind::NotFound.into())
}

/// `pgdata/pg_wal` as (`["pgdata"]`, `"pg_wal"`); anything but plain names is refused.
fn split_relative(rel: &str) -> Result<(Vec<&str>, &str)> {
    let parts: Vec<&str> = rel.split('/').collect();
    let plain = parts
        .iter()
        .all(|p| !p.is_empty() && *p != "." && *p != "..");
    match parts.split_last() {
        Some((name, parents)) if plain => Ok((parents.to_vec(), name)),
        _ => Err(StorageError::Refused(format!(
            "`{rel}` is not a path inside a volume (plain names separated by `/`)"
        ))),
    }
}

/// Opens the directory `parents` below `root`, one component at a time, following no link.
fn walk(root: BorrowedFd<'_>, parents: &[&str], shown_as: &Path) -> Result<OwnedFd> {
    let mut dir = root
        .try_clone_to_owned()
        .map_err(StorageError::io("opening", shown_as))?;
    let mut path = shown_as.to_path_buf();
    for part in parents {
        path.push(part);
        dir = fsx::open_dir_at(dir.as_fd(), part).map_err(StorageError::io("opening", &path))?;
    }
    Ok(dir)
}

/// The sum of the sizes of the regular files in a tree (following no link), to the depth a
/// copy goes.
fn tree_size(root: OwnedFd) -> io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![Dir::new(root)?];
    loop {
        let deeper = stack.len() < treecopy::MAX_DEPTH;
        let Some(dir) = stack.last_mut() else {
            return Ok(total);
        };
        let Some(entry) = dir.read() else {
            stack.pop();
            continue;
        };
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let st = match rustix::fs::statat(dir.fd()?, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => continue,
            other => other?,
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => total += u64::try_from(st.st_size).unwrap_or(0),
            FileType::Directory if deeper => match fsx::open_dir_at(dir.fd()?, name) {
                Ok(child) => stack.push(Dir::new(child)?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            },
            _ => {}
        }
    }
}

#[async_trait]
impl Storage for TreeStorage {
    fn describe(&self) -> String {
        format!("{} at {}", self.backend(), self.data.dir.display())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_snapshot: false,
            clone_pins_source: false,
            copies_data: self.mode == Mode::Copy,
        }
    }

    async fn prepare(&self) -> Result<()> {
        let data = self.data.clone();
        blocking(&self.data.dir, move || data.prepare(|_| Ok(()))).await
    }

    async fn create_volume(&self, v: &VolumeId) -> Result<PathBuf> {
        let (me, v) = (self.clone(), v.clone());
        blocking(&self.data.dir, move || me.create_now(&v)).await
    }

    async fn snapshot(&self, s: &SnapshotRef) -> Result<()> {
        let (me, s) = (self.clone(), s.clone());
        blocking(&self.data.dir, move || me.snapshot_now(&s).map(drop)).await
    }

    async fn complete_snapshot(
        &self,
        s: &SnapshotRef,
        late: &[&str],
        files: &[(&str, &[u8])],
    ) -> Result<()> {
        let (me, s) = (self.clone(), s.clone());
        let late: Vec<String> = late.iter().map(|l| l.to_string()).collect();
        let files: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_vec()))
            .collect();
        blocking(&self.data.dir, move || {
            let late: Vec<&str> = late.iter().map(String::as_str).collect();
            let files: Vec<(&str, &[u8])> = files
                .iter()
                .map(|(n, c)| (n.as_str(), c.as_slice()))
                .collect();
            me.complete_now(&s, &late, &files)
        })
        .await
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

    async fn usage(&self, project: &ProjectName) -> Result<BTreeMap<String, u64>> {
        let (me, p) = (self.clone(), project.clone());
        blocking(&self.data.dir, move || me.usage_now(&p)).await
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

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
