//! ZFS: the tools, each pool in use, the user's base and delegation, and the sudo rule.

use futures_util::future::join_all;

use super::{Check, Ctx, Uses, current_user, first_line};
use crate::ops::choose::dataset_user;
use crate::ops::setup::sudoers_path;
use crate::storage::zfs::user_base;
use crate::ui::human_bytes;
use crate::zfs::{
    DELEGATED_DESCENDENT, DELEGATED_LOCAL, Implementation, ZfsError, ZfsErrorKind, is_root,
};

/// A pool with less free space than this gets a warning.
const LOW_SPACE: u64 = 1 << 30;

pub async fn zfs_checks(ctx: &Ctx, uses: &Uses) -> Vec<Check> {
    const G: &str = "zfs";
    let mut checks = Vec::new();
    let zfs = ctx.backends.zfs();
    let implementation = match zfs.implementation().await {
        Ok(i) => i,
        // Nothing here uses ZFS: not having it is no problem.
        Err(e) if uses.zfs_pools.is_empty() => {
            return vec![Check::ok(
                G,
                "zfs",
                format!("not used ({})", first_line(&format!("{e}"))),
            )];
        }
        Err(e) => {
            checks.push(zfs_failure(G, "zfs", &e));
            return checks;
        }
    };
    checks.push(Check::ok(
        G,
        "commands",
        format!("{}, {}", zfs.zfs_program(), zfs.zpool_program()),
    ));
    checks.push(match (&implementation, is_root()) {
        (Implementation::OpenZfs(v), _) => Check::ok(G, "implementation", format!("OpenZFS {v}")),
        (Implementation::ZfsFuse, true) => Check::ok(
            G,
            "implementation",
            "zfs-fuse (no `zfs allow`: velo runs as root only on this host)",
        ),
        (Implementation::ZfsFuse, false) => Check::fail(
            G,
            "implementation",
            "zfs-fuse has no `zfs allow`, so velo cannot run without root here",
            "run velo as root (sudo), or install OpenZFS (zfsutils-linux) for non-root use",
        ),
    });
    let pools = &uses.zfs_pools;
    if pools.is_empty() {
        checks.push(Check::ok(
            G,
            "pool",
            "none chosen (`sudo velo setup` prepares one for a user; root may pass --pool)",
        ));
    }
    let per_pool = join_all(
        pools
            .iter()
            .map(|pool| pool_checks(ctx, pool, &implementation)),
    )
    .await;
    checks.extend(per_pool.into_iter().flatten());
    checks
}

fn zfs_failure(group: &'static str, name: &str, e: &ZfsError) -> Check {
    let fix = match e {
        ZfsError::NotInstalled { .. } => {
            "install OpenZFS (apt install zfsutils-linux) or zfs-fuse, then run `sudo velo setup`"
        }
        e if e.kind() == ZfsErrorKind::NotRunning => {
            "start ZFS: `modprobe zfs` (OpenZFS) or start the zfs-fuse daemon"
        }
        e if e.kind() == ZfsErrorKind::NoSuchPool => "import it: `zpool import <pool>`",
        _ => "see the message; `velo setup` prepares the host",
    };
    Check::fail(group, name, first_line(&format!("{e:#}")), fix)
}

async fn pool_checks(ctx: &Ctx, pool: &str, implementation: &Implementation) -> Vec<Check> {
    const G: &str = "zfs";
    let zfs = ctx.backends.zfs();
    let base = user_base(pool, &dataset_user());
    let (health, space, base_exists) = tokio::join!(
        zfs.pool_health(pool),
        zfs.pool_space(pool),
        zfs.exists(&base),
    );
    let health = match health {
        Ok(h) => h,
        Err(e) => {
            let mut c = zfs_failure(G, &format!("pool {pool}"), &e);
            if e.kind() == ZfsErrorKind::NoSuchPool {
                c.detail = format!("pool {pool} is not imported");
                c.fix = Some(format!("import it: `zpool import {pool}`"));
            }
            return vec![c];
        }
    };
    let mut checks = vec![if health == "ONLINE" {
        Check::ok(G, format!("pool {pool}"), "ONLINE")
    } else {
        Check::fail(
            G,
            format!("pool {pool}"),
            health,
            format!("see `zpool status {pool}`"),
        )
    }];
    checks.push(match space {
        Ok(s) if s.available < LOW_SPACE => Check::warn(
            G,
            format!("space {pool}"),
            format!("{} free", human_bytes(s.available)),
            "delete branches or snapshots (`velo snapshot cleanup`), or grow the pool",
        ),
        Ok(s) => Check::ok(
            G,
            format!("space {pool}"),
            format!(
                "{} free, {} used",
                human_bytes(s.available),
                human_bytes(s.used)
            ),
        ),
        Err(e) => zfs_failure(G, &format!("space {pool}"), &e),
    });
    checks.push(match base_exists {
        Ok(true) => Check::ok(G, "base dataset", base.clone()),
        Ok(false) => Check::warn(
            G,
            "base dataset",
            format!("{base} does not exist yet"),
            "run `sudo velo setup` (velo project create also makes it, as root)",
        ),
        Err(e) => zfs_failure(G, "base dataset", &e),
    });
    checks.push(delegation_check(ctx, pool, &base, implementation).await);
    checks
}

async fn delegation_check(
    ctx: &Ctx,
    pool: &str,
    base: &str,
    implementation: &Implementation,
) -> Check {
    const G: &str = "zfs";
    let name = "delegation";
    if is_root() {
        return Check::ok(G, name, "running as root: none needed");
    }
    if *implementation == Implementation::ZfsFuse {
        return Check::fail(
            G,
            name,
            "zfs-fuse cannot delegate",
            "run velo as root, or use OpenZFS",
        );
    }
    let user = current_user();
    let fix = format!("run `sudo velo setup --user {user}`");
    match ctx.backends.zfs().pool_property(pool, "delegation").await {
        Ok(v) if v == "on" => {}
        Ok(v) => return Check::fail(G, name, format!("pool {pool} has delegation={v}"), fix),
        Err(e) => return zfs_failure(G, name, &e),
    }
    match ctx.backends.zfs().delegated(base, &user).await {
        Ok(have) => {
            let lacks = |want: &[&str], have: &[String]| -> Vec<String> {
                want.iter()
                    .filter(|p| !have.iter().any(|h| h == *p))
                    .map(|p| p.to_string())
                    .collect()
            };
            let missing: Vec<String> = lacks(DELEGATED_LOCAL, &have.local)
                .into_iter()
                .map(|p| format!("{p} (on the base)"))
                .chain(
                    lacks(DELEGATED_DESCENDENT, &have.descendent)
                        .into_iter()
                        .map(|p| format!("{p} (below it)")),
                )
                .collect();
            if missing.is_empty() {
                Check::ok(
                    G,
                    name,
                    format!(
                        "{user} may {} on {base} and {} below it",
                        DELEGATED_LOCAL.join(","),
                        DELEGATED_DESCENDENT.join(",")
                    ),
                )
            } else {
                Check::fail(
                    G,
                    name,
                    format!("{user} lacks {} on {base}", missing.join(", ")),
                    fix,
                )
            }
        }
        Err(e) => zfs_failure(G, name, &e),
    }
}

pub async fn sudo_checks(ctx: &Ctx, uses: &Uses) -> Vec<Check> {
    const G: &str = "sudo";
    if is_root() {
        return vec![Check::ok(G, "sudoers", "running as root: none needed")];
    }
    if uses.zfs_pools.is_empty() {
        return vec![Check::ok(G, "sudoers", "none needed (no ZFS here)")];
    }
    let user = current_user();
    let fix = format!("run `sudo velo setup --user {user}`");
    let path = sudoers_path(rustix::process::geteuid().as_raw());
    if !path.exists() {
        return vec![Check::fail(
            G,
            "sudoers",
            format!("{} is missing", path.display()),
            fix,
        )];
    }
    let Some(pool) = ctx.config.pool.clone() else {
        return vec![Check::fail(G, "sudoers", "no pool in velo's config", fix)];
    };
    // Ask sudo whether velo's mount command is allowed, without running it or prompting.
    let probe = format!("{}/probe.main.0", user_base(&pool, &dataset_user()));
    let zfs = ctx.backends.zfs().zfs_program();
    let out = tokio::process::Command::new("sudo")
        .args(["-n", "-l", zfs, "mount", &probe])
        .output()
        .await;
    vec![match out {
        Ok(o) if o.status.success() => Check::ok(
            G,
            "sudoers",
            format!(
                "{}: mount/unmount under {}",
                path.display(),
                user_base(&pool, &dataset_user())
            ),
        ),
        Ok(o) => Check::fail(
            G,
            "sudoers",
            format!(
                "{} does not let {user} run `{} mount` ({})",
                path.display(),
                zfs,
                first_line(String::from_utf8_lossy(&o.stderr).trim())
            ),
            fix,
        ),
        Err(e) => Check::fail(
            G,
            "sudoers",
            format!("cannot run sudo: {e}"),
            "install sudo",
        ),
    }]
}
