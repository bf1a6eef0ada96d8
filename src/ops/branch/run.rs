//! Starting, stopping and restarting a branch's server.

use anyhow::Result;

use super::super::server::{self, BRANCH_READY, STOP_TIMEOUT};
use super::super::{Ctx, Undo};
use super::change::claim_branch;
use crate::names::{self, BranchRef};
use crate::runtime::ServerStatus;
use crate::state::{Branch, Project, RunState};

/// Opens a branch's operation in its own transaction.
fn claim_alone(ctx: &Ctx, r: &BranchRef, operation: &str) -> Result<(Project, Branch, Undo)> {
    ctx.store
        .update(|s| claim_branch(s, r, operation, Vec::new()))
}

pub async fn start(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let (project, b, undo) = claim_alone(ctx, r, "branch start")?;
    let result = ensure_running(ctx, &project, r, &b).await;
    finish_run_change(ctx, r, RunState::Running, result, undo)?;
    ctx.shell.note(&format!("Branch `{r}` is running."));
    Ok(())
}

pub async fn stop(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let (project, _, undo) = claim_alone(ctx, r, "branch stop")?;
    let result = async {
        let runtime = ctx.runtime(&project)?;
        ctx.shell
            .step("Stop", runtime.stop(&names::server_name(r), STOP_TIMEOUT))
            .await?;
        Ok(())
    }
    .await;
    finish_run_change(ctx, r, RunState::Stopped, result, undo)?;
    ctx.shell.note(&format!("Branch `{r}` is stopped."));
    Ok(())
}

pub async fn restart(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let (project, b, undo) = claim_alone(ctx, r, "branch restart")?;
    let result = async {
        let runtime = ctx.runtime(&project)?;
        ctx.shell
            .step("Stop", runtime.stop(&names::server_name(r), STOP_TIMEOUT))
            .await?;
        undo.step(ctx, "start").await?;
        ensure_running(ctx, &project, r, &b).await
    }
    .await;
    finish_run_change(ctx, r, RunState::Running, result, undo)?;
    ctx.shell.note(&format!("Branch `{r}` is running."));
    Ok(())
}

/// Records the run state a start or stop reached, and closes its operation. A start or stop
/// has nothing to take back: whatever state the server is in, the next start or stop brings
/// it where the user wants.
fn finish_run_change(
    ctx: &Ctx,
    r: &BranchRef,
    desired: RunState,
    result: Result<()>,
    undo: Undo,
) -> Result<()> {
    ctx.store.update(|s| {
        if result.is_ok()
            && let Some(b) = s
                .projects
                .get_mut(&r.project)
                .and_then(|p| p.branches.get_mut(&r.branch))
        {
            b.desired = desired;
        }
        undo.commit(s);
        Ok::<_, anyhow::Error>(())
    })?;
    result
}

/// Starts a branch's server, re-creating it from state if it was removed behind velo's back
/// (the data is on the volume, the server holds none), and making its volume available if it
/// is not (after a reboot or a zfs-fuse restart).
pub async fn ensure_running(ctx: &Ctx, project: &Project, r: &BranchRef, b: &Branch) -> Result<()> {
    let (storage, runtime) = (ctx.storage(project)?, ctx.runtime(project)?);
    let name = names::server_name(r);
    let note = |what: &str| ctx.shell.note_marked(crate::ui::Mark::Step, what);
    match runtime.status(&name).await? {
        ServerStatus::Running => return server::wait_ready(ctx, project, r, b, BRANCH_READY).await,
        ServerStatus::Missing => {
            let root = storage.ensure_available(&b.volume(r), &note).await?;
            let spec = server::spec(ctx, project, r, b, &root, runtime.as_ref(), None)?;
            ctx.shell
                .step("Re-create server", runtime.create(&spec))
                .await?;
        }
        _ => {
            storage.ensure_available(&b.volume(r), &note).await?;
        }
    }
    server::start_and_wait(ctx, project, r, b, BRANCH_READY).await
}
