//! Where a project's data was imported from (`project create --from`, `--from-dump`): kept so
//! that `velo project refresh` can import it again. Never a password: the source's address is
//! kept as [`SourceUrl`], which has no field for one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::source::SourceUrl;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Imported {
    pub from: ImportFrom,
    /// Every database of the source, not only the URL's.
    #[serde(default)]
    pub all_databases: bool,
    /// The source's roles too (`pg_dumpall --roles-only`).
    #[serde(default)]
    pub with_roles: bool,
    /// The roles' password hashes too.
    #[serde(default)]
    pub role_passwords: bool,
    /// A physical copy (`pg_basebackup`): every database and role, the source's own files.
    #[serde(default)]
    pub physical: bool,
    /// Main is kept a hot standby of the source (`--follow`; physical too).
    #[serde(default)]
    pub follow: bool,
    /// A directory the source archives its WAL into, which a follower's main reads when it
    /// cannot stream (`--source-wal`).
    #[serde(default)]
    pub source_wal: Option<PathBuf>,
    /// The replication slot a follower's main streams through on the source (`--slot`), which
    /// keeps the source's WAL until main has it; dropped with the project.
    #[serde(default)]
    pub slot: Option<String>,
    /// The source's settings a standby must match or exceed (`max_connections` and the like),
    /// as it said when the follower was made: a follower's main runs with them.
    #[serde(default)]
    pub standby_limits: BTreeMap<String, String>,
    /// Parallel jobs of pg_dump and pg_restore.
    pub jobs: u32,
    /// SQL run on main after each import, before any branch sees the data.
    #[serde(default)]
    pub after_import: Option<AfterImport>,
    /// When the data main serves now was read from the source.
    pub imported_at: DateTime<Utc>,
    /// The source's PostgreSQL, as it said (a dump: the version it was dumped from).
    #[serde(default)]
    pub source_version: Option<String>,
}

/// What a project was imported from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImportFrom {
    /// A running server, read with pg_dump.
    Server { url: SourceUrl },
    /// A dump pg_dump made (custom or directory format).
    Dump { path: PathBuf },
}

/// The `--after-import` SQL: its text as it was given (a later change of the file is taken
/// only when it is given again), and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AfterImport {
    pub path: PathBuf,
    pub sql: String,
}
