//! Generations: a branch's data is one volume, its *generation*. This module snapshots a
//! branch consistently, clones a new generation from a snapshot, and removes old generations
//! once nothing needs them.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use chrono::Utc;

use super::journal::Intent;
use super::{Ctx, Undo, remove_dir, server};
use crate::names::{BranchName, BranchRef, ProjectName, SnapshotId, SnapshotRef, VolumeId};
use crate::pg::{BackupSession, Sql};
use crate::runtime::{Runtime, ServerStatus};
use crate::state::{Branch, Finish, Origin, Pin, Project, Recovery, UndoStep};
use crate::storage::Storage;

/// The paths (relative to a volume) a copy made under the backup API takes again once the
/// backup has stopped, and where the backup label goes.
const LATE_PATHS: [&str; 1] = ["pgdata/pg_wal"];
const BACKUP_LABEL: &str = "pgdata/backup_label";

/// A consistent snapshot of a branch's current generation as `id`; returns it as an origin
/// owned by whoever asked for it.
///
/// On storage with atomic snapshots, a running server is asked for a CHECKPOINT first (only to
/// shorten the replay of a server started on the snapshot: the snapshot is crash-consistent
/// anyway). Without them, a running server is held in backup mode while its files are copied,
/// and the copy gets the WAL written meanwhile and the backup label, so a server started on it
/// recovers to a consistent state (docs/design.md).
pub async fn take_snapshot(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    b: &Branch,
    id: &SnapshotId,
    undo: &mut Undo,
) -> Result<Origin> {
    let (storage, runtime) = (ctx.storage(project)?, ctx.runtime(project)?);
    let name = crate::names::server_name(r);
    let running = runtime.status(&name).await? == ServerStatus::Running;
    let s = SnapshotRef {
        volume: b.volume(r),
        id: id.clone(),
    };
    let sql = server::sql(ctx, project, b);
    let atomic = storage.capabilities().atomic_snapshot;
    if running && super::follow::is_standby(project, r) {
        super::follow::shorten_replay(ctx, project, r, sql.as_ref(), id).await;
    }
    let checkpointed = if running && atomic {
        checkpoint(ctx, r, sql.as_ref()).await
    } else {
        None
    };
    undo.intend(
        ctx,
        "snapshot",
        UndoStep::DestroySnapshot {
            branch: r.branch.clone(),
            generation: b.generation,
            id: id.clone(),
        },
    )
    .await?;
    let created_at = Utc::now();
    let wal_from = if running && !atomic {
        copy_running(ctx, storage.as_ref(), runtime.as_ref(), sql.as_ref(), &s, r).await?
    } else {
        ctx.shell.step("Snapshot", storage.snapshot(&s)).await?;
        checkpointed
    };
    Ok(Origin {
        branch: r.branch.clone(),
        generation: b.generation,
        snapshot: id.clone(),
        owned: true,
        created_at,
        wal_from,
        recovered: false,
    })
}

/// CHECKPOINT; the WAL segment a recovery from a snapshot taken next starts at. A server that
/// cannot be asked (being killed by its own reset, say) is no reason to fail.
async fn checkpoint(ctx: &Ctx, r: &BranchRef, sql: &dyn Sql) -> Option<String> {
    match ctx.shell.step("Checkpoint", sql.checkpoint()).await {
        Ok(segment) => Some(segment),
        Err(e) => {
            ctx.shell.warn(&format!(
                "could not CHECKPOINT `{r}` ({:#}); the snapshot is crash-consistent all the same, and a server started on it replays more WAL",
                anyhow::Error::new(e)
            ));
            None
        }
    }
}

/// Copies the volume of `r`, whose server ran a moment ago, under PostgreSQL's backup API;
/// returns the WAL segment a recovery from the copy starts at. A server that stops meanwhile
/// (killed by its own reset, which keeps this generation for us) cannot finish the backup,
/// and needs none: the files of a server that does not run are crash-consistent, as long as
/// none starts on them while they are copied, which is checked again afterwards.
async fn copy_running(
    ctx: &Ctx,
    storage: &dyn Storage,
    runtime: &dyn Runtime,
    sql: &dyn Sql,
    s: &SnapshotRef,
    r: &BranchRef,
) -> Result<Option<String>> {
    let name = crate::names::server_name(r);
    let stopped = || async { runtime.status(&name).await.ok() != Some(ServerStatus::Running) };
    let copied = match ctx.shell.step("Start backup", sql.backup_start()).await {
        Ok(backup) => copy_under_backup(ctx, storage, backup, s).await,
        Err(e) => Err(anyhow::Error::new(e)),
    };
    let why = match copied {
        Ok(wal_from) => return Ok(Some(wal_from)),
        Err(e) if stopped().await => e,
        Err(e) => return Err(e.context("a copy of a running server needs PostgreSQL's backup API")),
    };
    ctx.shell.warn(&format!(
        "`{r}` stopped while it was copied under the backup API ({why:#}); copying it again as a stopped server"
    ));
    ctx.shell
        .step("Drop the copy", storage.destroy_snapshot(s))
        .await?;
    ctx.shell.step("Copy", storage.snapshot(s)).await?;
    if !stopped().await {
        bail!(
            "the server of `{r}` started again while its files were copied, so the copy may be inconsistent; run the command again"
        );
    }
    Ok(None)
}

/// Copies a volume while its server is held in backup mode by `backup`; returns the WAL
/// segment a recovery from the copy starts at.
async fn copy_under_backup(
    ctx: &Ctx,
    storage: &dyn Storage,
    backup: Box<dyn BackupSession>,
    s: &SnapshotRef,
) -> Result<String> {
    ctx.shell.step("Copy", storage.snapshot(s)).await?;
    let (label, wal_from) = ctx.shell.step("Stop backup", backup.stop()).await?;
    ctx.shell
        .step(
            "Copy WAL",
            storage.complete_snapshot(s, &LATE_PATHS, &[(BACKUP_LABEL, label.as_bytes())]),
        )
        .await?;
    Ok(wal_from)
}

/// Clones `origin` into the branch's generation `b.generation` and creates its WAL archive.
/// Returns the new volume's root.
pub async fn new_generation(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    b: &Branch,
    origin: &Origin,
    undo: &mut Undo,
) -> Result<PathBuf> {
    let storage = ctx.storage(project)?;
    undo.intend(
        ctx,
        "clone",
        UndoStep::DestroyVolume {
            branch: r.branch.clone(),
            generation: b.generation,
        },
    )
    .await?;
    let root = ctx
        .shell
        .step(
            "Clone",
            storage.clone_snapshot(&origin.snapshot_ref(&r.project), &b.volume(r)),
        )
        .await?;
    archive_generation(ctx, project, r, b.generation, undo).await?;
    Ok(root)
}

/// Creates the WAL archive of a new generation of a branch, its removal recorded first.
pub async fn archive_generation(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    generation: u32,
    undo: &mut Undo,
) -> Result<()> {
    undo.intend(
        ctx,
        "archive",
        UndoStep::RemoveArchive {
            branch: Some(r.branch.clone()),
            generation: Some(generation),
        },
    )
    .await?;
    create_archive(ctx, project, r, generation)
}

/// Creates the WAL archive directory of a branch generation, writable by the server's user.
pub fn create_archive(ctx: &Ctx, project: &Project, r: &BranchRef, generation: u32) -> Result<()> {
    ctx.archives()
        .create(
            &r.project,
            &r.branch,
            generation,
            project.pg_uid,
            project.pg_gid,
        )
        .map(drop)
        .with_context(|| format!("creating the WAL archive of `{r}`"))
}

/// Destroys, in a whole project, the retired generations nothing depends on any more, until a
/// pass frees nothing (destroying one generation can free the one it was cloned from, on the
/// same branch or its parent). It runs after a change was committed, so a failure here is a
/// warning: the command did what it said, and the next one tidies again.
pub async fn tidy(ctx: &Ctx, project: &ProjectName) {
    loop {
        let branches: Vec<BranchName> = match ctx.store.read() {
            Ok(s) => s
                .projects
                .get(project)
                .map(|p| p.branches.keys().cloned().collect())
                .unwrap_or_default(),
            Err(_) => return,
        };
        let mut freed = 0;
        for b in branches {
            match collect_retired(ctx, &BranchRef::new(project.clone(), b.clone())).await {
                Ok(n) => freed += n,
                Err(e) => {
                    ctx.shell.warn(&format!(
                        "could not remove old data of `{project}/{b}` yet (the next velo command retries): {e:#}"
                    ));
                    return;
                }
            }
        }
        if freed == 0 {
            return;
        }
    }
}

/// Destroys the retired generations of a branch that nothing depends on any more, with their
/// WAL archives and the snapshots velo made for them. Newest first, re-reading the state each
/// time, because destroying one generation can free the older one it was cloned from.
/// Returns how many generations it destroyed.
async fn collect_retired(ctx: &Ctx, r: &BranchRef) -> Result<usize> {
    let mut destroyed = 0;
    loop {
        // Picking a generation and pinning it is one transaction: two tidies never collect
        // the same one, and a crash mid-way leaves an operation the next command finishes.
        let picked = ctx.store.update(|s| {
            let Some(p) = s.projects.get(&r.project) else {
                return Ok::<_, anyhow::Error>(None);
            };
            let Some(branch) = p.branch(&r.branch) else {
                return Ok(None);
            };
            if branch.busy.is_some() {
                return Ok(None);
            }
            let mut retired = branch.retired.clone();
            retired.sort_by_key(|g| std::cmp::Reverse(g.generation));
            let Some(g) = retired
                .into_iter()
                .find(|g| !s.generation_in_use(r, g.generation))
            else {
                return Ok(None);
            };
            let undo = Undo::begin(
                s,
                Intent {
                    command: "tidy",
                    project: &r.project,
                    branches: Vec::new(),
                    pins: vec![Pin {
                        branch: r.branch.clone(),
                        generation: g.generation,
                    }],
                    recovery: Recovery::RollForward {
                        finish: Finish::CollectGeneration {
                            branch: r.branch.clone(),
                            generation: g.generation,
                            origin: g.origin.clone(),
                        },
                    },
                },
            );
            Ok(Some((g, undo)))
        })?;
        let Some((g, undo)) = picked else {
            return Ok(destroyed);
        };
        collect_held(ctx, r, g.generation, g.origin.as_ref(), &undo).await?;
        destroyed += 1;
    }
}

/// Destroys a retired generation that an open operation (`undo`) holds, forgets it, lets go
/// of its origin and closes the operation. Each part may already be done.
pub async fn collect_held(
    ctx: &Ctx,
    r: &BranchRef,
    generation: u32,
    origin: Option<&Origin>,
    undo: &Undo,
) -> Result<()> {
    let state = ctx.store.read()?;
    if let Some(project) = state.projects.get(&r.project) {
        undo.step(ctx, "collect").await?;
        let storage = ctx.storage(project)?;
        ctx.shell
            .step(
                "Destroy old data",
                storage.destroy_volume(&VolumeId::new(r, generation)),
            )
            .await?;
        remove_dir(
            &ctx.archives()
                .generation_dir(&r.project, &r.branch, generation),
        )?;
        ctx.store.update(|s| {
            if let Some(b) = s
                .projects
                .get_mut(&r.project)
                .and_then(|p| p.branches.get_mut(&r.branch))
            {
                b.retired.retain(|x| x.generation != generation);
            }
            Ok::<_, anyhow::Error>(())
        })?;
        // Only now that the generation is forgotten can its origin find no other user.
        if let Some(origin) = origin.filter(|o| o.owned) {
            release_origin(ctx, project, &r.project, origin).await?;
        }
    }
    ctx.store.update(|s| {
        undo.commit(s);
        Ok::<_, anyhow::Error>(())
    })
}

/// Lets go of a snapshot velo made for a clone that is gone: destroys it, unless another branch
/// was cloned from it too (a PITR branch can start from another branch's base snapshot), in
/// which case that branch becomes its owner.
pub async fn release_origin(
    ctx: &Ctx,
    project: &Project,
    name: &ProjectName,
    origin: &Origin,
) -> Result<()> {
    let heir = ctx.store.update(|s| {
        let Some(p) = s.projects.get_mut(name) else {
            return Ok::<_, anyhow::Error>(None);
        };
        let Some(heir) = p
            .cloned_from(&origin.branch, origin.generation, &origin.snapshot)
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let b = p.branches.get_mut(&heir).expect("listed above");
        for o in b
            .origin
            .iter_mut()
            .chain(b.retired.iter_mut().filter_map(|g| g.origin.as_mut()))
        {
            if o.is(&origin.branch, origin.generation, &origin.snapshot) {
                o.owned = true;
            }
        }
        Ok(Some(heir))
    })?;
    if heir.is_none() {
        ctx.storage(project)?
            .destroy_snapshot(&origin.snapshot_ref(name))
            .await?;
    }
    Ok(())
}
