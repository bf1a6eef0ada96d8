//! The operation journal in action (the records are in [`crate::state::Operation`]).
//!
//! Every multi-step command opens an operation in the transaction that reserves what it works
//! on ([`Undo::begin`]), records how to take back each step *before* the step runs
//! ([`Undo::intend`]), and closes the operation in the transaction that commits its result
//! ([`Undo::commit`]) or after taking everything back ([`Undo::roll_back`]).
//!
//! If the process dies (kill -9, power loss, a second Ctrl-C), the next velo command finds the
//! operation with a dead owner and ends it ([`recover`]): it runs the undo steps newest first
//! (each treats "already gone" as success, so a step that was recorded but never ran, or ran
//! but was not yet followed by another record, is handled alike), or finishes a delete.
//!
//! The first SIGINT/SIGTERM sets a flag ([`interrupt`]); the command stops at its next step
//! boundary (or stops waiting for PostgreSQL) and rolls back as on any error.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use chrono::Utc;

use super::Ctx;
use crate::names::{self, BranchName, BranchRef, ProjectName};
use crate::state::{Finish, Forget, Operation, Owner, Pin, Recovery, State, UndoStep};

/// Test-only: the step name at which velo prints [`PAUSE_MARKER`] and waits (until killed or
/// interrupted), so tests can kill it at an exact point.
pub const PAUSE_ENV: &str = "VELO_TEST_PAUSE_AT";
pub const PAUSE_MARKER: &str = "velo-test: paused at";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A signal asked this process to stop: operations roll back at their next step boundary.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// How many operations this process has open (none: a signal may end it at once).
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::SeqCst)
}

/// Resolves once [`interrupt`] was called.
pub async fn until_interrupted() {
    while !interrupted() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("interrupted by a signal")]
pub struct Interrupted;

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
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        let id = super::new_snapshot_id();
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
        });
        Undo {
            id,
            steps: Vec::new(),
            forward,
        }
    }

    /// A handle on an operation this process took over from a dead one.
    fn adopt(op: &Operation) -> Undo {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
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
            until_interrupted().await;
        }
        if interrupted() && !self.forward {
            return Err(Interrupted.into());
        }
        Ok(())
    }

    /// Records how to take back the step `name` that is about to run, then passes its boundary.
    pub async fn intend(&mut self, ctx: &Ctx, name: &str, undo: UndoStep) -> Result<()> {
        ctx.store.update(|s| {
            let op = s
                .operation_mut(&self.id)
                .ok_or_else(|| anyhow!("operation {} vanished from the journal", self.id))?;
            op.undo.push(undo.clone());
            Ok::<_, anyhow::Error>(())
        })?;
        self.steps.push(undo);
        self.step(ctx, name).await
    }

    /// Changes what a roll-forward operation still has to finish (inside a transaction).
    pub fn finish_mut<'s>(&self, state: &'s mut State) -> Option<&'s mut Finish> {
        match &mut state.operation_mut(&self.id)?.recovery {
            Recovery::RollForward { finish } => Some(finish),
            Recovery::RollBack { .. } => None,
        }
    }

    /// The operation as the journal has it now.
    pub fn record(&self, state: &State) -> Option<Operation> {
        state.journal.iter().find(|op| op.id == self.id).cloned()
    }

    /// Closes the operation: call it inside the transaction that commits the result. Clears
    /// the busy markers of the branches it held.
    pub fn commit(&self, state: &mut State) {
        if let Some(pos) = state.journal.iter().position(|op| op.id == self.id) {
            let op = state.journal.remove(pos);
            clear_busy(state, &op);
        }
    }

    /// Gives up a roll-forward operation that failed in this process, leaving the rest to the
    /// user (who runs the command again): clears its busy markers and drops it, unless it
    /// still holds origins to let go of, which the next velo command then releases.
    pub fn abandon(&self, state: &mut State) {
        let Some(pos) = state.journal.iter().position(|op| op.id == self.id) else {
            return;
        };
        let op = state.journal[pos].clone();
        clear_busy(state, &op);
        let pending = matches!(
            &op.recovery,
            Recovery::RollForward { finish: Finish::DeleteBranches { release } } if !release.is_empty()
        );
        if pending {
            state.journal[pos].branches.clear();
        } else {
            state.journal.remove(pos);
        }
    }

    /// Takes back every recorded step, newest first, then removes what the reserving
    /// transaction added and closes the operation. Undo failures are reported and the rest
    /// still run; then the operation stays in the journal (owned by this process, so the next
    /// velo command tries again) and this returns false.
    pub async fn roll_back(self, ctx: &Ctx) -> bool {
        let mut clean = true;
        for step in self.steps.iter().rev() {
            if let Err(e) = run_undo(ctx, &self.id, step).await {
                clean = false;
                ctx.shell.warn(&format!("could not undo {step:?}: {e:#}"));
            }
        }
        if !clean {
            return false;
        }
        let closed = ctx.store.update(|s| {
            if let Some(pos) = s.journal.iter().position(|op| op.id == self.id) {
                let op = s.journal.remove(pos);
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
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
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

async fn run_undo(ctx: &Ctx, op: &str, step: &UndoStep) -> Result<()> {
    match step {
        UndoStep::DestroySnapshot { name } => ctx.zfs.destroy_snapshot(name).await?,
        UndoStep::DestroyDataset { name } => ctx.zfs.destroy_dataset(name).await?,
        UndoStep::RemoveContainer { name } => {
            let ours = ctx
                .runtime
                .list_managed(&ctx.home_label())
                .await?
                .iter()
                .any(|c| c.name == *name);
            if ours {
                ctx.runtime.remove(name).await?;
            }
        }
        UndoStep::RemoveDir { path } => match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", path.display()));
            }
            _ => {}
        },
        UndoStep::RestoreContainer { branch, start } => {
            let state = ctx.store.read()?;
            let project_name = &state
                .journal
                .iter()
                .find(|o| o.id == op)
                .ok_or_else(|| anyhow!("operation {op} vanished from the journal"))?
                .project;
            let project = super::get_project(&state, project_name)?;
            let r = BranchRef::new(project_name.clone(), branch.clone());
            let b = super::get_branch(project, &r)?;
            let mountpoint = super::mounted_at(ctx, &b.dataset(&project.pool, &r)).await?;
            let spec = super::container_spec(ctx, project, &r, b, &mountpoint)?;
            ctx.runtime
                .remove(&names::retired_container_name(&r))
                .await?;
            ctx.runtime.remove(&spec.name).await?;
            ctx.runtime.create(&spec).await?;
            if *start {
                ctx.runtime.start(&spec.name).await?;
                // The branch is as it was only once it answers again: a server that was killed
                // replays its WAL first, and a command that waited for this one (a snapshot's
                // CHECKPOINT, say) must not meet it half started. Not cut short by a signal:
                // this is the roll-back a signal asked for.
                super::until_listening(ctx, &spec.name, b.port, super::branch::BRANCH_READY)
                    .await?;
                super::endpoint(project, b)
                    .wait_ready(super::branch::BRANCH_READY, || async { Ok(()) })
                    .await?;
            }
        }
    }
    Ok(())
}

/// Ends every operation whose process died: takes it over (so that two velo commands never
/// recover the same one), then rolls it back or forward, and says so. Failures are warnings:
/// the operation stays in the journal and the next command tries again.
pub async fn recover(ctx: &Ctx) {
    // The common case, nothing to recover, costs a read and no write.
    match ctx.store.read() {
        Ok(s) if s.journal.iter().all(|op| op.owner.is_alive()) => return,
        _ => {}
    }
    let me = Owner::me();
    let taken = ctx.store.update(|s| {
        let mut taken = Vec::new();
        for op in s.journal.iter_mut().filter(|op| !op.owner.is_alive()) {
            taken.push((op.owner.pid, op.clone()));
            op.owner = me.clone();
        }
        for (_, op) in &taken {
            if let Some(p) = s.projects.get_mut(&op.project) {
                for name in &op.branches {
                    if let Some(busy) = p.branches.get_mut(name).and_then(|b| b.busy.as_mut()) {
                        busy.pid = me.pid;
                    }
                }
            }
        }
        Ok::<_, anyhow::Error>(taken)
    });
    let taken = match taken {
        Ok(t) => t,
        Err(e) => {
            ctx.shell
                .warn(&format!("could not read the operation journal: {e:#}"));
            return;
        }
    };
    for (pid, op) in taken {
        let what = format!(
            "`velo {}` on `{}` (pid {pid}, started {})",
            op.command,
            describe(&op),
            op.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        let undo = Undo::adopt(&op);
        let done = match &op.recovery {
            Recovery::RollBack { .. } => {
                ctx.shell
                    .warn(&format!("{what} was interrupted; rolling it back"));
                undo.roll_back(ctx).await
            }
            Recovery::RollForward { finish } => {
                ctx.shell
                    .warn(&format!("{what} was interrupted; finishing it"));
                match roll_forward(ctx, &op, finish, &undo).await {
                    Ok(()) => true,
                    Err(e) => {
                        ctx.shell.warn(&format!("{e:#}"));
                        false
                    }
                }
            }
        };
        if done {
            ctx.shell.note(&format!("Recovered {what}."));
        } else {
            ctx.shell.warn(&format!(
                "{what} is not fully recovered yet; the next velo command tries again"
            ));
        }
    }
}

fn describe(op: &Operation) -> String {
    match op.branches.as_slice() {
        [] => op.project.to_string(),
        [one] => format!("{}/{one}", op.project),
        many => format!(
            "{}/{{{}}}",
            op.project,
            many.iter()
                .map(BranchName::as_str)
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

async fn roll_forward(ctx: &Ctx, op: &Operation, finish: &Finish, undo: &Undo) -> Result<()> {
    match finish {
        Finish::DeleteBranches { .. } => super::branch::delete_held(ctx, &op.project, undo).await,
        Finish::DeleteProject => super::project::delete_held(ctx, &op.project, undo).await,
        Finish::DeleteSnapshot { id } => {
            super::snapshot::destroy_held(ctx, &op.project, id, undo).await
        }
        Finish::CollectGeneration {
            branch,
            generation,
            origin,
        } => {
            let r = BranchRef::new(op.project.clone(), branch.clone());
            super::branch::collect_held(ctx, &r, *generation, origin.as_ref(), undo).await
        }
    }
}
