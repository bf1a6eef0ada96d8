//! The operation journal in action (the records are in [`crate::state::Operation`]).
//!
//! Every multi-step command opens an operation in the transaction that reserves what it works
//! on ([`Undo::begin`]), records how to take back each step *before* the step runs
//! ([`Undo::intend`]), and closes the operation in the transaction that commits its result
//! ([`Undo::commit`]) or after taking everything back ([`Undo::roll_back`]).
//!
//! If the process dies (kill -9, power loss, a second Ctrl-C), the next velo command finds the
//! operation with a dead owner and ends it ([`super::recover`]): it runs the undo steps newest
//! first (each treats "already gone" as success, so a step that was recorded but never ran, or
//! ran but was not yet followed by another record, is handled alike), or finishes a delete.

use anyhow::{Result, anyhow};
use chrono::Utc;

use super::Ctx;
use super::signal::{self, Interrupted};
use crate::names::{BranchName, ProjectName, SnapshotId};
use crate::state::{Finish, Forget, Operation, Owner, Pin, Recovery, State, UndoStep};

/// Test-only: the step name at which velo prints [`PAUSE_MARKER`] and waits (until killed or
/// interrupted), so tests can kill it at an exact point.
pub const PAUSE_ENV: &str = "VELO_TEST_PAUSE_AT";
pub const PAUSE_MARKER: &str = "velo-test: paused at";

/// An open operation of this process: its journal id and its undo steps so far.
#[derive(Debug)]
pub struct Undo {
    id: String,
    steps: Vec<UndoStep>,
    forward: bool,
}

/// What an operation holds, for [`Undo::begin`].
pub struct Intent<'a> {
    pub command: &'a str,
    pub project: &'a ProjectName,
    /// The branches it marks busy (the caller marks them).
    pub branches: Vec<BranchName>,
    pub pins: Vec<Pin>,
    pub recovery: Recovery,
}

impl Undo {
    /// Opens an operation in the state; call it inside the transaction that reserves.
    pub fn begin(state: &mut State, intent: Intent<'_>) -> Undo {
        signal::opened();
        let id = SnapshotId::random().to_string();
        let forward = matches!(intent.recovery, Recovery::RollForward { .. });
        state.journal.push(Operation {
            id: id.clone(),
            command: intent.command.to_string(),
            owner: Owner::me(),
            started_at: Utc::now(),
            project: intent.project.clone(),
            branches: intent.branches,
            pins: intent.pins,
            recovery: intent.recovery,
            undo: Vec::new(),
            deferred: false,
        });
        Undo {
            id,
            steps: Vec::new(),
            forward,
        }
    }

    /// A handle on an operation this process took over from a dead one.
    pub(super) fn adopt(op: &Operation) -> Undo {
        signal::opened();
        Undo {
            id: op.id.clone(),
            steps: op.undo.clone(),
            forward: matches!(op.recovery, Recovery::RollForward { .. }),
        }
    }

    /// A step boundary: fails with [`Interrupted`] after a signal (operations that roll forward
    /// go on: a delete is finished, not half undone), and pauses here if the test hook names
    /// this step.
    pub async fn step(&self, ctx: &Ctx, name: &str) -> Result<()> {
        if std::env::var(PAUSE_ENV).is_ok_and(|at| at == name) {
            ctx.shell.note(&format!("{PAUSE_MARKER} {name}"));
            signal::until_interrupted().await;
        }
        if signal::interrupted() && !self.forward {
            return Err(Interrupted.into());
        }
        Ok(())
    }

    /// Records how to take back the step `name` that is about to run, then passes its boundary.
    pub async fn intend(&mut self, ctx: &Ctx, name: &str, undo: UndoStep) -> Result<()> {
        ctx.store.update(|s| {
            let op = s
                .journal
                .get_mut(&self.id)
                .ok_or_else(|| anyhow!("operation {} vanished from the journal", self.id))?;
            op.undo.push(undo.clone());
            Ok::<_, anyhow::Error>(())
        })?;
        self.steps.push(undo);
        self.step(ctx, name).await
    }

    /// Changes what a roll-forward operation still has to finish (inside a transaction).
    pub fn finish_mut<'s>(&self, state: &'s mut State) -> Option<&'s mut Finish> {
        match &mut state.journal.get_mut(&self.id)?.recovery {
            Recovery::RollForward { finish } => Some(finish),
            Recovery::RollBack { .. } => None,
        }
    }

    /// The operation as the journal has it now.
    pub fn record(&self, state: &State) -> Option<Operation> {
        state.journal.get(&self.id).cloned()
    }

    /// Closes the operation: call it inside the transaction that commits the result. Clears
    /// the busy markers of the branches it held.
    pub fn commit(&self, state: &mut State) {
        if let Some(op) = state.journal.take(&self.id) {
            clear_busy(state, &op);
        }
    }

    /// Gives up a roll-forward operation that failed in this process: clears its busy markers
    /// and leaves the rest to the user (who runs the command again), except what it already
    /// forgot and has yet to destroy or let go of: that stays in the journal, narrowed to the
    /// branches already forgotten, and the next velo command finishes it.
    pub fn abandon(&self, state: &mut State) {
        let Some(mut op) = state.journal.take(&self.id) else {
            return;
        };
        clear_busy(state, &op);
        let pending = match &op.recovery {
            Recovery::RollForward {
                finish: Finish::DeleteBranches { release, volumes },
            } => !release.is_empty() || !volumes.is_empty(),
            Recovery::RollForward {
                finish: Finish::DeleteProject { storage },
            } => storage.is_some(),
            _ => false,
        };
        if pending {
            let project = state.projects.get(&op.project);
            op.branches
                .retain(|b| project.is_none_or(|p| p.branch(b).is_none()));
            state.journal.push(op);
        }
    }

    /// The operation's journal id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Takes back every recorded step, newest first, then removes what the reserving
    /// transaction added and closes the operation. Undo failures are reported and the rest
    /// still run; then the operation stays in the journal (owned by this process, so the next
    /// velo command tries again) and this returns false.
    pub async fn roll_back(self, ctx: &Ctx) -> bool {
        let mut clean = true;
        for step in self.steps.iter().rev() {
            if let Err(e) = super::undo::run(ctx, &self.id, step).await {
                clean = false;
                ctx.shell.warn(&format!("could not undo {step:?}: {e:#}"));
            }
        }
        if !clean {
            return false;
        }
        let closed = ctx.store.update(|s| {
            if let Some(op) = s.journal.take(&self.id) {
                clear_busy(s, &op);
                if let Recovery::RollBack { forget } = &op.recovery {
                    forget_reservation(s, &op, forget);
                }
            }
            Ok::<_, anyhow::Error>(())
        });
        if let Err(e) = closed {
            ctx.shell
                .warn(&format!("could not close the operation: {e:#}"));
            return false;
        }
        true
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        signal::closed();
    }
}

fn clear_busy(state: &mut State, op: &Operation) {
    if let Some(p) = state.projects.get_mut(&op.project) {
        for name in &op.branches {
            if let Some(b) = p.branches.get_mut(name) {
                b.busy = None;
            }
        }
    }
}

fn forget_reservation(state: &mut State, op: &Operation, forget: &Forget) {
    match forget {
        Forget::Nothing => {}
        Forget::NewBranch => {
            if let (Some(p), Some(name)) =
                (state.projects.get_mut(&op.project), op.branches.first())
            {
                p.branches.remove(name);
            }
        }
        Forget::NewProject => {
            state.projects.remove(&op.project);
        }
    }
}
