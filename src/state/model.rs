//! The on-disk model of `state.json`: what velo has made and where.
//!
//! Plain serde types with a schema version. Field names are part of velo's contract (other tools
//! read the file), so they only ever grow; a breaking change bumps [`SCHEMA_VERSION`] and adds a
//! step to [`super::migrate`], which upgrades older files on first use.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::history::{Generation, Origin};
use super::imported::{ImportFrom, Imported};
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
    /// The project a branch written without `<project>/` belongs to (`velo use`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_project: Option<ProjectName>,
    /// Keep every branch in `~/.pgpass` and `~/.pg_service.conf` (`velo connection-files`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub connection_files: bool,
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
            default_project: None,
            connection_files: false,
            prepared: Vec::new(),
        }
    }
}

impl State {
    /// Whether anything still needs a generation of `r`: a user's snapshot on it, a branch
    /// made from one of its snapshots, or an operation in flight that reads from it. A branch
    /// needs the snapshot it was made from even where its data does not (storage whose clones
    /// are copies): that snapshot is the base a point-in-time recovery of the branch starts
    /// from, and it goes when its generation is destroyed.
    pub fn generation_in_use(&self, r: &BranchRef, generation: u32) -> bool {
        let Some(p) = self.projects.get(&r.project) else {
            return false;
        };
        let snapshotted = p
            .snapshots
            .iter()
            .any(|s| s.branch == r.branch && s.generation == generation);
        let cloned_from = p
            .origins()
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
    pub imported: Option<Imported>,
    /// `velo gc` stops a branch no client has used for this many seconds (`None`: never).
    #[serde(default)]
    pub idle_stop_seconds: Option<u64>,
}

impl Project {
    pub fn branch(&self, name: &BranchName) -> Option<&Branch> {
        self.branches.get(name)
    }

    /// The source main follows as a hot standby, if it does (`project create --follow`).
    pub fn followed(&self) -> Option<&crate::source::SourceUrl> {
        match &self.imported {
            Some(Imported {
                follow: true,
                from: ImportFrom::Server { url },
                ..
            }) => Some(url),
            _ => None,
        }
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

    /// Renames branch `from` to `to` in every record that names it: its own, its children's
    /// parent links, the origins cloned from its snapshots and its users' snapshots. Returns
    /// false (and changes nothing) if `from` is missing or `to` is taken.
    pub fn rename_branch(&mut self, from: &BranchName, to: &BranchName) -> bool {
        if self.branches.contains_key(to) {
            return false;
        }
        let Some(record) = self.branches.remove(from) else {
            return false;
        };
        self.branches.insert(to.clone(), record);
        for b in self.branches.values_mut() {
            if b.parent.as_ref() == Some(from) {
                b.parent = Some(to.clone());
            }
            let origins = b
                .origin
                .iter_mut()
                .chain(b.retired.iter_mut().filter_map(|g| g.origin.as_mut()));
            for o in origins.filter(|o| o.branch == *from) {
                o.branch = to.clone();
            }
        }
        for s in self.snapshots.iter_mut().filter(|s| s.branch == *from) {
            s.branch = to.clone();
        }
        true
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
    /// When `velo gc` deletes the branch (`None`: never).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// When velo last started the branch's server or saw a client connected to it: its idle
    /// time counts from here.
    #[serde(default)]
    pub last_used_at: Option<DateTime<Utc>>,
    /// Set when `velo gc` stopped the branch for idleness (cleared by any start or stop), so
    /// that `velo branch psql` may start it again.
    #[serde(default)]
    pub idle_stopped_at: Option<DateTime<Utc>>,
}

impl Branch {
    /// A new branch's record: running, created now, marked busy with `operation`.
    pub fn new(parent: Option<BranchName>, port: u16, origin: Option<Origin>, busy: Busy) -> Self {
        let now = Utc::now();
        Branch {
            parent,
            port,
            generation: 0,
            origin,
            retired: Vec::new(),
            desired: RunState::Running,
            created_at: now,
            busy: Some(busy),
            expires_at: None,
            last_used_at: Some(now),
            idle_stopped_at: None,
        }
    }

    /// Every generation the branch has (the retired ones, then the current one).
    pub fn generations(&self) -> impl Iterator<Item = u32> + '_ {
        self.retired
            .iter()
            .map(|g| g.generation)
            .chain([self.generation])
    }

    /// The volume of the current generation.
    pub fn volume(&self, me: &BranchRef) -> VolumeId {
        VolumeId::new(me, self.generation)
    }

    /// The next generation number: above every generation the branch has or keeps.
    pub fn next_generation(&self) -> u32 {
        self.generations().max().unwrap_or(0) + 1
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

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> BranchName {
        s.parse().unwrap()
    }

    fn origin(branch: &str) -> Origin {
        Origin {
            branch: n(branch),
            generation: 0,
            snapshot: "0123456789ab".parse().unwrap(),
            owned: true,
            created_at: Utc::now(),
            wal_from: None,
            recovered: false,
        }
    }

    #[test]
    fn a_renamed_branch_is_renamed_in_every_record_that_names_it() {
        let busy = Busy {
            operation: "x".into(),
            pid: 1,
            since: Utc::now(),
        };
        let branch = |parent: &str, from: &str| {
            Branch::new(Some(n(parent)), 1, Some(origin(from)), busy.clone())
        };
        let mut dev = branch("main", "main");
        dev.retired.push(Generation {
            generation: 0,
            origin: Some(origin("main")),
        });
        dev.origin = Some(origin("dev"));
        let mut p = Project {
            storage: StorageRecord::Copy { dir: "/d".into() },
            runtime: RuntimeRecord::Docker { image: "i".into() },
            chosen: None,
            prepared_from: None,
            pg_version: None,
            user: "postgres".into(),
            password: "x".into(),
            database: "postgres".into(),
            pg_uid: 70,
            pg_gid: 70,
            created_at: Utc::now(),
            branches: BTreeMap::from([
                (BranchName::main(), Branch::new(None, 1, None, busy.clone())),
                (n("dev"), dev),
                (n("sub"), branch("dev", "dev")),
            ]),
            snapshots: vec![Snapshot {
                id: "0123456789ab".parse().unwrap(),
                label: None,
                branch: n("dev"),
                generation: 0,
                created_at: Utc::now(),
                wal_from: None,
            }],
            idle_stop_seconds: None,
            imported: None,
        };
        assert!(!p.rename_branch(&n("dev"), &n("sub")), "a taken name");
        assert!(!p.rename_branch(&n("gone"), &n("new")), "a missing branch");
        assert!(p.rename_branch(&n("dev"), &n("new")));
        let new = p.branch(&n("new")).unwrap();
        assert_eq!(
            new.origin.as_ref().unwrap().branch,
            n("new"),
            "restored from itself"
        );
        assert_eq!(new.retired[0].origin.as_ref().unwrap().branch, n("main"));
        let sub = p.branch(&n("sub")).unwrap();
        assert_eq!(sub.parent, Some(n("new")));
        assert_eq!(sub.origin.as_ref().unwrap().branch, n("new"));
        assert_eq!(p.snapshots[0].branch, n("new"));
        assert!(p.branch(&n("dev")).is_none());
    }
}
