//! The data directory of the file-system backends (Btrfs subvolumes, reflinked or copied
//! trees) and everything they share about it: where volumes and snapshots live, the home
//! marker, how a new one takes its name, the inventory and the space.
//!
//! ```text
//! <dir>/.velo-home                               the velo home this directory belongs to
//! <dir>/.trash/<pid>-<random>                    what a destroy has freed the name of
//! <dir>/<project>/<branch>.<generation>          a volume
//! <dir>/<project>/.snapshots/<branch>.<generation>@<id>   a snapshot
//! ```
//!
//! Only names derived from validated [`VolumeId`]s and [`SnapshotRef`]s are built here, and
//! every step below `<dir>` goes through a directory handle without following links. This
//! module touches nothing outside `<dir>`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir};
use rustix::io::Errno;

use super::remove::{self, Subvolumes};
use super::{Availability, Entry, Inventory, Result, SnapshotRef, Space, StorageError, VolumeId};
use crate::fsx;
use crate::names::{ProjectName, SnapshotId};

/// The file in `<dir>` that names the velo home the directory belongs to.
pub const MARKER: &str = ".velo-home";
/// Where destroyed volumes wait to be deleted, their names already free.
pub const TRASH: &str = ".trash";
/// The directory of a project's snapshots.
pub const SNAPSHOTS: &str = ".snapshots";
/// What a temporary name has after the final name it is built for.
const TEMP: &str = ".tmp-";

/// A backend's data directory, for the velo home `home`.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub dir: PathBuf,
    pub home: String,
    pub subvolumes: Subvolumes,
}

impl DataDir {
    pub fn project_path(&self, p: &ProjectName) -> PathBuf {
        self.dir.join(p.as_str())
    }

    pub fn snapshots_path(&self, p: &ProjectName) -> PathBuf {
        self.project_path(p).join(SNAPSHOTS)
    }

    pub fn volume_path(&self, v: &VolumeId) -> PathBuf {
        self.project_path(&v.project).join(v.in_project())
    }

    pub fn snapshot_path(&self, s: &SnapshotRef) -> PathBuf {
        self.snapshots_path(&s.volume.project)
            .join(snapshot_leaf(s))
    }

    /// Creates `dir` (mode 0700) if missing, refuses one that is not the caller's or that
    /// another velo home marked, marks it for this home, and clears what crashed destroys
    /// left in the trash. `check` vets the file system (Btrfs must be Btrfs).
    pub fn prepare(&self, check: impl FnOnce(BorrowedFd<'_>) -> Result<()>) -> Result<()> {
        if let Err(e) = std::fs::symlink_metadata(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(StorageError::io("reading", &self.dir)(e));
            }
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(StorageError::io("creating the data directory", &self.dir))?;
        }
        let root = self.open_root()?;
        let st = rustix::fs::fstat(&root).map_err(|e| self.fail("reading", e))?;
        let me = rustix::process::geteuid().as_raw();
        if st.st_uid != me {
            return Err(StorageError::Refused(format!(
                "data directory {} belongs to uid {}, not to velo's user (uid {me})",
                self.dir.display(),
                st.st_uid
            )));
        }
        check(root.as_fd())?;
        self.mark(root.as_fd())?;
        self.purge_stale_trash();
        Ok(())
    }

    /// Writes this home's marker, or checks the one there.
    fn mark(&self, root: BorrowedFd<'_>) -> Result<()> {
        let label = format!("{}\n", self.home);
        match fsx::write_new_at(root, MARKER, label.as_bytes(), 0o600) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            other => return other.map_err(StorageError::io("writing", self.dir.join(MARKER))),
        }
        match self.marker(root)? {
            Some(found) if found == self.home => Ok(()),
            found => Err(StorageError::Refused(format!(
                "data directory {} belongs to velo home `{}`, not to `{}`: give this home a data directory of its own",
                self.dir.display(),
                found.unwrap_or_default(),
                self.home
            ))),
        }
    }

    /// The home label in `<dir>/.velo-home`, if there is one.
    fn marker(&self, root: BorrowedFd<'_>) -> Result<Option<String>> {
        let text = fsx::read_regular_at(root, MARKER, 64 * 1024)
            .map_err(StorageError::io("reading", self.dir.join(MARKER)))?;
        Ok(text.map(|t| {
            let t = String::from_utf8_lossy(&t);
            t.strip_suffix('\n').unwrap_or(&t).to_string()
        }))
    }

    fn fail(&self, action: &'static str, e: impl Into<io::Error>) -> StorageError {
        StorageError::io(action, &self.dir)(e.into())
    }

    pub fn open_root(&self) -> Result<OwnedFd> {
        fsx::open_dir(&self.dir).map_err(|e| match Errno::from_io_error(&e) {
            Some(Errno::LOOP | Errno::NOTDIR) => StorageError::Refused(format!(
                "data directory {} is not a directory (or is a link): velo does not follow it",
                self.dir.display()
            )),
            _ => self.fail("opening the data directory", e),
        })
    }

    /// A project's directory; made (0700) if missing when `create`, else `None` if missing.
    pub fn open_project(&self, p: &ProjectName, create: bool) -> Result<Option<OwnedFd>> {
        let root = self.open_root()?;
        open_or_create(root.as_fd(), p.as_str(), create, &self.project_path(p))
    }

    /// A project's snapshot directory; as [`DataDir::open_project`].
    pub fn open_snapshots(&self, p: &ProjectName, create: bool) -> Result<Option<OwnedFd>> {
        let Some(project) = self.open_project(p, create)? else {
            return Ok(None);
        };
        open_or_create(project.as_fd(), SNAPSHOTS, create, &self.snapshots_path(p))
    }

    pub fn open_volume(&self, v: &VolumeId) -> Result<OwnedFd> {
        let project = self.open_project(&v.project, false)?;
        open_existing(
            project,
            &v.in_project(),
            &self.volume_path(v),
            "no volume at",
        )
    }

    pub fn open_snapshot(&self, s: &SnapshotRef) -> Result<OwnedFd> {
        let snapshots = self.open_snapshots(&s.volume.project, false)?;
        open_existing(
            snapshots,
            &snapshot_leaf(s),
            &self.snapshot_path(s),
            "no snapshot at",
        )
    }

    /// Makes `name` in `parent` (shown as `path`) by `make(temporary name)`, then renames it
    /// into place: a half-made one never has its final name, and is removed if making fails.
    pub fn build(
        &self,
        parent: BorrowedFd<'_>,
        name: &str,
        path: &Path,
        make: impl FnOnce(&OsStr) -> Result<()>,
    ) -> Result<()> {
        refuse_existing(parent, name, path)?;
        let tmp = temp_name(name);
        let made = make(OsStr::new(&tmp)).and_then(|()| {
            fsx::rename_new_at(parent, &tmp, parent, name)
                .map_err(StorageError::io("renaming into place", path))
        });
        if made.is_err() {
            // The error that matters is `made`'s; a temporary left behind is swept by the
            // destroy of its volume or snapshot.
            let _ = remove::remove_at(parent, OsStr::new(&tmp), self.subvolumes);
        }
        made?;
        rustix::fs::fsync(parent).map_err(|e| StorageError::io("syncing", path)(e.into()))
    }

    pub fn path(&self, v: &VolumeId) -> Option<PathBuf> {
        let path = self.volume_path(v);
        std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_dir())
            .then_some(path)
    }

    pub fn ensure_available(&self, v: &VolumeId) -> Result<PathBuf> {
        self.path(v).ok_or_else(|| StorageError::Io {
            action: "no volume at",
            path: self.volume_path(v),
            source: io::ErrorKind::NotFound.into(),
        })
    }

    /// `statvfs` of the data directory.
    pub fn space(&self, name: String) -> Result<Space> {
        let st =
            rustix::fs::statvfs(&self.dir).map_err(|e| self.fail("reading the space of", e))?;
        Ok(Space {
            name,
            health: "ok".into(),
            used: st.f_blocks.saturating_sub(st.f_bfree) * st.f_frsize,
            available: st.f_bavail * st.f_frsize,
        })
    }
}

/// The inventory: what `<dir>` holds, by velo's layout.
impl DataDir {
    pub fn inventory(&self) -> Result<Inventory> {
        let root = match fsx::open_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Inventory::default()),
            other => other.map_err(|e| self.fail("opening the data directory", e))?,
        };
        let home = self.marker(root.as_fd())?;
        if home.as_deref() != Some(self.home.as_str()) {
            return Ok(Inventory::default());
        }
        let mut entries = Vec::new();
        for name in list(root.as_fd()).map_err(|e| self.fail("listing", e))? {
            let path = self.dir.join(&name);
            let project = name.to_str().and_then(ProjectName::parse_stored);
            match project {
                Some(p) if path.is_dir() && !path.is_symlink() => {
                    self.list_project(&p, &mut entries)?
                }
                _ if name == MARKER => {}
                _ if name == TRASH => {
                    self.list_unknown(&path, Availability::NotApplicable, &mut entries)?
                }
                _ => entries.push(unknown(
                    &path,
                    Availability::Available { path: path.clone() },
                )),
            }
        }
        for entry in &mut entries {
            entry.home = home.clone();
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Inventory {
            present: true,
            entries,
        })
    }

    fn list_project(&self, p: &ProjectName, out: &mut Vec<Entry>) -> Result<()> {
        let dir = self.project_path(p);
        for name in list_path(&dir)? {
            let path = dir.join(&name);
            if name == SNAPSHOTS {
                self.list_snapshots(p, &path, out)?;
                continue;
            }
            let volume = name
                .to_str()
                .and_then(|n| VolumeId::parse_in_project(p, n))
                .filter(|_| path.is_dir() && !path.is_symlink());
            out.push(Entry {
                volume,
                ..unknown(&path, Availability::Available { path: path.clone() })
            });
        }
        Ok(())
    }

    fn list_snapshots(&self, p: &ProjectName, dir: &Path, out: &mut Vec<Entry>) -> Result<()> {
        for name in list_path(dir)? {
            let path = dir.join(&name);
            let snapshot = name.to_str().and_then(|n| parse_snapshot_leaf(p, n));
            out.push(Entry {
                snapshot,
                ..unknown(&path, Availability::NotApplicable)
            });
        }
        Ok(())
    }

    fn list_unknown(
        &self,
        dir: &Path,
        available: Availability,
        out: &mut Vec<Entry>,
    ) -> Result<()> {
        for name in list_path(dir)? {
            out.push(unknown(&dir.join(name), available.clone()));
        }
        Ok(())
    }
}

fn unknown(path: &Path, available: Availability) -> Entry {
    Entry {
        name: path.display().to_string(),
        volume: None,
        snapshot: None,
        available,
        origin: None,
        home: None,
    }
}

/// `<branch>.<generation>@<id>`: a snapshot's name in its project's snapshot directory.
pub fn snapshot_leaf(s: &SnapshotRef) -> String {
    format!("{}@{}", s.volume.in_project(), s.id)
}

/// Reads back a [`snapshot_leaf`].
pub fn parse_snapshot_leaf(p: &ProjectName, leaf: &str) -> Option<SnapshotRef> {
    let (volume, id) = leaf.split_once('@')?;
    Some(SnapshotRef {
        volume: VolumeId::parse_in_project(p, volume)?,
        id: id.parse::<SnapshotId>().ok()?,
    })
}

/// A name to build `name` under: hidden, unique, and recognisably `name`'s
/// (`.<name>.tmp-<pid>-<random>`), so the destroy of `name` can sweep it up after a crash.
pub fn temp_name(name: &str) -> String {
    format!(
        "{}{}-{}",
        temp_prefix(name),
        std::process::id(),
        remove::rand_suffix()
    )
}

/// What every temporary name for `name` starts with.
pub fn temp_prefix(name: &str) -> String {
    format!(".{name}{TEMP}")
}

/// The names in a directory, but `.` and `..`.
pub fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            names.push(name.to_os_string());
        }
    }
    Ok(names)
}

fn list_path(dir: &Path) -> Result<Vec<OsString>> {
    match fsx::open_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other
            .and_then(|fd| list(fd.as_fd()))
            .map_err(StorageError::io("listing", dir)),
    }
}

fn refuse_existing(parent: BorrowedFd<'_>, name: &str, path: &Path) -> Result<()> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Ok(_) => Err(StorageError::io("creating", path)(
            io::ErrorKind::AlreadyExists.into(),
        )),
        Err(e) => Err(StorageError::io("reading", path)(e.into())),
    }
}

fn open_or_create(
    parent: BorrowedFd<'_>,
    name: &str,
    create: bool,
    path: &Path,
) -> Result<Option<OwnedFd>> {
    match fsx::open_dir_at(parent, name) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match fsx::create_dir_at(parent, name, 0o700) {
                // Made by someone else meanwhile.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    fsx::open_dir_at(parent, name)
                        .map(Some)
                        .map_err(StorageError::io("opening", path))
                }
                made => made.map(Some).map_err(StorageError::io("creating", path)),
            }
        }
        Err(e) => Err(StorageError::io("opening", path)(e)),
    }
}

fn open_existing(
    parent: Option<OwnedFd>,
    name: &str,
    path: &Path,
    missing: &'static str,
) -> Result<OwnedFd> {
    let gone = || StorageError::io(missing, path)(io::ErrorKind::NotFound.into());
    let parent = parent.ok_or_else(gone)?;
    fsx::open_dir_at(parent.as_fd(), name).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => gone(),
        _ => StorageError::io("opening", path)(e),
    })
}

/// Runs blocking file-system work in the data directory `dir` off the async runtime's threads.
pub async fn blocking<T: Send + 'static>(
    dir: &Path,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(StorageError::io("working in", dir)(io::Error::other(e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> VolumeId {
        let (r, g) = s.split_once('.').unwrap();
        VolumeId::new(&r.parse().unwrap(), g.parse().unwrap())
    }

    #[test]
    fn snapshot_leaves_read_back_and_odd_ones_do_not() {
        let p: ProjectName = "demo".parse().unwrap();
        let s = SnapshotRef {
            volume: v("demo/dev.3"),
            id: "0123456789ab".parse().unwrap(),
        };
        assert_eq!(snapshot_leaf(&s), "dev.3@0123456789ab");
        assert_eq!(parse_snapshot_leaf(&p, "dev.3@0123456789ab"), Some(s));
        for odd in [
            "dev.3",
            "dev.3@",
            "dev.03@0123456789ab",
            "dev.3@xyz",
            "Dev.3@0123456789ab",
            "dev.3@0123456789ab@1",
        ] {
            assert_eq!(parse_snapshot_leaf(&p, odd), None, "{odd}");
        }
    }

    #[test]
    fn temporary_names_are_hidden_and_never_another_volumes() {
        let t = temp_name("dev.1");
        assert!(t.starts_with(".dev.1.tmp-"));
        assert!(!t.starts_with(&temp_prefix("dev.10")));
        let p: ProjectName = "demo".parse().unwrap();
        assert_eq!(VolumeId::parse_in_project(&p, &t), None);
        assert_eq!(
            parse_snapshot_leaf(&p, &temp_name("dev.1@0123456789ab")),
            None
        );
    }
}
