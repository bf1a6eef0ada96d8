//! Where an import works: a private directory in velo's home for the password file (never in a
//! volume, which branches are cloned from), the import server's own socket directory, and the
//! dump's directory inside the new volume (removed before any snapshot can see it). All are
//! velo's user's, mode 0700; the client programs run as that user.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::super::{Ctx, remove_dir};
use crate::fsx;
use crate::hostdir::{self, Access};
use crate::names::BranchRef;
use crate::runtime::ServerUser;
use crate::source::password::passfile_line;
use crate::state::Project;

/// The password file's name in its directory.
pub const PASSFILE: &str = "pgpass";

/// The private directory of an import's password file.
pub fn secrets_dir(ctx: &Ctx, r: &BranchRef) -> PathBuf {
    ctx.store
        .dir()
        .join("run")
        .join(format!("import.{}.{}", r.project, r.branch))
}

/// The socket directory of the server an import restores into: beside the branch's own
/// (which a refresh's old server still uses), named by the branch's port like it.
pub fn socket_dir(ctx: &Ctx, port: u16) -> PathBuf {
    ctx.store.dir().join("run").join(format!("{port}.import"))
}

/// The directory, inside the volume at `root`, where the dump is written and read.
pub fn work_dir(root: &Path) -> PathBuf {
    root.join("import")
}

/// Writes the password file the client programs that read the source get (`PGPASSFILE`),
/// readable by `reader` (who the programs run as). Returns the directory.
pub fn write_password(
    ctx: &Ctx,
    r: &BranchRef,
    secret: &str,
    reader: ServerUser,
) -> Result<PathBuf> {
    let dir = secrets_dir(ctx, r);
    write_passfile(&dir, Some(secret), reader)
        .with_context(|| format!("writing the import's password file in {}", dir.display()))?;
    Ok(dir)
}

/// Makes `dir` (its parent private to velo's user), which only velo's user and `reader` may
/// enter, and writes [`PASSFILE`] there if there is a `secret`: one line, mode 0600. Root gives
/// the file to its reader (libpq reads only a file no one else may); a user's programs run as
/// that user.
pub fn write_passfile(dir: &Path, secret: Option<&str>, reader: ServerUser) -> io::Result<()> {
    let parent = dir.parent().expect("a directory in velo's home");
    let owner = rustix::process::geteuid()
        .is_root()
        .then_some((reader.uid, reader.gid));
    hostdir::private_dir(parent)?;
    hostdir::server_dir(dir, reader.uid, reader.gid, Access::ReadWrite)?;
    let fd = fsx::open_dir(dir)?;
    match secret {
        Some(secret) => fsx::replace_at(
            fd.as_fd(),
            PASSFILE,
            passfile_line(secret).as_bytes(),
            0o600,
            owner,
        ),
        None => Ok(()),
    }
}

/// Gives the password file in `dir` to `reader` where velo's user is neither root (which
/// wrote it as `reader`'s) nor `reader`: a user of the docker group whose servers run as the
/// image's postgres uid. The runtime does it (a Docker helper may chown).
pub async fn give_passfile(
    ctx: &Ctx,
    project: &Project,
    dir: &Path,
    reader: ServerUser,
) -> Result<()> {
    let me = rustix::process::geteuid();
    if me.is_root() || me.as_raw() == reader.uid || !dir.join(PASSFILE).exists() {
        return Ok(());
    }
    ctx.runtime(project)?
        .hand_over(dir, PASSFILE, reader)
        .await
        .with_context(|| {
            format!(
                "giving the password file in {} to its reader",
                dir.display()
            )
        })
}

/// Makes the dump's directory in the new volume.
pub fn make_work_dir(root: &Path) -> Result<PathBuf> {
    let dir = work_dir(root);
    hostdir::private_dir(&dir)
        .with_context(|| format!("making the import's directory {}", dir.display()))?;
    Ok(dir)
}

/// Removes what an import keeps outside the volume: the password file and its directory, and
/// the import server's socket directory. Missing is success.
pub fn clear(ctx: &Ctx, r: &BranchRef, port: u16) -> Result<()> {
    remove_dir(&secrets_dir(ctx, r))?;
    remove_dir(&socket_dir(ctx, port))
}
