//! What `velo repair` reports: each mismatch, where it is, what `--fix` does about it.

use std::path::PathBuf;

use crate::names::{BranchRef, ProjectName, SnapshotId, SnapshotRef, VolumeId};
use crate::state::StorageRecord;

/// One mismatch between the state and the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A project's storage is not there (a pool not imported): nothing in it can be judged.
    StorageMissing {
        storage: StorageRecord,
    },
    Interrupted {
        operation: String,
        pid: u32,
    },
    /// Every volume of the project is gone.
    ProjectGone,
    /// The current generation of a branch is gone.
    DataGone {
        name: String,
        main: bool,
    },
    RetiredGone {
        generation: u32,
        name: String,
    },
    SnapshotGone {
        id: SnapshotId,
    },
    Unmounted {
        name: String,
        path: PathBuf,
        stale: bool,
    },
    ServerGone {
        server: String,
        volume: String,
    },
    /// The server serves another directory than the branch's current data.
    ServerOnOtherData {
        server: String,
        serving: Option<PathBuf>,
        expected: PathBuf,
    },
    /// The server was made by an older velo in a shape this one cannot talk to.
    ServerOutdated {
        server: String,
    },
    /// The server holds Docker volumes, which its removal would leave behind.
    HoldsVolumes {
        server: String,
        volumes: Vec<String>,
    },
    Stopped {
        server: String,
    },
    RunningUnasked {
        server: String,
    },
    PortTaken {
        port: u16,
    },
    OrphanServer {
        server: String,
    },
    OrphanVolume {
        storage: StorageRecord,
        volume: VolumeId,
        name: String,
    },
    OrphanSnapshot {
        storage: StorageRecord,
        snapshot: SnapshotRef,
        name: String,
    },
}

/// A problem, where it is, and the likely cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub project: Option<ProjectName>,
    /// Set for problems a branch-level fix repairs.
    pub branch: Option<BranchRef>,
    pub problem: Problem,
    pub cause: String,
}

impl Finding {
    /// A short stable name of the problem, for `--json`.
    pub fn kind(&self) -> &'static str {
        match &self.problem {
            Problem::StorageMissing {
                storage: StorageRecord::Zfs { .. },
            } => "pool-missing",
            Problem::StorageMissing { .. } => "storage-missing",
            Problem::Interrupted { .. } => "interrupted",
            Problem::ProjectGone => "project-gone",
            Problem::DataGone { .. } => "data-gone",
            Problem::RetiredGone { .. } => "retired-gone",
            Problem::SnapshotGone { .. } => "snapshot-gone",
            Problem::Unmounted { .. } => "unmounted",
            Problem::ServerGone { .. } => "container-gone",
            Problem::ServerOnOtherData { .. } => "container-on-other-data",
            Problem::ServerOutdated { .. } => "container-outdated",
            Problem::HoldsVolumes { .. } => "holds-volumes",
            Problem::Stopped { .. } => "stopped",
            Problem::RunningUnasked { .. } => "running-unasked",
            Problem::PortTaken { .. } => "port-taken",
            Problem::OrphanServer { .. } => "orphan-container",
            Problem::OrphanVolume { .. } => "orphan-dataset",
            Problem::OrphanSnapshot { .. } => "orphan-snapshot",
        }
    }

    /// Where the problem is: a branch, project or the thing itself.
    pub fn place(&self) -> String {
        match (&self.branch, &self.problem) {
            (Some(r), _) => r.to_string(),
            (None, Problem::StorageMissing { storage }) => storage.to_string(),
            (None, Problem::OrphanServer { server }) => server.clone(),
            (None, Problem::OrphanVolume { name, .. } | Problem::OrphanSnapshot { name, .. }) => {
                name.clone()
            }
            (None, _) => self
                .project
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }
    }

    /// What is wrong, in a sentence.
    pub fn what(&self) -> String {
        match &self.problem {
            Problem::StorageMissing { storage } => format!("{storage} is not there"),
            Problem::Interrupted { operation, pid } => format!(
                "`velo {operation}` (pid {pid}) stopped mid-way and left the branch marked busy"
            ),
            Problem::ProjectGone => "all of the project's data is gone".into(),
            Problem::DataGone { name, .. } => format!("{name} is gone"),
            Problem::RetiredGone { name, .. } => {
                format!("{name} (an older generation kept for snapshots or clones) is gone")
            }
            Problem::SnapshotGone { id } => format!("snapshot {id} is gone"),
            Problem::Unmounted {
                name,
                path,
                stale: true,
            } => format!(
                "{name} is not usable: {} is a dead FUSE mount",
                path.display()
            ),
            Problem::Unmounted { name, .. } => format!("{name} is not mounted"),
            Problem::ServerGone { server, .. } => format!("server {server} is gone"),
            Problem::ServerOnOtherData {
                server,
                serving,
                expected,
            } => format!(
                "server {server} serves {} instead of {}",
                serving
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "no data directory".into()),
                expected.display()
            ),
            Problem::ServerOutdated { server } => format!(
                "server {server} was made by an older velo: it has no private socket directory, the only way velo talks to a server"
            ),
            Problem::HoldsVolumes { server, volumes } => format!(
                "server {server} holds Docker volumes {} that its removal would leave behind",
                volumes.join(", ")
            ),
            Problem::Stopped { server } => {
                format!("server {server} is stopped, but the branch should run")
            }
            Problem::RunningUnasked { server } => {
                format!("server {server} runs, but the branch was stopped with velo")
            }
            Problem::PortTaken { port } => {
                format!("port {port} is taken by another program, so the branch cannot start")
            }
            Problem::OrphanServer { server } => {
                format!("server {server} is velo's but no branch records it")
            }
            Problem::OrphanVolume { name, .. } => {
                format!("{name} is velo's but nothing records it")
            }
            Problem::OrphanSnapshot { name, .. } => {
                format!("snapshot {name} is velo's but nothing records it")
            }
        }
    }

    /// What `--fix` does, or what to do by hand when velo cannot repair it safely.
    pub fn fix(&self) -> String {
        match &self.problem {
            Problem::StorageMissing {
                storage: StorageRecord::Zfs { pool, .. },
            } => format!(
                "none automatic: import it (`zpool import {pool}`), then run `velo repair` again"
            ),
            Problem::StorageMissing { .. } => {
                "none automatic: mount its file system, then run `velo repair` again".into()
            }
            Problem::Interrupted { .. } => {
                "clear the busy marker, then repair the branch like any other".into()
            }
            Problem::ProjectGone => "forget the project (remove its servers and WAL archives)".into(),
            Problem::DataGone { main: true, .. } => {
                "none automatic: the project's main data is gone; restore it from a backup, or `velo project delete --force`".into()
            }
            Problem::DataGone { .. } => {
                "forget the branch (remove its server and WAL archive)".into()
            }
            Problem::RetiredGone { .. } => {
                "forget that generation and the snapshots that were on it".into()
            }
            Problem::SnapshotGone { .. } => "forget the snapshot".into(),
            Problem::Unmounted { name, stale, .. } => format!(
                "{}mount {name} and restart the server on it",
                if *stale {
                    "unmount the dead mount, "
                } else {
                    ""
                }
            ),
            Problem::ServerGone { server, volume } => {
                format!("re-create {server} on {volume} (start it if the branch should run)")
            }
            Problem::ServerOnOtherData { server, .. }
            | Problem::ServerOutdated { server }
            | Problem::HoldsVolumes { server, .. } => {
                format!("re-create {server} on the branch's current data")
            }
            Problem::Stopped { .. } => "start it and wait until PostgreSQL answers".into(),
            Problem::RunningUnasked { .. } => "record the branch as running".into(),
            Problem::PortTaken { .. } => {
                "move the branch to a free port (its URL changes) and re-create its server".into()
            }
            Problem::OrphanServer { .. } => "remove the server (it holds no data)".into(),
            Problem::OrphanVolume { name, .. } => {
                format!("destroy {name} with its snapshots (needs --force: it holds data)")
            }
            Problem::OrphanSnapshot { name, .. } => {
                format!("destroy {name} (needs --force: it holds data)")
            }
        }
    }

    /// Whether `--fix` repairs it at all.
    pub fn fixable(&self) -> bool {
        !matches!(
            self.problem,
            Problem::StorageMissing { .. } | Problem::DataGone { main: true, .. }
        )
    }

    /// Whether the fix destroys data, and so needs `--force`.
    pub fn needs_force(&self) -> bool {
        matches!(
            self.problem,
            Problem::OrphanVolume { .. } | Problem::OrphanSnapshot { .. }
        )
    }
}
