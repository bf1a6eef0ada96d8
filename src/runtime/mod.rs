//! What runs a branch's PostgreSQL server: one interface, [`Runtime`], over a Docker engine
//! and the host's own PostgreSQL binaries.
//!
//! A runtime is asked for servers by a neutral [`ServerSpec`]: host directories (data, Unix
//! socket, WAL archives, the client authentication file), a port and settings. Each runtime
//! decides how its server sees those directories ([`Runtime::view`]): Docker mounts them at
//! fixed paths inside the container, the native runtime uses them as they are.
//!
//! Servers are addressed by name (`velo-<project>.<branch>`, derived by [`crate::names`]); a
//! runtime remembers the servers it made with velo's labels (project, branch, home), so that
//! `velo repair` can list them, and a server outlives the velo command that started it.
//!
//! This module knows nothing of storage or velo's state.

pub mod docker;
#[cfg(test)]
pub mod fake;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod native;

/// Host directories a server uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerPaths {
    /// The data directory (`<volume>/pgdata`).
    pub data_dir: PathBuf,
    /// Where the server makes its Unix socket: a directory only velo's user (and the server)
    /// can enter. velo talks to its servers through it, never over TCP.
    pub socket_dir: PathBuf,
    /// This generation's WAL archive, written by `archive_command`.
    pub archive_dir: PathBuf,
    /// The project's archives, read by a point-in-time recovery's `restore_command`.
    pub archives_root: PathBuf,
    /// velo's `pg_hba.conf`, in place of the one in the data directory.
    pub hba_file: PathBuf,
    /// A directory of secrets the server reads (read-only): the password file with which a
    /// follower's main reaches its source. Only that server gets it.
    #[serde(default)]
    pub secrets_dir: Option<PathBuf>,
    /// The source's WAL archive, which a follower's main restores from when it cannot stream
    /// (read-only). Only that server gets it.
    #[serde(default)]
    pub source_wal: Option<PathBuf>,
}

/// Everything a runtime needs to make a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSpec {
    pub name: String,
    pub labels: Labels,
    /// Who the server runs as (the native runtime: always velo's own user).
    pub user: ServerUser,
    pub paths: ServerPaths,
    /// `-c name=value` settings, in order (later ones win).
    pub settings: Vec<(String, String)>,
}

/// What a server is, for the runtime's own records and `velo repair`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    pub project: String,
    pub branch: String,
    /// The velo home that made it: another home's servers are never this one's orphans.
    pub home: String,
}

/// Who a runtime's servers run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerUser {
    pub uid: u32,
    pub gid: u32,
}

/// How a new cluster is initialised, besides what every cluster gets (a superuser without a
/// password, the Unix socket trusted, UTF-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOptions {
    /// The WAL segment size in MB (initdb's `--wal-segsize`, a power of two); `None` is
    /// PostgreSQL's 16.
    pub wal_segment_mb: Option<u32>,
}

impl InitOptions {
    /// initdb's arguments for these options.
    pub fn args(self) -> Vec<String> {
        self.wal_segment_mb
            .map(|mb| format!("--wal-segsize={mb}"))
            .into_iter()
            .collect()
    }
}

/// Host directories a client program run for velo may use ([`Runtime::run_client`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientDirs {
    /// Where it writes and reads a dump (read-write).
    pub work: Option<PathBuf>,
    /// A server's socket directory: the server it restores into.
    pub socket: Option<PathBuf>,
    /// The private directory of its password file (read-only).
    pub secrets: Option<PathBuf>,
    /// A dump file or directory the user gave (read-only).
    pub input: Option<PathBuf>,
}

/// A client program of the server software (`psql`, `pg_dump`, `pg_restore`, `pg_dumpall`)
/// that velo runs for an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientJob {
    /// Names it while it runs (a Docker helper), so that a later velo can remove it.
    pub name: String,
    pub labels: Labels,
    pub tool: String,
    /// Its arguments, with paths as [`Runtime::client_view`] shows them. Never a secret.
    pub args: Vec<String>,
    /// Its environment besides what the runtime gives every program. Never a secret.
    pub env: Vec<(String, String)>,
    pub dirs: ClientDirs,
    /// Who it runs as.
    pub user: ServerUser,
    /// Whether it reaches a server over the network (the source); else only sockets.
    pub network: bool,
}

/// Where a client program's stderr lines go, one by one, as they come.
pub type LineSink<'a> = dyn Fn(&str) + Send + Sync + 'a;

/// How a client program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOutput {
    pub code: i64,
    pub stdout: String,
    /// Its last stderr lines.
    pub stderr: String,
}

/// A server's state as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStatus {
    Missing,
    Running,
    Stopped { exit_code: Option<i64> },
    Other(String),
}

impl ServerStatus {
    /// The word `branch list` and `--json` show.
    pub fn word(&self) -> String {
        match self {
            ServerStatus::Missing => "missing".into(),
            ServerStatus::Running => "running".into(),
            ServerStatus::Stopped { .. } => "stopped".into(),
            ServerStatus::Other(o) => o.clone(),
        }
    }
}

/// A server velo made, as its runtime lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedServer {
    pub name: String,
    pub project: String,
    pub branch: String,
    pub running: bool,
    /// The host data directory it serves.
    pub data_dir: Option<PathBuf>,
    /// Docker volumes it holds, which its removal must take with it.
    pub volumes: Vec<String>,
    /// Made by an older velo, in a shape velo can no longer talk to (a container without the
    /// private socket directory): it must be re-created.
    pub outdated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Docker(#[from] crate::docker::DockerError),
    #[error(transparent)]
    Native(#[from] native::NativeError),
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("server `{name}` does not exist")]
    NoSuchServer { name: String },
    #[error("{place} has no {missing}: {fix}")]
    MissingClient {
        place: String,
        missing: String,
        fix: String,
    },
    #[error("{0}")]
    Failed(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Makes, starts, stops and removes PostgreSQL servers.
///
/// Removing or killing a missing server is success (the journal may replay it).
#[async_trait]
pub trait Runtime: Send + Sync + std::fmt::Debug {
    /// One line for `project get` and `velo doctor`: the engine and the PostgreSQL it runs.
    fn describe(&self) -> String;

    /// Makes the server software ready (the image is there, the binaries exist) and says who
    /// its servers run as.
    async fn prepare(&self) -> Result<ServerUser>;

    /// What exactly the server software is (the image's id, the binaries' version): a cluster
    /// initialised with one serves a project of the same software.
    async fn software(&self) -> Result<String>;

    /// Makes the empty data directory of a new volume whose root is `volume_root`, owned by
    /// the server's user, mode 0700; returns its path.
    async fn make_data_dir(&self, volume_root: &Path, user: ServerUser) -> Result<PathBuf>;

    /// Runs initdb in an empty data directory: superuser `superuser` without a password, the
    /// Unix socket trusted. velo sets the password over the socket before anyone else can log in.
    async fn init(
        &self,
        data_dir: &Path,
        superuser: &str,
        user: ServerUser,
        options: InitOptions,
    ) -> Result<()>;

    /// Where the server sees each host path of `paths`.
    fn view(&self, paths: &ServerPaths) -> ServerPaths;

    /// Makes a server (stopped). Fails if one of that name exists.
    async fn create(&self, spec: &ServerSpec) -> Result<()>;

    /// Creates an empty file (such as `recovery.signal`) in a server's data directory, as the
    /// server's own user: never following a link the database's superuser may have planted.
    async fn signal_file(&self, spec: &ServerSpec, name: &str, user: ServerUser) -> Result<()>;

    /// Removes a file (such as `standby.signal`) from a server's data directory, as the
    /// server's user, as [`Runtime::signal_file`] makes one. Missing is success.
    async fn remove_file(&self, spec: &ServerSpec, name: &str, user: ServerUser) -> Result<()>;

    /// Gives the file `name` in the host directory `dir` to the server's user `user` (a
    /// password file its programs read, which libpq reads only if no one else may), where
    /// velo's user is another and not root. Never follows a link.
    async fn hand_over(&self, dir: &Path, name: &str, user: ServerUser) -> Result<()>;

    /// Where a client program sees each host path of `dirs`.
    fn client_view(&self, dirs: &ClientDirs) -> ClientDirs;

    /// Checks that the client programs `tools` are there (an error names the missing ones and
    /// how to get them) and returns the first one's `--version` line.
    async fn client_version(&self, tools: &[&str]) -> Result<String>;

    /// Runs a client program to its end, handing each line it writes to stderr to `line`.
    /// Whatever its exit code, its output is returned; the caller judges it.
    async fn run_client(&self, job: &ClientJob, line: &LineSink<'_>) -> Result<ClientOutput>;

    async fn start(&self, name: &str) -> Result<()>;

    /// A fast shutdown, then a kill after `timeout`. Missing or stopped is success.
    async fn stop(&self, name: &str, timeout: Duration) -> Result<()>;

    /// Kills the server and everything it started, at once; returns when they are gone.
    async fn kill(&self, name: &str) -> Result<()>;

    /// Renames a server out of the way (to `to`) so that a new one can take its name while
    /// the old is removed; `Ok(false)` if there is none called `name`.
    async fn rename(&self, name: &str, to: &str) -> Result<bool>;

    /// Kills the server if it runs (as [`Runtime::kill`]), then removes it. Missing is success.
    async fn remove(&self, name: &str) -> Result<()>;

    async fn status(&self, name: &str) -> Result<ServerStatus>;

    /// The last lines of the server's log (empty if there is none).
    async fn logs_tail(&self, name: &str, lines: usize) -> String;

    /// The servers this velo home made.
    async fn list_managed(&self) -> Result<Vec<ManagedServer>>;

    /// Whether server `name` exists but was made by an older velo in a shape this one cannot
    /// talk to ([`ManagedServer::outdated`]).
    async fn outdated(&self, name: &str) -> Result<bool> {
        let servers = self.list_managed().await?;
        Ok(servers.iter().any(|s| s.name == name && s.outdated))
    }

    /// The engine's version, which also proves it answers (`velo doctor`).
    async fn version(&self) -> Result<String>;
}
