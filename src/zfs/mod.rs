//! velo's copy-on-write storage, on ZFS through the `zfs` and `zpool` commands.
//!
//! Commands are run with an argv (never a shell), with `-H` for parsable output and `-p` for exact
//! numbers where both OpenZFS 2.x and zfs-fuse accept it (zfs-fuse has no `zfs list -p`, so sizes
//! come from `zfs get -H -p`). The exit status decides success; stderr is classified into
//! [`ZfsErrorKind`]. This module knows nothing of projects, branches or Docker: callers pass it
//! dataset names made by [`crate::names`].
//!
//! `VELO_ZFS` and `VELO_ZPOOL` override the binaries (tests use this to inject failures).

mod error;
pub mod parse;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tokio::process::Command;

pub use error::{ZfsError, ZfsErrorKind, classify};
pub use parse::Entry;

/// errno "Transport endpoint is not connected": what a FUSE mount answers once its daemon died.
const ENOTCONN: i32 = 107;

/// How long a destroy keeps retrying while a dataset is "busy". zfs-fuse finishes an unmount
/// asynchronously, and on OpenZFS a process can hold a file open for a moment after a container
/// stops.
const BUSY_RETRY_FOR: Duration = Duration::from_secs(10);

/// Properties velo sets on its base dataset; every project and branch dataset inherits them.
/// PostgreSQL writes 8 KiB pages, so an 8 KiB record size avoids read-modify-write of larger
/// records; access times are pure overhead for a database.
pub const BASE_PROPERTIES: &[(&str, &str)] = &[("recordsize", "8k"), ("atime", "off")];

/// The ZFS command-line tools.
#[derive(Debug, Clone)]
pub struct Zfs {
    zfs: String,
    zpool: String,
}

impl Default for Zfs {
    fn default() -> Self {
        Self {
            zfs: std::env::var("VELO_ZFS").unwrap_or_else(|_| "zfs".into()),
            zpool: std::env::var("VELO_ZPOOL").unwrap_or_else(|_| "zpool".into()),
        }
    }
}

/// Space figures of a pool, in bytes, from its root dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpace {
    pub used: u64,
    pub available: u64,
}

impl Zfs {
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
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            match self.zfs(args).await {
                Err(e) if e.kind() == ZfsErrorKind::Busy && start.elapsed() < BUSY_RETRY_FOR => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) if e.kind() == ZfsErrorKind::NotFound => return Ok(()),
                other => return other.map(drop),
            }
        }
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

    /// Creates a filesystem with the given properties; parents must exist.
    pub async fn create(&self, dataset: &str, props: &[(&str, &str)]) -> Result<(), ZfsError> {
        let opts = props_args(props);
        let mut args = vec!["create"];
        args.extend(opts.iter().map(String::as_str));
        args.push(dataset);
        self.zfs(&args).await.map(drop)
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
        self.zfs(&args).await.map(drop)
    }

    /// Mounts a filesystem at its mountpoint.
    pub async fn mount(&self, dataset: &str) -> Result<(), ZfsError> {
        self.zfs(&["mount", dataset]).await.map(drop)
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

    /// Destroys a filesystem and its snapshots. Missing is success.
    pub async fn destroy_dataset(&self, dataset: &str) -> Result<(), ZfsError> {
        self.destroy_retrying(&["destroy", "-r", dataset]).await
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

fn props_args(props: &[(&str, &str)]) -> Vec<String> {
    props
        .iter()
        .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={v}")])
        .collect()
}
