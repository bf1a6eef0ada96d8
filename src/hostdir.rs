//! Directories velo keeps on the host for its servers (WAL archives, Unix sockets): private
//! to velo's user, and open to the server's uid exactly as far as the server needs.
//!
//! When the server runs as velo's own user (the native runtime), that is mode 0700. When it runs
//! as another uid (the image's postgres user in Docker), root gives the directory to that uid,
//! and a user, who cannot, keeps it and grants the uid access with a POSIX ACL, which an owner
//! may set without any privilege (docs/setup.md). Either way no other user has access. Every
//! directory is changed through a handle opened without following links.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, XattrFlags};

use crate::fsx;

/// How much a server may do in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Create and remove files (its own WAL archive, its socket).
    ReadWrite,
    /// Read files (the archives a point-in-time recovery replays).
    Read,
}

/// Makes `dir` (creating it if missing) velo's own, mode 0700, for velo's user alone.
pub fn private_dir(dir: &Path) -> io::Result<OwnedFd> {
    let fd = open_or_create(dir)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
    Ok(fd)
}

/// Makes `dir` (creating it if missing) private to velo's user and open to the server's
/// `uid`/`gid` with `access`.
pub fn server_dir(dir: &Path, uid: u32, gid: u32, access: Access) -> io::Result<()> {
    let fd = private_dir(dir)?;
    let me = rustix::process::geteuid();
    if uid == me.as_raw() {
        return Ok(());
    }
    if me.is_root() {
        let (owner, group, mode) = match access {
            Access::ReadWrite => (uid, gid, 0o700),
            Access::Read => (0, gid, 0o750),
        };
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(owner)),
            Some(rustix::fs::Gid::from_raw(group)),
        )?;
        return Ok(rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?);
    }
    grant(&fd, dir, uid, access)
}

fn open_or_create(dir: &Path) -> io::Result<OwnedFd> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let fd = fsx::open_dir(dir)?;
    let st = rustix::fs::fstat(&fd)?;
    let me = rustix::process::geteuid();
    if st.st_uid != me.as_raw() && !me.is_root() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to you; velo keeps its directories to itself",
                dir.display(),
                st.st_uid
            ),
        ));
    }
    Ok(fd)
}

/// Gives `uid` access to a directory its owner keeps (mode 0700) with POSIX ACLs: the access
/// ACL names `uid`; for a writable directory the default ACL names `uid` and the owner, so
/// velo can read and remove what the server creates in it. Group and others keep no access.
fn grant(fd: &OwnedFd, dir: &Path, uid: u32, access: Access) -> io::Result<()> {
    let me = rustix::process::geteuid().as_raw();
    let perm = match access {
        Access::ReadWrite => RWX,
        Access::Read => RX,
    };
    let set = |name: &str, users: &[(u32, u16)]| {
        rustix::fs::fsetxattr(fd.as_fd(), name, &posix_acl_xattr(users), XattrFlags::empty())
            .map_err(|e| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!(
                        "cannot give uid {uid} access to {} with a POSIX ACL ({e}); velo's home must be on a file system with ACLs (ext4, xfs, btrfs do)",
                        dir.display()
                    ),
                )
            })
    };
    set("system.posix_acl_access", &[(uid, perm)])?;
    if access == Access::ReadWrite {
        let mut users = vec![(uid, RWX), (me, RWX)];
        users.sort_unstable();
        users.dedup();
        set("system.posix_acl_default", &users)?;
    } else {
        // A read-only directory passes nothing on (it may have inherited a default ACL).
        match rustix::fs::fremovexattr(fd.as_fd(), "system.posix_acl_default") {
            Ok(()) | Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

const RWX: u16 = 7;
const RX: u16 = 5;

/// The Linux `system.posix_acl_*` xattr value: version 2, then (tag, perm, id) entries in tag
/// order: the owner, the named users, the owning group (no access), the mask, others (none).
fn posix_acl_xattr(users: &[(u32, u16)]) -> Vec<u8> {
    const USER_OBJ: u16 = 0x01;
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    const UNDEFINED_ID: u32 = u32::MAX;
    let entries = std::iter::once((USER_OBJ, RWX, UNDEFINED_ID))
        .chain(users.iter().map(|&(u, perm)| (USER, perm, u)))
        .chain([
            (GROUP_OBJ, 0, UNDEFINED_ID),
            (MASK, RWX, UNDEFINED_ID),
            (OTHER, 0, UNDEFINED_ID),
        ]);
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn getfacl(dir: &Path) -> String {
        // getfacl (package `acl`, installed by scripts/rig-up.sh) reads it back.
        let out = std::process::Command::new("getfacl")
            .args(["-cp", &dir.display().to_string()])
            .output()
            .expect("getfacl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn acl_grants_one_uid_what_it_needs_and_nobody_else_anything() {
        let dir = tempfile::tempdir().unwrap();
        let fd = private_dir(dir.path()).unwrap();
        grant(&fd, dir.path(), 4242, Access::ReadWrite).unwrap();
        let text = getfacl(dir.path());
        for line in [
            "user::rwx",
            "user:4242:rwx",
            "group::---",
            "mask::rwx",
            "other::---",
            "default:user:4242:rwx",
            "default:other::---",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let read = dir.path().join("read");
        let fd = private_dir(&read).unwrap();
        grant(&fd, &read, 4242, Access::Read).unwrap();
        let text = getfacl(&read);
        assert!(text.lines().any(|l| l == "user:4242:r-x"), "{text}");
        assert!(!text.contains("default:"), "{text}");
    }

    #[test]
    fn a_linked_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        assert!(private_dir(&link).is_err());
        assert!(server_dir(&link, 4242, 4242, Access::ReadWrite).is_err());
    }
}
