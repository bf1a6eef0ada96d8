//! `velo project refresh`: imports a project's source again, as a new generation of main,
//! atomically. The new generation is a clone of the prepared cluster, restored into by its own
//! import server while main's server goes on serving the old one; only once the import is done
//! and masked is main's server moved over (killed and started on the new data, as a reset
//! does: about a second). Branches keep their data: their clones pin the old generation, which
//! is retired and destroyed once nothing needs it. Journaled like a reset: on any failure, or
//! a kill, main is as it was.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use chrono::Utc;

use super::super::background::tidy;
use super::super::branch::claim_branch;
use super::super::generation::archive_generation;
use super::super::launch::create_server;
use super::super::server::{self, BRANCH_READY};
use super::super::{Ctx, Undo, branch_mut, get_project, prepared, rolled_back};
use super::{Plan, check, empty_volume, load};
use crate::names::{self, BranchName, BranchRef, ProjectName};
use crate::runtime::ServerStatus;
use crate::state::{Branch, Generation, Imported, Prepared, Project, RunState, UndoStep};

pub async fn refresh(ctx: &Ctx, name: &ProjectName, after_import: Option<&Path>) -> Result<()> {
    let r = BranchRef::new(name.clone(), BranchName::main());
    let (project, old, record, mut undo) = ctx.store.update(|s| {
        let record = get_project(s, name)?.imported.clone().ok_or_else(|| {
            anyhow!(
                "project `{name}` was not imported from a server or a dump, so there is nothing to refresh it from (`project create --from URL` makes one that can be)"
            )
        })?;
        if record.follow {
            bail!(
                "main of `{name}` follows its source as a standby and is always as fresh as its replication (`velo status` shows how far behind it is): there is nothing to refresh"
            );
        }
        let (project, old, undo) = claim_branch(s, &r, "project refresh", Vec::new())?;
        Ok::<_, anyhow::Error>((project, old, record, undo))
    })?;
    let result = async {
        let plan = Plan::again(ctx, &record, after_import)?;
        ctx.shell
            .note(&format!("Importing {} again into `{r}`", plan.describe()));
        let checked = check(ctx, &project, &r, old.port, &plan, &mut undo).await?;
        let physical = plan.record.physical;
        let (cluster, new, root) =
            new_generation(ctx, &project, &r, &old, physical, &mut undo).await?;
        let imported = load(ctx, &project, &r, &new, &root, &checked, &mut undo).await?;
        switch(ctx, &project, &r, &new, &root, &mut undo).await?;
        Ok::<_, anyhow::Error>((cluster, new, imported))
    }
    .await;
    let (cluster, new, imported) = match result {
        Ok(done) => done,
        Err(e) => {
            let how = rolled_back(undo.roll_back(ctx).await);
            return Err(e.context(format!("refreshing project `{name}` ({how})")));
        }
    };
    commit(ctx, &r, &old, &new, cluster.as_ref(), imported, undo)?;
    tidy(ctx, name).await;
    ctx.shell.note(&format!(
        "Main of `{name}` now holds the data imported at {} UTC; branches kept theirs.",
        Utc::now().format("%Y-%m-%d %H:%M:%S")
    ));
    Ok(())
}

/// Clones the prepared cluster of the project's storage and current server software into
/// main's next generation (preparing one if there is none) and gives it its WAL archive.
async fn new_generation(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    old: &Branch,
    physical: bool,
    undo: &mut Undo,
) -> Result<(Option<Prepared>, Branch, std::path::PathBuf)> {
    let mut new = old.clone();
    new.generation = old.next_generation();
    new.origin = None;
    undo.intend(
        ctx,
        "clone",
        UndoStep::DestroyVolume {
            branch: r.branch.clone(),
            generation: new.generation,
        },
    )
    .await?;
    let (cluster, root) = match physical {
        true => (None, empty_volume(ctx, project, &new.volume(r)).await?),
        false => {
            let cluster = prepared_cluster(ctx, project, undo).await?;
            let root = ctx
                .shell
                .step(
                    "Clone",
                    ctx.storage(project)?
                        .clone_snapshot(&cluster.snapshot_ref(), &new.volume(r)),
                )
                .await?;
            (Some(cluster), root)
        }
    };
    archive_generation(ctx, project, r, new.generation, undo).await?;
    Ok((cluster, new, root))
}

/// The prepared cluster of the project's storage and server software, made if missing.
async fn prepared_cluster(ctx: &Ctx, project: &Project, undo: &mut Undo) -> Result<Prepared> {
    let software = ctx.runtime(project)?.software().await?;
    let name = prepared::name_for(
        &ctx.home_label(),
        &project.storage,
        &project.runtime,
        &software,
    );
    if let Some(found) = prepared::find(&ctx.store.read()?, &name) {
        return Ok(found.clone());
    }
    let user = server::server_user(project);
    prepared::make(ctx, project, &name, &software, user, undo).await
}

/// Moves main's server onto the new generation: the old server is renamed away and killed
/// (its data is intact; the undo starts it again), the new one made and started.
async fn switch(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    new: &Branch,
    root: &Path,
    undo: &mut Undo,
) -> Result<()> {
    let runtime = ctx.runtime(project)?;
    let name = names::server_name(r);
    let was_running = runtime.status(&name).await? == ServerStatus::Running;
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
    ctx.shell
        .step("Stop old main", async {
            runtime.remove(&retired).await?;
            if runtime.rename(&name, &retired).await? {
                runtime.kill(&retired).await?;
            }
            runtime.remove(&retired).await
        })
        .await?;
    let spec = server::spec(ctx, project, r, new, root, runtime.as_ref(), None)?;
    create_server(ctx, runtime.as_ref(), &spec, r, undo).await?;
    if new.desired == RunState::Running {
        undo.step(ctx, "start").await?;
        server::start_and_wait(ctx, project, r, new, BRANCH_READY).await?;
    }
    undo.step(ctx, "commit").await
}

/// Records the new generation (the old one retired), the import and the prepared cluster it
/// was cloned from, and closes the operation.
fn commit(
    ctx: &Ctx,
    r: &BranchRef,
    old: &Branch,
    new: &Branch,
    cluster: Option<&Prepared>,
    imported: Imported,
    undo: Undo,
) -> Result<()> {
    ctx.store.update(|s| {
        let b = branch_mut(s, r)?;
        b.retired.push(Generation {
            generation: old.generation,
            origin: old.origin.clone(),
        });
        b.generation = new.generation;
        b.origin = None;
        let p = super::super::get_project_mut(s, &r.project)?;
        p.imported = Some(imported);
        p.prepared_from = cluster.map(|c| c.name.clone());
        undo.commit(s);
        Ok::<_, anyhow::Error>(())
    })
}
