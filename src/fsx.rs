//! File operations that never follow a link someone else could plant.
//!
//! velo works in directories other parties can write: a branch's data directory, which its
//! database superuser controls, and (when root runs velo) a home directory that someone may
//! have prepared. Every file velo reads, writes or changes the owner of in such a place is
//! opened relative to a directory handle with `O_NOFOLLOW`, checked to be a regular file (a
//! FIFO could block forever, a device could be anything), and changed through its open handle
//! (`fchown`, `fchmod`), so a name swapped between a check and a use cannot redirect velo.
//! Temporary files are created with `O_EXCL`, and a finished one takes its name with a rename
//! that refuses to replace anything.
//!
//! Names are single path components (`&str`, or the `OsStr` of a directory entry, which need
//! not be UTF-8); anything with a `/`, and `.` or `..`, is refused.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawMode, RenameFlags, Stat};

/// Opens a directory without following a link in its last component.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )?)
}

/// Opens the directory `name` inside `dir`, refusing a link.
pub fn open_dir_at(dir: impl AsFd, name: impl AsRef<OsStr>) -> io::Result<OwnedFd> {
    let dir = dir.as_fd();
    Ok(rustix::fs::openat(
        dir,
        one_component(name.as_ref())?,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )?)
}

/// Creates `name` in `dir` as a new regular file (it must not exist, as anything), mode `mode`.
pub fn create_new_at(dir: impl AsFd, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
    let dir = dir.as_fd();
    let fd = rustix::fs::openat(
        dir,
        one_component(name.as_ref())?,
        OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::WRONLY,
        Mode::from_raw_mode(mode as RawMode),
    )?;
    Ok(File::from(fd))
}

/// Removes `name` from `dir` if it is anything but a directory (a link is removed, never
/// followed). Missing is success.
pub fn remove_at(dir: impl AsFd, name: impl AsRef<OsStr>) -> io::Result<()> {
    let dir = dir.as_fd();
    match rustix::fs::unlinkat(dir, one_component(name.as_ref())?, AtFlags::empty()) {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        other => Ok(other?),
    }
}

/// Writes `contents` as the regular file `name` in `dir`, replacing whatever non-directory
/// was there: the new file is written under a temporary name created with `O_EXCL`, synced,
/// then renamed over `name`. Owned by `owner` (through the open file) when given.
pub fn replace_at(
    dir: impl AsFd,
    name: &str,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let dir = dir.as_fd();
    publish_at(dir, name, contents, mode, owner, RenameFlags::empty())
}

/// Reads the regular file `name` in `dir`, at most `limit` bytes; `None` if it does not exist.
/// A link, FIFO, device or directory there is an error, never followed or opened for reading.
pub fn read_regular_at(dir: impl AsFd, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let dir = dir.as_fd();
    let fd = match rustix::fs::openat(
        dir,
        one_component(name.as_ref())?,
        OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    ) {
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => return Err(not_regular(name)),
        other => other?,
    };
    if !is_regular(fd.as_fd())? {
        return Err(not_regular(name));
    }
    let mut out = Vec::new();
    File::from(fd).take(limit).read_to_end(&mut out)?;
    Ok(Some(out))
}

/// Writes `contents` as the new regular file `name` in `dir`, mode `mode`, all or nothing:
/// the file is written and synced under a temporary name, then takes `name` only if nothing
/// has it (`AlreadyExists` otherwise, and nothing is changed).
pub fn write_new_at(dir: impl AsFd, name: &str, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = dir.as_fd();
    publish_at(dir, name, contents, mode, None, RenameFlags::NOREPLACE)
}

/// Writes a complete, synced file under a temporary name, then renames it to `name` with
/// `flags`; nothing is left behind if any step fails.
fn publish_at(
    dir: impl AsFd,
    name: &str,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    flags: RenameFlags,
) -> io::Result<()> {
    let dir = dir.as_fd();
    one_component(name.as_ref())?;
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
        rustix::fs::renameat_with(dir, &tmp, dir, name, flags)?;
        rustix::fs::fsync(dir)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = remove_at(dir, &tmp);
    }
    written
}

/// Creates the directory `name` in `dir` (nothing may have that name) and opens it.
pub fn create_dir_at(dir: impl AsFd, name: impl AsRef<OsStr>, mode: u32) -> io::Result<OwnedFd> {
    let dir = dir.as_fd();
    let name = one_component(name.as_ref())?;
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode as RawMode))?;
    open_dir_at(dir, name)
}

/// Creates the directory `name` in `dir` (it must not exist), mode `mode` exactly, owned by
/// `owner` when given; returns a handle on it.
pub fn make_dir_at(
    dir: impl AsFd,
    name: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<OwnedFd> {
    let fd = create_dir_at(dir, name, mode)?;
    if let Some((uid, gid)) = owner {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )?;
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode as RawMode))?;
    Ok(fd)
}

/// Renames `from` in `from_dir` to `to` in `to_dir` unless something has that name
/// (`AlreadyExists`): how a finished build takes its final name without replacing another.
pub fn rename_new_at(
    from_dir: impl AsFd,
    from: impl AsRef<OsStr>,
    to_dir: impl AsFd,
    to: impl AsRef<OsStr>,
) -> io::Result<()> {
    let from_dir = from_dir.as_fd();
    let to_dir = to_dir.as_fd();
    Ok(rustix::fs::renameat_with(
        from_dir,
        one_component(from.as_ref())?,
        to_dir,
        one_component(to.as_ref())?,
        RenameFlags::NOREPLACE,
    )?)
}

/// What [`open_regular_at`] found under a name.
#[derive(Debug)]
pub enum Found {
    /// A regular file, open for reading, and its status.
    Regular(File, Stat),
    /// Anything else (a directory, a link, a FIFO, a device, a socket): never opened.
    Other(FileType),
    Missing,
}

/// Opens `name` in `dir` for reading if it is a regular file, and opens nothing else, not even
/// for a moment: the name is first opened as a bare reference (`O_PATH|O_NOFOLLOW`, which
/// opens no FIFO or device and follows no link), its type checked through that handle, and
/// only that same file is then opened for reading (through `/proc/self/fd`), so a name swapped
/// between the check and the open cannot make velo open something else.
pub fn open_regular_at(dir: impl AsFd, name: impl AsRef<OsStr>) -> io::Result<Found> {
    let dir = dir.as_fd();
    let path = match rustix::fs::openat(
        dir,
        one_component(name.as_ref())?,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Err(rustix::io::Errno::NOENT) => return Ok(Found::Missing),
        other => other?,
    };
    let st = rustix::fs::fstat(&path)?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Ok(Found::Other(kind));
    }
    let reopened = rustix::fs::open(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&path)),
        OFlags::RDONLY | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(Found::Regular(File::from(reopened), st))
}

/// Reads the last `limit` bytes (or fewer) of the regular file `name` in `dir`; `None` if it
/// does not exist. Refuses what [`read_regular_at`] refuses.
pub fn read_tail_at(dir: impl AsFd, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let Some(fd) = open_regular_with(dir, name, OFlags::RDONLY, 0)? else {
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
pub fn open_append_at(dir: impl AsFd, name: &str, mode: u32) -> io::Result<File> {
    let flags = OFlags::CREATE | OFlags::WRONLY | OFlags::APPEND;
    let fd = open_regular_with(dir, name, flags, mode)?
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    Ok(File::from(fd))
}

/// Opens `name` in `dir` with `flags` (never following a link, never blocking on a FIFO) and
/// checks it is a regular file; `None` if it does not exist.
fn open_regular_with(
    dir: impl AsFd,
    name: &str,
    flags: OFlags,
    mode: u32,
) -> io::Result<Option<OwnedFd>> {
    let fd = match rustix::fs::openat(
        dir.as_fd(),
        one_component(name.as_ref())?,
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

/// Opens the directory `name` in `dir`, creating it if it does not exist, and sets its mode to
/// `mode`. A link there is refused, never followed.
pub fn ensure_dir_at(dir: impl AsFd, name: &str, mode: u32) -> io::Result<OwnedFd> {
    let dir = dir.as_fd();
    match rustix::fs::mkdirat(
        dir,
        one_component(name.as_ref())?,
        Mode::from_raw_mode(mode as RawMode),
    ) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = open_dir_at(dir, name)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode as RawMode))?;
    Ok(fd)
}

/// The names in a directory (without `.` and `..`) that are valid UTF-8.
pub fn list_at(dir: impl AsFd) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir.as_fd())? {
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
pub fn remove_dir_at(dir: impl AsFd, name: &str) -> io::Result<()> {
    let dir = dir.as_fd();
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
    Ok(FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
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
fn one_component(name: &OsStr) -> io::Result<&OsStr> {
    let bytes = name.as_bytes();
    if bytes.is_empty()
        || bytes == b"."
        || bytes == b".."
        || bytes.contains(&b'/')
        || bytes.contains(&0)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` is not a single file name", Path::new(name).display()),
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
}
