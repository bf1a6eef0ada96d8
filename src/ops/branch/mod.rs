//! Branches: create (from a parent, a snapshot or a moment), reset, restore, rename, delete,
//! start/stop/restart, list/get, password.
//!
//! A branch's data is one volume, its *generation*. Reset and restore clone a new generation
//! beside the old one and move the server over only when the clone exists, so until the new
//! server is ready the old data is intact, and any failure puts the old server back on it.

mod change;
pub mod connect;
mod delete;
mod query;
pub(super) mod rename;
mod run;
mod tree;

use std::time::Duration;

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};

pub(crate) use change::claim_branch;
pub use change::{reset, restore};
pub use delete::{Guard, delete, delete_if, destroy_held, forget_held};
pub use query::{ListOptions, branch_json, get, list, observe, password, show};
pub use rename::rename;
pub use run::{restart, start, stop, stop_idle};

use super::generation::{new_generation, take_snapshot};
use super::journal::Intent;
use super::launch::{Launch, launch_new};
use super::project::DELETE_WAIT;
use super::server::{BRANCH_READY, Recovery};
use super::{
    Ctx, Undo, UsageError, allocate_port, background, branch_mut, follow, get_branch, get_project,
    get_project_mut, rolled_back,
};
use crate::names::{BranchName, BranchRef, SnapshotId};
use crate::state::{Branch, Forget, Origin, Pin, Project, Recovery as JournalRecovery, State};
use crate::storage::StorageError;

/// How long a point-in-time recovery may take to replay WAL and promote.
const PITR_READY: Duration = Duration::from_secs(600);

/// Where a new branch's data comes from.
pub enum Source {
    /// The current state of a branch (default: main).
    Parent(Option<BranchName>),
    /// A snapshot, by id, id prefix or label.
    Snapshot(String),
    /// A moment in a branch's history (default: main), replayed from its WAL archive.
    Pitr {
        target: DateTime<Utc>,
        parent: Option<BranchName>,
    },
}

/// What `create` reserved in its first transaction.
struct Reserved {
    project: Project,
    parent_ref: BranchRef,
    parent: Branch,
    origin: Origin,
    /// Set for a point-in-time branch: how it recovers.
    pitr: Option<Recovery>,
    undo: Undo,
}

pub async fn create(ctx: &Ctx, r: &BranchRef, source: Source) -> Result<()> {
    create_expiring(ctx, r, source, None, None).await
}

/// Creates a branch that `velo gc` deletes at `expires_at` (never if `None`). Waits while an
/// old branch of the same name is still being destroyed, and once for pending destroys when
/// the storage is full. A branch of a follower's main is refused if main is further behind
/// its source than `max_lag`.
pub async fn create_expiring(
    ctx: &Ctx,
    r: &BranchRef,
    source: Source,
    expires_at: Option<DateTime<Utc>>,
    max_lag: Option<Duration>,
) -> Result<()> {
    follower_check(ctx, r, &source, max_lag).await?;
    let deleting = |s: &State| {
        s.journal.deleting(&r.project, Some(&r.branch))
            && s.projects
                .get(&r.project)
                .is_some_and(|p| p.branch(&r.branch).is_none())
    };
    let what = format!("the old `{r}`");
    background::wait_for(ctx, &r.project, &what, DELETE_WAIT, deleting).await?;
    match create_once(ctx, r, &source, expires_at).await {
        // Space that a delete is still freeing counts: wait for it, then try once more.
        Err(e) if no_space(&e) && ctx.store.read()?.journal.deleting(&r.project, None) => {
            let what = format!("deleted data of `{}`", r.project);
            background::wait_for(ctx, &r.project, &what, DELETE_WAIT, |s| {
                s.journal.deleting(&r.project, None)
            })
            .await?;
            create_once(ctx, r, &source, expires_at).await
        }
        done => done,
    }
}

/// For a branch of a follower's main: how far behind main is (refused beyond `max_lag`); a
/// point in its history is refused, since velo archives no WAL of a standby.
async fn follower_check(
    ctx: &Ctx,
    r: &BranchRef,
    source: &Source,
    max_lag: Option<Duration>,
) -> Result<()> {
    let state = ctx.store.read()?;
    let project = get_project(&state, &r.project)?;
    let of_main = |parent: &Option<BranchName>| parent.as_ref().is_none_or(BranchName::is_main);
    match source {
        _ if project.followed().is_none() => match max_lag {
            Some(_) => Err(UsageError(format!(
                "--max-lag is for projects that follow a server, and `{}` does not",
                r.project
            ))
            .into()),
            None => Ok(()),
        },
        Source::Parent(parent) if of_main(parent) => follow::lag_check(ctx, project, max_lag).await,
        Source::Pitr { parent, .. } if of_main(parent) => bail!(
            "main of `{}` follows a server: it is a standby, whose WAL velo does not archive, so it has no history to recover; branch from its current state (without --pitr) or from a snapshot",
            r.project
        ),
        _ => Ok(()),
    }
}

/// Whether an error comes from a storage that is out of space.
fn no_space(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<StorageError>()
            .is_some_and(StorageError::is_no_space)
    })
}

async fn create_once(
    ctx: &Ctx,
    r: &BranchRef,
    source: &Source,
    expires_at: Option<DateTime<Utc>>,
) -> Result<()> {
    if let Source::Pitr { parent, .. } = source {
        let name = parent.clone().unwrap_or_else(BranchName::main);
        super::wal::flush_archive(ctx, &BranchRef::new(r.project.clone(), name)).await?;
    }
    let snap = SnapshotId::random();
    let Reserved {
        project,
        parent_ref,
        parent,
        origin,
        pitr,
        mut undo,
    } = ctx
        .store
        .update(|s| reserve(ctx, s, r, source, &snap, expires_at))?;
    let branch = project.branch(&r.branch).expect("reserved above").clone();

    let result = async {
        let origin = if origin.owned {
            take_snapshot(ctx, &project, &parent_ref, &parent, &snap, &mut undo).await?
        } else {
            origin
        };
        let root = new_generation(ctx, &project, r, &branch, &origin, &mut undo).await?;
        let how = Launch {
            root: &root,
            deadline: match (&pitr, project.followed()) {
                (Some(_), _) => PITR_READY,
                (None, Some(_)) => follow::CLONE_READY,
                (None, None) => BRANCH_READY,
            },
            recovery: pitr.as_ref(),
        };
        launch_new(ctx, &project, r, &branch, how, &mut undo).await?;
        undo.step(ctx, "commit").await?;
        Ok::<_, anyhow::Error>(origin)
    }
    .await;

    let origin = match result {
        Ok(done) => done,
        Err(e) => {
            let how = rolled_back(undo.roll_back(ctx).await);
            return Err(e.context(format!("creating branch `{r}` ({how})")));
        }
    };
    ctx.store.update(|s| {
        let b = branch_mut(s, r)?;
        b.origin = Some(origin);
        undo.commit(s);
        Ok::<_, anyhow::Error>(())
    })?;
    ctx.shell.note(&format!("Branch `{r}` is ready."));
    Ok(())
}

/// The first transaction of `create`: checks the request, reserves the branch and its port,
/// and opens the operation, pinning what the clone reads from.
fn reserve(
    ctx: &Ctx,
    s: &mut State,
    r: &BranchRef,
    source: &Source,
    snap: &SnapshotId,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Reserved> {
    let p = get_project(s, &r.project)?;
    if p.branch(&r.branch).is_some() {
        bail!("branch `{r}` already exists (see `velo branch get {r}`)");
    }
    if let Some(op) = s.journal.holding(&r.project, &r.branch) {
        bail!(
            "the name `{r}` is reserved by `velo {}` (pid {}); try again when it is done",
            op.command,
            op.owner.pid
        );
    }
    // Generations the clone reads from: kept (not tidied away) until it is committed.
    let mut pins = Vec::new();
    let mut pitr = None;
    let (origin, parent_name) = match source {
        Source::Parent(parent) => {
            let name = parent.clone().unwrap_or_else(BranchName::main);
            let parent = get_branch(p, &BranchRef::new(r.project.clone(), name.clone()))?;
            let origin = Origin {
                branch: name.clone(),
                generation: parent.generation,
                snapshot: snap.clone(),
                owned: true,
                created_at: Utc::now(),
                wal_from: None,
                recovered: false,
            };
            (origin, name)
        }
        Source::Snapshot(key) => {
            let snapshot = super::snapshot::resolve(p, &r.project, key)?;
            (snapshot.as_origin_now(), snapshot.branch.clone())
        }
        Source::Pitr { target, parent } => {
            let name = parent.clone().unwrap_or_else(BranchName::main);
            let source_ref = BranchRef::new(r.project.clone(), name.clone());
            let source = get_branch(p, &source_ref)?;
            // The recovery replays the source generation's WAL archive.
            pins.push(Pin {
                branch: name.clone(),
                generation: source.generation,
            });
            pitr = Some(Recovery {
                source: name.clone(),
                generation: source.generation,
                target: *target,
            });
            let origin = Origin {
                recovered: true,
                created_at: Utc::now(),
                ..super::wal::pitr_base(ctx, p, &source_ref, *target)?
            };
            (origin, name)
        }
    };
    if parent_name == r.branch {
        bail!("a branch cannot be its own parent");
    }
    pins.push(Pin {
        branch: origin.branch.clone(),
        generation: origin.generation,
    });
    let parent_ref = BranchRef::new(r.project.clone(), parent_name);
    let parent = get_branch(p, &parent_ref)?.clone();
    if let Some(busy) = &parent.busy {
        bail!(
            "`{parent_ref}` is busy with `velo {}`; try again when it is done",
            busy.operation
        );
    }
    let port = allocate_port(s, &[], &ctx.ports)?;
    let branch = Branch {
        expires_at,
        ..Branch::new(
            Some(parent_ref.branch.clone()),
            port,
            Some(origin.clone()),
            super::busy_marker("branch create"),
        )
    };
    let undo = Undo::begin(
        s,
        Intent {
            command: "branch create",
            project: &r.project,
            branches: vec![r.branch.clone()],
            pins,
            recovery: JournalRecovery::RollBack {
                forget: Forget::NewBranch,
            },
        },
    );
    let p = get_project_mut(s, &r.project)?;
    p.branches.insert(r.branch.clone(), branch);
    Ok(Reserved {
        project: p.clone(),
        parent_ref,
        parent,
        origin,
        pitr,
        undo,
    })
}
