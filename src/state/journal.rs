//! The operation journal: for every multi-step command in flight, what it holds, how to take
//! back each step it started, or how to finish it. It lives in `state.json` (field `journal`)
//! so that it changes in the same atomic transactions as the rest of the state.
//!
//! A step is recorded *before* it runs, and every undo step treats "already gone" as success,
//! so an operation killed at any point between two records can be taken back by running its
//! recorded undo steps newest first. This module only describes; `ops::journal` acts.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::{Origin, State};
use crate::names::{BranchName, ProjectName};

/// One command in flight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Operation {
    /// Unique within the journal.
    pub id: String,
    /// The command, as users type it (`branch create`).
    pub command: String,
    /// The process running it.
    pub owner: Owner,
    pub started_at: DateTime<Utc>,
    pub project: ProjectName,
    /// The branches it marked busy.
    #[serde(default)]
    pub branches: Vec<BranchName>,
    /// Generations it reads from (a clone's source, a PITR's WAL): tidy keeps them while the
    /// operation runs.
    #[serde(default)]
    pub pins: Vec<Pin>,
    /// What the next velo command does if the owner died.
    pub recovery: Recovery,
    /// Undo steps in the order they were recorded; each was recorded before its step ran.
    #[serde(default)]
    pub undo: Vec<UndoStep>,
}

impl Operation {
    /// Whether the operation holds `branch` of `project` (marked it busy) or pins one of its
    /// generations.
    pub fn touches(&self, project: &ProjectName, branch: &BranchName) -> bool {
        self.project == *project
            && (self.branches.contains(branch) || self.pins.iter().any(|p| p.branch == *branch))
    }
}

/// A process, told apart from a later one that reuses its pid by its start time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot), with the boot id: a pid that
    /// survives neither a reboot nor its own exit.
    pub started: Option<String>,
}

impl Owner {
    /// This process.
    pub fn me() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            started: process_start(pid),
        }
    }

    /// Whether the owning process still runs.
    pub fn is_alive(&self) -> bool {
        match (&self.started, process_start(self.pid)) {
            (_, None) => false,
            (Some(recorded), Some(now)) => *recorded == now,
            (None, Some(_)) => true,
        }
    }
}

fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ticks = rest.split_whitespace().nth(19)?;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    Some(format!("{}:{ticks}", boot.trim()))
}

/// A generation an operation reads from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pin {
    pub branch: BranchName,
    pub generation: u32,
}

/// How an interrupted operation is brought to an end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "way")]
pub enum Recovery {
    /// Run the undo steps newest first, then drop what the first transaction reserved.
    RollBack { forget: Forget },
    /// Finish the operation: used where going back is impossible or pointless (deletes).
    RollForward { finish: Finish },
}

/// What the reserving transaction added to the state, removed on roll-back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Forget {
    /// Only the busy markers: the operation changed an existing branch.
    Nothing,
    /// The new branch's record (`branches[0]`).
    NewBranch,
    /// The new project's record.
    NewProject,
}

/// The rest of an operation that is finished rather than taken back. Each part is idempotent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Finish {
    /// Delete the operation's branches still in the state, then let go of `release`, the owned
    /// origins of those already forgotten.
    DeleteBranches {
        #[serde(default)]
        release: Vec<Origin>,
    },
    /// Delete the whole project.
    DeleteProject,
    /// Destroy a user's snapshot and forget it.
    DeleteSnapshot { id: String },
    /// Destroy a retired generation of `branch` and let go of its origin.
    CollectGeneration {
        branch: BranchName,
        generation: u32,
        origin: Option<Origin>,
    },
}

/// One way to take back a step. Every one treats "already gone" as success.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum UndoStep {
    DestroySnapshot {
        name: String,
    },
    DestroyDataset {
        name: String,
    },
    /// Removes the container if it carries this velo home's label (never someone else's).
    RemoveContainer {
        name: String,
    },
    RemoveDir {
        path: PathBuf,
    },
    /// Puts a branch's container back on the generation the state records for it (the state
    /// changes only at commit), started if `start`.
    RestoreContainer {
        branch: BranchName,
        start: bool,
    },
}

impl State {
    /// The operation of a *live* process that holds or pins `branch` of `project`, if any:
    /// what drift checks ask before calling a difference between state and the world a fault.
    pub fn live_operation_on(
        &self,
        project: &ProjectName,
        branch: &BranchName,
    ) -> Option<&Operation> {
        self.journal
            .iter()
            .find(|op| op.touches(project, branch) && op.owner.is_alive())
    }

    /// The operation of a live process working in `project`, if any.
    pub fn live_operation_in(&self, project: &ProjectName) -> Option<&Operation> {
        self.journal
            .iter()
            .find(|op| op.project == *project && op.owner.is_alive())
    }

    /// Whether an operation in flight (live or awaiting recovery) pins a generation.
    pub fn pinned(&self, project: &ProjectName, branch: &BranchName, generation: u32) -> bool {
        self.journal.iter().any(|op| {
            op.project == *project
                && op
                    .pins
                    .iter()
                    .any(|p| p.branch == *branch && p.generation == generation)
        })
    }

    pub fn operation_mut(&mut self, id: &str) -> Option<&mut Operation> {
        self.journal.iter_mut().find(|op| op.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_dead_one_is_not() {
        let me = Owner::me();
        assert!(me.is_alive());
        assert!(me.started.is_some());
        let reused = Owner {
            pid: me.pid,
            started: Some("another-boot:1".into()),
        };
        assert!(!reused.is_alive(), "a reused pid is not the owner");
        let gone = Owner {
            pid: u32::MAX - 1,
            started: None,
        };
        assert!(!gone.is_alive());
    }

    #[test]
    fn steps_round_trip_through_json() {
        let steps = vec![
            UndoStep::DestroySnapshot {
                name: "p/a@b".into(),
            },
            UndoStep::RestoreContainer {
                branch: BranchName::main(),
                start: true,
            },
        ];
        let text = serde_json::to_string(&steps).unwrap();
        assert!(text.contains(r#""kind":"destroy_snapshot""#), "{text}");
        let back: Vec<UndoStep> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, steps);
    }

    #[test]
    fn an_old_state_without_a_journal_still_reads() {
        let s: State = serde_json::from_str(r#"{"version": 1, "projects": {}}"#).unwrap();
        assert!(s.journal.is_empty());
    }
}
