//! Runs one recorded undo step. Every step names only parts of the operation's own project,
//! which the project's storage and runtime map to what they are; each treats "already gone"
//! as success.

use anyhow::{Context as _, Result, anyhow};

use super::{Ctx, server};
use crate::names::{self, BranchName, BranchRef, SnapshotRef, VolumeId};
use crate::state::UndoStep;

pub(super) async fn run(ctx: &Ctx, op: &str, step: &UndoStep) -> Result<()> {
    let state = ctx.store.read()?;
    let project_name = state
        .journal
        .get(op)
        .ok_or_else(|| anyhow!("operation {op} vanished from the journal"))?
        .project
        .clone();
    // The reservation outlives its undo steps, so the project is there; if someone removed it
    // from the file by hand, nothing records what its parts are, and `velo repair` finds them.
    let Some(project) = state.projects.get(&project_name) else {
        return Ok(());
    };
    let at = |branch: &names::BranchName| BranchRef::new(project_name.clone(), branch.clone());
    match step {
        UndoStep::DestroySnapshot {
            branch,
            generation,
            id,
        } => {
            let s = SnapshotRef {
                volume: VolumeId::new(&at(branch), *generation),
                id: id.clone(),
            };
            ctx.storage(project)?.destroy_snapshot(&s).await?;
        }
        UndoStep::DestroyVolume { branch, generation } => {
            let v = VolumeId::new(&at(branch), *generation);
            ctx.storage(project)?.destroy_volume(&v).await?;
        }
        UndoStep::DestroyProject => ctx.storage(project)?.destroy_project(&project_name).await?,
        UndoStep::DestroyPrepared { name } => {
            // Recorded means finished: other projects may be cloned from it by now.
            if super::prepared::find(&state, name).is_none() {
                let volume = crate::state::prepared_volume(name);
                ctx.storage(project)?.destroy_volume(&volume).await?;
            }
        }
        UndoStep::RemoveServer { branch } => {
            let runtime = ctx.runtime(project)?;
            let server = names::server_name(&at(branch));
            // Only a server of this velo home: a name clash never removes someone else's.
            let ours = runtime
                .list_managed()
                .await?
                .iter()
                .any(|s| s.name == server);
            if ours {
                runtime.remove(&server).await?;
            }
        }
        UndoStep::RemoveArchive { branch, generation } => {
            let archives = ctx.archives();
            let dir = match (branch, generation) {
                (Some(b), Some(g)) => archives.generation_dir(&project_name, b, *g),
                (Some(b), None) => archives.branch_dir(&project_name, b),
                _ => {
                    super::follow::remove_secrets(ctx, &project_name)?;
                    archives.project_dir(&project_name)
                }
            };
            super::remove_dir(&dir)?;
        }
        UndoStep::StopImport { branch } => {
            let r = at(branch);
            let runtime = ctx.runtime(project)?;
            let ours = runtime.list_managed().await?;
            for name in [names::import_client_name(&r), names::import_server_name(&r)] {
                // Only this velo home's: a name clash never removes someone else's.
                if ours.iter().any(|s| s.name == name) {
                    runtime.remove(&name).await?;
                }
            }
            if let Some(b) = project.branch(branch) {
                super::import::clear(ctx, &r, b.port)?;
            }
        }
        UndoStep::DropSlot { slot, url } => {
            let r = at(&BranchName::main());
            // The follower's own password file once the copy has made it, else the import's.
            let kept = super::follow::secrets_dir(ctx, &project_name);
            let secrets = match kept.join(super::import::PASSFILE).exists() {
                true => kept,
                false => super::import::secrets_dir(ctx, &r),
            };
            super::import::drop_slot(ctx, project, &r, url, slot, secrets).await;
        }
        UndoStep::RestoreServer { branch, start } => {
            let r = at(branch);
            let b = super::get_branch(project, &r)?;
            server::restore(ctx, project, &r, b, *start).await?;
        }
        UndoStep::RenameVolume {
            from,
            to,
            generation,
        } => {
            let (old, new) = (
                VolumeId::new(&at(from), *generation),
                VolumeId::new(&at(to), *generation),
            );
            let storage = ctx.storage(project)?;
            // Servers that keep the volume from being renamed back (a child the rename
            // started again) stop first; the steps recorded before this one restart them.
            for v in storage.clones_blocking_rename(&new).await? {
                let r = at(&v.branch);
                if project.branch(&r.branch).is_some_and(|b| b.volume(&r) == v) {
                    let server = names::server_name(&r);
                    ctx.runtime(project)?
                        .stop(&server, server::STOP_TIMEOUT)
                        .await?;
                }
            }
            storage.rename_volume(&new, &old).await?;
        }
        UndoStep::RenameArchive { from, to } => {
            ctx.archives()
                .rename_branch(&project_name, to, from, false)
                .with_context(|| format!("moving the WAL archive of `{project_name}/{to}` back"))?;
        }
    }
    Ok(())
}
