//! Where a branch's data came from: the origins of its generations. A leaf of the state model,
//! shared by the project model and the journal (which keeps origins to let go of).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::ProjectName;
use crate::names::{BranchName, SnapshotId, SnapshotRef, VolumeId};

/// A snapshot on a branch generation that a clone was made from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Origin {
    pub branch: BranchName,
    pub generation: u32,
    pub snapshot: SnapshotId,
    /// True when velo made the snapshot just for this clone: it is destroyed with the clone.
    pub owned: bool,
    pub created_at: DateTime<Utc>,
    /// The first WAL segment a recovery from this snapshot replays: PITR from it needs
    /// archived WAL from this segment on.
    pub wal_from: Option<String>,
    /// True for a point-in-time branch: its start was replayed from another branch's WAL, so
    /// its own archive cannot replay from this origin.
    #[serde(default)]
    pub recovered: bool,
}

impl Origin {
    pub fn snapshot_ref(&self, project: &ProjectName) -> SnapshotRef {
        SnapshotRef {
            volume: VolumeId {
                project: project.clone(),
                branch: self.branch.clone(),
                generation: self.generation,
            },
            id: self.snapshot.clone(),
        }
    }

    /// Whether this origin is the snapshot `id` of `branch`'s generation `generation`.
    pub fn is(&self, branch: &BranchName, generation: u32, id: &SnapshotId) -> bool {
        self.branch == *branch && self.generation == generation && self.snapshot == *id
    }
}

/// A retired generation of a branch and the origin it was cloned from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Generation {
    pub generation: u32,
    pub origin: Option<Origin>,
}
