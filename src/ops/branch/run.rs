//! Starting, stopping and restarting a branch's server, by hand or, for idleness, by `velo gc`.

use anyhow::Result;
use chrono::{DateTime, Utc};

use super::super::lifetime::NoLongerDue;
use super::super::server::{self, BRANCH_READY, STOP_TIMEOUT};
use super::super::{Ctx, Undo};
use super::change::claim_branch;
use crate::names::{self, BranchRef};
use crate::runtime::ServerStatus;
use crate::state::{Branch, Project, RunState, State};

/// Opens a branch's operation in its own transaction, once `check` passes on the state then.
fn claim_alone(
    ctx: &Ctx,
    r: &BranchRef,
    operation: &str,
    check: impl FnOnce(&State) -> Result<()>,
) -> Result<(Project, Branch, Undo)> {
    ctx.store.update(|s| {
        check(s)?;
        claim_branch(s, r, operation, Vec::new())
    })
}

pub async fn start(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let (project, b, undo) = claim_alone(ctx, r, "branch start", |_| Ok(()))?;
    let result = ensure_running(ctx, &project, r, &b).await;
    finish_run_change(ctx, r, Change::Start, result, undo)?;
    ctx.shell.note(&format!("Branch `{r}` is running."));
    Ok(())
}

pub async fn stop(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let (project, _, undo) = claim_alone(ctx, r, "branch stop", |_| Ok(()))?;
    let result = stop_server(ctx, &project, r).await;
    finish_run_change(ctx, r, Change::Stop, result, undo)?;
    ctx.shell.note(&format!("Branch `{r}` is stopped."));
    Ok(())
}

/// Stops a branch `velo gc` found idle since `last_used`, if it still is when claimed: still
/// meant to run, and neither started nor seen in use since.
pub async fn stop_idle(ctx: &Ctx, r: &BranchRef, last_used: DateTime<Utc>) -> Result<()> {
    let still_idle = |s: &State| {
        let b = super::super::get_project(s, &r.project)?.branch(&r.branch);
        match b {
            Some(b) if b.desired == RunState::Running && b.last_used_at == Some(last_used) => {
                Ok(())
            }
            _ => Err(NoLongerDue("it was started, stopped or used meanwhile".into()).into()),
        }
    };
    let (project, _, undo) = claim_alone(ctx, r, "gc", still_idle)?;
    let result = stop_server(ctx, &project, r).await;
    finish_run_change(ctx, r, Change::StopIdle, result, undo)
}

pub async fn restart(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let (project, b, undo) = claim_alone(ctx, r, "branch restart", |_| Ok(()))?;
    let result = async {
        stop_server(ctx, &project, r).await?;
        undo.step(ctx, "start").await?;
        ensure_running(ctx, &project, r, &b).await
    }
    .await;
    finish_run_change(ctx, r, Change::Start, result, undo)?;
    ctx.shell.note(&format!("Branch `{r}` is running."));
    Ok(())
}

async fn stop_server(ctx: &Ctx, project: &Project, r: &BranchRef) -> Result<()> {
    let runtime = ctx.runtime(project)?;
    ctx.shell
        .step("Stop", runtime.stop(&names::server_name(r), STOP_TIMEOUT))
        .await?;
    Ok(())
}

/// What a start or stop did, for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Start,
    Stop,
    /// `velo gc` stopped an idle branch: `velo branch psql` may start it again.
    StopIdle,
}

/// Records the run state a start or stop reached, and closes its operation. A start or stop
/// has nothing to take back: whatever state the server is in, the next start or stop brings
/// it where the user wants.
fn finish_run_change(
    ctx: &Ctx,
    r: &BranchRef,
    change: Change,
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
            let now = Utc::now();
            b.desired = match change {
                Change::Start => RunState::Running,
                Change::Stop | Change::StopIdle => RunState::Stopped,
            };
            b.idle_stopped_at = (change == Change::StopIdle).then_some(now);
            if change == Change::Start {
                b.last_used_at = Some(now);
            }
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
    let mut status = runtime.status(&name).await?;
    if status != ServerStatus::Missing && runtime.outdated(&name).await? {
        ctx.shell
            .step("Remove a server an older velo made", runtime.remove(&name))
            .await?;
        status = ServerStatus::Missing;
    }
    match status {
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
