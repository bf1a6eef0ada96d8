//! Copies a directory tree that someone else controls, and may be changing, file by file:
//! how the reflink and plain-copy backends make snapshots and clones.
//!
//! The tree is a PostgreSQL data directory, whose database superuser can create anything in
//! it while velo copies, and velo may run as root. So:
//! - every directory is opened relative to its parent's handle with `O_NOFOLLOW|O_DIRECTORY`:
//!   a directory swapped for a link mid-walk is never followed;
//! - a symbolic link is copied as a link (its target text), never followed;
//! - a file is opened for reading only once it is known, through its own handle, to be a
//!   regular file ([`fsx::open_regular_at`]): a FIFO is never opened (it would block), nor a
//!   device (opening one can act on it);
//! - FIFOs, sockets and devices are skipped and counted ([`CopyReport::skipped`]);
//! - a hard link to a file elsewhere in the tree is copied as a file of its own (it cannot
//!   reach outside the volume's file system);
//! - copies get the source's permission bits without setuid, setgid and sticky (`& 0o777`),
//!   and, when velo runs as root, the source's owner (`fchown` on the open copy);
//! - a tree deeper than [`MAX_DEPTH`] directories is refused, not recursed into.
//!
//! The files of a directory are copied once its listing is read, by a few threads when there
//! are many. Timestamps, extended attributes and ACLs are not copied: PostgreSQL needs none of them.
//! Nothing here syncs; the caller syncs the destination file system once at the end.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rustix::fs::{AtFlags, Dir, FileType, Gid, Uid};
use rustix::io::Errno;

use super::{Result, StorageError};
use crate::fsx::{self, Found};

/// How deep a copied tree may be, in directories. PostgreSQL's data directory is 3 deep.
pub const MAX_DEPTH: usize = 64;

/// A directory with at least this many files has them copied by several threads: creating a
/// file and cloning its data each wait on the file system's journal, and threads overlap the
/// waits (on XFS, two threads halve the time of 1,500 small files).
const PARALLEL_FROM: usize = 32;
/// At most this many threads copy files.
const MAX_WORKERS: usize = 4;

/// How file contents are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Share the data with the source (`FICLONE`): XFS with reflink, Btrfs, bcachefs.
    Reflink,
    /// Copy the data (`copy_file_range`, or reads and writes): any file system.
    Copy,
}

/// What a copy did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyReport {
    pub files: u64,
    pub directories: u64,
    pub links: u64,
    /// FIFOs, sockets and device nodes: never opened, not copied.
    pub skipped: u64,
    /// Entries gone, or become something else, between being listed and being copied.
    pub changed: u64,
}

/// Copies everything in the directory `src` into the empty directory `dst`, then gives `dst`
/// the permission bits (and, as root, the owner) of `src`. `shown_as` names `src` in errors.
pub fn copy_tree(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    mode: Mode,
    shown_as: &Path,
) -> Result<CopyReport> {
    let mut copier = Copier::new(mode, shown_as);
    let fail = |e| StorageError::io("copying", shown_as)(e);
    let st = rustix::fs::fstat(src).map_err(|e| fail(e.into()))?;
    copier.own(dst, &st, Path::new(""))?;
    let root = Frame {
        src: Dir::read_from(src).map_err(|e| fail(e.into()))?,
        dst: dst.try_clone_to_owned().map_err(fail)?,
        mode: st.st_mode & 0o777,
        rel: PathBuf::new(),
        files: Vec::new(),
    };
    copier.walk(root)?;
    Ok(copier.report)
}

/// Copies the entry `name` of `src_dir` (a file, a link or a whole tree) as the new entry
/// `dst_name` of `dst_dir`. `shown_as` names `src_dir` in errors.
pub fn copy_entry(
    src_dir: BorrowedFd<'_>,
    name: &OsStr,
    dst_dir: BorrowedFd<'_>,
    dst_name: &OsStr,
    mode: Mode,
    shown_as: &Path,
) -> Result<CopyReport> {
    let mut copier = Copier::new(mode, shown_as);
    let at = Here {
        src: src_dir,
        dst: dst_dir,
        rel: Path::new(""),
        depth: 0,
    };
    if let Some(frame) = copier.entry(&at, name, dst_name, FileType::Unknown)? {
        copier.walk(frame)?;
    }
    Ok(copier.report)
}

struct Copier<'a> {
    mode: Mode,
    as_root: bool,
    workers: usize,
    shown_as: &'a Path,
    report: CopyReport,
}

/// A directory being copied: its listing, its open copy, the permission bits the copy gets
/// once filled (it stays writable until then), its path under the root (for errors), and the
/// regular files listed so far, copied together once the listing ends.
struct Frame {
    src: Dir,
    dst: OwnedFd,
    mode: u32,
    rel: PathBuf,
    files: Vec<OsString>,
}

/// Where an entry is copied from and to.
struct Here<'a> {
    src: BorrowedFd<'a>,
    dst: BorrowedFd<'a>,
    rel: &'a Path,
    depth: usize,
}

impl<'a> Copier<'a> {
    fn new(mode: Mode, shown_as: &'a Path) -> Self {
        Self {
            mode,
            as_root: rustix::process::geteuid().is_root(),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS)),
            shown_as,
            report: CopyReport::default(),
        }
    }

    fn fail(&self, action: &'static str, rel: &Path) -> impl FnOnce(io::Error) -> StorageError {
        StorageError::io(action, self.shown_as.join(rel))
    }

    /// Copies the tree under `root`, depth first, with one open directory pair per level.
    fn walk(&mut self, root: Frame) -> Result<()> {
        let mut stack = vec![root];
        loop {
            let depth = stack.len();
            let Some(top) = stack.last_mut() else {
                return Ok(());
            };
            let Some(entry) = top.src.read() else {
                if let Some(done) = stack.pop() {
                    self.finish(&done)?;
                }
                continue;
            };
            let entry = entry.map_err(|e| self.fail("listing", &top.rel)(e.into()))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            if entry.file_type() == FileType::RegularFile {
                top.files.push(name.to_os_string());
                continue;
            }
            let src = top
                .src
                .fd()
                .map_err(|e| self.fail("listing", &top.rel)(e.into()))?;
            let at = Here {
                src,
                dst: top.dst.as_fd(),
                rel: &top.rel,
                depth,
            };
            if let Some(child) = self.entry(&at, name, name, entry.file_type())? {
                stack.push(child);
            }
        }
    }

    /// Copies one entry; a directory is made, and returned to be filled.
    fn entry(
        &mut self,
        at: &Here<'_>,
        name: &OsStr,
        dst_name: &OsStr,
        listed: FileType,
    ) -> Result<Option<Frame>> {
        let rel = at.rel.join(name);
        let kind = match listed {
            FileType::Unknown => {
                match rustix::fs::statat(at.src, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => FileType::from_raw_mode(st.st_mode),
                    Err(Errno::NOENT) => {
                        self.report.changed += 1;
                        return Ok(None);
                    }
                    Err(e) => return Err(self.fail("reading", &rel)(e.into())),
                }
            }
            kind => kind,
        };
        match kind {
            FileType::Directory => self.directory(at, name, dst_name, rel),
            FileType::RegularFile => {
                let copied = self.file(at, name, dst_name, &rel)?;
                self.tally(copied);
                Ok(None)
            }
            FileType::Symlink => self.link(at, name, dst_name, &rel).map(|()| None),
            _ => {
                self.report.skipped += 1;
                Ok(None)
            }
        }
    }

    fn directory(
        &mut self,
        at: &Here<'_>,
        name: &OsStr,
        dst_name: &OsStr,
        rel: PathBuf,
    ) -> Result<Option<Frame>> {
        if at.depth >= MAX_DEPTH {
            let deep = io::Error::other(format!(
                "more than {MAX_DEPTH} directories deep; velo copies no deeper"
            ));
            return Err(self.fail("copying", &rel)(deep));
        }
        let src = match fsx::open_dir_at(at.src, name) {
            Ok(src) => src,
            // Gone, or swapped for a link or a file since it was listed: not followed.
            Err(e)
                if matches!(
                    Errno::from_io_error(&e),
                    Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP)
                ) =>
            {
                self.report.changed += 1;
                return Ok(None);
            }
            Err(e) => return Err(self.fail("opening", &rel)(e)),
        };
        let st = rustix::fs::fstat(&src).map_err(|e| self.fail("reading", &rel)(e.into()))?;
        let dst = fsx::create_dir_at(at.dst, dst_name, 0o700)
            .map_err(self.fail("creating the copy of", &rel))?;
        self.own(dst.as_fd(), &st, &rel)?;
        self.report.directories += 1;
        Ok(Some(Frame {
            src: Dir::new(src).map_err(|e| self.fail("listing", &rel)(e.into()))?,
            dst,
            mode: st.st_mode & 0o777,
            rel,
            files: Vec::new(),
        }))
    }

    /// Copies a directory's files, then gives the copy its source's permission bits.
    fn finish(&mut self, frame: &Frame) -> Result<()> {
        self.files(frame)?;
        rustix::fs::fchmod(&frame.dst, rustix::fs::Mode::from_raw_mode(frame.mode))
            .map_err(|e| self.fail("setting the mode of the copy of", &frame.rel)(e.into()))
    }

    /// Copies the regular files listed in a directory, on several threads when there are many.
    fn files(&mut self, frame: &Frame) -> Result<()> {
        let src = frame
            .src
            .fd()
            .map_err(|e| self.fail("listing", &frame.rel)(e.into()))?;
        let at = Here {
            src,
            dst: frame.dst.as_fd(),
            rel: &frame.rel,
            depth: 0,
        };
        let (next, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
        let this = &*self;
        let worker = || -> Result<Vec<bool>> {
            let mut copied = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Some(name) = frame.files.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    break;
                };
                let done = this.file(&at, name, name, &frame.rel.join(name));
                stop.store(done.is_err(), Ordering::Relaxed);
                copied.push(done?);
            }
            Ok(copied)
        };
        let workers = if frame.files.len() < PARALLEL_FROM {
            1
        } else {
            self.workers
        };
        let results: Vec<Result<Vec<bool>>> = if workers == 1 {
            vec![worker()]
        } else {
            std::thread::scope(|scope| {
                let threads: Vec<_> = (0..workers).map(|_| scope.spawn(worker)).collect();
                let panicked = || {
                    Err(this.fail("copying", &frame.rel)(io::Error::other(
                        "a copying thread failed",
                    )))
                };
                threads
                    .into_iter()
                    .map(|t| t.join().unwrap_or_else(|_| panicked()))
                    .collect()
            })
        };
        for copied in results {
            copied?.into_iter().for_each(|c| self.tally(c));
        }
        Ok(())
    }

    fn tally(&mut self, copied: bool) {
        if copied {
            self.report.files += 1;
        } else {
            self.report.changed += 1;
        }
    }

    /// Copies one regular file; `false` if it was gone or had become something else.
    fn file(&self, at: &Here<'_>, name: &OsStr, dst_name: &OsStr, rel: &Path) -> Result<bool> {
        let (mut src, st) = match fsx::open_regular_at(at.src, name) {
            Ok(Found::Regular(file, st)) => (file, st),
            Ok(Found::Missing | Found::Other(_)) => return Ok(false),
            Err(e) => return Err(self.fail("opening", rel)(e)),
        };
        let mut dst = fsx::create_new_at(at.dst, dst_name, 0o600)
            .map_err(self.fail("creating the copy of", rel))?;
        self.own(dst.as_fd(), &st, rel)?;
        match self.mode {
            Mode::Reflink => rustix::fs::ioctl_ficlone(&dst, &src)
                .map_err(|e| self.fail("cloning (reflink)", rel)(e.into()))?,
            Mode::Copy => {
                io::copy(&mut src, &mut dst).map_err(self.fail("copying", rel))?;
            }
        }
        rustix::fs::fchmod(&dst, rustix::fs::Mode::from_raw_mode(st.st_mode & 0o777))
            .map_err(|e| self.fail("setting the mode of the copy of", rel)(e.into()))?;
        Ok(true)
    }

    fn link(&mut self, at: &Here<'_>, name: &OsStr, dst_name: &OsStr, rel: &Path) -> Result<()> {
        let target = match rustix::fs::readlinkat(at.src, name, Vec::new()) {
            Ok(target) => target,
            // Gone, or no longer a link.
            Err(Errno::NOENT | Errno::INVAL) => {
                self.report.changed += 1;
                return Ok(());
            }
            Err(e) => return Err(self.fail("reading the link", rel)(e.into())),
        };
        rustix::fs::symlinkat(target.as_c_str(), at.dst, dst_name)
            .map_err(|e| self.fail("creating the copy of", rel)(e.into()))?;
        if self.as_root {
            let owner =
                rustix::fs::statat(at.src, name, AtFlags::SYMLINK_NOFOLLOW).and_then(|st| {
                    rustix::fs::chownat(
                        at.dst,
                        dst_name,
                        Some(Uid::from_raw(st.st_uid)),
                        Some(Gid::from_raw(st.st_gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                });
            owner.map_err(|e| self.fail("setting the owner of the copy of", rel)(e.into()))?;
        }
        self.report.links += 1;
        Ok(())
    }

    /// As root, a copy gets its source's owner (through its open handle).
    fn own(&self, dst: BorrowedFd<'_>, src: &rustix::fs::Stat, rel: &Path) -> Result<()> {
        if !self.as_root {
            return Ok(());
        }
        rustix::fs::fchown(
            dst,
            Some(Uid::from_raw(src.st_uid)),
            Some(Gid::from_raw(src.st_gid)),
        )
        .map_err(|e| self.fail("setting the owner of the copy of", rel)(e.into()))
    }
}

#[cfg(test)]
#[path = "treecopy_tests.rs"]
mod tests;
