//! File operations that never follow a link someone else could plant.
//!
//! velo works in directories other parties can write: a branch's data directory, which its
//! database superuser controls, and (when root runs velo) a home directory that someone may
//! have prepared. Every file velo reads, writes or changes the owner of in such a place is
//! opened relative to a directory handle with `O_NOFOLLOW`, checked to be a regular file (a
//! FIFO could block forever, a device could be anything), and changed through its open handle
//! (`fchown`, `fchmod`), so a name swapped between a check and a use cannot redirect velo.
//! Temporary files are created with `O_EXCL`. Directories are made, listed, renamed and
//! removed the same way: relative to a handle on their parent, a link in their place refused.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, RawMode, RenameFlags};

/// Opens a directory without following a link in its last component.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )?)
}

/// Opens the directory `name` inside `dir`, refusing a link.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        one_component(name)?,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )?)
}

/// Creates `name` in `dir` as a new regular file (it must not exist, as anything), mode `mode`.
pub fn create_new_at(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        one_component(name)?,
        OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::WRONLY,
        Mode::from_raw_mode(mode as RawMode),
    )?;
    Ok(File::from(fd))
}

/// Removes `name` from `dir` if it is anything but a directory (a link is removed, never
/// followed). Missing is success.
pub fn remove_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, one_component(name)?, AtFlags::empty()) {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        other => Ok(other?),
    }
}

/// Writes `contents` as the regular file `name` in `dir`, replacing whatever non-directory
/// was there: the new file is written under a temporary name created with `O_EXCL`, synced,
/// then renamed over `name`. Owned by `owner` (through the open file) when given.
pub fn replace_at(
    dir: BorrowedFd<'_>,
    name: &str,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let name = one_component(name)?;
    let tmp = format!(".{name}.velo-{}", std::process::id());
    remove_at(dir, &tmp)?;
    let mut file = create_new_at(dir, &tmp, mode)?;
    let written = (|| {
        if let Some((uid, gid)) = owner {
            rustix::fs::fchown(
                &file,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )?;
        }
        // The umask narrowed the mode at creation; set it exactly.
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode as RawMode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        rustix::fs::renameat(dir, &tmp, dir, name)?;
        rustix::fs::fsync(dir)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = remove_at(dir, &tmp);
    }
    written
}

/// Reads the regular file `name` in `dir`, at most `limit` bytes; `None` if it does not exist.
/// A link, FIFO, device or directory there is an error, never followed or opened for reading.
pub fn read_regular_at(dir: BorrowedFd<'_>, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let Some(fd) = open_regular_at(dir, name, OFlags::RDONLY, 0)? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    File::from(fd).take(limit).read_to_end(&mut out)?;
    Ok(Some(out))
}

/// Reads the last `limit` bytes (or fewer) of the regular file `name` in `dir`; `None` if it
/// does not exist. Refuses what [`read_regular_at`] refuses.
pub fn read_tail_at(dir: BorrowedFd<'_>, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let Some(fd) = open_regular_at(dir, name, OFlags::RDONLY, 0)? else {
        return Ok(None);
    };
    let size = rustix::fs::fstat(&fd)?.st_size.max(0) as u64;
    let mut file = File::from(fd);
    file.seek(SeekFrom::Start(size.saturating_sub(limit)))?;
    let mut out = Vec::new();
    file.take(limit).read_to_end(&mut out)?;
    Ok(Some(out))
}

/// Opens the regular file `name` in `dir` for appending, creating it with mode `mode` if it
/// does not exist. A link, FIFO, device or directory there is an error, never followed.
pub fn open_append_at(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<File> {
    let flags = OFlags::CREATE | OFlags::WRONLY | OFlags::APPEND;
    let fd = open_regular_at(dir, name, flags, mode)?
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    Ok(File::from(fd))
}

/// Opens `name` in `dir` with `flags` (never following a link, never blocking on a FIFO) and
/// checks it is a regular file; `None` if it does not exist.
fn open_regular_at(
    dir: BorrowedFd<'_>,
    name: &str,
    flags: OFlags,
    mode: u32,
) -> io::Result<Option<OwnedFd>> {
    let fd = match rustix::fs::openat(
        dir,
        one_component(name)?,
        flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode as RawMode),
    ) {
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NXIO) => return Err(not_regular(name)),
        other => other?,
    };
    if !is_regular(fd.as_fd())? {
        return Err(not_regular(name));
    }
    Ok(Some(fd))
}

/// Creates the directory `name` in `dir`, mode `mode` exactly; it must not exist, as anything.
/// Returns a handle on it.
pub fn create_dir_at(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<OwnedFd> {
    rustix::fs::mkdirat(
        dir,
        one_component(name)?,
        Mode::from_raw_mode(mode as RawMode),
    )?;
    let fd = open_dir_at(dir, name)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode as RawMode))?;
    Ok(fd)
}

/// Opens the directory `name` in `dir`, creating it if it does not exist, and sets its mode to
/// `mode`. A link there is refused, never followed.
pub fn ensure_dir_at(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<OwnedFd> {
    match rustix::fs::mkdirat(
        dir,
        one_component(name)?,
        Mode::from_raw_mode(mode as RawMode),
    ) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = open_dir_at(dir, name)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode as RawMode))?;
    Ok(fd)
}

/// Renames `from` to `to` inside `dir`, failing with `AlreadyExists` if `to` exists, as
/// anything. On a file system without `RENAME_NOREPLACE` the check and the rename are two steps.
pub fn rename_new_at(dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
    let (from, to) = (one_component(from)?, one_component(to)?);
    match rustix::fs::renameat_with(dir, from, dir, to, RenameFlags::NOREPLACE) {
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {}
        other => return Ok(other?),
    }
    match rustix::fs::statat(dir, to, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Err(rustix::io::Errno::EXIST.into()),
        Err(rustix::io::Errno::NOENT) => Ok(rustix::fs::renameat(dir, from, dir, to)?),
        Err(e) => Err(e.into()),
    }
}

/// The names in a directory (without `.` and `..`) that are valid UTF-8.
pub fn list_at(dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        if let Ok(name) = entry.file_name().to_str()
            && name != "."
            && name != ".."
        {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Removes the directory `name` in `dir` and the files in it (links are removed, never
/// followed). A directory inside it is an error. Missing is success.
pub fn remove_dir_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let inner = match open_dir_at(dir, name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for entry in rustix::fs::Dir::read_from(&inner)? {
        let entry = entry?;
        let file = entry.file_name();
        if file != c"." && file != c".." {
            rustix::fs::unlinkat(&inner, file, AtFlags::empty())?;
        }
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        other => Ok(other?),
    }
}

/// Whether an open file is a regular file.
pub fn is_regular(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let st = rustix::fs::fstat(fd)?;
    Ok(rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile)
}

fn not_regular(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "`{name}` is not a regular file (a link, a directory or a special file); velo does not follow or open it"
        ),
    )
}

/// `name` must be one ordinary path component: no `/`, not `.` or `..`, not empty.
fn one_component(name: &str) -> io::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{name}` is not a single file name"),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_planted_link_is_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&victim, data.join("recovery.signal")).unwrap();
        let fd = open_dir(&data).unwrap();
        assert!(create_new_at(fd.as_fd(), "recovery.signal", 0o600).is_err());
        replace_at(fd.as_fd(), "recovery.signal", b"", 0o600, None).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(data.join("recovery.signal")).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o777, 0o600);
    }

    #[test]
    fn reading_refuses_links_fifos_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ok"), "text").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let fd = open_dir(dir.path()).unwrap();
        assert_eq!(
            read_regular_at(fd.as_fd(), "ok", 100).unwrap().as_deref(),
            Some(&b"text"[..])
        );
        assert_eq!(read_regular_at(fd.as_fd(), "missing", 100).unwrap(), None);
        for bad in ["link", "fifo", "sub"] {
            assert!(read_regular_at(fd.as_fd(), bad, 100).is_err(), "{bad}");
        }
        assert!(open_dir_at(fd.as_fd(), "link").is_err());
        assert!(open_dir(&dir.path().join("link")).is_err());
        for bad in ["", ".", "..", "a/b"] {
            assert!(create_new_at(fd.as_fd(), bad, 0o600).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn directories_are_made_listed_renamed_and_removed_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "precious").unwrap();
        let root = open_dir(dir.path()).unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("planted")).unwrap();
        assert!(ensure_dir_at(root.as_fd(), "planted", 0o700).is_err());
        assert!(create_dir_at(root.as_fd(), "planted", 0o700).is_err());

        let made = ensure_dir_at(root.as_fd(), "made", 0o700).unwrap();
        ensure_dir_at(root.as_fd(), "made", 0o700).unwrap();
        let meta = std::fs::metadata(dir.path().join("made")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        std::os::unix::fs::symlink(outside.join("keep"), dir.path().join("made/link")).unwrap();
        replace_at(made.as_fd(), "file", b"x", 0o600, None).unwrap();
        let mut names = list_at(made.as_fd()).unwrap();
        names.sort();
        assert_eq!(names, ["file", "link"]);

        let err = rename_new_at(root.as_fd(), "made", "outside").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        rename_new_at(root.as_fd(), "made", "moved").unwrap();
        remove_dir_at(root.as_fd(), "moved").unwrap();
        remove_dir_at(root.as_fd(), "moved").unwrap();
        assert!(!dir.path().join("moved").exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("keep")).unwrap(),
            "precious"
        );
        assert!(
            remove_dir_at(root.as_fd(), "planted").is_err(),
            "a link is not a directory"
        );
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn appending_and_tail_reading_refuse_links() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("log")).unwrap();
        let fd = open_dir(dir.path()).unwrap();
        assert!(open_append_at(fd.as_fd(), "log", 0o600).is_err());
        assert!(read_tail_at(fd.as_fd(), "log", 4).is_err());
        remove_at(fd.as_fd(), "log").unwrap();
        let mut log = open_append_at(fd.as_fd(), "log", 0o600).unwrap();
        log.write_all(b"one\ntwo\n").unwrap();
        let mut again = open_append_at(fd.as_fd(), "log", 0o600).unwrap();
        again.write_all(b"three\n").unwrap();
        let tail = read_tail_at(fd.as_fd(), "log", 6).unwrap().unwrap();
        assert_eq!(tail, b"three\n");
        let all = read_tail_at(fd.as_fd(), "log", 1000).unwrap().unwrap();
        assert_eq!(all, b"one\ntwo\nthree\n");
        assert_eq!(read_tail_at(fd.as_fd(), "none", 4).unwrap(), None);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }
}
