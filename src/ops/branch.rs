//! Branches: create (from a parent, a snapshot or a moment), reset, restore, delete,
//! start/stop/restart, list/get, password.
//!
//! A branch's data is one ZFS clone, its *generation*. Reset and restore clone a new generation
//! beside the old one and swap the container over only when the clone exists, so until the new
//! server is ready the old data is intact, and any failure puts the old container back on it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::journal::Intent;
use super::{
    Ctx, Undo, allocate_port, branch_mut, claim, container_spec, create_archive, endpoint,
    ensure_mounted, get_branch, get_project, get_project_mut, mounted_at, start_and_wait, url,
    wait_ready,
};
use crate::archive::{self, conf_quote};
use crate::docker::{ContainerStatus, DockerError};
use crate::names::{self, BranchName, BranchRef};
use crate::state::{
    Branch, Finish, Forget, Generation, Origin, Pin, Project, Recovery as JournalRecovery,
    RunState, State, UndoStep,
};

/// How long a branch (which needs no initdb) may take to answer.
pub(super) const BRANCH_READY: Duration = Duration::from_secs(60);

/// How long a point-in-time recovery may take to replay WAL and promote.
const PITR_READY: Duration = Duration::from_secs(600);

/// How long PostgreSQL gets for a fast shutdown before Docker kills it.
const STOP_TIMEOUT_SECS: i32 = 30;

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

pub async fn create(ctx: &Ctx, r: &BranchRef, source: Source) -> Result<()> {
    if let Source::Pitr { parent, .. } = &source {
        let name = parent.clone().unwrap_or_else(BranchName::main);
        super::wal::flush_archive(ctx, &BranchRef::new(r.project.clone(), name)).await?;
    }
    let snap = super::new_snapshot_id();
    let (project, parent_ref, parent, origin, recovery, mut undo) = ctx.store.update(|s| {
        let p = get_project(s, &r.project)?;
        if p.branch(&r.branch).is_some() {
            bail!("branch `{r}` already exists (see `velo branch get {r}`)");
        }
        // Generations the clone reads from: kept (not tidied away) until it is committed.
        let mut pins = Vec::new();
        let (origin, parent_name, recovery) = match &source {
            Source::Parent(parent) => {
                let name = parent.clone().unwrap_or_else(BranchName::main);
                let parent = get_branch(p, &BranchRef::new(r.project.clone(), name.clone()))?;
                let origin = Origin {
                    branch: name,
                    generation: parent.generation,
                    snapshot: snap.clone(),
                    owned: true,
                    created_at: Utc::now(),
                    wal_from: None,
                    recovered: false,
                };
                (origin.clone(), origin.branch, None)
            }
            Source::Snapshot(key) => {
                let snapshot = super::snapshot::resolve(p, &r.project, key)?;
                (snapshot.as_origin_now(), snapshot.branch.clone(), None)
            }
            Source::Pitr { target, parent } => {
                let name = parent.clone().unwrap_or_else(BranchName::main);
                let source_ref = BranchRef::new(r.project.clone(), name.clone());
                let source = get_branch(p, &source_ref)?;
                let origin = Origin {
                    recovered: true,
                    created_at: Utc::now(),
                    ..super::wal::pitr_base(ctx, p, &source_ref, *target)?
                };
                // The recovery replays the source generation's WAL archive.
                pins.push(Pin {
                    branch: name.clone(),
                    generation: source.generation,
                });
                let recovery = Recovery {
                    restore_command: archive::restore_command(&name, source.generation),
                    target: *target,
                };
                (origin, name, Some(recovery))
            }
        };
        if parent_name == r.branch {
            bail!("a branch cannot be its own parent");
        }
        pins.push(Pin {
            branch: origin.branch.clone(),
            generation: origin.generation,
        });
        let parent_ref = BranchRef::new(r.project.clone(), parent_name.clone());
        let parent = get_branch(p, &parent_ref)?.clone();
        if let Some(busy) = &parent.busy {
            bail!(
                "`{parent_ref}` is busy with `velo {}`; try again when it is done",
                busy.operation
            );
        }
        let port = allocate_port(s, &[])?;
        let branch = Branch {
            parent: Some(parent_name),
            port,
            generation: 0,
            origin: Some(origin.clone()),
            retired: Vec::new(),
            desired: RunState::Running,
            created_at: Utc::now(),
            busy: Some(super::busy_marker("branch create")),
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
        Ok((p.clone(), parent_ref, parent, origin, recovery, undo))
    })?;
    let branch = project.branch(&r.branch).expect("inserted above").clone();

    let result = async {
        let origin = if origin.owned {
            take_snapshot(ctx, &project, &parent_ref, &parent, &snap, &mut undo).await?
        } else {
            origin
        };
        let mountpoint = new_generation(ctx, &project, r, &branch, &origin, &mut undo).await?;
        let deadline = match &recovery {
            Some(recovery) => {
                recovery.write(Path::new(&super::data_dir(&mountpoint)))?;
                PITR_READY
            }
            None => BRANCH_READY,
        };
        let launched =
            super::launch_new(ctx, &project, r, &branch, &mountpoint, deadline, &mut undo).await?;
        if recovery.is_some() {
            Recovery::clear(&endpoint(&project, &launched)).await?;
        }
        undo.step(ctx, "commit").await?;
        Ok::<_, anyhow::Error>((launched, origin))
    }
    .await;

    let (branch, origin) = match result {
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
    ctx.shell.out(&url(&project, &branch));
    Ok(())
}

/// How a failed command left things, for its error message.
pub fn rolled_back(clean: bool) -> &'static str {
    if clean {
        "nothing was left behind"
    } else {
        "some steps could not be undone, see the warnings above; the next velo command tries again"
    }
}

/// Recovery settings for a point-in-time branch.
struct Recovery {
    restore_command: String,
    target: DateTime<Utc>,
}

impl Recovery {
    /// The settings velo adds to `postgresql.auto.conf` and takes out again after promotion.
    const SETTINGS: [&str; 3] = [
        "restore_command",
        "recovery_target_time",
        "recovery_target_action",
    ];

    /// Writes `recovery.signal` and appends the recovery settings to `postgresql.auto.conf`,
    /// keeping whatever the user set there (later lines win in PostgreSQL's config files).
    fn write(&self, pgdata: &Path) -> Result<()> {
        let meta =
            std::fs::metadata(pgdata).with_context(|| format!("reading {}", pgdata.display()))?;
        let owner = (
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::gid(&meta),
        );
        let auto = pgdata.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!(
            "# velo: point-in-time recovery (removed once recovery has finished)\nrestore_command = {}\nrecovery_target_time = {}\nrecovery_target_action = 'promote'\n",
            conf_quote(&self.restore_command),
            conf_quote(&self.target.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()),
        ));
        let signal = pgdata.join("recovery.signal");
        std::fs::write(&auto, text)
            .and_then(|()| std::fs::write(&signal, ""))
            .and_then(|()| std::os::unix::fs::chown(&auto, Some(owner.0), Some(owner.1)))
            .and_then(|()| std::os::unix::fs::chown(&signal, Some(owner.0), Some(owner.1)))
            .with_context(|| format!("writing recovery settings into {}", pgdata.display()))
    }

    /// Removes the recovery settings from `postgresql.auto.conf` once the branch is promoted.
    async fn clear(endpoint: &crate::pg::Endpoint) -> Result<()> {
        endpoint
            .alter_system_reset(&Self::SETTINGS)
            .await
            .context("removing the recovery settings after promotion")
    }
}

/// CHECKPOINT (if the branch runs), note its oldest WAL segment, and snapshot its current
/// generation as `id`. Returns the snapshot as an origin owned by whoever asked for it.
pub async fn take_snapshot(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    b: &Branch,
    id: &str,
    undo: &mut Undo,
) -> Result<Origin> {
    let running = ctx.runtime.status(&names::container_name(r)).await? == ContainerStatus::Running;
    // The CHECKPOINT only shortens the replay of a server started on the snapshot: a ZFS
    // snapshot is atomic, so it is a crash-consistent image whatever the server is doing. A
    // server that cannot be asked (being killed by its own reset, say) is no reason to fail.
    if running
        && let Err(e) = ctx
            .shell
            .step("Checkpoint", endpoint(project, b).checkpoint())
            .await
    {
        ctx.shell.warn(&format!(
            "could not CHECKPOINT `{r}` ({:#}); the snapshot is crash-consistent all the same, and a server started on it replays more WAL",
            anyhow::Error::new(e)
        ));
    }
    let dataset = b.dataset(&project.pool, r);
    let wal_from = match ctx.zfs.mountpoint(&dataset).await? {
        Some(mp) => archive::oldest_segment_in(Path::new(&super::data_dir(&mp))),
        None => None,
    };
    let snapshot = names::snapshot_name(&project.pool, r, b.generation, id);
    undo.intend(
        ctx,
        "snapshot",
        UndoStep::DestroySnapshot {
            name: snapshot.clone(),
        },
    )
    .await?;
    let created_at = Utc::now();
    ctx.shell
        .step("Snapshot", ctx.zfs.snapshot(&snapshot))
        .await?;
    Ok(Origin {
        branch: r.branch.clone(),
        generation: b.generation,
        snapshot: id.to_string(),
        owned: true,
        created_at,
        wal_from,
        recovered: false,
    })
}

/// Clones `origin` into the branch's generation `b.generation` and creates its WAL archive.
/// Returns the new dataset's mountpoint.
async fn new_generation(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    b: &Branch,
    origin: &Origin,
    undo: &mut Undo,
) -> Result<String> {
    let snapshot = origin.zfs_name(&project.pool, &r.project);
    let dataset = b.dataset(&project.pool, r);
    undo.intend(
        ctx,
        "clone",
        UndoStep::DestroyDataset {
            name: dataset.clone(),
        },
    )
    .await?;
    ctx.shell
        .step(
            "Clone",
            ctx.zfs.clone_snapshot(
                &snapshot,
                &dataset,
                &[(super::HOME_PROPERTY, &ctx.home_label())],
            ),
        )
        .await?;
    let path = ctx
        .archives()
        .generation_dir(&r.project, &r.branch, b.generation);
    undo.intend(ctx, "archive", UndoStep::RemoveDir { path })
        .await?;
    create_archive(ctx, project, r, b.generation)?;
    mounted_at(ctx, &dataset).await
}

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
    let snap = super::new_snapshot_id();
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
        let snapshot = super::snapshot::resolve(p, &r.project, key)?;
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
fn claim_branch(
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

/// Opens a branch's operation in its own transaction (for start, stop and restart).
fn claim_alone(ctx: &Ctx, r: &BranchRef, operation: &str) -> Result<(Project, Branch, Undo)> {
    ctx.store
        .update(|s| claim_branch(s, r, operation, Vec::new()))
}

/// Where a branch's new generation is cloned from.
enum NewOrigin<'a> {
    /// A snapshot that exists (restore).
    Existing(Origin),
    /// A new snapshot `id` of branch `r` (reset: the parent).
    SnapshotOf {
        r: &'a BranchRef,
        branch: &'a Branch,
        id: &'a str,
    },
}

/// Serves a branch from a new generation cloned from `origin`, on the same port with the same
/// password. Returns the branch as it will be once committed.
///
/// The old generation's server is thrown away, so it is killed rather than shut down (a fast
/// shutdown took 0.2-0.8 s here), and killed while the new generation is being made: the two
/// touch different datasets. Its data stays safe: if this command fails, the `swap` undo step
/// starts it again and PostgreSQL recovers it from its WAL, as after a power cut. Its container
/// is renamed out of the way first, so that Docker removes it while the new one starts.
async fn replace_generation(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    old: &Branch,
    origin: NewOrigin<'_>,
    undo: &mut Undo,
) -> Result<Branch> {
    let name = names::container_name(r);
    let was_running = ctx.runtime.status(&name).await? == ContainerStatus::Running;
    mounted_at(ctx, &old.dataset(&project.pool, r)).await?;
    undo.intend(
        ctx,
        "swap",
        UndoStep::RestoreContainer {
            branch: r.branch.clone(),
            start: was_running,
        },
    )
    .await?;
    let retired = names::retired_container_name(r);
    let stop = ctx.shell.step("Stop", async {
        // A leftover of a reset killed at this point, which its recovery would have removed.
        ctx.runtime.remove(&retired).await?;
        if ctx.runtime.rename(&name, &retired).await? {
            ctx.runtime.kill(&retired).await?;
        }
        Ok::<_, DockerError>(())
    });
    let make = async {
        let origin = match origin {
            NewOrigin::Existing(origin) => origin,
            NewOrigin::SnapshotOf { r, branch, id } => {
                take_snapshot(ctx, project, r, branch, id, undo).await?
            }
        };
        let mut new = old.clone();
        new.generation = next_generation(old);
        new.origin = Some(origin.clone());
        let mountpoint = new_generation(ctx, project, r, &new, &origin, undo).await?;
        Ok::<_, anyhow::Error>((new, mountpoint))
    };
    let (stopped, made) = tokio::join!(stop, make);
    stopped?;
    let (new, mountpoint) = made?;
    let spec = container_spec(ctx, project, r, &new, &mountpoint)?;
    // Its undo runs before the new generation is destroyed (undo runs in reverse), so the new
    // server is gone first; the `swap` step then brings the old one back.
    super::create_container(ctx, &spec, undo).await?;
    let launch = async {
        if new.desired == RunState::Running {
            undo.step(ctx, "start").await?;
            start_and_wait(ctx, project, r, &new, BRANCH_READY).await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    let (launched, removed) = tokio::join!(launch, ctx.runtime.remove(&retired));
    launched?;
    removed?;
    undo.step(ctx, "commit").await?;
    Ok(new)
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
                rolled_back(false)
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

/// The next generation number: above every generation the branch has or keeps.
fn next_generation(b: &Branch) -> u32 {
    b.retired
        .iter()
        .map(|g| g.generation)
        .chain([b.generation])
        .max()
        .unwrap_or(0)
        + 1
}

/// Destroys, in a whole project, the retired generations nothing depends on any more, until a
/// pass frees nothing (destroying one generation can free the one it was cloned from, on the
/// same branch or its parent). It runs after a change was committed, so a failure here is a
/// warning: the command did what it said, and the next one tidies again.
pub async fn tidy(ctx: &Ctx, project: &names::ProjectName) {
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
            let Some(branch) = s.projects.get(&r.project).and_then(|p| p.branch(&r.branch)) else {
                return Ok::<_, anyhow::Error>(None);
            };
            if branch.busy.is_some() {
                return Ok(None);
            }
            let mut retired = branch.retired.clone();
            retired.sort_by_key(|g| std::cmp::Reverse(g.generation));
            let Some(g) = retired
                .into_iter()
                .find(|g| !generation_in_use(s, r, g.generation))
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
                    recovery: JournalRecovery::RollForward {
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
        let dataset = names::branch_dataset(&project.pool, r, generation);
        ctx.shell
            .step("Destroy old data", ctx.zfs.destroy_dataset(&dataset))
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

/// Whether anything still needs a generation of `r`: a clone made from one of its snapshots, a
/// user's snapshot on it, or an operation in flight that reads from it.
pub fn generation_in_use(state: &State, r: &BranchRef, generation: u32) -> bool {
    let Some(p) = state.projects.get(&r.project) else {
        return false;
    };
    let cloned_from = p.branches.values().any(|b| {
        b.origin
            .iter()
            .chain(b.retired.iter().filter_map(|g| g.origin.as_ref()))
            .any(|o| o.branch == r.branch && o.generation == generation)
    });
    let snapshotted = p
        .snapshots
        .iter()
        .any(|s| s.branch == r.branch && s.generation == generation);
    cloned_from || snapshotted || state.pinned(&r.project, &r.branch, generation)
}

/// Lets go of a snapshot velo made for a clone that is gone: destroys it, unless another branch
/// was cloned from it too (a PITR branch can start from another branch's base snapshot), in
/// which case that branch becomes its owner.
async fn release_origin(
    ctx: &Ctx,
    project: &Project,
    name: &names::ProjectName,
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
            if o.branch == origin.branch
                && o.generation == origin.generation
                && o.snapshot == origin.snapshot
            {
                o.owned = true;
            }
        }
        Ok(Some(heir))
    })?;
    if heir.is_none() {
        ctx.zfs
            .destroy_snapshot(&origin.zfs_name(&project.pool, name))
            .await?;
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Deletes a branch (and with `force`, every branch below it).
pub async fn delete(ctx: &Ctx, r: &BranchRef, force: bool) -> Result<()> {
    if r.branch.is_main() {
        bail!(
            "`{r}` is the project's main branch; delete the project instead (`velo project delete {}`)",
            r.project
        );
    }
    let (doomed, undo) = ctx.store.update(|s| {
        let p = get_project(s, &r.project)?;
        get_branch(p, r)?;
        let doomed = subtree_post_order(p, &r.branch);
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
            super::claim_taking_over(
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

/// `root` and every branch made from it, children before their parents.
fn subtree_post_order(p: &Project, root: &BranchName) -> Vec<BranchName> {
    let mut out = Vec::new();
    for child in p.children_of(root) {
        out.extend(subtree_post_order(p, &child));
    }
    out.push(root.clone());
    out
}

/// Deletes the branches an open delete operation holds (those still in the state, in its
/// order), lets go of the snapshots velo made for them and closes the operation. Run by
/// `branch delete` and, for a delete that was killed, by the next velo command.
pub async fn delete_held(ctx: &Ctx, name: &names::ProjectName, undo: &Undo) -> Result<()> {
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
    let pool = &project.pool;
    let container = names::container_name(r);
    undo.step(ctx, "delete-container").await?;
    // Once its server is dead the data is free: Docker removes the container while ZFS
    // destroys the datasets.
    ctx.shell
        .step(&format!("Stop {r}"), ctx.runtime.kill(&container))
        .await?;
    let remove_step = format!("Remove container {r}");
    let (removed, destroyed) = tokio::join!(
        ctx.shell.step(&remove_step, ctx.runtime.remove(&container)),
        destroy_generations(ctx, pool, r, b, undo)
    );
    removed?;
    let origins = destroyed?;
    remove_dir(&ctx.archives().branch_dir(&r.project, &r.branch))?;
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
    pool: &str,
    r: &BranchRef,
    b: &Branch,
    undo: &Undo,
) -> Result<Vec<Origin>> {
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
        ctx.zfs
            .destroy_dataset(&names::branch_dataset(pool, r, generation))
            .await?;
        origins.extend(origin.filter(|o| o.owned));
    }
    Ok(origins)
}

pub async fn start(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let (project, b, undo) = claim_alone(ctx, r, "branch start")?;
    let result = ensure_running(ctx, &project, r, &b).await;
    finish_run_change(ctx, r, RunState::Running, result, undo)?;
    ctx.shell.note(&format!("Branch `{r}` is running."));
    ctx.shell.out(&url(&project, &b));
    Ok(())
}

pub async fn stop(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let (_, _, undo) = claim_alone(ctx, r, "branch stop")?;
    let result = ctx
        .shell
        .step(
            "Stop",
            ctx.runtime
                .stop(&names::container_name(r), STOP_TIMEOUT_SECS),
        )
        .await
        .map_err(Into::into);
    finish_run_change(ctx, r, RunState::Stopped, result, undo)?;
    ctx.shell.note(&format!("Branch `{r}` is stopped."));
    Ok(())
}

pub async fn restart(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let (project, b, undo) = claim_alone(ctx, r, "branch restart")?;
    let result = async {
        ctx.shell
            .step(
                "Stop",
                ctx.runtime
                    .stop(&names::container_name(r), STOP_TIMEOUT_SECS),
            )
            .await?;
        undo.step(ctx, "start").await?;
        ensure_running(ctx, &project, r, &b).await
    }
    .await;
    finish_run_change(ctx, r, RunState::Running, result, undo)?;
    ctx.shell.note(&format!("Branch `{r}` is running."));
    ctx.shell.out(&url(&project, &b));
    Ok(())
}

/// Records the run state a start or stop reached, and closes its operation. A start or stop
/// has nothing to take back: whatever state the container is in, the next start or stop
/// brings it where the user wants.
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

/// Starts a branch's container, re-creating it from state if it was removed behind velo's back
/// (the data is on the dataset, the container holds none), and mounting its dataset if it is not
/// mounted (after a reboot or a zfs-fuse restart).
async fn ensure_running(ctx: &Ctx, project: &Project, r: &BranchRef, b: &Branch) -> Result<()> {
    let name = names::container_name(r);
    match ctx.runtime.status(&name).await? {
        ContainerStatus::Running => return wait_ready(ctx, project, r, b, BRANCH_READY).await,
        ContainerStatus::Missing => {
            let mountpoint = ensure_mounted(ctx, &b.dataset(&project.pool, r)).await?;
            let spec = container_spec(ctx, project, r, b, &mountpoint)?;
            ctx.shell
                .step("Re-create container", ctx.runtime.create(&spec))
                .await?;
        }
        _ => {
            ensure_mounted(ctx, &b.dataset(&project.pool, r)).await?;
        }
    }
    start_and_wait(ctx, project, r, b, BRANCH_READY).await
}

pub async fn password(ctx: &Ctx, r: &BranchRef, as_json: bool) -> Result<()> {
    let state = ctx.store.read()?;
    let p = get_project(&state, &r.project)?;
    let b = get_branch(p, r)?;
    let e = endpoint(p, b);
    let full_url = format!(
        "postgresql://{}:{}@{}:{}/{}",
        e.user, e.password, e.host, e.port, e.database
    );
    if as_json {
        ctx.shell.json(&json!({
            "branch": r.to_string(),
            "host": e.host, "port": e.port, "user": e.user,
            "password": e.password, "database": e.database, "url": full_url,
        }));
        return Ok(());
    }
    let rows = vec![
        vec!["host".into(), e.host.clone()],
        vec!["port".into(), e.port.to_string()],
        vec!["user".into(), e.user.clone()],
        vec!["password".into(), e.password.clone()],
        vec!["database".into(), e.database.clone()],
        vec!["url".into(), full_url],
    ];
    ctx.shell.table(&["FIELD", "VALUE"], rows);
    Ok(())
}

/// One branch as list/get show it (never the password).
pub fn branch_json(
    project: &Project,
    r: &BranchRef,
    b: &Branch,
    live: Option<&str>,
    used: Option<u64>,
) -> serde_json::Value {
    json!({
        "project": r.project.as_str(),
        "branch": r.branch.as_str(),
        "parent": b.parent.as_ref().map(BranchName::as_str),
        "port": b.port,
        "url": url(project, b),
        "desired": b.desired,
        "container": live,
        "dataset": b.dataset(&project.pool, r),
        "used_bytes": used,
        "busy": b.busy.as_ref().map(|x| x.operation.clone()),
        "created_at": b.created_at,
    })
}

fn status_word(s: &ContainerStatus) -> String {
    match s {
        ContainerStatus::Missing => "missing".into(),
        ContainerStatus::Running => "running".into(),
        ContainerStatus::Stopped { .. } => "stopped".into(),
        ContainerStatus::Other(o) => o.clone(),
    }
}

/// Live container states and dataset sizes for a project's branches.
pub async fn observe(
    ctx: &Ctx,
    name: &crate::names::ProjectName,
    p: &Project,
) -> Result<Vec<(BranchRef, String, Option<u64>)>> {
    let (live, sizes) = tokio::try_join!(
        async { Ok::<_, anyhow::Error>(ctx.runtime.list_managed(&ctx.home_label()).await?) },
        async {
            Ok(ctx
                .zfs
                .get_tree(&names::project_dataset(&p.pool, name), &["used"])
                .await?)
        },
    )?;
    Ok(p.branches
        .iter()
        .map(|(bn, b)| {
            let r = BranchRef::new(name.clone(), bn.clone());
            let cname = names::container_name(&r);
            let state = live
                .iter()
                .find(|c| c.name == cname)
                .map(|c| {
                    if c.running {
                        ContainerStatus::Running
                    } else {
                        ContainerStatus::Stopped { exit_code: None }
                    }
                })
                .unwrap_or(ContainerStatus::Missing);
            let used = sizes
                .get(&b.dataset(&p.pool, &r))
                .and_then(|m| m.get("used").cloned().flatten())
                .and_then(|v| v.parse().ok());
            (r, status_word(&state), used)
        })
        .collect())
}

pub async fn list(
    ctx: &Ctx,
    project: Option<&crate::names::ProjectName>,
    as_json: bool,
) -> Result<()> {
    let state = ctx.store.read()?;
    let projects: Vec<_> = match project {
        Some(n) => vec![(n.clone(), get_project(&state, n)?.clone())],
        None => state
            .projects
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect(),
    };
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for (name, p) in &projects {
        for (r, live, used) in observe(ctx, name, p).await? {
            let b = p.branch(&r.branch).expect("observed from the project");
            json_rows.push(branch_json(p, &r, b, Some(&live), used));
            rows.push(vec![
                r.to_string(),
                b.parent
                    .as_ref()
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "-".into()),
                live,
                b.port.to_string(),
                used.map(crate::ui::human_bytes)
                    .unwrap_or_else(|| "?".into()),
                b.created_at.format("%Y-%m-%d %H:%M").to_string(),
            ]);
        }
    }
    if as_json {
        ctx.shell.json(&json!(json_rows));
    } else if rows.is_empty() {
        ctx.shell
            .note("No branches: create a project with `velo project create <name>`.");
    } else {
        ctx.shell.table(
            &[
                "BRANCH",
                "PARENT",
                "STATUS",
                "PORT",
                "USED",
                "CREATED (UTC)",
            ],
            rows,
        );
    }
    Ok(())
}

pub async fn get(ctx: &Ctx, r: &BranchRef, as_json: bool) -> Result<()> {
    let state = ctx.store.read()?;
    let p = get_project(&state, &r.project)?;
    let b = get_branch(p, r)?;
    let (_, live, used) = observe(ctx, &r.project, p)
        .await?
        .into_iter()
        .find(|(x, _, _)| x == r)
        .expect("branch is in the project");
    if as_json {
        ctx.shell.json(&branch_json(p, r, b, Some(&live), used));
        return Ok(());
    }
    let rows = vec![
        vec!["branch".into(), r.to_string()],
        vec![
            "parent".into(),
            b.parent
                .as_ref()
                .map(|x| format!("{}/{x}", r.project))
                .unwrap_or_else(|| "-".into()),
        ],
        vec!["status".into(), live],
        vec!["url".into(), url(p, b)],
        vec!["dataset".into(), b.dataset(&p.pool, r)],
        vec!["container".into(), names::container_name(r)],
        vec![
            "used".into(),
            used.map(crate::ui::human_bytes)
                .unwrap_or_else(|| "?".into()),
        ],
        vec![
            "created (UTC)".into(),
            b.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        ],
    ];
    ctx.shell.table(&["FIELD", "VALUE"], rows);
    Ok(())
}
