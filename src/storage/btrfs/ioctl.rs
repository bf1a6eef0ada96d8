//! The few Btrfs ioctls velo uses, issued through `rustix::ioctl` with the kernel's argument
//! structures written out here (why not a crate: docs/design.md, "Storage backends").
//!
//! The layouts follow `include/uapi/linux/btrfs.h`; the assertions below check at compile time
//! the sizes and offsets the kernel reads. Every call takes directory handles and a single
//! name, never a path, so nothing here follows a link.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Stat};
use rustix::io::Errno;
use rustix::ioctl::{Getter, Opcode, Setter, opcode};

/// `BTRFS_IOCTL_MAGIC`
const MAGIC: u8 = 0x94;
/// `BTRFS_PATH_NAME_MAX`
const PATH_NAME_MAX: usize = 4087;
/// `BTRFS_SUBVOL_NAME_MAX`
const SUBVOL_NAME_MAX: usize = 4039;
/// `BTRFS_SUBVOL_RDONLY`
const SUBVOL_RDONLY: u64 = 1 << 1;
/// `BTRFS_SUPER_MAGIC`: `statfs`'s file system type on Btrfs.
const SUPER_MAGIC: u32 = 0x9123_683E;
/// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every subvolume's root directory.
const SUBVOLUME_ROOT_INO: u64 = 256;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2`. Its first union (`size` and `qgroup_inherit`, or
/// `unused[4]`) is always zero here; of its second velo uses only `name`.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; SUBVOL_NAME_MAX + 1],
}

const _: () = assert!(size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::offset_of!(VolArgs, name) == 8);
const _: () = assert!(size_of::<VolArgsV2>() == 4096);
const _: () = assert!(std::mem::offset_of!(VolArgsV2, flags) == 16);
const _: () = assert!(std::mem::offset_of!(VolArgsV2, name) == 56);

/// `BTRFS_IOC_SUBVOL_CREATE`
const SUBVOL_CREATE: Opcode = opcode::write::<VolArgs>(MAGIC, 14);
/// `BTRFS_IOC_SNAP_DESTROY`
const SNAP_DESTROY: Opcode = opcode::write::<VolArgs>(MAGIC, 15);
/// `BTRFS_IOC_SNAP_CREATE_V2`
const SNAP_CREATE_V2: Opcode = opcode::write::<VolArgsV2>(MAGIC, 23);
/// `BTRFS_IOC_SUBVOL_GETFLAGS`
const SUBVOL_GETFLAGS: Opcode = opcode::read::<u64>(MAGIC, 25);
/// `BTRFS_IOC_SUBVOL_SETFLAGS`
const SUBVOL_SETFLAGS: Opcode = opcode::write::<u64>(MAGIC, 26);

/// Whether `path` is on a Btrfs file system (false if it cannot be asked).
pub fn is_btrfs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type as u32 == SUPER_MAGIC)
}

/// Whether the open file is on a Btrfs file system.
pub fn fd_is_btrfs(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(rustix::fs::fstatfs(fd)?.f_type as u32 == SUPER_MAGIC)
}

/// Whether an open directory on Btrfs is the root of a subvolume.
pub fn is_subvolume(dir: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(is_subvolume_root(&rustix::fs::fstat(dir)?))
}

/// Whether `name` in `parent` (on Btrfs) is the root of a subvolume; `false` if it is gone.
pub fn is_subvolume_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(is_subvolume_root(&st)),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether a file's status (on Btrfs) is that of a subvolume's root directory.
pub fn is_subvolume_root(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory && st.st_ino == SUBVOLUME_ROOT_INO
}

/// Creates the empty subvolume `name` in the directory `parent`.
pub fn create_subvolume(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let args = VolArgs {
        fd: 0,
        name: c_name(name)?,
    };
    // SAFETY: SUBVOL_CREATE reads a `struct btrfs_ioctl_vol_args`, which `VolArgs` is (checked
    // above), and `name` is NUL-terminated.
    unsafe { rustix::ioctl::ioctl(parent, Setter::<SUBVOL_CREATE, VolArgs>::new(args)) }?;
    Ok(())
}

/// Snapshots the subvolume whose root is `source` as `name` in the directory `parent`,
/// read-only if asked. Atomic: the snapshot appears whole or not at all.
pub fn snapshot(
    source: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    name: &OsStr,
    read_only: bool,
) -> io::Result<()> {
    let args = VolArgsV2 {
        fd: i64::from(source.as_fd().as_raw_fd()),
        transid: 0,
        flags: if read_only { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: c_name(name)?,
    };
    // SAFETY: SNAP_CREATE_V2 reads a `struct btrfs_ioctl_vol_args_v2`, which `VolArgsV2` is
    // (checked above); `fd` is an open descriptor for the call's duration, no flag asks the
    // kernel to read `qgroup_inherit`, and `name` is NUL-terminated.
    unsafe { rustix::ioctl::ioctl(parent, Setter::<SNAP_CREATE_V2, VolArgsV2>::new(args)) }?;
    Ok(())
}

/// Deletes the subvolume `name` in the directory `parent`, whatever it holds. Allowed to root,
/// and to a user who may write its root when Btrfs is mounted `user_subvol_rm_allowed`.
pub fn destroy(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let args = VolArgs {
        fd: 0,
        name: c_name(name)?,
    };
    // SAFETY: as for SUBVOL_CREATE: SNAP_DESTROY reads a `struct btrfs_ioctl_vol_args`.
    unsafe { rustix::ioctl::ioctl(parent, Setter::<SNAP_DESTROY, VolArgs>::new(args)) }?;
    Ok(())
}

/// Whether the subvolume whose root is `dir` is read-only.
pub fn is_read_only(dir: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: SUBVOL_GETFLAGS writes one `__u64`.
    let flags = unsafe { rustix::ioctl::ioctl(dir, Getter::<SUBVOL_GETFLAGS, u64>::new()) }?;
    Ok(flags & SUBVOL_RDONLY != 0)
}

/// Makes the subvolume whose root is `dir` writable (allowed to its owner and to root).
pub fn make_writable(dir: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: SUBVOL_SETFLAGS reads one `__u64`; zero clears the read-only flag, the only one.
    unsafe { rustix::ioctl::ioctl(dir, Setter::<SUBVOL_SETFLAGS, u64>::new(0)) }?;
    Ok(())
}

/// Makes the subvolume `name` in `parent` writable if it is a read-only one. A read-only
/// subvolume can neither be moved to another directory nor emptied nor, by a user who is not
/// root, deleted. `false` if there is nothing of that name.
pub fn unfreeze_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    let dir = match crate::fsx::open_dir_at(parent, name) {
        Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => return Ok(false),
        // Not a directory (or a link): no subvolume, nothing to do.
        Err(e) if is_not_dir(&e) => return Ok(true),
        other => other?,
    };
    if is_subvolume(dir.as_fd())? && is_read_only(dir.as_fd())? {
        make_writable(dir.as_fd())?;
    }
    Ok(true)
}

/// Deletes the subvolume (and only a subvolume) `name` in `parent` with everything in it,
/// first making it writable.
/// `false` when the kernel does not allow it (a user who is not root, on a Btrfs mounted
/// without `user_subvol_rm_allowed`; or subvolumes inside it): the caller empties it and
/// removes it as a directory instead. Missing is success.
pub fn destroy_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    if !unfreeze_at(parent, name)? {
        return Ok(true);
    }
    match destroy(parent, name) {
        Ok(()) => Ok(true),
        Err(e) => match Errno::from_io_error(&e) {
            Some(Errno::NOENT) => Ok(true),
            Some(Errno::PERM | Errno::ACCESS | Errno::NOTEMPTY) => Ok(false),
            _ => Err(e),
        },
    }
}

fn is_not_dir(e: &io::Error) -> bool {
    matches!(Errno::from_io_error(e), Some(Errno::NOTDIR | Errno::LOOP))
}

/// `name` as the kernel reads it: one path component, NUL-terminated, in a buffer of `N`.
fn c_name<const N: usize>(name: &OsStr) -> io::Result<[u8; N]> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= N || bytes.contains(&b'/') || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` is not a subvolume name", Path::new(name).display()),
        ));
    }
    let mut out = [0; N];
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_match_the_kernel_headers() {
        // The values of the _IOW/_IOR macros in linux/btrfs.h on x86_64 and aarch64.
        assert_eq!(SUBVOL_CREATE as u64, 0x5000_940e);
        assert_eq!(SNAP_DESTROY as u64, 0x5000_940f);
        assert_eq!(SNAP_CREATE_V2 as u64, 0x5000_9417);
        assert_eq!(SUBVOL_GETFLAGS as u64, 0x8008_9419);
        assert_eq!(SUBVOL_SETFLAGS as u64, 0x4008_941a);
    }

    #[test]
    fn names_are_one_terminated_component() {
        let ok: [u8; 8] = c_name(OsStr::new("a.1")).unwrap();
        assert_eq!(&ok, b"a.1\0\0\0\0\0");
        for bad in ["", "a/b", "a\0b", "12345678"] {
            assert!(c_name::<8>(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_tmpfs_or_ext4_directory_is_not_btrfs() {
        let dir = tempfile::tempdir().unwrap();
        if !is_btrfs(dir.path()) {
            let fd = crate::fsx::open_dir(dir.path()).unwrap();
            assert!(!fd_is_btrfs(fd.as_fd()).unwrap());
        }
        assert!(!is_btrfs(Path::new("/nonexistent/velo")));
    }
}
