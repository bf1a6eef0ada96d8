//! Importing a project's data: from a running PostgreSQL server (`project create --from URL`,
//! pg_dump then pg_restore) or from a dump file (`--from-dump`), into a volume about to become
//! main's data; and importing it again as a new generation of main (`project refresh`).
//!
//! An import happens inside the operation that makes the volume, in two parts, each step
//! journaled: [`check`] (the client programs are there and can read the source; before any
//! volume is made, so a bad source costs nothing) and [`load`] (a temporary server on the new
//! volume, reachable only through its own socket, is restored into, masked, checkpointed and
//! stopped). The client programs are the runtime's ([`crate::runtime::Runtime::run_client`]):
//! the image's in a helper container, or the host's binaries of the server's major.
//!
//! The source's password never leaves memory but for a private password file, made for the
//! client programs that read the source and removed when they are done (docs/security.md).

mod check;
mod copy;
mod jobs;
mod physical;
pub mod refresh;
mod server;
mod space;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use chrono::Utc;

pub use check::{Checked, check, server_check};
pub use copy::load;
pub use physical::{drop_slot, empty_volume, source_checkpoint};
pub use space::secrets_dir;
pub use space::{PASSFILE, clear, write_passfile};

use super::{Ctx, UsageError};
use crate::source::SourceUrl;
use crate::source::password::{self, Lookup, Password};
use crate::state::{AfterImport, ImportFrom, Imported};

/// The most of an `--after-import` file velo reads.
const AFTER_IMPORT_LIMIT: u64 = 16 << 20;

/// Parallel jobs when none are asked for: the host's cores, at most this many.
const MAX_DEFAULT_JOBS: u32 = 4;

/// What to import, as the command line asked.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `--from URL`.
    pub url: Option<String>,
    /// `--from-dump FILE`.
    pub dump: Option<PathBuf>,
    pub all_databases: bool,
    pub with_roles: bool,
    pub role_passwords: bool,
    /// `--physical`.
    pub physical: bool,
    /// `--follow` (physical too).
    pub follow: bool,
    /// `--source-wal DIR`.
    pub source_wal: Option<PathBuf>,
    /// `--slot`.
    pub slot: bool,
    pub jobs: Option<u32>,
    pub after_import: Option<PathBuf>,
}

/// An import ready to run: the record it leaves (without its time) and the source's password.
#[derive(Debug, Clone)]
pub struct Plan {
    pub record: Imported,
    pub password: Option<Password>,
}

impl Plan {
    /// Reads the request: the URL taken apart (its password kept aside), the password found,
    /// the `--after-import` file read.
    pub fn new(ctx: &Ctx, req: Request) -> Result<Plan> {
        let (from, url_password) = match (req.url, req.dump) {
            (Some(url), None) => {
                let user = super::choose::login_name().unwrap_or_else(|| "postgres".into());
                let parsed = SourceUrl::parse(&url, &user)?;
                (ImportFrom::Server { url: parsed.url }, parsed.password)
            }
            (None, Some(path)) => (
                ImportFrom::Dump {
                    path: dump_path(&path)?,
                },
                None,
            ),
            _ => bail!("give one source: --from URL or --from-dump FILE"),
        };
        if req.follow && req.after_import.is_some() {
            bail!(
                "--after-import cannot mask a follower: its main is a standby, which cannot be written. Mask a branch instead and cut branches from it: `velo branch create P/masked`, `velo branch psql P/masked -- -f FILE.sql`, then `velo branch create P/dev --parent masked` (docs/design.md, \"Followers\")"
            );
        }
        let jobs = match req.jobs {
            Some(0) => bail!("--jobs must be 1 or more"),
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
                .min(MAX_DEFAULT_JOBS),
        };
        let record = Imported {
            from,
            all_databases: req.all_databases,
            with_roles: req.with_roles,
            role_passwords: req.role_passwords,
            physical: req.physical || req.follow,
            follow: req.follow,
            source_wal: req.source_wal.as_deref().map(source_wal_dir).transpose()?,
            slot: req
                .slot
                .then(|| format!("velo_{:016x}", rand::random::<u64>())),
            standby_limits: Default::default(),
            jobs,
            after_import: req
                .after_import
                .as_deref()
                .map(read_after_import)
                .transpose()?,
            imported_at: Utc::now(),
            source_version: None,
        };
        Ok(Plan {
            password: find_password(ctx, &record, url_password),
            record,
        })
    }

    /// The import a project recorded, again (`project refresh`): its password from
    /// `PGPASSWORD` or a pgpass file, since velo never kept it; a new `--after-import` file
    /// replaces the recorded SQL.
    pub fn again(ctx: &Ctx, record: &Imported, after_import: Option<&Path>) -> Result<Plan> {
        let mut record = record.clone();
        if let Some(path) = after_import {
            let sql = read_after_import(path).map_err(|e| UsageError(format!("{e:#}")))?;
            record.after_import = Some(sql);
        }
        if let ImportFrom::Dump { path } = &record.from
            && !path.exists()
        {
            bail!(
                "the dump this project was imported from, {}, is gone: put it back, or create the project again from another source",
                path.display()
            );
        }
        Ok(Plan {
            password: find_password(ctx, &record, None),
            record,
        })
    }

    /// The source's address, if it is a server.
    pub fn url(&self) -> Option<&SourceUrl> {
        match &self.record.from {
            ImportFrom::Server { url } => Some(url),
            ImportFrom::Dump { .. } => None,
        }
    }

    /// What the source is, for messages.
    pub fn describe(&self) -> String {
        match &self.record.from {
            ImportFrom::Server { url } => url.redacted(),
            ImportFrom::Dump { path } => path.display().to_string(),
        }
    }
}

/// The source's password, if it has one and it is a server.
fn find_password(ctx: &Ctx, record: &Imported, url_password: Option<String>) -> Option<Password> {
    let ImportFrom::Server { url } = &record.from else {
        return None;
    };
    let lookup = Lookup {
        url_password,
        env_password: password::env_password(),
        pgpass: Lookup::pgpass_of_env(),
        host: &url.host,
        port: url.port,
        database: &url.database,
        user: &url.user,
    };
    password::find(lookup, &|why| ctx.shell.warn(why))
}

/// `--source-wal`, as an absolute path to a directory.
fn source_wal_dir(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if !abs.is_dir() {
        bail!(
            "--source-wal {} is not a directory: give the directory the source's archive_command copies its WAL into",
            abs.display()
        );
    }
    Ok(abs)
}

/// A dump given on the command line, as an absolute path that exists.
fn dump_path(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if !abs.exists() {
        bail!(
            "{} does not exist: --from-dump takes a file pg_dump made with -Fc, or a directory made with -Fd",
            abs.display()
        );
    }
    Ok(abs)
}

fn read_after_import(path: &Path) -> Result<AfterImport> {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let file = std::fs::File::open(&abs)
        .with_context(|| format!("reading the --after-import file {}", abs.display()))?;
    let mut sql = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, AFTER_IMPORT_LIMIT), &mut sql)
        .with_context(|| {
            format!(
                "reading the --after-import file {} (UTF-8 SQL)",
                abs.display()
            )
        })?;
    if sql.trim().is_empty() {
        bail!("the --after-import file {} is empty", abs.display());
    }
    Ok(AfterImport { path: abs, sql })
}
