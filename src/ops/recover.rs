//! Ending the operations of velo commands that died: every command first takes over the
//! journal's operations whose process is gone and rolls each back (or, for a delete, forward),
//! calling into the use cases that know how to finish them.

use anyhow::Result;

use super::Ctx;
use super::journal::Undo;
use crate::names::{BranchName, BranchRef};
use crate::state::{Finish, Operation, Owner, Recovery};

/// Ends every operation whose process died: takes it over (so that two velo commands never
/// recover the same one), then rolls it back or forward, and says so. Failures are warnings:
/// the operation stays in the journal and the next command tries again.
pub async fn recover(ctx: &Ctx) {
    // The common case, nothing to recover, costs a read and no write.
    match ctx.store.read() {
        Ok(s) if s.journal.iter().all(|op| op.owner.is_alive()) => return,
        // An unreadable state is reported by the command itself, once.
        Err(_) => return,
        _ => {}
    }
    let me = Owner::me();
    let taken = ctx.store.update(|s| {
        let taken = s.journal.adopt_orphans(&me);
        for op in &taken {
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
    for op in taken {
        let what = format!(
            "`velo {}` on `{}` (pid {}, started {})",
            op.command,
            describe(&op),
            op.owner.pid,
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

/// Finishes a roll-forward operation this process holds (its own, or one it took over).
pub async fn finish_forward(ctx: &Ctx, undo: &Undo) -> Result<()> {
    let Some(op) = undo.record(&ctx.store.read()?) else {
        return Ok(());
    };
    match &op.recovery {
        Recovery::RollForward { finish } => roll_forward(ctx, &op, finish, undo).await,
        Recovery::RollBack { .. } => Ok(()),
    }
}

async fn roll_forward(ctx: &Ctx, op: &Operation, finish: &Finish, undo: &Undo) -> Result<()> {
    match finish {
        Finish::DeleteBranches { .. } => {
            super::branch::forget_held(ctx, &op.project, undo).await?;
            super::branch::destroy_held(ctx, &op.project, undo).await
        }
        Finish::DeleteProject { .. } => {
            super::project::forget_held(ctx, &op.project, undo).await?;
            super::project::destroy_held(ctx, &op.project, undo).await
        }
        Finish::DeleteSnapshot { id } => {
            super::snapshot::destroy_held(ctx, &op.project, id, undo).await
        }
        Finish::CollectGeneration {
            branch,
            generation,
            origin,
        } => {
            let r = BranchRef::new(op.project.clone(), branch.clone());
            super::generation::collect_held(ctx, &r, *generation, origin.as_ref(), undo).await
        }
    }
}
