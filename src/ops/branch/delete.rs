//! Deleting branches: finished forward once begun, by the next command if this one dies. The
//! servers go and the branches are forgotten before the command answers; their data is
//! destroyed after, in the background.

use anyhow::{Context as _, Result, bail};

use super::super::generation::release_origin;
use super::super::journal::Intent;
use super::super::server;
use super::super::{Ctx, Undo, background, get_branch, get_project, get_project_mut, remove_dir};
use crate::names::{self, BranchRef, ProjectName, VolumeId};
use crate::state::{Branch, Finish, Origin, Pin, Project, Recovery as JournalRecovery};

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
                        volumes: Vec::new(),
                    },
                },
            },
        );
        Ok((doomed, undo))
    })?;

    if let Err(e) = forget_held(ctx, &r.project, &undo).await {
        ctx.store.update(|s| {
            undo.abandon(s);
            Ok::<_, anyhow::Error>(())
        })?;
        return Err(e.context(format!(
            "fix the cause and run `velo branch delete {r} --force` again"
        )));
    }
    ctx.shell.note(&format!(
        "Deleted {}.",
        doomed
            .iter()
            .map(|b| format!("`{}/{b}`", r.project))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    background::finish(ctx, undo).await
}

/// The part of a delete the user waits for: stops and removes the servers of the branches an
/// open delete operation holds (those still in the state, in its order) and forgets them,
/// noting in the operation which volumes and origins are left to destroy and let go of.
pub async fn forget_held(ctx: &Ctx, name: &ProjectName, undo: &Undo) -> Result<()> {
    let state = ctx.store.read()?;
    let Some(op) = undo.record(&state) else {
        return Ok(());
    };
    let Some(project) = state.projects.get(name) else {
        return Ok(());
    };
    for bn in &op.branches {
        let Some(b) = project.branch(bn) else {
            continue;
        };
        let br = BranchRef::new(name.clone(), bn.clone());
        forget_one(ctx, project, &br, b, undo)
            .await
            .with_context(|| format!("deleting `{br}`"))?;
    }
    Ok(())
}

/// The part of a delete that grows with the data, run after the command has answered (see
/// [`background`]): destroys the forgotten branches' volumes and archives, lets go of the
/// snapshots velo made for them and closes the operation.
pub async fn destroy_held(ctx: &Ctx, name: &ProjectName, undo: &Undo) -> Result<()> {
    let state = ctx.store.read()?;
    let (release, volumes) = match undo.record(&state).map(|op| op.recovery) {
        Some(JournalRecovery::RollForward {
            finish: Finish::DeleteBranches { release, volumes },
        }) => (release, volumes),
        _ => return Ok(()),
    };
    if let Some(project) = state.projects.get(name) {
        let storage = ctx.storage(project)?;
        undo.step(ctx, "delete-data").await?;
        for pin in &volumes {
            let r = BranchRef::new(name.clone(), pin.branch.clone());
            storage
                .destroy_volume(&VolumeId::new(&r, pin.generation))
                .await
                .with_context(|| format!("destroying the data of the deleted `{r}`"))?;
        }
        for pin in &volumes {
            remove_dir(&ctx.archives().branch_dir(name, &pin.branch))?;
        }
        for origin in &release {
            release_origin(ctx, project, name, origin).await?;
        }
    }
    ctx.store.update(|s| {
        undo.commit(s);
        Ok::<_, anyhow::Error>(())
    })
}

async fn forget_one(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    b: &Branch,
    undo: &Undo,
) -> Result<()> {
    let runtime = ctx.runtime(project)?;
    let name = names::server_name(r);
    undo.step(ctx, "delete-container").await?;
    // Removing kills the server first: one call, no clean shutdown of data about to go.
    ctx.shell
        .step(&format!("Remove server {r}"), runtime.remove(&name))
        .await?;
    remove_dir(&server::socket_dir(ctx, b.port))?;
    undo.step(ctx, "delete-forget").await?;
    let (volumes, origins) = generations(r, b);
    ctx.store.update(|s| {
        if let Some(p) = s.projects.get_mut(&r.project) {
            p.branches.remove(&r.branch);
            p.snapshots.retain(|x| x.branch != r.branch);
        }
        // Forgetting the branch and noting what is left to destroy is one transaction; the
        // generations its volumes were cloned from stay pinned until they are destroyed.
        let Some(op) = s.journal.get_mut(undo.id()) else {
            return Ok::<_, anyhow::Error>(());
        };
        op.pins.extend(origins.iter().map(|o| Pin {
            branch: o.branch.clone(),
            generation: o.generation,
        }));
        if let JournalRecovery::RollForward {
            finish:
                Finish::DeleteBranches {
                    release,
                    volumes: v,
                },
        } = &mut op.recovery
        {
            v.extend(volumes);
            release.extend(origins.into_iter().filter(|o| o.owned));
        }
        Ok(())
    })
}

/// Every generation of a branch, newest first (a restore clones a generation from a snapshot
/// of an older one), and the origins they were cloned from.
fn generations(r: &BranchRef, b: &Branch) -> (Vec<Pin>, Vec<Origin>) {
    let mut all: Vec<_> = b
        .retired
        .iter()
        .map(|g| (g.generation, g.origin.clone()))
        .chain([(b.generation, b.origin.clone())])
        .collect();
    all.sort_by_key(|(generation, _)| std::cmp::Reverse(*generation));
    let volumes = all
        .iter()
        .map(|(generation, _)| Pin {
            branch: r.branch.clone(),
            generation: *generation,
        })
        .collect();
    (volumes, all.into_iter().filter_map(|(_, o)| o).collect())
}
