//! File operations that never follow a link someone else could plant.
//!
//! velo works in directories other parties can write: a branch's data directory, which its
//! database superuser controls, and (when root runs velo) a home directory that someone may
//! have prepared. Every file velo reads, writes or changes the owner of in such a place is
//! opened relative to a directory handle with `O_NOFOLLOW`, checked to be a regular file (a
//! FIFO could block forever, a device could be anything), and changed through its open handle
//! (`fchown`, `fchmod`), so a name swapped between a check and a use cannot redirect velo.
//! Temporary files are created with `O_EXCL`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, RawMode};

/// Opens a directory without following a link in its last component.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )?)
}

/// Opens the directory `name` inside `dir`, refusing a link.
pub fn open_dir_at(dir: impl AsFd, name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir.as_fd(),
        one_component(name)?,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )?)
}

/// Creates the directory `name` in `dir` (it must not exist), mode `mode` exactly, owned by
/// `owner` when given; returns a handle on it.
pub fn make_dir_at(
    dir: impl AsFd,
    name: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<OwnedFd> {
    let name = one_component(name)?;
    rustix::fs::mkdirat(dir.as_fd(), name, Mode::from_raw_mode(mode as RawMode))?;
    let fd = open_dir_at(dir.as_fd(), name)?;
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

/// Creates `name` in `dir` as a new regular file (it must not exist, as anything), mode `mode`.
pub fn create_new_at(dir: impl AsFd, name: &str, mode: u32) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir.as_fd(),
        one_component(name)?,
        OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::WRONLY,
        Mode::from_raw_mode(mode as RawMode),
    )?;
    Ok(File::from(fd))
}

/// Removes `name` from `dir` if it is anything but a directory (a link is removed, never
/// followed). Missing is success.
pub fn remove_at(dir: impl AsFd, name: &str) -> io::Result<()> {
    match rustix::fs::unlinkat(dir.as_fd(), one_component(name)?, AtFlags::empty()) {
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
pub fn read_regular_at(dir: impl AsFd, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let fd = match rustix::fs::openat(
        dir.as_fd(),
        one_component(name)?,
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
}
