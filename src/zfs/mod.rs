//! velo's copy-on-write storage, on ZFS through the `zfs` and `zpool` commands.
//!
//! Commands are run with an argv (never a shell), with `-H` for parsable output and `-p` for exact
//! numbers where both OpenZFS 2.x and zfs-fuse accept it (zfs-fuse has no `zfs list -p`, so sizes
//! come from `zfs get -H -p`). The exit status decides success; stderr is classified into
//! [`ZfsErrorKind`]. This module knows nothing of projects, branches or Docker: callers pass it
//! dataset names made by [`crate::names`].
//!
//! `VELO_ZFS` and `VELO_ZPOOL` override the binaries (tests use this to inject failures).
//!
//! Run by a non-root user, dataset work goes through ZFS delegation (`zfs allow`, granted by
//! `velo setup`) and only mounting and unmounting, which Linux reserves to root, run as
//! `sudo -n <zfs> mount|unmount <dataset>`: the one command velo's sudoers entry allows.

mod error;
pub mod parse;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tokio::process::Command;

pub use error::{ZfsError, ZfsErrorKind, classify};
pub use parse::{Delegated, Entry};

/// errno "Transport endpoint is not connected": what a FUSE mount answers once its daemon died.
const ENOTCONN: i32 = 107;

/// How long a destroy keeps retrying while a dataset is "busy". zfs-fuse finishes an unmount
/// asynchronously, and on OpenZFS a process can hold a file open for a moment after a container
/// stops. Deleting a project of 51 branches, zfs-fuse still called the last one busy after 10 s
/// (the benchmark, while it was freeing gigabytes destroyed just before).
const BUSY_RETRY_FOR: Duration = Duration::from_secs(30);

/// Properties velo sets on its base dataset; every project and branch dataset inherits them.
/// PostgreSQL writes 8 KiB pages, so an 8 KiB record size avoids read-modify-write of larger
/// records; access times are pure overhead for a database.
pub const BASE_PROPERTIES: &[(&str, &str)] = &[("recordsize", "8k"), ("atime", "off")];

/// Properties velo sets (as root) on the datasets above every user's volumes, inherited by all
/// of them and never delegated, so no user can turn them on again: a database superuser can
/// leave a setuid program or a device node in its data, and none of it may work on the host.
pub const SECURITY_PROPERTIES: &[(&str, &str)] =
    &[("setuid", "off"), ("devices", "off"), ("exec", "off")];

/// What `velo setup` delegates on a user's base dataset, and where (each is justified in
/// docs/setup.md; tested on OpenZFS 2.1 in the VM, docs/security.md): on the base itself only
/// what makes a direct child (`create`, and the `mount` that creating needs); below it what
/// works on those children (`clone` is checked on the origin, `userprop` at creation on the new
/// dataset, `mount` by `destroy`, `rename` for `velo branch rename`, which ZFS allows only into
/// a parent where the user may `create`: the base). Nothing lets a user create a dataset, or
/// move one, inside one of their own, whose mountpoint would be a directory they control.
/// velo never rolls back, promotes or sets properties.
pub const DELEGATED_LOCAL: &[&str] = &["create", "mount"];
pub const DELEGATED_DESCENDENT: &[&str] = &[
    "clone", "destroy", "mount", "rename", "snapshot", "userprop",
];

/// The ZFS command-line tools.
#[derive(Debug, Clone)]
pub struct Zfs {
    zfs: String,
    zpool: String,
    /// Mount and unmount through `sudo -n` (velo is not running as root).
    sudo: bool,
}

impl Default for Zfs {
    fn default() -> Self {
        Self::new(None, None)
    }
}

/// Which ZFS this host runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Implementation {
    /// OpenZFS, with the first line of `zfs version` (e.g. `zfs-2.1.11-1`).
    OpenZfs(String),
    /// zfs-fuse: no `zfs version`, no `zfs allow`, so velo runs as root only.
    ZfsFuse,
}

/// Where ZFS's tools live on the systems velo supports, searched after PATH: cron's PATH
/// (`/usr/bin:/bin`) and many users' lack the sbin directories.
const SYSTEM_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// The path of the executable `name` in the first directory of PATH, then of
/// [`SYSTEM_DIRS`], that has one; `name` itself when none does (running it then fails with
/// [`ZfsError::NotInstalled`]).
pub fn find_program(name: &str) -> String {
    find_in(
        name,
        &std::env::var_os("PATH").unwrap_or_default(),
        &SYSTEM_DIRS,
    )
}

fn find_in(name: &str, path: &std::ffi::OsStr, system: &[&str]) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .chain(system.iter().map(std::path::PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map_or_else(|| name.to_string(), |p| p.display().to_string())
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Space figures of a pool, in bytes, from its root dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpace {
    pub used: u64,
    pub available: u64,
}

impl Zfs {
    /// The tools at the given paths (from velo's config), unless `VELO_ZFS`/`VELO_ZPOOL` say
    /// otherwise; `zfs` and `zpool` found on PATH or in the system directories when neither
    /// does.
    pub fn new(zfs: Option<String>, zpool: Option<String>) -> Self {
        Self {
            zfs: std::env::var("VELO_ZFS")
                .ok()
                .or(zfs)
                .unwrap_or_else(|| find_program("zfs")),
            zpool: std::env::var("VELO_ZPOOL")
                .ok()
                .or(zpool)
                .unwrap_or_else(|| find_program("zpool")),
            sudo: !is_root(),
        }
    }

    /// Exactly these programs, whatever the environment says (`velo setup`, which names the
    /// `zfs` program in a sudoers rule).
    pub fn at(zfs: String, zpool: String) -> Self {
        Self {
            zfs,
            zpool,
            sudo: !is_root(),
        }
    }

    /// The `zfs` program velo runs (the path the sudoers entry must name).
    pub fn zfs_program(&self) -> &str {
        &self.zfs
    }

    pub fn zpool_program(&self) -> &str {
        &self.zpool
    }

    async fn run(&self, program: &str, args: &[&str]) -> Result<String, ZfsError> {
        let argv = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let out = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    ZfsError::NotInstalled {
                        program: program.to_string(),
                        source,
                    }
                } else {
                    ZfsError::Spawn {
                        argv: argv.clone(),
                        source,
                    }
                }
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(ZfsError::Failed {
                kind: classify(&stderr),
                status: out.status.to_string(),
                stderr,
                argv,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn zfs(&self, args: &[&str]) -> Result<String, ZfsError> {
        self.run(&self.zfs, args).await
    }

    async fn zpool(&self, args: &[&str]) -> Result<String, ZfsError> {
        self.run(&self.zpool, args).await
    }

    /// Runs a destroy, retrying briefly while ZFS says the dataset is busy.
    async fn destroy_retrying(&self, args: &[&str]) -> Result<(), ZfsError> {
        match self.retrying_busy(args).await {
            Err(e) if e.kind() == ZfsErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Runs `zfs <args>`, retrying for a while as long as ZFS says a dataset is busy.
    async fn retrying_busy(&self, args: &[&str]) -> Result<(), ZfsError> {
        while_busy(|| self.zfs(args)).await.map(drop)
    }

    /// Names of the imported pools.
    pub async fn pools(&self) -> Result<Vec<String>, ZfsError> {
        Ok(parse::names(
            &self.zpool(&["list", "-H", "-o", "name"]).await?,
        ))
    }

    /// A pool's health as `zpool list` reports it (`ONLINE`, `DEGRADED`, …).
    pub async fn pool_health(&self, pool: &str) -> Result<String, ZfsError> {
        let out = self.zpool(&["list", "-H", "-o", "health", pool]).await?;
        Ok(out.trim().to_string())
    }

    /// The best compression the pool supports: lz4 when the pool has the feature (OpenZFS),
    /// else `on` (zfs-fuse, whose pool version predates lz4).
    pub async fn best_compression(&self, pool: &str) -> &'static str {
        match self
            .zpool(&["get", "-H", "-o", "value", "feature@lz4_compress", pool])
            .await
        {
            Ok(v) if matches!(v.trim(), "enabled" | "active") => "lz4",
            _ => "on",
        }
    }

    pub async fn exists(&self, dataset: &str) -> Result<bool, ZfsError> {
        match self
            .zfs(&["get", "-H", "-o", "value", "name", dataset])
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ZfsErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a filesystem with the given properties, mounted; parents must exist.
    pub async fn create(&self, dataset: &str, props: &[(&str, &str)]) -> Result<(), ZfsError> {
        let opts = props_args(props);
        let mut args = vec!["create"];
        args.extend(opts.iter().map(String::as_str));
        args.push(dataset);
        self.mounted_after(dataset, self.zfs(&args).await).await
    }

    /// A non-root create or clone makes the dataset but cannot mount it (OpenZFS then exits 1
    /// with "successfully created"): mount it through sudo.
    async fn mounted_after(
        &self,
        dataset: &str,
        made: Result<String, ZfsError>,
    ) -> Result<(), ZfsError> {
        match made {
            Err(e) if e.kind() == ZfsErrorKind::CreatedNotMounted => self.mount(dataset).await,
            Ok(_) if self.sudo => self.mount(dataset).await,
            other => other.map(drop),
        }
    }

    /// Runs `zfs <verb> <dataset>`, through `sudo -n` unless velo runs as root.
    async fn privileged(&self, verb: &str, dataset: &str) -> Result<String, ZfsError> {
        if self.sudo {
            self.run("sudo", &["-n", &self.zfs, verb, dataset]).await
        } else {
            self.zfs(&[verb, dataset]).await
        }
    }

    /// Mounts a filesystem; one that is already mounted is success.
    pub async fn mount(&self, dataset: &str) -> Result<(), ZfsError> {
        match self.privileged("mount", dataset).await {
            Err(e) if e.kind() == ZfsErrorKind::AlreadyMounted => Ok(()),
            other => other.map(drop),
        }
    }

    /// Unmounts a filesystem; one that is not mounted is success.
    ///
    /// Retries while ZFS says busy: a server that has just stopped (or its container's mount
    /// namespace) may hold the dataset for a moment.
    pub async fn unmount(&self, dataset: &str) -> Result<(), ZfsError> {
        match while_busy(|| self.privileged("unmount", dataset)).await {
            Err(e) if e.kind() == ZfsErrorKind::NotMounted => Ok(()),
            other => other.map(drop),
        }
    }

    /// Creates `dataset` if it is missing (a racing creator is not an error).
    pub async fn ensure(&self, dataset: &str, props: &[(&str, &str)]) -> Result<(), ZfsError> {
        if self.exists(dataset).await? {
            return Ok(());
        }
        match self.create(dataset, props).await {
            Err(e) if e.kind() == ZfsErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }

    pub async fn snapshot(&self, snapshot: &str) -> Result<(), ZfsError> {
        self.zfs(&["snapshot", snapshot]).await.map(drop)
    }

    /// Clones a snapshot into a new filesystem with the given properties.
    pub async fn clone_snapshot(
        &self,
        snapshot: &str,
        dataset: &str,
        props: &[(&str, &str)],
    ) -> Result<(), ZfsError> {
        let opts = props_args(props);
        let mut args = vec!["clone"];
        args.extend(opts.iter().map(String::as_str));
        args.extend([snapshot, dataset]);
        let made = self.zfs(&args).await;
        self.mounted_after(dataset, made).await
    }

    /// Every filesystem and snapshot at or under `root`, with its mount state, origin and the
    /// given user properties, in one `zfs get -r`; empty if `root` does not exist.
    pub async fn describe_tree(
        &self,
        root: &str,
        user_props: &[&str],
    ) -> Result<BTreeMap<String, Entry>, ZfsError> {
        let mut props = Entry::PROPERTIES.to_vec();
        props.extend_from_slice(user_props);
        Ok(parse::entries(self.get_tree(root, &props).await?))
    }

    /// Mountpoints of ZFS file systems whose FUSE daemon is gone: a zfs-fuse that died or was
    /// restarted leaves its mounts behind, and every access to them fails with "Transport
    /// endpoint is not connected" until they are unmounted. (OpenZFS mounts are kernel mounts
    /// and never go stale.)
    pub fn stale_mounts(&self) -> BTreeSet<String> {
        let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        parse::fuse_mountpoints(&table)
            .into_iter()
            // Reading the directory, not `stat`: the kernel may answer a stat of a dead mount's
            // root from its cache.
            .filter(|path| {
                std::fs::read_dir(path).err().and_then(|e| e.raw_os_error()) == Some(ENOTCONN)
            })
            .collect()
    }

    /// Lazily unmounts a stale FUSE mount (see [`Zfs::stale_mounts`]), so the dataset can be
    /// mounted there again. It holds no data: the daemon that served it is gone.
    pub async fn clear_stale_mount(&self, path: &str) -> Result<(), ZfsError> {
        self.run("umount", &["-l", path]).await.map(drop)
    }

    /// Destroys a filesystem and its snapshots. Missing is success. Not as root, the
    /// filesystems are unmounted first (deepest first), since `zfs destroy` cannot.
    pub async fn destroy_dataset(&self, dataset: &str) -> Result<(), ZfsError> {
        if self.sudo {
            let tree = self.get_tree(dataset, &["mounted"]).await?;
            let mut mounted: Vec<&String> = tree
                .iter()
                .filter(|(name, p)| {
                    !name.contains('@')
                        && p.get("mounted").cloned().flatten().as_deref() == Some("yes")
                })
                .map(|(name, _)| name)
                .collect();
            mounted.sort_by_key(|name| std::cmp::Reverse(name.matches('/').count()));
            for name in mounted {
                self.unmount(name).await?;
            }
        }
        self.destroy_retrying(&["destroy", "-r", dataset]).await
    }

    /// Renames a filesystem (and its snapshots) that is not mounted; it stays unmounted. The
    /// new name must be a sibling: velo's delegation lets a user rename only within their
    /// base. Retries while ZFS says busy (zfs-fuse finishes an unmount asynchronously).
    pub async fn rename(&self, dataset: &str, to: &str) -> Result<(), ZfsError> {
        self.retrying_busy(&["rename", dataset, to]).await
    }

    /// Destroys a single snapshot. Missing is success.
    pub async fn destroy_snapshot(&self, snapshot: &str) -> Result<(), ZfsError> {
        debug_assert!(snapshot.contains('@'));
        self.destroy_retrying(&["destroy", snapshot]).await
    }

    /// Where a filesystem is mounted, or `None` if it is not mounted.
    pub async fn mountpoint(&self, dataset: &str) -> Result<Option<String>, ZfsError> {
        let props = self.get(&[dataset], &["mounted", "mountpoint"]).await?;
        let p = props.get(dataset);
        let mounted = p.and_then(|p| p.get("mounted")).cloned().flatten();
        let mountpoint = p.and_then(|p| p.get("mountpoint")).cloned().flatten();
        Ok(match (mounted.as_deref(), mountpoint) {
            (Some("yes"), Some(mp)) if mp.starts_with('/') => Some(mp),
            _ => None,
        })
    }

    /// `zfs get -H -p` of some properties on some datasets: name → property → value.
    pub async fn get(
        &self,
        datasets: &[&str],
        properties: &[&str],
    ) -> Result<BTreeMap<String, BTreeMap<String, Option<String>>>, ZfsError> {
        let props = properties.join(",");
        let mut args = vec!["get", "-H", "-p", "-o", "name,property,value", &props];
        args.extend_from_slice(datasets);
        let out = self.zfs(&args).await?;
        let rows = parse::prop_rows(&out).map_err(|line| ZfsError::Parse {
            argv: format!("zfs {}", args.join(" ")),
            line,
        })?;
        Ok(parse::props_by_name(rows))
    }

    /// Properties of `root` and everything under it (filesystems and snapshots) in one call;
    /// empty if `root` does not exist.
    pub async fn get_tree(
        &self,
        root: &str,
        properties: &[&str],
    ) -> Result<BTreeMap<String, BTreeMap<String, Option<String>>>, ZfsError> {
        let props = properties.join(",");
        let args = [
            "get",
            "-H",
            "-p",
            "-r",
            "-o",
            "name,property,value",
            &props,
            root,
        ];
        let out = match self.zfs(&args).await {
            Ok(out) => out,
            Err(e) if e.kind() == ZfsErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e),
        };
        let rows = parse::prop_rows(&out).map_err(|line| ZfsError::Parse {
            argv: format!("zfs {}", args.join(" ")),
            line,
        })?;
        Ok(parse::props_by_name(rows))
    }

    pub async fn pool_space(&self, pool: &str) -> Result<PoolSpace, ZfsError> {
        let map = self.get(&[pool], &["used", "available"]).await?;
        let value = |prop: &str| -> Result<u64, ZfsError> {
            let v = map.get(pool).and_then(|p| p.get(prop)).cloned().flatten();
            parse::bytes(v.as_deref().unwrap_or("0")).map_err(|line| ZfsError::Parse {
                argv: format!("zfs get -H -p {prop} {pool}"),
                line,
            })
        };
        Ok(PoolSpace {
            used: value("used")?,
            available: value("available")?,
        })
    }

    /// Every filesystem and snapshot at or under `dataset` (empty if it does not exist).
    pub async fn list_tree(&self, dataset: &str) -> Result<Vec<String>, ZfsError> {
        match self
            .zfs(&[
                "list",
                "-H",
                "-o",
                "name",
                "-t",
                "filesystem,snapshot",
                "-r",
                dataset,
            ])
            .await
        {
            Ok(out) => Ok(parse::names(&out)),
            Err(e) if e.kind() == ZfsErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

/// Host set-up and health: what `velo setup` and `velo doctor` ask of ZFS.
impl Zfs {
    /// OpenZFS (with its version) or zfs-fuse.
    pub async fn implementation(&self) -> Result<Implementation, ZfsError> {
        match self.zfs(&["version"]).await {
            Ok(out) => Ok(Implementation::OpenZfs(
                out.lines().next().unwrap_or_default().trim().to_string(),
            )),
            Err(e) if e.kind() == ZfsErrorKind::Unsupported => Ok(Implementation::ZfsFuse),
            Err(e) => Err(e),
        }
    }

    /// `zfs set property=value dataset` (as root: velo delegates no property to users).
    pub async fn set(&self, dataset: &str, property: &str, value: &str) -> Result<(), ZfsError> {
        self.zfs(&["set", &format!("{property}={value}"), dataset])
            .await
            .map(drop)
    }

    /// A pool property (`zpool list -H -o`, which zfs-fuse also has).
    pub async fn pool_property(&self, pool: &str, property: &str) -> Result<String, ZfsError> {
        let out = self.zpool(&["list", "-H", "-o", property, pool]).await?;
        Ok(out.trim().to_string())
    }

    pub async fn set_pool_property(
        &self,
        pool: &str,
        property: &str,
        value: &str,
    ) -> Result<(), ZfsError> {
        self.zpool(&["set", &format!("{property}={value}"), pool])
            .await
            .map(drop)
    }

    /// The permissions delegated to `user` on `dataset` itself, by scope, from
    /// `zfs allow <dataset>`.
    pub async fn delegated(&self, dataset: &str, user: &str) -> Result<parse::Delegated, ZfsError> {
        let out = self.zfs(&["allow", dataset]).await?;
        Ok(parse::delegated_to(&out, dataset, user))
    }

    /// `zfs allow -l|-d -u USER perms dataset`.
    pub async fn allow(
        &self,
        dataset: &str,
        user: &str,
        scope: Scope,
        perms: &[&str],
    ) -> Result<(), ZfsError> {
        self.zfs(&["allow", scope.flag(), "-u", user, &perms.join(","), dataset])
            .await
            .map(drop)
    }

    /// `zfs unallow -u USER perms dataset`, in every scope.
    pub async fn unallow(&self, dataset: &str, user: &str, perms: &[&str]) -> Result<(), ZfsError> {
        self.zfs(&["unallow", "-u", user, &perms.join(","), dataset])
            .await
            .map(drop)
    }
}

/// Where delegated permissions apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The dataset itself.
    Local,
    /// Every dataset below it, not itself.
    Descendent,
}

impl Scope {
    fn flag(self) -> &'static str {
        match self {
            Scope::Local => "-l",
            Scope::Descendent => "-d",
        }
    }
}

/// Runs `attempt` again, with growing pauses, for as long as it fails because ZFS says a
/// dataset is busy, up to [`BUSY_RETRY_FOR`].
async fn while_busy<F, Fut>(mut attempt: F) -> Result<String, ZfsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String, ZfsError>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        match attempt().await {
            Err(e) if e.kind() == ZfsErrorKind::Busy && start.elapsed() < BUSY_RETRY_FOR => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

fn props_args(props: &[(&str, &str)]) -> Vec<String> {
    props
        .iter()
        .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={v}")])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tool(dir: &std::path::Path, mode: u32) -> String {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("zfs");
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    }

    #[test]
    fn programs_are_found_on_path_then_in_system_directories() {
        let root = tempfile::tempdir().unwrap();
        let (bin, sbin, other) = (
            root.path().join("bin"),
            root.path().join("sbin"),
            root.path().join("other"),
        );
        let in_sbin = tool(&sbin, 0o755);
        let system = [sbin.to_str().unwrap()];
        // Cron's PATH lacks sbin: the system directory has it.
        let path = std::ffi::OsString::from(format!("{}:relative", bin.display()));
        assert_eq!(find_in("zfs", &path, &system), in_sbin);
        // PATH comes first; a file that is not executable does not count.
        let in_bin = tool(&bin, 0o755);
        assert_eq!(find_in("zfs", &path, &system), in_bin);
        tool(&other, 0o644);
        let path = std::ffi::OsString::from(other.display().to_string());
        assert_eq!(find_in("zfs", &path, &system), in_sbin);
        // Nowhere: the bare name, which fails as "not installed" when run.
        assert_eq!(find_in("zfs", &path, &[]), "zfs");
    }
}
