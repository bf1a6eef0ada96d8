//! The on-disk model of `state.json`: what velo has made and where.
//!
//! Plain serde types with a schema version. Field names are part of velo's contract (other tools
//! read the file), so they only ever grow; a breaking change bumps [`SCHEMA_VERSION`] and adds a
//! step to [`super::migrate`], which upgrades older files on first use.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::history::{Generation, Origin};
use super::journal::Journal;
use super::records::{RuntimeRecord, StorageRecord};
use crate::names::{BranchName, BranchRef, Label, ProjectName, SnapshotId, VolumeId};

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub version: u32,
    #[serde(default)]
    pub projects: BTreeMap<ProjectName, Project>,
    /// Multi-step commands in flight (see [`super::journal`]).
    #[serde(default)]
    pub journal: Journal,
    /// Clusters initialised once per server software; each new project's main branch is a
    /// clone of one.
    #[serde(default)]
    pub prepared: Vec<Prepared>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: SCHEMA_VERSION,
            projects: BTreeMap::new(),
            journal: Journal::default(),
            prepared: Vec::new(),
        }
    }
}

impl State {
    /// Whether anything still needs a generation of `r`: a user's snapshot on it, a clone made
    /// from one of its snapshots where clones pin their source, or an operation in flight that
    /// reads from it.
    pub fn generation_in_use(&self, r: &BranchRef, generation: u32, clones_pin: bool) -> bool {
        let Some(p) = self.projects.get(&r.project) else {
            return false;
        };
        let snapshotted = p
            .snapshots
            .iter()
            .any(|s| s.branch == r.branch && s.generation == generation);
        let cloned_from = clones_pin
            && p.origins()
                .any(|(_, o)| o.branch == r.branch && o.generation == generation);
        snapshotted || cloned_from || self.journal.pinned(&r.project, &r.branch, generation)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Project {
    /// Where the branches' data lives.
    pub storage: StorageRecord,
    /// What runs their servers.
    pub runtime: RuntimeRecord,
    /// Why `project create` chose these (shown by `project get` and `velo doctor`).
    #[serde(default)]
    pub chosen: Option<String>,
    /// The prepared cluster its main branch was first cloned from.
    #[serde(default)]
    pub prepared_from: Option<BranchName>,
    /// The server's version as PostgreSQL reported it once main was first ready.
    pub pg_version: Option<String>,
    pub user: String,
    pub password: String,
    pub database: String,
    /// The uid and gid the servers run as.
    pub pg_uid: u32,
    pub pg_gid: u32,
    pub created_at: DateTime<Utc>,
    pub branches: BTreeMap<BranchName, Branch>,
    /// Snapshots users took (`velo snapshot create`), oldest first.
    #[serde(default)]
    pub snapshots: Vec<Snapshot>,
    /// Where main's data was imported from, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<super::Imported>,
}

impl Project {
    pub fn branch(&self, name: &BranchName) -> Option<&Branch> {
        self.branches.get(name)
    }

    /// Every origin of every generation (current and retired), with its branch.
    pub fn origins(&self) -> impl Iterator<Item = (&BranchName, &Origin)> {
        self.branches.iter().flat_map(|(name, b)| {
            b.origin
                .iter()
                .chain(b.retired.iter().filter_map(|g| g.origin.as_ref()))
                .map(move |o| (name, o))
        })
    }

    /// Branches with a generation (current or retired) cloned from the snapshot `id` of
    /// `branch`'s generation `generation`.
    pub fn cloned_from(
        &self,
        branch: &BranchName,
        generation: u32,
        id: &SnapshotId,
    ) -> Vec<BranchName> {
        let mut out: Vec<BranchName> = self
            .origins()
            .filter(|(_, o)| o.is(branch, generation, id))
            .map(|(n, _)| n.clone())
            .collect();
        out.dedup();
        out
    }

    /// Branches whose parent is `name`, in name order.
    pub fn children_of(&self, name: &BranchName) -> Vec<BranchName> {
        self.branches
            .iter()
            .filter(|(_, b)| b.parent.as_ref() == Some(name))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// `root` and every branch made from it, children before their parents.
    pub fn subtree_post_order(&self, root: &BranchName) -> Vec<BranchName> {
        let mut out = Vec::new();
        for child in self.children_of(root) {
            out.extend(self.subtree_post_order(&child));
        }
        out.push(root.clone());
        out
    }
}

/// A cluster initialised once, for every new project of one storage and one server software:
/// a volume `prepared/<name>.0` and its snapshot, which project creates clone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prepared {
    pub name: BranchName,
    pub storage: StorageRecord,
    pub runtime: RuntimeRecord,
    /// The server software it was initialised with: the image's id, or the binaries' version.
    pub software: String,
    pub snapshot: SnapshotId,
    /// Who its files belong to (the server's uid and gid).
    pub pg_uid: u32,
    pub pg_gid: u32,
    pub created_at: DateTime<Utc>,
}

impl Prepared {
    /// Its volume, in the reserved project [`crate::names::PREPARED`].
    pub fn volume(&self) -> VolumeId {
        prepared_volume(&self.name)
    }

    pub fn snapshot_ref(&self) -> crate::names::SnapshotRef {
        crate::names::SnapshotRef {
            volume: self.volume(),
            id: self.snapshot.clone(),
        }
    }
}

/// The volume of the prepared cluster `name`.
pub fn prepared_volume(name: &BranchName) -> VolumeId {
    VolumeId {
        project: ProjectName::prepared(),
        branch: name.clone(),
        generation: 0,
    }
}

/// The run state the user asked for; the server is brought to it by start/stop.
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
    /// The generation whose volume currently serves the branch.
    pub generation: u32,
    /// Where the current generation was cloned from (`None` for main's first generation).
    pub origin: Option<Origin>,
    /// Older generations kept alive because something still needs them.
    #[serde(default)]
    pub retired: Vec<Generation>,
    pub desired: RunState,
    pub created_at: DateTime<Utc>,
    /// Set while a velo command is changing this branch; other commands leave it alone.
    #[serde(default)]
    pub busy: Option<Busy>,
}

impl Branch {
    /// The volume of the current generation.
    pub fn volume(&self, me: &BranchRef) -> VolumeId {
        VolumeId::new(me, self.generation)
    }

    /// The next generation number: above every generation the branch has or keeps.
    pub fn next_generation(&self) -> u32 {
        self.retired
            .iter()
            .map(|g| g.generation)
            .chain([self.generation])
            .max()
            .unwrap_or(0)
            + 1
    }
}

/// A snapshot a user took of a branch generation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub label: Option<Label>,
    pub branch: BranchName,
    pub generation: u32,
    pub created_at: DateTime<Utc>,
    pub wal_from: Option<String>,
}

impl Snapshot {
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

/// A marker that a command is working on a branch: which command, and which process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Busy {
    pub operation: String,
    pub pid: u32,
    pub since: DateTime<Utc>,
}
