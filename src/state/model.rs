//! The on-disk model of `state.json`: what velo has made and where.
//!
//! Plain serde types with a schema version. Field names are part of velo's contract (other tools
//! read the file), so they only ever grow; a breaking change bumps [`SCHEMA_VERSION`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::{self, BranchName, BranchRef, Label, ProjectName};

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub version: u32,
    #[serde(default)]
    pub projects: BTreeMap<ProjectName, Project>,
    /// Multi-step commands in flight (see [`super::journal`]). Added without a version bump:
    /// a missing field reads as empty.
    #[serde(default)]
    pub journal: Vec<super::journal::Operation>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: SCHEMA_VERSION,
            projects: BTreeMap::new(),
            journal: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Project {
    pub pool: String,
    pub image: String,
    /// The server's version as PostgreSQL reported it once main was first ready.
    pub pg_version: Option<String>,
    pub user: String,
    pub password: String,
    pub database: String,
    /// The uid and gid the image runs PostgreSQL as (asked from the image at create).
    pub pg_uid: u32,
    pub pg_gid: u32,
    pub created_at: DateTime<Utc>,
    pub branches: BTreeMap<BranchName, Branch>,
    /// Snapshots users took (`velo snapshot create`), oldest first.
    #[serde(default)]
    pub snapshots: Vec<Snapshot>,
}

impl Project {
    pub fn branch(&self, name: &BranchName) -> Option<&Branch> {
        self.branches.get(name)
    }

    /// Branches with a generation (current or retired) cloned from the snapshot `id` of
    /// `branch`'s generation `generation`: while any exist, ZFS cannot destroy the snapshot.
    pub fn cloned_from(&self, branch: &BranchName, generation: u32, id: &str) -> Vec<BranchName> {
        self.branches
            .iter()
            .filter(|(_, b)| {
                b.origin
                    .iter()
                    .chain(b.retired.iter().filter_map(|g| g.origin.as_ref()))
                    .any(|o| o.branch == *branch && o.generation == generation && o.snapshot == id)
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Branches whose parent is `name`, in name order.
    pub fn children_of(&self, name: &BranchName) -> Vec<BranchName> {
        self.branches
            .iter()
            .filter(|(_, b)| b.parent.as_ref() == Some(name))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// The run state the user asked for; the container is brought to it by start/stop.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Branch {
    /// `None` only for main.
    pub parent: Option<BranchName>,
    /// The host port on 127.0.0.1, kept for the branch's whole life.
    pub port: u16,
    /// The generation whose dataset currently serves the branch.
    pub generation: u32,
    /// Where the current generation was cloned from (`None` for main's first generation).
    pub origin: Option<Origin>,
    /// Older generations kept alive because another branch was cloned from one of their snapshots.
    #[serde(default)]
    pub retired: Vec<Generation>,
    pub desired: RunState,
    pub created_at: DateTime<Utc>,
    /// Set while a velo command is changing this branch; other commands leave it alone.
    #[serde(default)]
    pub busy: Option<Busy>,
}

impl Branch {
    pub fn dataset(&self, pool: &str, me: &BranchRef) -> String {
        names::branch_dataset(pool, me, self.generation)
    }
}

/// A snapshot on a branch generation that a clone was made from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Origin {
    pub branch: BranchName,
    pub generation: u32,
    pub snapshot: String,
    /// True when velo made the snapshot just for this clone: it is destroyed with the clone.
    pub owned: bool,
    pub created_at: DateTime<Utc>,
    /// The oldest WAL segment in pg_wal when the snapshot was taken: PITR from this snapshot
    /// needs archived WAL from this segment on.
    pub wal_from: Option<String>,
    /// True for a point-in-time branch: its start was replayed from another branch's WAL, so
    /// its own archive cannot replay from this origin.
    #[serde(default)]
    pub recovered: bool,
}

impl Origin {
    pub fn zfs_name(&self, pool: &str, project: &ProjectName) -> String {
        let on = BranchRef::new(project.clone(), self.branch.clone());
        names::snapshot_name(pool, &on, self.generation, &self.snapshot)
    }
}

/// A snapshot a user took of a branch generation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub label: Option<Label>,
    pub branch: BranchName,
    pub generation: u32,
    pub created_at: DateTime<Utc>,
    pub wal_from: Option<String>,
}

impl Snapshot {
    pub fn zfs_name(&self, pool: &str, project: &ProjectName) -> String {
        let on = BranchRef::new(project.clone(), self.branch.clone());
        names::snapshot_name(pool, &on, self.generation, &self.id)
    }

    /// The snapshot as an origin for a clone that does not own it, taken at the snapshot's time.
    pub fn as_origin(&self) -> Origin {
        Origin {
            branch: self.branch.clone(),
            generation: self.generation,
            snapshot: self.id.clone(),
            owned: false,
            created_at: self.created_at,
            wal_from: self.wal_from.clone(),
            recovered: false,
        }
    }

    /// The snapshot as the origin of a clone made now: the clone's own history (and WAL)
    /// starts now, whatever the snapshot's age, so a PITR of the clone cannot reach earlier.
    pub fn as_origin_now(&self) -> Origin {
        Origin {
            created_at: Utc::now(),
            ..self.as_origin()
        }
    }
}

/// A retired generation of a branch and the origin it was cloned from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Generation {
    pub generation: u32,
    pub origin: Option<Origin>,
}

/// A marker that a command is working on a branch: which command, and which process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Busy {
    pub operation: String,
    pub pid: u32,
    pub since: DateTime<Utc>,
}
