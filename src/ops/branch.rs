//! Branches: create, reset, delete, start/stop/restart, list/get, password.
//!
//! A branch's data is one ZFS clone, its *generation*. Reset clones a new generation beside the
//! old one and swaps the container over only when the clone exists, so until the new server is
//! ready the old data is intact, and any failure puts the old container back on it.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use chrono::Utc;
use serde_json::json;

use super::{
    Ctx, Undo, UndoStep, allocate_port, claim, container_spec, endpoint, get_branch, get_project,
    get_project_mut, mounted_at, release, start_and_wait, url, wait_ready,
};
use crate::docker::ContainerStatus;
use crate::names::{self, BranchName, BranchRef};
use crate::state::{Branch, Generation, Origin, Project, RunState, State};

/// How long a branch (which needs no initdb) may take to answer.
const BRANCH_READY: Duration = Duration::from_secs(60);

/// How long PostgreSQL gets for a fast shutdown before Docker kills it.
const STOP_TIMEOUT_SECS: i32 = 30;

pub async fn create(ctx: &Ctx, r: &BranchRef, parent: Option<BranchName>) -> Result<()> {
    let parent_name = parent.unwrap_or_else(BranchName::main);
    let parent_ref = BranchRef::new(r.project.clone(), parent_name.clone());
    let snap = super::new_snapshot_id();

    let (project, parent, branch) = ctx.store.update(|s| {
        let p = get_project(s, &r.project)?;
        if p.branch(&r.branch).is_some() {
            bail!("branch `{r}` already exists (see `velo branch get {r}`)");
        }
        if parent_name == r.branch {
            bail!("a branch cannot be its own parent");
        }
        let parent = get_branch(p, &parent_ref)?.clone();
        if let Some(busy) = &parent.busy {
            bail!(
                "parent `{parent_ref}` is busy with `velo {}`; try again when it is done",
                busy.operation
            );
        }
        let port = allocate_port(s, &[])?;
        let branch = Branch {
            parent: Some(parent_name.clone()),
            port,
            generation: 0,
            origin: Some(Origin {
                branch: parent_name.clone(),
                generation: parent.generation,
                snapshot: snap.clone(),
                owned: true,
            }),
            retired: Vec::new(),
            desired: RunState::Running,
            created_at: Utc::now(),
            busy: Some(super::busy_marker("branch create")),
        };
        let p = get_project_mut(s, &r.project)?;
        p.branches.insert(r.branch.clone(), branch.clone());
        Ok((p.clone(), parent, branch))
    })?;

    let mut undo = Undo::default();
    let result = async {
        let origin = branch.origin.as_ref().expect("set above");
        let snapshot = origin.zfs_name(&project.pool, &r.project);
        snapshot_parent(ctx, &project, &parent_ref, &parent, &snapshot, &mut undo).await?;
        let dataset = branch.dataset(&project.pool, r);
        ctx.shell
            .step("Clone", ctx.zfs.clone_snapshot(&snapshot, &dataset))
            .await?;
        undo.push(UndoStep::DestroyDataset(dataset.clone()));
        let mountpoint = mounted_at(ctx, &dataset).await?;
        super::launch_new(
            ctx,
            &project,
            r,
            &branch,
            &mountpoint,
            BRANCH_READY,
            &mut undo,
        )
        .await
    }
    .await;

    let branch = match result {
        Ok(branch) => branch,
        Err(e) => {
            undo.run(ctx).await;
            ctx.store.update(|s| {
                if let Some(p) = s.projects.get_mut(&r.project) {
                    p.branches.remove(&r.branch);
                }
                Ok::<_, anyhow::Error>(())
            })?;
            return Err(e.context(format!("creating branch `{r}` (nothing was left behind)")));
        }
    };
    release(ctx, r)?;
    ctx.shell.note(&format!("Branch `{r}` is ready."));
    ctx.shell.out(&url(&project, &branch));
    Ok(())
}

/// CHECKPOINT (if the parent runs) and snapshot the parent's current generation.
async fn snapshot_parent(
    ctx: &Ctx,
    project: &Project,
    parent_ref: &BranchRef,
    parent: &Branch,
    snapshot: &str,
    undo: &mut Undo,
) -> Result<()> {
    let running = ctx
        .runtime
        .status(&names::container_name(parent_ref))
        .await?
        == ContainerStatus::Running;
    if running {
        ctx.shell
            .step("Checkpoint", endpoint(project, parent).checkpoint())
            .await
            .with_context(|| format!("checkpointing `{parent_ref}` before its snapshot"))?;
    }
    ctx.shell
        .step("Snapshot", ctx.zfs.snapshot(snapshot))
        .await?;
    undo.push(UndoStep::DestroySnapshot(snapshot.to_string()));
    Ok(())
}

/// Brings a branch back to its parent's current state, on the same port with the same password.
pub async fn reset(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    if r.branch.is_main() {
        bail!("`{r}` is the project's main branch and has no parent to reset to");
    }
    let snap = super::new_snapshot_id();
    let (project, parent_ref, parent, old) = ctx.store.update(|s| {
        let p = get_project(s, &r.project)?;
        let old = get_branch(p, r)?.clone();
        let parent_name = old
            .parent
            .clone()
            .ok_or_else(|| anyhow!("`{r}` has no parent to reset to"))?;
        let parent_ref = BranchRef::new(r.project.clone(), parent_name);
        let parent = get_branch(p, &parent_ref)?.clone();
        if let Some(busy) = &parent.busy {
            bail!(
                "parent `{parent_ref}` is busy with `velo {}`; try again when it is done",
                busy.operation
            );
        }
        let p = get_project_mut(s, &r.project)?;
        let b = p.branches.get_mut(&r.branch).expect("checked above");
        claim(b, r, "branch reset")?;
        Ok((p.clone(), parent_ref, parent, old))
    })?;

    let new = Branch {
        generation: next_generation(&old),
        origin: Some(Origin {
            branch: parent_ref.branch.clone(),
            generation: parent.generation,
            snapshot: snap,
            owned: true,
        }),
        ..old.clone()
    };
    let mut undo = Undo::default();
    let result = async {
        let snapshot = new
            .origin
            .as_ref()
            .expect("set above")
            .zfs_name(&project.pool, &r.project);
        snapshot_parent(ctx, &project, &parent_ref, &parent, &snapshot, &mut undo).await?;
        let dataset = new.dataset(&project.pool, r);
        ctx.shell
            .step("Clone", ctx.zfs.clone_snapshot(&snapshot, &dataset))
            .await?;
        undo.push(UndoStep::DestroyDataset(dataset.clone()));
        swap_generation(ctx, &project, r, &old, &new, &mut undo).await
    }
    .await;

    finish_swap(ctx, r, &old, &new, result, undo).await?;
    ctx.shell
        .note(&format!("Branch `{r}` now matches `{parent_ref}`."));
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

/// Moves a branch's container from the old generation's data to the new one and waits for it.
async fn swap_generation(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    old: &Branch,
    new: &Branch,
    undo: &mut Undo,
) -> Result<()> {
    let name = names::container_name(r);
    let was_running = ctx.runtime.status(&name).await? == ContainerStatus::Running;
    let old_mount = mounted_at(ctx, &old.dataset(&project.pool, r)).await?;
    let new_mount = mounted_at(ctx, &new.dataset(&project.pool, r)).await?;
    undo.push(UndoStep::RestoreContainer {
        spec: container_spec(ctx, project, r, old, &old_mount),
        start: was_running,
    });
    ctx.shell
        .step("Stop", async {
            ctx.runtime.stop(&name, STOP_TIMEOUT_SECS).await?;
            ctx.runtime.remove(&name).await
        })
        .await?;
    let spec = container_spec(ctx, project, r, new, &new_mount);
    ctx.shell
        .step("Create container", ctx.runtime.create(&spec))
        .await?;
    if new.desired == RunState::Running {
        start_and_wait(ctx, project, r, new, BRANCH_READY).await?;
    }
    Ok(())
}

/// Records a finished swap (and retires the old generation), or undoes a failed one.
async fn finish_swap(
    ctx: &Ctx,
    r: &BranchRef,
    old: &Branch,
    new: &Branch,
    result: Result<()>,
    undo: Undo,
) -> Result<()> {
    if let Err(e) = result {
        let clean = undo.run(ctx).await;
        release(ctx, r)?;
        let how = if clean {
            "the branch is as it was"
        } else {
            "some steps could not be undone, see the warnings above"
        };
        return Err(e.context(format!("changing branch `{r}` ({how})")));
    }
    ctx.store.update(|s| {
        let p = get_project_mut(s, &r.project)?;
        let b = p
            .branches
            .get_mut(&r.branch)
            .ok_or_else(|| anyhow!("branch `{r}` vanished from state"))?;
        b.retired.push(Generation {
            generation: old.generation,
            origin: old.origin.clone(),
        });
        b.generation = new.generation;
        b.origin = new.origin.clone();
        b.busy = None;
        Ok::<_, anyhow::Error>(())
    })?;
    collect_retired(ctx, r).await
}

/// Destroys the retired generations of a branch that nothing depends on any more, with the
/// snapshots velo made for them.
pub async fn collect_retired(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let state = ctx.store.read()?;
    let Some(project) = state.projects.get(&r.project) else {
        return Ok(());
    };
    let Some(branch) = project.branch(&r.branch) else {
        return Ok(());
    };
    for g in &branch.retired {
        if generation_in_use(&state, r, g.generation) {
            continue;
        }
        let dataset = names::branch_dataset(&project.pool, r, g.generation);
        ctx.shell
            .step("Destroy old data", ctx.zfs.destroy_dataset(&dataset))
            .await?;
        if let Some(origin) = g.origin.as_ref().filter(|o| o.owned) {
            ctx.zfs
                .destroy_snapshot(&origin.zfs_name(&project.pool, &r.project))
                .await?;
        }
        let generation = g.generation;
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
    }
    Ok(())
}

/// Whether any branch (or retired generation) was cloned from a snapshot of `r`'s generation.
fn generation_in_use(state: &State, r: &BranchRef, generation: u32) -> bool {
    let Some(p) = state.projects.get(&r.project) else {
        return false;
    };
    p.branches.values().any(|b| {
        b.origin
            .iter()
            .chain(b.retired.iter().filter_map(|g| g.origin.as_ref()))
            .any(|o| o.branch == r.branch && o.generation == generation)
    })
}

/// Deletes a branch (and with `force`, every branch below it).
pub async fn delete(ctx: &Ctx, r: &BranchRef, force: bool) -> Result<()> {
    if r.branch.is_main() {
        bail!(
            "`{r}` is the project's main branch; delete the project instead (`velo project delete {}`)",
            r.project
        );
    }
    let (project, doomed) = ctx.store.update(|s| {
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
            claim(b, &BranchRef::new(r.project.clone(), name.clone()), "branch delete")?;
        }
        Ok((p.clone(), doomed))
    })?;

    for name in &doomed {
        let br = BranchRef::new(r.project.clone(), name.clone());
        let b = project.branch(name).expect("from the subtree");
        delete_one(ctx, &project, &br, b).await.with_context(|| {
            format!("deleting `{br}`; fix the cause and run `velo branch delete {r} --force` again")
        })?;
    }
    if let Some(parent) = project.branch(&r.branch).and_then(|b| b.parent.clone()) {
        collect_retired(ctx, &BranchRef::new(r.project.clone(), parent)).await?;
    }
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

async fn delete_one(ctx: &Ctx, project: &Project, r: &BranchRef, b: &Branch) -> Result<()> {
    let pool = &project.pool;
    ctx.shell
        .step(
            &format!("Remove container {r}"),
            ctx.runtime.remove(&names::container_name(r)),
        )
        .await?;
    let mut origins = Vec::new();
    let generations = b
        .retired
        .iter()
        .map(|g| (g.generation, g.origin.clone()))
        .chain([(b.generation, b.origin.clone())]);
    for (generation, origin) in generations {
        ctx.zfs
            .destroy_dataset(&names::branch_dataset(pool, r, generation))
            .await?;
        origins.extend(origin.filter(|o| o.owned));
    }
    for origin in origins {
        ctx.zfs
            .destroy_snapshot(&origin.zfs_name(pool, &r.project))
            .await?;
    }
    ctx.store.update(|s| {
        if let Some(p) = s.projects.get_mut(&r.project) {
            p.branches.remove(&r.branch);
        }
        Ok::<_, anyhow::Error>(())
    })
}

pub async fn start(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let (project, b) = claim_for(ctx, r, "branch start")?;
    let result = ensure_running(ctx, &project, r, &b).await;
    finish_run_change(ctx, r, RunState::Running, result)?;
    ctx.shell.note(&format!("Branch `{r}` is running."));
    ctx.shell.out(&url(&project, &b));
    Ok(())
}

pub async fn stop(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let (_, _) = claim_for(ctx, r, "branch stop")?;
    let result = ctx
        .shell
        .step(
            "Stop",
            ctx.runtime
                .stop(&names::container_name(r), STOP_TIMEOUT_SECS),
        )
        .await
        .map_err(Into::into);
    finish_run_change(ctx, r, RunState::Stopped, result)?;
    ctx.shell.note(&format!("Branch `{r}` is stopped."));
    Ok(())
}

pub async fn restart(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let (project, b) = claim_for(ctx, r, "branch restart")?;
    let result = async {
        ctx.shell
            .step(
                "Stop",
                ctx.runtime
                    .stop(&names::container_name(r), STOP_TIMEOUT_SECS),
            )
            .await?;
        ensure_running(ctx, &project, r, &b).await
    }
    .await;
    finish_run_change(ctx, r, RunState::Running, result)?;
    ctx.shell.note(&format!("Branch `{r}` is running."));
    ctx.shell.out(&url(&project, &b));
    Ok(())
}

fn claim_for(ctx: &Ctx, r: &BranchRef, operation: &str) -> Result<(Project, Branch)> {
    ctx.store.update(|s| {
        let p = get_project_mut(s, &r.project)?;
        let b = p.branches.get_mut(&r.branch).ok_or_else(|| {
            anyhow!(
                "branch `{r}` does not exist (see `velo branch list {}`)",
                r.project
            )
        })?;
        claim(b, r, operation)?;
        let b = b.clone();
        Ok((p.clone(), b))
    })
}

fn finish_run_change(
    ctx: &Ctx,
    r: &BranchRef,
    desired: RunState,
    result: Result<()>,
) -> Result<()> {
    ctx.store.update(|s| {
        if let Some(b) = s
            .projects
            .get_mut(&r.project)
            .and_then(|p| p.branches.get_mut(&r.branch))
        {
            b.busy = None;
            if result.is_ok() {
                b.desired = desired;
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    result
}

/// Starts a branch's container, re-creating it from state if it was removed behind velo's back
/// (the data is on the dataset, the container holds none).
async fn ensure_running(ctx: &Ctx, project: &Project, r: &BranchRef, b: &Branch) -> Result<()> {
    let name = names::container_name(r);
    match ctx.runtime.status(&name).await? {
        ContainerStatus::Running => return wait_ready(ctx, project, r, b, BRANCH_READY).await,
        ContainerStatus::Missing => {
            let mountpoint = mounted_at(ctx, &b.dataset(&project.pool, r)).await?;
            let spec = container_spec(ctx, project, r, b, &mountpoint);
            ctx.shell
                .step("Re-create container", ctx.runtime.create(&spec))
                .await?;
        }
        _ => {
            mounted_at(ctx, &b.dataset(&project.pool, r)).await?;
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
    let live = ctx.runtime.list_managed(&ctx.home_label()).await?;
    let sizes = ctx
        .zfs
        .get_tree(&names::project_dataset(&p.pool, name), &["used"])
        .await?;
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
