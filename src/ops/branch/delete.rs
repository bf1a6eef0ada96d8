//! Deleting branches: finished forward once begun, by the next command if this one dies.

use anyhow::{Context as _, Result, bail};

use super::super::generation::{release_origin, tidy};
use super::super::journal::Intent;
use super::super::server;
use super::super::{Ctx, Undo, get_branch, get_project, get_project_mut, remove_dir};
use crate::names::{self, BranchRef, ProjectName, VolumeId};
use crate::state::{Branch, Finish, Origin, Project, Recovery as JournalRecovery};

/// A check a delete makes in the transaction that claims the branch, on the project and the
/// branch as they are then: `velo gc` deletes only what is still due.
pub type Guard<'g> = dyn Fn(&Project, &Branch) -> Result<()> + Sync + 'g;

/// Deletes a branch (and with `force`, every branch below it).
pub async fn delete(ctx: &Ctx, r: &BranchRef, force: bool) -> Result<()> {
    delete_if(ctx, r, force, &|_, _| Ok(())).await
}

/// [`delete`], if `guard` passes when the branch is claimed; its error is returned as it is.
pub async fn delete_if(ctx: &Ctx, r: &BranchRef, force: bool, guard: &Guard<'_>) -> Result<()> {
    if r.branch.is_main() {
        bail!(
            "`{r}` is the project's main branch; delete the project instead (`velo project delete {}`)",
            r.project
        );
    }
    let (doomed, undo) = ctx.store.update(|s| {
        let p = get_project(s, &r.project)?;
        guard(p, get_branch(p, r)?)?;
        let doomed = p.subtree_post_order(&r.branch);
        if doomed.len() > 1 && !force {
            let children: Vec<String> = doomed[..doomed.len() - 1]
                .iter()
                .map(|b| format!("{}/{b}", r.project))
                .collect();
            bail!(
                "branch `{r}` has branches made from it: {}; delete them first, or pass --force to delete them too",
                children.join(", ")
            );
        }
        let p = get_project_mut(s, &r.project)?;
        for name in &doomed {
            let b = p.branches.get_mut(name).expect("from the subtree");
            super::super::claim_taking_over(
                b,
                &BranchRef::new(r.project.clone(), name.clone()),
                "branch delete",
            )?;
        }
        let undo = Undo::begin(
            s,
            Intent {
                command: "branch delete",
                project: &r.project,
                branches: doomed.clone(),
                pins: Vec::new(),
                recovery: JournalRecovery::RollForward {
                    finish: Finish::DeleteBranches {
                        release: Vec::new(),
                    },
                },
            },
        );
        Ok((doomed, undo))
    })?;

    if let Err(e) = delete_held(ctx, &r.project, &undo).await {
        ctx.store.update(|s| {
            undo.abandon(s);
            Ok::<_, anyhow::Error>(())
        })?;
        return Err(e.context(format!(
            "fix the cause and run `velo branch delete {r} --force` again"
        )));
    }
    drop(undo);
    tidy(ctx, &r.project).await;
    ctx.shell.note(&format!(
        "Deleted {}.",
        doomed
            .iter()
            .map(|b| format!("`{}/{b}`", r.project))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(())
}

/// Deletes the branches an open delete operation holds (those still in the state, in its
/// order), lets go of the snapshots velo made for them and closes the operation. Run by
/// `branch delete` and, for a delete that was killed, by the next velo command.
pub async fn delete_held(ctx: &Ctx, name: &ProjectName, undo: &Undo) -> Result<()> {
    let state = ctx.store.read()?;
    let Some(op) = undo.record(&state) else {
        return Ok(());
    };
    if let Some(project) = state.projects.get(name) {
        for bn in &op.branches {
            let Some(b) = project.branch(bn) else {
                continue;
            };
            let br = BranchRef::new(name.clone(), bn.clone());
            delete_one(ctx, project, &br, b, undo)
                .await
                .with_context(|| format!("deleting `{br}`"))?;
        }
    }
    let state = ctx.store.read()?;
    let release = match undo.record(&state).map(|op| op.recovery) {
        Some(JournalRecovery::RollForward {
            finish: Finish::DeleteBranches { release },
        }) => release,
        _ => Vec::new(),
    };
    if let Some(project) = state.projects.get(name) {
        for origin in &release {
            release_origin(ctx, project, name, origin).await?;
        }
    }
    ctx.store.update(|s| {
        undo.commit(s);
        Ok::<_, anyhow::Error>(())
    })
}

async fn delete_one(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    b: &Branch,
    undo: &Undo,
) -> Result<()> {
    let runtime = ctx.runtime(project)?;
    let name = names::server_name(r);
    undo.step(ctx, "delete-container").await?;
    // Once its server is dead the data is free: the server is removed while the storage
    // destroys the branch's volumes.
    ctx.shell
        .step(&format!("Stop {r}"), runtime.kill(&name))
        .await?;
    let remove_step = format!("Remove server {r}");
    let (removed, destroyed) = tokio::join!(
        ctx.shell.step(&remove_step, runtime.remove(&name)),
        destroy_generations(ctx, project, r, b, undo)
    );
    removed?;
    let origins = destroyed?;
    remove_dir(&ctx.archives().branch_dir(&r.project, &r.branch))?;
    remove_dir(&server::socket_dir(ctx, b.port))?;
    undo.step(ctx, "delete-forget").await?;
    ctx.store.update(|s| {
        if let Some(p) = s.projects.get_mut(&r.project) {
            p.branches.remove(&r.branch);
            p.snapshots.retain(|x| x.branch != r.branch);
        }
        // Forgetting the branch and noting what is left to release is one transaction.
        if let Some(Finish::DeleteBranches { release }) = undo.finish_mut(s) {
            release.extend(origins);
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// Destroys every generation of a branch being deleted, newest first; returns the origins
/// velo made for them, to release once the branch is forgotten.
async fn destroy_generations(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    b: &Branch,
    undo: &Undo,
) -> Result<Vec<Origin>> {
    let storage = ctx.storage(project)?;
    let mut origins = Vec::new();
    let mut generations: Vec<_> = b
        .retired
        .iter()
        .map(|g| (g.generation, g.origin.clone()))
        .chain([(b.generation, b.origin.clone())])
        .collect();
    // Newest first: a restore clones a generation from a snapshot of an older one.
    generations.sort_by_key(|(generation, _)| std::cmp::Reverse(*generation));
    undo.step(ctx, "delete-data").await?;
    for (generation, origin) in generations {
        storage
            .destroy_volume(&VolumeId::new(r, generation))
            .await?;
        origins.extend(origin.filter(|o| o.owned));
    }
    Ok(origins)
}
