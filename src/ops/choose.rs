//! Which storage and runtime a new project gets: what the user asked for, else the best the
//! machine offers, with the reason recorded (`project get` and `velo doctor` show it).

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use super::{Ctx, UsageError};
use crate::pgversion::MIN_MAJOR;
use crate::state::{RuntimeRecord, StorageRecord, ZfsLayout};
use crate::storage::btrfs::is_btrfs;
use crate::storage::tree::reflink_works;
use crate::storage::zfs::user_base;

/// The PostgreSQL major a new project gets when nothing says otherwise.
pub const DEFAULT_MAJOR: u32 = 17;

/// Storage backends, as `--storage` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageKind {
    Zfs,
    Btrfs,
    Reflink,
    Copy,
}

/// Runtimes, as `--runtime` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    Docker,
    Native,
}

/// What `project create` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    pub storage: Option<StorageKind>,
    pub runtime: Option<RuntimeKind>,
    pub pool: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub pg_version: Option<u32>,
    pub image: Option<String>,
}

/// The storage and runtime chosen, and why.
#[derive(Debug, Clone)]
pub struct Choice {
    pub storage: StorageRecord,
    pub runtime: RuntimeRecord,
    pub why: String,
}

/// The official image of a PostgreSQL major.
pub fn image_for(major: u32) -> String {
    format!("postgres:{major}-alpine")
}

pub async fn choose(ctx: &Ctx, wanted: &Wanted) -> Result<Choice> {
    if let Some(v) = wanted.pg_version
        && v < MIN_MAJOR
    {
        bail!(
            "velo needs PostgreSQL {MIN_MAJOR} or newer (older majors are past their end of life); pass --pg-version {DEFAULT_MAJOR}"
        );
    }
    check_flags(wanted)?;
    let (storage, storage_why) = choose_storage(ctx, wanted).await?;
    let (runtime, runtime_why) = choose_runtime(ctx, wanted).await?;
    Ok(Choice {
        storage,
        runtime,
        why: format!("{storage_why}; {runtime_why}"),
    })
}

/// Options that contradict each other: usage errors, found before anything is probed.
fn check_flags(wanted: &Wanted) -> Result<()> {
    let storage = wanted.storage;
    let usage = |text: String| Err(UsageError(text).into());
    if wanted.pool.is_some() && storage.is_some_and(|k| k != StorageKind::Zfs) {
        return usage(format!(
            "--pool is for ZFS storage; leave it out with --storage {}",
            kind_word(storage)
        ));
    }
    let zfs = storage == Some(StorageKind::Zfs) || wanted.pool.is_some();
    if wanted.data_dir.is_some() && zfs {
        return usage(
            "--data-dir is for btrfs, reflink and copy storage; ZFS keeps data in its pool".into(),
        );
    }
    if wanted.runtime == Some(RuntimeKind::Native) && wanted.image.is_some() {
        return usage(
            "--image is for the Docker runtime; the native runtime uses the host's binaries (--pg-version)".into(),
        );
    }
    Ok(())
}

async fn choose_storage(ctx: &Ctx, wanted: &Wanted) -> Result<(StorageRecord, String)> {
    let dir = data_dir(ctx, wanted);
    // A pool asked for is a ZFS project.
    let kind = wanted
        .storage
        .or(wanted.pool.as_ref().map(|_| StorageKind::Zfs));
    match kind {
        Some(StorageKind::Zfs) => {
            let (pool, _) = choose_pool(ctx, wanted.pool.clone()).await?;
            Ok((zfs_record(pool), "zfs, as asked".into()))
        }
        Some(StorageKind::Btrfs) => Ok((StorageRecord::Btrfs { dir }, "btrfs, as asked".into())),
        Some(StorageKind::Reflink) => {
            Ok((StorageRecord::Reflink { dir }, "reflink, as asked".into()))
        }
        Some(StorageKind::Copy) => Ok((StorageRecord::Copy { dir }, "copy, as asked".into())),
        None => default_storage(ctx, wanted, dir).await,
    }
}

fn kind_word(kind: Option<StorageKind>) -> &'static str {
    match kind {
        Some(StorageKind::Zfs) | None => "zfs",
        Some(StorageKind::Btrfs) => "btrfs",
        Some(StorageKind::Reflink) => "reflink",
        Some(StorageKind::Copy) => "copy",
    }
}

/// The best copy-on-write the machine offers: ZFS when a pool is set up for this user (or,
/// as root, the only pool imported); else Btrfs if the data directory is on Btrfs; else
/// reflinks if `FICLONE` works there; else plain copies, with a warning.
async fn default_storage(
    ctx: &Ctx,
    wanted: &Wanted,
    dir: PathBuf,
) -> Result<(StorageRecord, String)> {
    if let Some((pool, why)) = usable_pool(ctx, wanted).await {
        return Ok((zfs_record(pool), why));
    }
    crate::hostdir::private_dir(&dir)
        .with_context(|| format!("preparing velo's data directory {}", dir.display()))?;
    let shown = dir.display().to_string();
    if is_btrfs(&dir) {
        let why = format!("btrfs: {shown} is on Btrfs");
        return Ok((StorageRecord::Btrfs { dir }, why));
    }
    if reflink_works(&dir) {
        let why = format!("reflink: {shown} shares blocks between copies (FICLONE)");
        return Ok((StorageRecord::Reflink { dir }, why));
    }
    ctx.shell.warn(&format!(
        "{shown} can neither snapshot (Btrfs, ZFS) nor share blocks (XFS with reflink, Btrfs, bcachefs): branches will be full copies, slow and as big as their parent; put velo's data on such a file system (--data-dir), or set up ZFS"
    ));
    let why = format!("copy: {shown} has no copy-on-write");
    Ok((StorageRecord::Copy { dir }, why))
}

/// A ZFS pool this user can use without being asked: the one `velo setup` prepared for them,
/// or, as root, the configured pool or the only one imported.
async fn usable_pool(ctx: &Ctx, wanted: &Wanted) -> Option<(String, String)> {
    let set_up = ctx.config.users.contains_key(&dataset_user());
    if !(crate::zfs::is_root() || set_up) {
        return None;
    }
    choose_pool(ctx, wanted.pool.clone()).await.ok()
}

fn zfs_record(pool: String) -> StorageRecord {
    StorageRecord::Zfs {
        base: user_base(&pool, &dataset_user()),
        pool,
        layout: ZfsLayout::Flat,
    }
}

/// Where btrfs, reflink and copy storage keep their data: `--data-dir`, else
/// `$VELO_HOME/data`.
fn data_dir(ctx: &Ctx, wanted: &Wanted) -> PathBuf {
    let dir = wanted
        .data_dir
        .clone()
        .unwrap_or_else(|| ctx.store.dir().join("data"));
    std::path::absolute(&dir).unwrap_or(dir)
}

async fn choose_runtime(ctx: &Ctx, wanted: &Wanted) -> Result<(RuntimeRecord, String)> {
    let docker = |image: String, why: &str| (RuntimeRecord::Docker { image }, why.to_string());
    let image = || {
        wanted
            .image
            .clone()
            .unwrap_or_else(|| image_for(wanted.pg_version.unwrap_or(DEFAULT_MAJOR)))
    };
    match (wanted.runtime, &wanted.image) {
        (Some(RuntimeKind::Native), _) => native(wanted, "native, as asked"),
        (Some(RuntimeKind::Docker), _) | (None, Some(_)) => Ok(docker(image(), "docker, as asked")),
        (None, None) => {
            let image = image();
            let found = ctx.backends.docker().image_id(&image).await;
            match found {
                Ok(Some(_)) => Ok(docker(
                    image.clone(),
                    &format!("docker: the daemon answers and has {image}"),
                )),
                _ if crate::zfs::is_root() => bail!(
                    "no runtime for a new project: Docker {} and the native runtime does not run as root; with Docker running, pass `--runtime docker` (velo pulls {image}) or `docker pull {image}`, or pass --image; or run velo as a regular user",
                    docker_problem(&found)
                ),
                _ => native(
                    wanted,
                    &format!("native: Docker {}", docker_problem(&found)),
                ),
            }
        }
    }
}

fn docker_problem(found: &Result<Option<String>, crate::docker::DockerError>) -> &'static str {
    match found {
        Ok(Some(_)) => "has the image",
        Ok(None) => "does not have the image",
        Err(_) => "does not answer (or you may not use it)",
    }
}

/// The native runtime with the host's binaries of the major asked for, else the newest.
fn native(wanted: &Wanted, why: &str) -> Result<(RuntimeRecord, String)> {
    let found = crate::runtime::native::bins::find(wanted.pg_version)?;
    let why = format!(
        "{why}, PostgreSQL {} in {}",
        found.version,
        found.bindir.display()
    );
    Ok((
        RuntimeRecord::Native {
            bindir: found.bindir,
        },
        why,
    ))
}

/// The pool to use: the one asked for, else the one `velo setup` recorded, else the only
/// imported pool; and why.
pub async fn choose_pool(ctx: &Ctx, asked: Option<String>) -> Result<(String, String)> {
    pick_pool(ctx.backends.zfs(), ctx.config.pool.as_ref(), asked).await
}

/// [`choose_pool`] with these ZFS tools and this configured pool.
pub async fn pick_pool(
    zfs: &crate::zfs::Zfs,
    configured: Option<&String>,
    asked: Option<String>,
) -> Result<(String, String)> {
    let pools = zfs.pools().await.context("listing ZFS pools")?;
    let (asked, why) = match (asked, configured) {
        (Some(p), _) => (Some(p), "the pool asked for"),
        (None, Some(p)) => (Some(p.clone()), "the pool `velo setup` recorded"),
        (None, None) => (None, "the only pool imported"),
    };
    match asked {
        Some(p) if pools.contains(&p) => Ok((p.clone(), format!("zfs: pool {p} is {why}"))),
        Some(p) => bail!(
            "ZFS pool `{p}` is not imported (pools here: {}); import it or pass another --pool",
            list_or_none(&pools)
        ),
        None => match pools.as_slice() {
            [only] => Ok((only.clone(), format!("zfs: pool {only} is {why}"))),
            [] => bail!(
                "no ZFS pool is imported: create one (`zpool create tank /dev/…`) or import it"
            ),
            many => bail!(
                "several ZFS pools are imported ({}): choose one with --pool",
                many.join(", ")
            ),
        },
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// The name of this user's base dataset: the login name when it is a plain one, else the uid.
pub fn dataset_user() -> String {
    match login_name() {
        Some(n) if plain_user_name(&n) => n,
        _ => format!("uid{}", rustix::process::geteuid().as_raw()),
    }
}

/// The effective user's login name, from /etc/passwd.
pub fn login_name() -> Option<String> {
    let uid = rustix::process::geteuid().as_raw().to_string();
    std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 2 && f[2] == uid).then(|| f[0].to_string())
        })
    })
}

/// `[a-z_][a-z0-9_-]*`, at most 32 characters: safe in a dataset name and a sudoers rule.
pub fn plain_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contradicting_flags_are_usage_errors() {
        let bad = [
            Wanted {
                storage: Some(StorageKind::Btrfs),
                pool: Some("tank".into()),
                ..Wanted::default()
            },
            Wanted {
                pool: Some("tank".into()),
                data_dir: Some("/srv".into()),
                ..Wanted::default()
            },
            Wanted {
                runtime: Some(RuntimeKind::Native),
                image: Some("postgres:17".into()),
                ..Wanted::default()
            },
        ];
        for wanted in bad {
            let err = check_flags(&wanted).unwrap_err();
            assert!(err.is::<UsageError>(), "{wanted:?}: {err}");
        }
        let fine = Wanted {
            storage: Some(StorageKind::Zfs),
            pool: Some("tank".into()),
            image: Some("postgres:17".into()),
            ..Wanted::default()
        };
        assert!(check_flags(&fine).is_ok());
    }

    #[test]
    fn user_names_safe_for_datasets_and_sudoers() {
        for ok in ["ann", "_svc", "a-b_c9"] {
            assert!(plain_user_name(ok), "{ok}");
        }
        for bad in ["", "Ann", "a.b", "a b", "9a", "a/b", &"a".repeat(33)] {
            assert!(!plain_user_name(bad), "{bad}");
        }
    }
}
