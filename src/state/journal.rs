//! The operation journal: for every multi-step command in flight, what it holds, how to take
//! back each step it started, or how to finish it. It lives in `state.json` (field `journal`)
//! so that it changes in the same atomic transactions as the rest of the state.
//!
//! A step is recorded *before* it runs, and every undo step treats "already gone" as success,
//! so an operation killed at any point between two records can be taken back by running its
//! recorded undo steps newest first. Undo steps name only what velo derives itself from
//! validated names (a branch, a generation, a snapshot id): a state file someone edited can
//! make velo destroy one of the project's own volumes, never an arbitrary dataset or path.
//! This module only describes; `ops::journal` acts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::history::Origin;
use super::records::StorageRecord;
use crate::names::{BranchName, ProjectName, SnapshotId};
use crate::source::SourceUrl;

/// The operations in flight, in the order they began.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Journal(pub Vec<Operation>);

impl Journal {
    pub fn iter(&self) -> std::slice::Iter<'_, Operation> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, op: Operation) {
        self.0.push(op);
    }

    pub fn get(&self, id: &str) -> Option<&Operation> {
        self.0.iter().find(|op| op.id == id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Operation> {
        self.0.iter_mut().find(|op| op.id == id)
    }

    /// Removes and returns the operation `id`.
    pub fn take(&mut self, id: &str) -> Option<Operation> {
        let pos = self.0.iter().position(|op| op.id == id)?;
        Some(self.0.remove(pos))
    }

    /// Hands every operation whose process is gone to `me` ([`Operation::hand_to`]), and
    /// returns each as it was.
    pub fn adopt_orphans(&mut self, me: &Owner) -> Vec<Operation> {
        let mut taken = Vec::new();
        for op in self.0.iter_mut().filter(|op| !op.owner.is_alive()) {
            taken.push(op.clone());
            op.hand_to(me);
        }
        taken
    }

    /// `project`'s roll-forward operations whose background velo still waits for velo to be
    /// idle.
    pub fn deferred_mut(&mut self, project: &ProjectName) -> impl Iterator<Item = &mut Operation> {
        self.0
            .iter_mut()
            .filter(move |op| op.deferred && op.project == *project)
    }

    /// The operation in flight in `project` that holds the name `branch` (a rename reserves
    /// its new name this way), if any.
    pub fn holding(&self, project: &ProjectName, branch: &BranchName) -> Option<&Operation> {
        self.0
            .iter()
            .find(|op| op.project == *project && op.branches.contains(branch))
    }

    /// Whether an operation in flight (live or awaiting recovery) pins a generation.
    /// Whether a delete of `project` (or, given `branch`, of that branch or the whole project)
    /// is still being finished.
    pub fn deleting(&self, project: &ProjectName, branch: Option<&BranchName>) -> bool {
        self.0.iter().any(|op| {
            op.project == *project
                && match &op.recovery {
                    Recovery::RollForward {
                        finish: Finish::DeleteProject { .. },
                    } => true,
                    Recovery::RollForward {
                        finish: Finish::DeleteBranches { .. },
                    } => branch.is_none_or(|b| op.branches.contains(b)),
                    _ => false,
                }
        })
    }

    pub fn pinned(&self, project: &ProjectName, branch: &BranchName, generation: u32) -> bool {
        self.0.iter().any(|op| {
            op.project == *project
                && op
                    .pins
                    .iter()
                    .any(|p| p.branch == *branch && p.generation == generation)
        })
    }
}

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
    /// The branches it marked busy, and names it reserves for branches that do not exist yet
    /// (a rename's new name): no other command takes them while it runs.
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
    /// A roll-forward operation whose background velo waits for velo to be idle before it
    /// destroys anything: a command that needs it done takes it over and finishes it itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deferred: bool,
}

impl Operation {
    /// Makes `owner` the process that finishes the operation, now: it no longer waits for
    /// velo to be idle, and no other command may take it over.
    pub fn hand_to(&mut self, owner: &Owner) {
        self.owner = owner.clone();
        self.deferred = false;
    }

    /// Whether the operation names `branch` anywhere: as a branch it holds, a generation it
    /// pins, an origin it is to let go of, a generation it collects or a step it may undo.
    pub fn mentions(&self, branch: &BranchName) -> bool {
        let in_finish = match &self.recovery {
            Recovery::RollForward {
                finish: Finish::DeleteBranches { release, volumes },
            } => {
                release.iter().any(|o| o.branch == *branch)
                    || volumes.iter().any(|v| v.branch == *branch)
            }
            Recovery::RollForward {
                finish:
                    Finish::CollectGeneration {
                        branch: b, origin, ..
                    },
            } => b == branch || origin.as_ref().is_some_and(|o| o.branch == *branch),
            _ => false,
        };
        self.branches.contains(branch)
            || self.pins.iter().any(|p| p.branch == *branch)
            || in_finish
            || self.undo.iter().any(|step| step.names(branch))
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
        Owner::of(std::process::id())
    }

    /// Process `pid`, as it runs now.
    pub fn of(pid: u32) -> Owner {
        Owner {
            pid,
            started: process_start(pid),
        }
    }

    /// Whether the owning process still runs (a zombie does not: it has exited).
    pub fn is_alive(&self) -> bool {
        match (&self.started, process_start(self.pid)) {
            (_, None) => false,
            (Some(recorded), Some(now)) => *recorded == now,
            (None, Some(_)) => true,
        }
    }
}

/// `<boot id>:<start ticks>` of a running (not zombie) process.
pub fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (state, ticks) = parse_stat(&stat)?;
    if state == "Z" || state == "X" {
        return None;
    }
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    Some(format!("{}:{ticks}", boot.trim()))
}

/// The state (field 3) and start time (field 22) of a `/proc/<pid>/stat` line. The command
/// name (field 2) is in parentheses and may hold spaces and parentheses: split after the last.
pub fn parse_stat(stat: &str) -> Option<(&str, &str)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let ticks = fields.nth(18)?;
    Some((state, ticks))
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
        /// The volumes of branches already forgotten, still to destroy, in order.
        #[serde(default)]
        volumes: Vec<Pin>,
    },
    /// Delete the whole project: its servers and record first, then (once `storage` holds
    /// the forgotten record's storage) its volumes and archives.
    DeleteProject {
        #[serde(default)]
        storage: Option<StorageRecord>,
    },
    /// Destroy a user's snapshot and forget it.
    DeleteSnapshot { id: SnapshotId },
    /// Destroy a retired generation of `branch` and let go of its origin.
    CollectGeneration {
        branch: BranchName,
        generation: u32,
        origin: Option<Origin>,
    },
}

/// One way to take back a step, in the operation's project. Every one treats "already gone"
/// as success.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum UndoStep {
    DestroySnapshot {
        branch: BranchName,
        generation: u32,
        id: SnapshotId,
    },
    DestroyVolume {
        branch: BranchName,
        generation: u32,
    },
    /// Everything the project has in its storage (a project create that did not finish).
    DestroyProject,
    /// A prepared cluster this operation was making, unless the state records it by now
    /// (then other projects may rely on it).
    DestroyPrepared {
        name: BranchName,
    },
    /// Removes the branch's server if it carries this velo home's label (never someone else's).
    RemoveServer {
        branch: BranchName,
    },
    /// Removes a WAL archive: one generation's, or the whole project's.
    RemoveArchive {
        branch: Option<BranchName>,
        generation: Option<u32>,
    },
    /// Stops an import into `branch`: removes its import server and client program (only
    /// this velo home's), and its private directories (the password file among them).
    StopImport {
        branch: BranchName,
    },
    /// Puts a branch's server back on the generation the state records for it (the state
    /// changes only at commit), started if `start`.
    RestoreServer {
        branch: BranchName,
        start: bool,
    },
    /// Renames generation `generation` of `from`, with its snapshots, to `to`'s name; the
    /// undo renames it back (unless it never moved).
    RenameVolume {
        from: BranchName,
        to: BranchName,
        generation: u32,
    },
    /// Moves the WAL archive of `from` to `to`'s name; the undo moves it back (unless it
    /// never moved).
    RenameArchive {
        from: BranchName,
        to: BranchName,
    },
    /// Drops the replication slot `slot` that a follower's copy made on its source `url`.
    DropSlot {
        slot: String,
        url: SourceUrl,
    },
}

impl UndoStep {
    /// Whether the step names `branch`.
    pub fn names(&self, branch: &BranchName) -> bool {
        match self {
            UndoStep::DestroySnapshot { branch: b, .. }
            | UndoStep::DestroyVolume { branch: b, .. }
            | UndoStep::RemoveServer { branch: b }
            | UndoStep::StopImport { branch: b }
            | UndoStep::RestoreServer { branch: b, .. } => b == branch,
            UndoStep::RemoveArchive { branch: b, .. } => b.as_ref() == Some(branch),
            UndoStep::RenameVolume { from, to, .. } | UndoStep::RenameArchive { from, to } => {
                from == branch || to == branch
            }
            UndoStep::DestroyProject
            | UndoStep::DestroyPrepared { .. }
            | UndoStep::DropSlot { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;

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
    fn an_adopted_operation_is_no_longer_deferred() {
        let op = |id: &str, owner: Owner| Operation {
            id: id.into(),
            command: "branch delete".into(),
            project: "demo".parse().unwrap(),
            branches: Vec::new(),
            owner,
            started_at: chrono::Utc::now(),
            pins: Vec::new(),
            recovery: Recovery::RollForward {
                finish: Finish::DeleteBranches {
                    release: Vec::new(),
                    volumes: Vec::new(),
                },
            },
            undo: Vec::new(),
            deferred: true,
        };
        let gone = Owner {
            pid: u32::MAX - 1,
            started: None,
        };
        let mut journal = Journal(vec![op("dead", gone), op("alive", Owner::me())]);
        let me = Owner::me();
        let taken = journal.adopt_orphans(&me);
        assert_eq!(taken.len(), 1);
        assert_eq!(
            (taken[0].id.as_str(), taken[0].owner.pid),
            ("dead", u32::MAX - 1)
        );
        let project = "demo".parse().unwrap();
        let still: Vec<_> = journal
            .deferred_mut(&project)
            .map(|op| op.id.clone())
            .collect();
        assert_eq!(
            still,
            ["alive"],
            "the adopted one cannot be taken over again"
        );
        assert_eq!(journal.get("dead").map(|op| op.owner.pid), Some(me.pid));
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie once it has exited.
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| parse_stat(&s).map(|(st, _)| st.to_string()))
            .ok()
            .flatten()
            .as_deref()
            != Some("Z")
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(process_start(pid).is_none());
        child.wait().unwrap();
    }

    #[test]
    fn stat_lines_with_odd_command_names() {
        let line = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_stat(line), Some(("S", "98765")));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn steps_round_trip_through_json() {
        let steps = vec![
            UndoStep::DestroySnapshot {
                branch: BranchName::main(),
                generation: 3,
                id: "0123456789ab".parse().unwrap(),
            },
            UndoStep::RestoreServer {
                branch: BranchName::main(),
                start: true,
            },
            UndoStep::RenameVolume {
                from: BranchName::main(),
                to: "dev".parse().unwrap(),
                generation: 2,
            },
        ];
        let text = serde_json::to_string(&steps).unwrap();
        assert!(text.contains(r#""kind":"destroy_snapshot""#), "{text}");
        let back: Vec<UndoStep> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, steps);
    }

    #[test]
    fn an_operation_mentions_a_branch_wherever_it_names_it() {
        let n = |s: &str| s.parse::<BranchName>().unwrap();
        let origin = Origin {
            branch: n("dev"),
            generation: 0,
            snapshot: "0123456789ab".parse().unwrap(),
            owned: true,
            created_at: Utc::now(),
            wal_from: None,
            recovered: false,
        };
        let op = |branches: Vec<BranchName>, pins: Vec<Pin>, recovery, undo| Operation {
            id: "x".into(),
            command: "c".into(),
            owner: Owner::me(),
            started_at: Utc::now(),
            project: "demo".parse().unwrap(),
            branches,
            pins,
            recovery,
            undo,
            deferred: false,
        };
        let back = Recovery::RollBack {
            forget: Forget::Nothing,
        };
        let pin = Pin {
            branch: n("dev"),
            generation: 1,
        };
        let release = Recovery::RollForward {
            finish: Finish::DeleteBranches {
                release: vec![origin],
                volumes: Vec::new(),
            },
        };
        let rename = UndoStep::RenameArchive {
            from: n("other"),
            to: n("dev"),
        };
        let cases = [
            op(vec![n("dev")], vec![], back.clone(), vec![]),
            op(vec![], vec![pin], back.clone(), vec![]),
            op(vec![], vec![], release, vec![]),
            op(vec![], vec![], back.clone(), vec![rename]),
        ];
        for case in &cases {
            assert!(case.mentions(&n("dev")), "{case:?}");
            assert!(!case.mentions(&n("main")), "{case:?}");
        }
        let journal = Journal(cases.into_iter().take(1).collect());
        assert!(
            journal
                .holding(&"demo".parse().unwrap(), &n("dev"))
                .is_some()
        );
        assert!(
            journal
                .holding(&"other".parse().unwrap(), &n("dev"))
                .is_none()
        );
    }

    #[test]
    fn a_crafted_step_naming_anything_else_does_not_read() {
        for bad in [
            r#"{"kind":"destroy_volume","branch":"../etc","generation":0}"#,
            r#"{"kind":"destroy_snapshot","branch":"main","generation":0,"id":"x; rm -rf /"}"#,
            r#"{"kind":"remove_dir","path":"/"}"#,
            r#"{"kind":"destroy_dataset","name":"rpool/ROOT"}"#,
            r#"{"kind":"rename_volume","from":"main","to":"../x","generation":0}"#,
        ] {
            assert!(serde_json::from_str::<UndoStep>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_state_without_a_journal_reads() {
        let s: State = serde_json::from_str(r#"{"version": 2, "projects": {}}"#).unwrap();
        assert!(s.journal.is_empty());
    }
}
