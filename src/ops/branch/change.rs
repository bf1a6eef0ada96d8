//! Reset and restore: a new generation beside the old, the server moved over once it exists.

use anyhow::{Result, anyhow, bail};

use super::super::background::tidy;
use super::super::generation::{new_generation, take_snapshot};
use super::super::journal::Intent;
use super::super::launch::create_server;
use super::super::server::{self, BRANCH_READY, PortTaken};
use super::super::{
    Ctx, Undo, allocate_port, branch_mut, claim, follow, get_branch, get_project, get_project_mut,
};
use crate::names::{self, BranchRef, SnapshotId};
use crate::runtime::ServerStatus;
use crate::state::{
    Branch, Forget, Generation, Origin, Pin, Project, Recovery as JournalRecovery, RunState, State,
    UndoStep,
};

/// Brings a branch back to its parent's current state, on the same port with the same password.
pub async fn reset(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    if r.branch.is_main() {
        bail!("`{r}` is the project's main branch and has no parent to reset to");
    }
    let (project, old, parent_ref, mut undo) = ctx.store.update(|s| {
        let p = get_project(s, &r.project)?;
        let b = get_branch(p, r)?;
        let parent_ref = BranchRef::new(
            r.project.clone(),
            b.parent
                .clone()
                .ok_or_else(|| anyhow!("`{r}` has no parent to reset to"))?,
        );
        let parent = get_branch(p, &parent_ref)?;
        if let Some(busy) = &parent.busy {
            bail!(
                "parent `{parent_ref}` is busy with `velo {}`; try again when it is done",
                busy.operation
            );
        }
        // The parent's generation must outlive the snapshot and clone, even if the parent is
        // reset meanwhile.
        let pin = Pin {
            branch: parent_ref.branch.clone(),
            generation: parent.generation,
        };
        let (project, old, undo) = claim_branch(s, r, "branch reset", vec![pin])?;
        Ok::<_, anyhow::Error>((project, old, parent_ref, undo))
    })?;
    let parent = project
        .branch(&parent_ref.branch)
        .expect("checked above")
        .clone();
    let snap = SnapshotId::random();
    let origin = NewOrigin::SnapshotOf {
        r: &parent_ref,
        branch: &parent,
        id: &snap,
    };
    let result = replace_generation(ctx, &project, r, &old, origin, &mut undo).await;
    commit_generation(ctx, r, &old, result, undo).await?;
    ctx.shell
        .note(&format!("Branch `{r}` now matches `{parent_ref}`."));
    Ok(())
}

/// Rewinds a branch in place to one of its snapshots, on the same port with the same password.
/// Snapshots taken after that one stay (their generation is kept).
pub async fn restore(ctx: &Ctx, r: &BranchRef, key: &str) -> Result<()> {
    let (project, old, origin, mut undo) = ctx.store.update(|s| {
        let p = get_project(s, &r.project)?;
        get_branch(p, r)?;
        let snapshot = super::super::snapshot::resolve(p, &r.project, key)?;
        if snapshot.branch != r.branch {
            bail!(
                "snapshot `{key}` belongs to `{}/{}`, not `{r}`; to copy it into a new branch use `velo branch create … --from-snapshot {key}`",
                r.project,
                snapshot.branch
            );
        }
        let origin = snapshot.as_origin_now();
        let pin = Pin {
            branch: origin.branch.clone(),
            generation: origin.generation,
        };
        let (project, old, undo) = claim_branch(s, r, "branch restore", vec![pin])?;
        Ok::<_, anyhow::Error>((project, old, origin, undo))
    })?;
    let label = origin.snapshot.clone();
    let result = replace_generation(
        ctx,
        &project,
        r,
        &old,
        NewOrigin::Existing(origin),
        &mut undo,
    )
    .await;
    commit_generation(ctx, r, &old, result, undo).await?;
    ctx.shell
        .note(&format!("Branch `{r}` is back at snapshot {label}."));
    Ok(())
}

/// Marks a branch busy for a command that changes it and opens its operation, pinning `pins`;
/// call it inside a transaction. Returns the project and the branch as they were.
pub(crate) fn claim_branch(
    s: &mut State,
    r: &BranchRef,
    operation: &str,
    pins: Vec<Pin>,
) -> Result<(Project, Branch, Undo)> {
    let p = get_project_mut(s, &r.project)?;
    let b = p.branches.get_mut(&r.branch).ok_or_else(|| {
        anyhow!(
            "branch `{r}` does not exist (see `velo branch list {}`)",
            r.project
        )
    })?;
    claim(b, r, operation)?;
    let b = b.clone();
    let p = p.clone();
    let undo = Undo::begin(
        s,
        Intent {
            command: operation,
            project: &r.project,
            branches: vec![r.branch.clone()],
            pins,
            recovery: JournalRecovery::RollBack {
                forget: Forget::Nothing,
            },
        },
    );
    Ok((p, b, undo))
}

/// Where a branch's new generation is cloned from.
enum NewOrigin<'a> {
    /// A snapshot that exists (restore).
    Existing(Origin),
    /// A new snapshot `id` of branch `r` (reset: the parent).
    SnapshotOf {
        r: &'a BranchRef,
        branch: &'a Branch,
        id: &'a SnapshotId,
    },
}

/// Serves a branch from a new generation cloned from `origin`, on the same port with the same
/// password. Returns the branch as it will be once committed.
///
/// The old generation's server is thrown away, so it is killed rather than shut down (a fast
/// shutdown took 0.2-0.8 s here), and killed while the new generation is being made: the two
/// touch different volumes. Its data stays safe: if this command fails, the `swap` undo step
/// starts it again and PostgreSQL recovers it from its WAL, as after a power cut. Its server
/// is renamed out of the way first, so that it is removed while the new one starts.
async fn replace_generation(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    old: &Branch,
    origin: NewOrigin<'_>,
    undo: &mut Undo,
) -> Result<Branch> {
    let (storage, runtime) = (ctx.storage(project)?, ctx.runtime(project)?);
    let name = names::server_name(r);
    let was_running = runtime.status(&name).await? == ServerStatus::Running;
    storage.path(&old.volume(r)).await?.ok_or_else(|| {
        anyhow!("the data of `{r}` is not available; `velo repair --fix` makes it so")
    })?;
    undo.intend(
        ctx,
        "swap",
        UndoStep::RestoreServer {
            branch: r.branch.clone(),
            start: was_running,
        },
    )
    .await?;
    let retired = names::retired_server_name(r);
    let stop = ctx.shell.step("Stop", async {
        // A leftover of a reset killed at this point, which its recovery would have removed.
        runtime.remove(&retired).await?;
        if runtime.rename(&name, &retired).await? {
            runtime.kill(&retired).await?;
        }
        Ok::<_, anyhow::Error>(())
    });
    let make = async {
        let origin = match origin {
            NewOrigin::Existing(origin) => origin,
            NewOrigin::SnapshotOf { r, branch, id } => {
                take_snapshot(ctx, project, r, branch, id, undo).await?
            }
        };
        let mut new = old.clone();
        new.generation = old.next_generation();
        new.origin = Some(origin.clone());
        let root = new_generation(ctx, project, r, &new, &origin, undo).await?;
        Ok::<_, anyhow::Error>((new, root))
    };
    let (stopped, made) = tokio::join!(stop, make);
    stopped?;
    let (new, root) = made?;
    let spec = server::spec(ctx, project, r, &new, &root, runtime.as_ref(), None)?;
    // Its undo runs before the new generation is destroyed (undo runs in reverse), so the new
    // server is gone first; the `swap` step then brings the old one back.
    create_server(ctx, runtime.as_ref(), &spec, r, undo).await?;
    let promoted = follow::promote_clone(ctx, project, r, &spec).await?;
    let launch = async {
        let mut new = new.clone();
        // A promoted copy of a follower's main has the source's passwords until it runs once
        // and gets the project's: a stopped branch is started for that, then stopped again.
        if new.desired == RunState::Running || promoted {
            undo.step(ctx, "start").await?;
            let deadline = match promoted {
                true => follow::CLONE_READY,
                false => BRANCH_READY,
            };
            new = start_new(ctx, project, r, new, &root, deadline).await?;
        }
        if promoted {
            follow::own_password(ctx, project, &new).await?;
        }
        if new.desired != RunState::Running && promoted {
            runtime.stop(&spec.name, server::STOP_TIMEOUT).await?;
        }
        Ok::<_, anyhow::Error>(new)
    };
    let (launched, removed) = tokio::join!(launch, runtime.remove(&retired));
    let new = launched?;
    removed?;
    undo.step(ctx, "commit").await?;
    Ok(new)
}

/// Starts the new generation's server and waits until it answers. If another program (another
/// velo home's new branch, say) took the port in the moment the old server had let it go, the
/// branch moves to a free port, as a create does, and says so: better than a failed reset.
async fn start_new(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    mut branch: Branch,
    root: &std::path::Path,
    deadline: std::time::Duration,
) -> Result<Branch> {
    const ATTEMPTS: usize = 5;
    let runtime = ctx.runtime(project)?;
    let mut tried = Vec::new();
    loop {
        match server::start_and_wait(ctx, project, r, &branch, deadline).await {
            Ok(()) => return Ok(branch),
            Err(e) if tried.len() < ATTEMPTS && e.downcast_ref::<PortTaken>().is_some() => {
                let taken = branch.port;
                tried.push(taken);
                runtime.remove(&names::server_name(r)).await?;
                branch.port = ctx.store.update(|s| {
                    let port = allocate_port(s, &tried, &ctx.ports)?;
                    branch_mut(s, r)?.port = port;
                    Ok::<_, anyhow::Error>(port)
                })?;
                let spec = server::spec(ctx, project, r, &branch, root, runtime.as_ref(), None)?;
                runtime.create(&spec).await?;
                ctx.shell.note(&format!(
                    "port {taken} was taken meanwhile; `{r}` is on {} now",
                    branch.port
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Records a replaced generation (the old one is retired, then tidied away if nothing needs
/// it), or on failure undoes everything so that the branch is as it was.
async fn commit_generation(
    ctx: &Ctx,
    r: &BranchRef,
    old: &Branch,
    result: Result<Branch>,
    undo: Undo,
) -> Result<()> {
    let new = match result {
        Ok(new) => new,
        Err(e) => {
            let how = if undo.roll_back(ctx).await {
                "the branch is as it was"
            } else {
                super::super::rolled_back(false)
            };
            return Err(e.context(format!("changing branch `{r}` ({how})")));
        }
    };
    ctx.store.update(|s| {
        let b = branch_mut(s, r)?;
        b.retired.push(Generation {
            generation: old.generation,
            origin: old.origin.clone(),
        });
        b.generation = new.generation;
        b.origin = new.origin.clone();
        undo.commit(s);
        Ok::<_, anyhow::Error>(())
    })?;
    drop(undo);
    tidy(ctx, &r.project).await;
    Ok(())
}
