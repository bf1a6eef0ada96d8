//! Directories the image's postgres user must own, made the same way whoever runs velo.
//!
//! Run as root, velo makes and `chown`s them itself. Run as a user, it cannot give a file to
//! another uid, and a new dataset's mountpoint belongs to root; so it lets a throw-away root
//! container of the project's image do it (Docker access is root-equivalent already, so this
//! needs no extra sudo rule; see docs/setup.md). WAL archives, which live in the user's own
//! velo home, use POSIX ACLs instead (see [`crate::archive`]).

use anyhow::{Context as _, Result};

use super::Ctx;
use crate::docker::{BindMount, PostgresUser};
use crate::zfs::is_root;

/// Where a helper container sees the directory it prepares.
const HELPER_MOUNT: &str = "/velo-prepare";

/// Creates `<mountpoint>/pgdata`, owned by the image's postgres user, mode 0700.
pub async fn prepare_data_dir(
    ctx: &Ctx,
    image: &str,
    mountpoint: &str,
    owner: PostgresUser,
) -> Result<()> {
    let pgdata = super::data_dir(mountpoint);
    let context = || {
        format!(
            "preparing {pgdata} for the image's postgres user (uid {})",
            owner.uid
        )
    };
    if is_root() {
        use std::os::unix::fs::{PermissionsExt, chown};
        return std::fs::create_dir(&pgdata)
            .and_then(|()| chown(&pgdata, Some(owner.uid), Some(owner.gid)))
            .and_then(|()| {
                std::fs::set_permissions(&pgdata, std::fs::Permissions::from_mode(0o700))
            })
            .with_context(context);
    }
    let mounts = [BindMount {
        source: mountpoint.to_string(),
        target: HELPER_MOUNT.into(),
        read_only: false,
    }];
    let script = format!(
        "mkdir -m 700 {HELPER_MOUNT}/pgdata && chown {}:{} {HELPER_MOUNT}/pgdata",
        owner.uid, owner.gid
    );
    ctx.shell
        .step("Prepare data directory", async {
            ctx.runtime.run_as_root(image, &mounts, &script).await
        })
        .await
        .with_context(context)
}
