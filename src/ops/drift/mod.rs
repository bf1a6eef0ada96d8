//! `velo repair`: finds where velo's state and the world (storage, servers, the host's ports)
//! have drifted apart and, with `--fix`, brings them back in line.
//!
//! Detection is fast and mostly pure: [`observe`] makes one inventory per storage, one server
//! list per runtime and a bind probe on the port of each branch whose server is not running;
//! [`compare`] turns that and the state into findings. A fix first claims the branches
//! concerned (so no other command changes them meanwhile), looks again, and repairs only what
//! the second look confirms. Orphans are destroyed while the state lock is held, after
//! checking again that nothing records them, so a command that is just reserving that name
//! cannot lose its work.

mod compare;
mod findings;
mod orphans;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::json;

pub use compare::{Activity, Comparison, Known, Observed, compare};
pub use findings::{Finding, Problem};

use super::journal::{Intent, Undo};
use super::server::{self, BRANCH_READY, HOST_IP, STOP_TIMEOUT};
use super::{Ctx, allocate_port, branch_mut};
use crate::names::{self, BranchRef, ProjectName, VolumeId};
use crate::state::{Branch, Finish, Recovery, RunState, State, StorageRecord};

/// The operation name a repair marks the branches it fixes with.
const OPERATION: &str = "repair";

/// What `velo repair` was asked to do.
#[derive(Debug, Clone, Copy)]
pub struct RepairOptions {
    pub fix: bool,
    pub force: bool,
    pub json: bool,
}

/// Whether a command is working on a branch, from its busy marker and the marker's process.
/// (The one place drift asks; an operation journal can answer instead.)
pub fn activity(b: &Branch) -> Activity {
    match &b.busy {
        None => Activity::Idle,
        Some(busy) if crate::state::process_start(busy.pid).is_some() => Activity::Live {
            operation: busy.operation.clone(),
            pid: busy.pid,
        },
        Some(busy) => Activity::Interrupted {
            operation: busy.operation.clone(),
            pid: busy.pid,
        },
    }
}

/// Like [`activity`], but a branch this process claimed for the repair counts as idle.
fn activity_but_mine(b: &Branch) -> Activity {
    match &b.busy {
        Some(busy) if busy.pid == std::process::id() && busy.operation == OPERATION => {
            Activity::Idle
        }
        _ => activity(b),
    }
}

/// Gathers what drift detection compares the state with: an inventory of each storage the
/// projects use, the servers of each runtime they use, and the ports of stopped branches.
pub async fn observe(ctx: &Ctx, state: &State) -> Result<Observed> {
    let mut storages = BTreeMap::new();
    let records = state
        .projects
        .values()
        .map(|p| &p.storage)
        .chain(state.prepared.iter().map(|p| &p.storage));
    for record in records {
        if storages.contains_key(record) {
            continue;
        }
        let inventory = ctx
            .backends
            .storage(record)?
            .inventory()
            .await
            .with_context(|| format!("listing what {record} holds"))?;
        storages.insert(record.clone(), inventory);
    }
    let mut servers: Vec<crate::runtime::ManagedServer> = Vec::new();
    let mut asked = BTreeSet::new();
    for p in state.projects.values() {
        if !asked.insert(p.runtime.kind()) {
            continue;
        }
        let listed = ctx
            .runtime(p)?
            .list_managed()
            .await
            .with_context(|| format!("listing velo's servers ({})", p.runtime.kind()))?;
        servers.extend(listed);
    }
    let ports_taken = state
        .projects
        .iter()
        .flat_map(|(pname, p)| {
            let servers = &servers;
            p.branches.iter().filter_map(move |(bname, b)| {
                let name = names::server_name(&BranchRef::new(pname.clone(), bname.clone()));
                let running = servers.iter().any(|s| s.name == name && s.running);
                (!running && TcpListener::bind((HOST_IP, b.port)).is_err()).then_some(b.port)
            })
        })
        .collect();
    Ok(Observed {
        storages,
        servers,
        ports_taken,
    })
}

/// Compares with the storages' own names in the report.
fn compare_now(
    ctx: &Ctx,
    state: &State,
    seen: &Observed,
    activity: &dyn Fn(&Branch) -> Activity,
) -> Comparison {
    let name_of = |rec: &StorageRecord, v: &VolumeId| {
        ctx.backends
            .storage(rec)
            .map(|s| s.name_of(v))
            .unwrap_or_else(|_| v.to_string())
    };
    compare(state, &ctx.home_label(), seen, activity, &name_of)
}

/// What became of a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Found,
    Fixed,
    NeedsForce,
    Manual,
    Skipped(String),
    Failed(String),
}

impl Outcome {
    fn word(&self) -> String {
        match self {
            Outcome::Found => "found".into(),
            Outcome::Fixed => "fixed".into(),
            Outcome::NeedsForce => "needs --force".into(),
            Outcome::Manual => "not fixed: needs you".into(),
            Outcome::Skipped(why) => format!("skipped: {why}"),
            Outcome::Failed(why) => format!("failed: {why}"),
        }
    }
}

pub async fn repair(ctx: &Ctx, opts: RepairOptions) -> Result<()> {
    let state = ctx.store.read()?;
    let seen = observe(ctx, &state).await?;
    let first = compare_now(ctx, &state, &seen, &activity);
    if !opts.fix || first.findings.is_empty() {
        let rows = first
            .findings
            .iter()
            .map(|f| (f.clone(), Outcome::Found))
            .collect();
        return report(ctx, &first, rows, opts);
    }

    let claimed = claim_for_repair(ctx, &first)?;
    let result = fix_all(ctx, &first, &claimed, opts).await;
    for r in &claimed {
        super::release(ctx, r)?;
    }
    let (comparison, rows) = result?;
    report(ctx, &comparison, rows, opts)
}

/// Marks busy every branch with a branch-level finding, taking over the markers of
/// interrupted commands. A branch another command took meanwhile is left out.
fn claim_for_repair(ctx: &Ctx, found: &Comparison) -> Result<Vec<BranchRef>> {
    let wanted: BTreeSet<&BranchRef> = found
        .findings
        .iter()
        .filter(|f| !matches!(f.problem, Problem::ProjectGone))
        .filter_map(|f| f.branch.as_ref())
        .collect();
    ctx.store.update(|s| {
        let mut claimed = Vec::new();
        for r in wanted {
            let Some(b) = s
                .projects
                .get_mut(&r.project)
                .and_then(|p| p.branches.get_mut(&r.branch))
            else {
                continue;
            };
            let ok = match activity(b) {
                Activity::Live { .. } => false,
                Activity::Idle | Activity::Interrupted { .. } => {
                    super::claim_taking_over(b, r, OPERATION).is_ok()
                }
            };
            if ok {
                claimed.push(r.clone());
            }
        }
        Ok::<_, anyhow::Error>(claimed)
    })
}

/// Looks again (with the branches claimed) and fixes what it finds.
async fn fix_all(
    ctx: &Ctx,
    first: &Comparison,
    claimed: &[BranchRef],
    opts: RepairOptions,
) -> Result<(Comparison, Vec<(Finding, Outcome)>)> {
    let state = ctx.store.read()?;
    let seen = observe(ctx, &state).await?;
    let mut now = compare_now(ctx, &state, &seen, &activity_but_mine);
    // Claiming took over the interrupted markers; they are fixed once the claim is released.
    let interrupted: Vec<Finding> = first
        .findings
        .iter()
        .filter(|f| matches!(f.problem, Problem::Interrupted { .. }))
        .filter(|f| f.branch.as_ref().is_some_and(|r| claimed.contains(r)))
        .cloned()
        .collect();
    let mut rows: Vec<(Finding, Outcome)> = interrupted
        .iter()
        .map(|f| (f.clone(), Outcome::Fixed))
        .collect();
    now.findings.splice(0..0, interrupted);

    // Branch-level findings, grouped per branch; forgotten branches children first.
    let mut branches: Vec<BranchRef> = Vec::new();
    for f in &now.findings {
        if let Some(r) = &f.branch
            && !branches.contains(r)
            && !matches!(f.problem, Problem::Interrupted { .. })
        {
            branches.push(r.clone());
        }
    }
    branches.sort_by_key(|r| std::cmp::Reverse(depth(&state, r)));
    for r in &branches {
        let problems: Vec<&Finding> = now
            .findings
            .iter()
            .filter(|f| f.branch.as_ref() == Some(r))
            .filter(|f| !matches!(f.problem, Problem::Interrupted { .. }))
            .collect();
        let outcome = if !claimed.contains(r) {
            Outcome::Skipped("another velo command works on it".into())
        } else if problems.iter().any(|f| !f.fixable()) {
            Outcome::Manual
        } else {
            match fix_branch(ctx, r, &problems).await {
                Ok(()) => Outcome::Fixed,
                Err(e) => Outcome::Failed(format!("{e:#}")),
            }
        };
        rows.extend(problems.into_iter().map(|f| (f.clone(), outcome.clone())));
    }

    for f in now.findings.iter().filter(|f| f.branch.is_none()) {
        let outcome = match &f.problem {
            _ if !f.fixable() => Outcome::Manual,
            _ if f.needs_force() && !opts.force => Outcome::NeedsForce,
            Problem::ProjectGone => {
                let name = f.project.as_ref().expect("a project finding names it");
                match super::project::delete(ctx, name, true).await {
                    Ok(()) => Outcome::Fixed,
                    Err(e) => Outcome::Failed(format!("{e:#}")),
                }
            }
            _ => match remove_orphan(ctx, &f.problem).await {
                Ok(true) => Outcome::Fixed,
                Ok(false) => Outcome::Skipped("a velo command recorded it meanwhile".into()),
                Err(e) => Outcome::Failed(format!("{e:#}")),
            },
        };
        rows.push((f.clone(), outcome));
    }
    Ok((now, rows))
}

/// How many parents a branch has: children are forgotten before their parents.
fn depth(state: &State, r: &BranchRef) -> usize {
    let Some(p) = state.projects.get(&r.project) else {
        return 0;
    };
    let mut n = 0;
    let mut at = p.branch(&r.branch).and_then(|b| b.parent.clone());
    while let Some(name) = at {
        n += 1;
        at = p.branch(&name).and_then(|b| b.parent.clone());
        if n > p.branches.len() {
            break;
        }
    }
    n
}

/// Forgets a claimed branch whose data is gone, as a journaled delete (finished forward by the
/// next velo command if this one dies), removing its container and what is left of its archive.
async fn forget(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let undo = ctx.store.update(|s| {
        Ok::<_, anyhow::Error>(Undo::begin(
            s,
            Intent {
                command: OPERATION,
                project: &r.project,
                branches: vec![r.branch.clone()],
                pins: Vec::new(),
                recovery: Recovery::RollForward {
                    finish: Finish::DeleteBranches {
                        release: Vec::new(),
                        volumes: Vec::new(),
                    },
                },
            },
        ))
    })?;
    let result = super::recover::finish_forward(ctx, &undo).await;
    if result.is_err() {
        ctx.store.update(|s| {
            undo.abandon(s);
            Ok::<_, anyhow::Error>(())
        })?;
    }
    result
}

/// Repairs one claimed branch: make its data available, move it off a taken port, re-create or
/// start its server, or forget what is gone, in that order.
async fn fix_branch(ctx: &Ctx, r: &BranchRef, problems: &[&Finding]) -> Result<()> {
    let has = |pred: fn(&Problem) -> bool| problems.iter().any(|f| pred(&f.problem));
    let state = ctx.store.read()?;
    let project = super::get_project(&state, &r.project)?.clone();
    let (storage, runtime) = (ctx.storage(&project)?, ctx.runtime(&project)?);
    let mut b = super::get_branch(&project, r)?.clone();
    if has(|p| matches!(p, Problem::DataGone { .. })) {
        // Forgetting must not destroy what is left: older generations kept for snapshots.
        let inventory = storage.inventory().await?;
        for g in &b.retired {
            let old = VolumeId::new(r, g.generation);
            if inventory
                .entries
                .iter()
                .any(|e| e.volume.as_ref() == Some(&old))
            {
                bail!(
                    "{}, an older generation of `{r}`, still holds data; `velo branch delete {r}` removes it with the branch",
                    storage.name_of(&old)
                );
            }
        }
        return forget(ctx, r).await;
    }
    forget_missing_history(ctx, r, problems)?;
    let name = names::server_name(r);
    let note = |what: &str| ctx.shell.note_marked(crate::ui::Mark::Step, what);
    let unmounted = has(|p| matches!(p, Problem::Unmounted { .. }));
    if unmounted {
        // A server on a dead or missing mount serves nothing; it restarts once mounted.
        runtime.stop(&name, STOP_TIMEOUT).await?;
        storage.ensure_available(&b.volume(r), &note).await?;
    }
    let port_taken = has(|p| matches!(p, Problem::PortTaken { .. }));
    if port_taken {
        let old = b.port;
        b.port = ctx.store.update(|s| {
            let port = allocate_port(s, &[old], &ctx.ports)?;
            branch_mut(s, r)?.port = port;
            Ok::<_, anyhow::Error>(port)
        })?;
        ctx.shell.note(&format!(
            "`{r}` moved from port {old} to {}: its URL is now {}",
            b.port,
            server::url(&project, &b)
        ));
    }
    let recreate = port_taken
        || has(|p| {
            matches!(
                p,
                Problem::ServerGone { .. }
                    | Problem::ServerOnOtherData { .. }
                    | Problem::ServerOutdated { .. }
                    | Problem::HoldsVolumes { .. }
            )
        });
    if recreate {
        let root = storage.ensure_available(&b.volume(r), &note).await?;
        let spec = server::spec(ctx, &project, r, &b, &root, runtime.as_ref(), None)?;
        ctx.shell
            .step("Re-create server", async {
                runtime.remove(&name).await?;
                runtime.create(&spec).await
            })
            .await?;
    }
    if has(|p| matches!(p, Problem::RunningUnasked { .. })) {
        ctx.store.update(|s| {
            branch_mut(s, r)?.desired = RunState::Running;
            Ok::<_, anyhow::Error>(())
        })?;
    }
    let start = recreate || unmounted || has(|p| matches!(p, Problem::Stopped { .. }));
    if start && b.desired == RunState::Running {
        server::start_and_wait(ctx, &project, r, &b, BRANCH_READY).await?;
    }
    Ok(())
}

/// Forgets retired generations and user snapshots whose data was destroyed by hand.
fn forget_missing_history(ctx: &Ctx, r: &BranchRef, problems: &[&Finding]) -> Result<()> {
    let generations: Vec<u32> = problems
        .iter()
        .filter_map(|f| match f.problem {
            Problem::RetiredGone { generation, .. } => Some(generation),
            _ => None,
        })
        .collect();
    let snapshots: Vec<&crate::names::SnapshotId> = problems
        .iter()
        .filter_map(|f| match &f.problem {
            Problem::SnapshotGone { id } => Some(id),
            _ => None,
        })
        .collect();
    if generations.is_empty() && snapshots.is_empty() {
        return Ok(());
    }
    ctx.store.update(|s| {
        let p = super::get_project_mut(s, &r.project)?;
        p.snapshots.retain(|x| {
            !(x.branch == r.branch
                && (generations.contains(&x.generation) || snapshots.contains(&&x.id)))
        });
        let b = p
            .branches
            .get_mut(&r.branch)
            .ok_or_else(|| anyhow!("branch `{r}` vanished from state"))?;
        b.retired.retain(|g| !generations.contains(&g.generation));
        Ok::<_, anyhow::Error>(())
    })
}

/// Removes an orphan server, volume or snapshot while holding the state lock, after checking
/// in the fresh state that nothing records it (or may be making it right now). Returns false
/// if something does.
async fn remove_orphan(ctx: &Ctx, problem: &Problem) -> Result<bool> {
    let problem = problem.clone();
    // The removal of an orphan server needs a runtime of its kind: any project's will do, as
    // they list the same servers; servers are only found through a project's runtime.
    let state = ctx.store.read()?;
    let runtime = state
        .projects
        .values()
        .next()
        .map(|p| ctx.runtime(p))
        .transpose()?;
    tokio::task::block_in_place(|| {
        ctx.store.update(|s| {
            let known = Known::new(s, &activity);
            let handle = tokio::runtime::Handle::current();
            match &problem {
                Problem::OrphanServer { server } => {
                    if known.owns_server(server) {
                        return Ok(false);
                    }
                    let runtime = runtime.as_ref().ok_or_else(|| {
                        anyhow!("no project names a runtime to remove {server} with")
                    })?;
                    handle.block_on(runtime.remove(server))?;
                }
                Problem::OrphanVolume {
                    storage, volume, ..
                } => {
                    if known.holds_volume(storage, volume) {
                        return Ok(false);
                    }
                    handle.block_on(ctx.backends.storage(storage)?.destroy_volume(volume))?;
                }
                Problem::OrphanSnapshot {
                    storage, snapshot, ..
                } => {
                    if known.holds_snapshot(storage, snapshot) {
                        return Ok(false);
                    }
                    handle.block_on(ctx.backends.storage(storage)?.destroy_snapshot(snapshot))?;
                }
                other => bail!("not an orphan: {other:?}"),
            }
            Ok::<_, anyhow::Error>(true)
        })
    })
}

/// Prints the findings and their outcomes; fails (non-zero exit) while anything is left.
fn report(
    ctx: &Ctx,
    comparison: &Comparison,
    rows: Vec<(Finding, Outcome)>,
    opts: RepairOptions,
) -> Result<()> {
    let left = rows.iter().filter(|(_, o)| *o != Outcome::Fixed).count();
    if opts.json {
        let findings: Vec<_> = rows
            .iter()
            .map(|(f, o)| {
                json!({
                    "kind": f.kind(),
                    "project": f.project.as_ref().map(ProjectName::as_str),
                    "branch": f.branch.as_ref().map(ToString::to_string),
                    "where": f.place(),
                    "what": f.what(),
                    "cause": f.cause,
                    "fix": f.fix(),
                    "needs_force": f.needs_force(),
                    "status": o.word(),
                })
            })
            .collect();
        let in_progress: Vec<_> = comparison
            .in_progress
            .iter()
            .map(|(r, op, pid)| json!({ "branch": r.to_string(), "operation": op, "pid": pid }))
            .collect();
        ctx.shell.json(&json!({
            "clean": left == 0,
            "checked_branches": comparison.checked,
            "findings": findings,
            "in_progress": in_progress,
        }));
    } else {
        for (f, o) in &rows {
            let mark = if *o == Outcome::Fixed {
                crate::ui::Mark::Ok
            } else {
                crate::ui::Mark::Fail
            };
            ctx.shell
                .out_marked(mark, &format!("{}: {} ({})", f.place(), f.what(), f.cause));
            ctx.shell.out(&format!("    fix: {}", f.fix()));
            if *o != Outcome::Found {
                ctx.shell.out(&format!("    {}", o.word()));
            }
        }
    }
    for (r, op, pid) in &comparison.in_progress {
        ctx.shell.note(&format!(
            "`{r}` left alone: `velo {op}` (pid {pid}) is working on it"
        ));
    }
    if rows.is_empty() {
        ctx.shell.note(&format!(
            "No drift: the state, the storage and the servers agree ({} branches checked).",
            comparison.checked
        ));
        return Ok(());
    }
    if left == 0 {
        ctx.shell.note(&format!(
            "Repaired {} problem(s); run `velo repair` to check.",
            rows.len()
        ));
        return Ok(());
    }
    let hint = if !opts.fix {
        "run `velo repair --fix` to repair them"
    } else if rows.iter().any(|(_, o)| *o == Outcome::NeedsForce) {
        "`velo repair --fix --force` also destroys the orphans that hold data"
    } else {
        "see each finding's fix above"
    };
    bail!("{left} drift problem(s) left; {hint}")
}
