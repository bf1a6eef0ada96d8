//! Removes a directory tree that someone else may have filled, without following a link and
//! without limits a hostile tree could exceed.
//!
//! A volume's files belong to its database superuser, who can plant links, special files and
//! directories nested deeper than any stack or descriptor table. Every directory is opened
//! relative to its parent's handle (`O_NOFOLLOW|O_DIRECTORY`) and every name is removed with
//! `unlinkat` on that handle, so a link is removed, never followed. At most [`MAX_OPEN`]
//! directories are open at once: a directory deeper than that is moved up to the top of the
//! tree being removed and emptied from there in a later pass.
//!
//! On Btrfs a directory may be a subvolume (velo's volumes and snapshots, or one a user made
//! inside a volume): it is deleted whole with one ioctl where the kernel allows it.
//!
//! This module only removes what it is given; it knows nothing of velo's layout.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, Dir, FileType, Mode};
use rustix::io::Errno;

use super::btrfs::ioctl as btrfs;
use crate::fsx;

/// How many directories one pass holds open, one per level.
const MAX_OPEN: usize = 32;

/// Whether directories may be Btrfs subvolumes, to be deleted as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subvolumes {
    No,
    Btrfs,
}

/// Removes `name` in `parent`, whatever it is: a file or link is unlinked, a directory
/// emptied and removed, a subvolume deleted. Missing is success.
pub fn remove_at(parent: BorrowedFd<'_>, name: &OsStr, subvolumes: Subvolumes) -> io::Result<()> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => return Ok(()),
        other => other?,
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return unlink(parent, name);
    }
    if subvolumes == Subvolumes::Btrfs
        && btrfs::is_subvolume_root(&st)
        && btrfs::destroy_at(parent, name)?
    {
        return Ok(());
    }
    let Some(dir) = open_child(parent, name)? else {
        return Ok(());
    };
    empty(dir, subvolumes)?;
    rmdir(parent, name)
}

/// Removes everything in the directory `root`, leaving it empty.
pub fn empty(root: OwnedFd, subvolumes: Subvolumes) -> io::Result<()> {
    let mut pass = Pass {
        root: root.as_fd(),
        subvolumes,
        moved_up: 0,
    };
    loop {
        pass.moved_up = 0;
        pass.run(Dir::read_from(&root)?)?;
        if pass.moved_up == 0 {
            return Ok(());
        }
    }
}

/// One depth-first walk over the tree under `root`, removing as it goes.
struct Pass<'a> {
    root: BorrowedFd<'a>,
    subvolumes: Subvolumes,
    /// Directories moved up to `root` because they were too deep: they need another pass.
    moved_up: usize,
}

/// A directory being emptied, and its name in the directory below it on the stack.
struct Level {
    dir: Dir,
    name: Option<OsString>,
}

impl Pass<'_> {
    fn run(&mut self, root: Dir) -> io::Result<()> {
        let mut stack = vec![Level {
            dir: root,
            name: None,
        }];
        loop {
            let depth = stack.len();
            let Some(top) = stack.last_mut() else {
                return Ok(());
            };
            let Some(entry) = top.dir.read() else {
                let Some(done) = stack.pop() else {
                    return Ok(());
                };
                if let (Some(below), Some(name)) = (stack.last(), done.name) {
                    drop(done.dir);
                    rmdir(below.dir.fd()?, &name)?;
                }
                continue;
            };
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string();
            if name == "." || name == ".." {
                continue;
            }
            let here = top.dir.fd()?;
            if !self.is_dir(here, &name, entry.file_type())? {
                unlink(here, &name)?;
            } else if let Some(child) = self.enter(here, &name, depth)? {
                stack.push(Level {
                    dir: Dir::new(child)?,
                    name: Some(name),
                });
            }
        }
    }

    fn is_dir(&self, dir: BorrowedFd<'_>, name: &OsStr, listed: FileType) -> io::Result<bool> {
        if listed != FileType::Unknown {
            return Ok(listed == FileType::Directory);
        }
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(FileType::from_raw_mode(st.st_mode) == FileType::Directory),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the directory `name` in `dir` to be emptied, or deals with it at once (a deleted
    /// subvolume, a directory moved up to the root): `None` then.
    fn enter(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        depth: usize,
    ) -> io::Result<Option<OwnedFd>> {
        if self.subvolumes == Subvolumes::Btrfs && btrfs::is_subvolume_at(dir, name)? {
            if btrfs::destroy_at(dir, name)? {
                return Ok(None);
            }
        } else if depth >= MAX_OPEN {
            let up = format!(".velo-deep-{}", rand_suffix());
            rustix::fs::renameat(dir, name, self.root, up.as_str())?;
            self.moved_up += 1;
            return Ok(None);
        }
        open_child(dir, name)
    }
}

/// Opens a directory to empty it; `None` if it is gone. A directory of velo's own user that
/// its owner cannot write (a tree copied from one with mode 0500) is made writable first.
fn open_child(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<OwnedFd>> {
    let child = match fsx::open_dir_at(dir, name) {
        Err(e) if Errno::from_io_error(&e) == Some(Errno::NOENT) => return Ok(None),
        // Replaced by a file or link since it was listed: remove that instead.
        Err(e) if matches!(Errno::from_io_error(&e), Some(Errno::NOTDIR | Errno::LOOP)) => {
            unlink(dir, name)?;
            return Ok(None);
        }
        other => other?,
    };
    let st = rustix::fs::fstat(&child)?;
    if st.st_uid == rustix::process::geteuid().as_raw() && st.st_mode & 0o300 != 0o300 {
        rustix::fs::fchmod(&child, Mode::from_raw_mode((st.st_mode & 0o777) | 0o700))?;
    }
    Ok(Some(child))
}

fn unlink(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn rmdir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A random suffix for names velo makes up (temporary and trash names).
pub fn rand_suffix() -> String {
    use rand::RngExt;
    format!("{:016x}", rand::rng().random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn remove(parent: &Path, name: &str) -> io::Result<()> {
        let fd = fsx::open_dir(parent).unwrap();
        remove_at(fd.as_fd(), OsStr::new(name), Subvolumes::No)
    }

    #[test]
    fn removes_a_tree_but_never_what_its_links_point_to() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "keep").unwrap();
        let work = tempfile::tempdir().unwrap();
        let tree = work.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), tree.join("a/dirlink")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("precious"), tree.join("filelink")).unwrap();
        remove(work.path(), "tree").unwrap();
        assert!(!tree.exists());
        assert_eq!(
            std::fs::read_to_string(outside.path().join("precious")).unwrap(),
            "keep"
        );
        remove(work.path(), "tree").unwrap();
    }

    #[test]
    fn removes_a_tree_deeper_than_the_open_directories_allowed() {
        let work = tempfile::tempdir().unwrap();
        let mut dir =
            fsx::create_dir_at(fsx::open_dir(work.path()).unwrap().as_fd(), "deep", 0o700).unwrap();
        for i in 0..(MAX_OPEN * 3 + 5) {
            drop(fsx::create_new_at(dir.as_fd(), format!("f{i}"), 0o600).unwrap());
            dir = fsx::create_dir_at(dir.as_fd(), "d", 0o700).unwrap();
        }
        remove(work.path(), "deep").unwrap();
        assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
    }

    #[test]
    fn removes_special_files_and_an_unwritable_directory_of_its_own() {
        let work = tempfile::tempdir().unwrap();
        let tree = work.path().join("tree");
        std::fs::create_dir_all(tree.join("ro")).unwrap();
        std::fs::write(tree.join("ro/f"), "x").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            tree.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(tree.join("sock")).unwrap();
        rustix::fs::chmod(tree.join("ro"), Mode::from_raw_mode(0o500)).unwrap();
        remove(work.path(), "tree").unwrap();
        assert!(!tree.exists());
    }

    #[test]
    fn removes_a_single_file_or_link() {
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", work.path().join("l")).unwrap();
        remove(work.path(), "f").unwrap();
        remove(work.path(), "l").unwrap();
        assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
        assert!(Path::new("/etc/passwd").exists());
    }
}
