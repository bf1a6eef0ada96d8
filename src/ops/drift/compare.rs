//! The pure half of drift detection: velo's state against what ZFS, Docker and the host's ports
//! say, as a list of [`Finding`]s. No I/O here, so every case is unit-tested on fake inputs.

use std::collections::{BTreeMap, BTreeSet};

use crate::docker::ManagedContainer;
use crate::names::{self, BranchRef, ProjectName};
use crate::state::{Branch, Project, RunState, State};
use crate::zfs::Entry;

/// What velo saw of the world, gathered in a handful of calls (see [`super::observe`]).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The imported pools.
    pub pools: BTreeSet<String>,
    /// Every filesystem and snapshot under `<pool>/velo` of each pool.
    pub datasets: BTreeMap<String, Entry>,
    /// The containers labelled with this velo home.
    pub containers: Vec<ManagedContainer>,
    /// Ports of branches whose container is not running that something else listens on.
    pub ports_taken: BTreeSet<u16>,
    /// Mountpoints left behind by a zfs-fuse daemon that is gone.
    pub stale_mounts: BTreeSet<String>,
}

/// Whether a command is working on a branch. This is the one question drift asks about
/// operations in progress; an operation journal can answer it instead of the busy marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activity {
    Idle,
    /// A live velo process is changing the branch: what looks like drift may be its work.
    Live {
        operation: String,
        pid: u32,
    },
    /// A velo process began changing the branch and is gone.
    Interrupted {
        operation: String,
        pid: u32,
    },
}

/// One mismatch between the state and the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A state pool is not imported: nothing in it can be judged.
    PoolMissing {
        pool: String,
    },
    Interrupted {
        operation: String,
        pid: u32,
    },
    /// The project's dataset (and so all its data) is gone.
    ProjectGone {
        dataset: String,
    },
    /// The current generation of a branch is gone.
    DataGone {
        dataset: String,
        main: bool,
    },
    RetiredGone {
        generation: u32,
        dataset: String,
    },
    SnapshotGone {
        id: String,
        snapshot: String,
    },
    Unmounted {
        dataset: String,
        mountpoint: String,
        stale: bool,
    },
    ContainerGone {
        container: String,
        dataset: String,
    },
    /// The container serves another directory than the branch's current data.
    ContainerOnOtherData {
        container: String,
        serving: Option<String>,
        expected: String,
    },
    Stopped {
        container: String,
    },
    RunningUnasked {
        container: String,
    },
    PortTaken {
        port: u16,
    },
    OrphanContainer {
        container: String,
    },
    OrphanDataset {
        dataset: String,
    },
    OrphanSnapshot {
        snapshot: String,
    },
}

/// A problem, where it is, and the likely cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub project: Option<ProjectName>,
    /// Set for problems a branch-level fix repairs.
    pub branch: Option<BranchRef>,
    pub problem: Problem,
    pub cause: String,
}

impl Finding {
    /// A short stable name of the problem, for `--json`.
    pub fn kind(&self) -> &'static str {
        match &self.problem {
            Problem::PoolMissing { .. } => "pool-missing",
            Problem::Interrupted { .. } => "interrupted",
            Problem::ProjectGone { .. } => "project-gone",
            Problem::DataGone { .. } => "data-gone",
            Problem::RetiredGone { .. } => "retired-gone",
            Problem::SnapshotGone { .. } => "snapshot-gone",
            Problem::Unmounted { .. } => "unmounted",
            Problem::ContainerGone { .. } => "container-gone",
            Problem::ContainerOnOtherData { .. } => "container-on-other-data",
            Problem::Stopped { .. } => "stopped",
            Problem::RunningUnasked { .. } => "running-unasked",
            Problem::PortTaken { .. } => "port-taken",
            Problem::OrphanContainer { .. } => "orphan-container",
            Problem::OrphanDataset { .. } => "orphan-dataset",
            Problem::OrphanSnapshot { .. } => "orphan-snapshot",
        }
    }

    /// Where the problem is: a branch, project or the thing itself.
    pub fn place(&self) -> String {
        match (&self.branch, &self.problem) {
            (Some(r), _) => r.to_string(),
            (None, Problem::PoolMissing { pool }) => pool.clone(),
            (None, Problem::OrphanContainer { container }) => container.clone(),
            (None, Problem::OrphanDataset { dataset }) => dataset.clone(),
            (None, Problem::OrphanSnapshot { snapshot }) => snapshot.clone(),
            (None, _) => self
                .project
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }
    }

    /// What is wrong, in a sentence.
    pub fn what(&self) -> String {
        match &self.problem {
            Problem::PoolMissing { pool } => format!("ZFS pool {pool} is not imported"),
            Problem::Interrupted { operation, pid } => {
                format!(
                    "`velo {operation}` (pid {pid}) stopped mid-way and left the branch marked busy"
                )
            }
            Problem::ProjectGone { dataset } => {
                format!("dataset {dataset} and all its branches' data are gone")
            }
            Problem::DataGone { dataset, .. } => format!("dataset {dataset} is gone"),
            Problem::RetiredGone { dataset, .. } => {
                format!(
                    "dataset {dataset} (an older generation kept for snapshots or clones) is gone"
                )
            }
            Problem::SnapshotGone { id, snapshot } => format!("snapshot {id} ({snapshot}) is gone"),
            Problem::Unmounted {
                dataset,
                mountpoint,
                stale: true,
            } => format!("dataset {dataset} is not usable: {mountpoint} is a dead FUSE mount"),
            Problem::Unmounted { dataset, .. } => format!("dataset {dataset} is not mounted"),
            Problem::ContainerGone { container, .. } => format!("container {container} is gone"),
            Problem::ContainerOnOtherData {
                container,
                serving,
                expected,
            } => format!(
                "container {container} serves {} instead of {expected}",
                serving.as_deref().unwrap_or("no data directory")
            ),
            Problem::Stopped { container } => {
                format!("container {container} is stopped, but the branch should run")
            }
            Problem::RunningUnasked { container } => {
                format!("container {container} runs, but the branch was stopped with velo")
            }
            Problem::PortTaken { port } => {
                format!("port {port} is taken by another program, so the branch cannot start")
            }
            Problem::OrphanContainer { container } => {
                format!("container {container} is velo's but no branch records it")
            }
            Problem::OrphanDataset { dataset } => {
                format!("dataset {dataset} is velo's but nothing records it")
            }
            Problem::OrphanSnapshot { snapshot } => {
                format!("snapshot {snapshot} is velo's but nothing records it")
            }
        }
    }

    /// What `--fix` does, or what to do by hand when velo cannot repair it safely.
    pub fn fix(&self) -> String {
        match &self.problem {
            Problem::PoolMissing { pool } => {
                format!("none automatic: import it (`zpool import {pool}`), then run `velo repair` again")
            }
            Problem::Interrupted { .. } => {
                "clear the busy marker, then repair the branch like any other".into()
            }
            Problem::ProjectGone { .. } => {
                "forget the project (remove its containers and WAL archives)".into()
            }
            Problem::DataGone { main: true, .. } => {
                "none automatic: the project's main data is gone; restore it from a backup, or `velo project delete --force`".into()
            }
            Problem::DataGone { .. } => {
                "forget the branch (remove its container and WAL archive)".into()
            }
            Problem::RetiredGone { .. } => {
                "forget that generation and the snapshots that were on it".into()
            }
            Problem::SnapshotGone { .. } => "forget the snapshot".into(),
            Problem::Unmounted { dataset, stale, .. } => format!(
                "{}mount {dataset} and restart the container on it",
                if *stale {
                    "unmount the dead mount, "
                } else {
                    ""
                }
            ),
            Problem::ContainerGone { container, dataset } => {
                format!("re-create {container} on {dataset} (start it if the branch should run)")
            }
            Problem::ContainerOnOtherData { container, .. } => {
                format!("re-create {container} on the branch's current data")
            }
            Problem::Stopped { .. } => "start it and wait until PostgreSQL answers".into(),
            Problem::RunningUnasked { .. } => "record the branch as running".into(),
            Problem::PortTaken { .. } => {
                "move the branch to a free port (its URL changes) and re-create its container"
                    .into()
            }
            Problem::OrphanContainer { .. } => "remove the container (it holds no data)".into(),
            Problem::OrphanDataset { dataset } => {
                format!("destroy {dataset} with its snapshots (needs --force: it holds data)")
            }
            Problem::OrphanSnapshot { snapshot } => {
                format!("destroy {snapshot} (needs --force: it holds data)")
            }
        }
    }

    /// Whether `--fix` repairs it at all.
    pub fn fixable(&self) -> bool {
        !matches!(
            self.problem,
            Problem::PoolMissing { .. } | Problem::DataGone { main: true, .. }
        )
    }

    /// Whether the fix destroys data, and so needs `--force`.
    pub fn needs_force(&self) -> bool {
        matches!(
            self.problem,
            Problem::OrphanDataset { .. } | Problem::OrphanSnapshot { .. }
        )
    }
}

/// The comparison's result: findings, and the branches left alone because a live command is
/// working on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    pub findings: Vec<Finding>,
    pub in_progress: Vec<(BranchRef, String, u32)>,
    /// How many branches were compared.
    pub checked: usize,
}

/// What the state records, and which names a live command may be creating right now.
pub struct Known {
    datasets: BTreeSet<String>,
    snapshots: BTreeSet<String>,
    /// `<pool>/velo/<project>/<branch>.` of branches a live command works on: a reset or
    /// restore clones its next generation there before the state records it.
    live_prefixes: Vec<String>,
    /// Project datasets with a live command: it may be taking a snapshot the state does not
    /// record yet (a reset snapshots the parent before it records the origin).
    live_projects: BTreeSet<String>,
    /// `(project, branch)` of every branch, as container labels name them.
    branches: BTreeSet<(String, String)>,
    projects: BTreeSet<String>,
}

impl Known {
    pub fn new(state: &State, activity: &dyn Fn(&Branch) -> Activity) -> Known {
        let mut k = Known {
            datasets: BTreeSet::new(),
            snapshots: BTreeSet::new(),
            live_prefixes: Vec::new(),
            live_projects: BTreeSet::new(),
            branches: BTreeSet::new(),
            projects: BTreeSet::new(),
        };
        for (pname, p) in &state.projects {
            let pd = names::project_dataset(&p.pool, pname);
            k.datasets.insert(pd.clone());
            k.projects.insert(pd.clone());
            for s in &p.snapshots {
                k.snapshots.insert(s.zfs_name(&p.pool, pname));
            }
            for (bname, b) in &p.branches {
                let r = BranchRef::new(pname.clone(), bname.clone());
                k.branches.insert((pname.to_string(), bname.to_string()));
                let generations = b.retired.iter().map(|g| (g.generation, g.origin.as_ref()));
                for (generation, origin) in generations.chain([(b.generation, b.origin.as_ref())]) {
                    k.datasets
                        .insert(names::branch_dataset(&p.pool, &r, generation));
                    if let Some(o) = origin {
                        k.snapshots.insert(o.zfs_name(&p.pool, pname));
                    }
                }
                if let Activity::Live { .. } = activity(b) {
                    k.live_prefixes.push(format!("{pd}/{bname}."));
                    k.live_projects.insert(pd.clone());
                }
            }
        }
        k
    }

    /// Whether an orphan container may be removed: no branch records it.
    pub fn owns_container(&self, c: &ManagedContainer) -> bool {
        match (c.project.parse(), c.branch.parse()) {
            (Ok(p), Ok(b)) => {
                self.branches
                    .contains(&(c.project.clone(), c.branch.clone()))
                    && names::container_name(&BranchRef::new(p, b)) == c.name
            }
            _ => false,
        }
    }

    /// Whether a dataset is recorded, or may be a live command's work in progress.
    pub fn holds_dataset(&self, dataset: &str) -> bool {
        self.datasets.contains(dataset) || self.live_prefixes.iter().any(|p| dataset.starts_with(p))
    }

    /// Whether a snapshot is recorded, or may be a live command's work in progress.
    pub fn holds_snapshot(&self, snapshot: &str) -> bool {
        let dataset = snapshot.split('@').next().unwrap_or(snapshot);
        self.snapshots.contains(snapshot)
            || self
                .live_projects
                .iter()
                .any(|p| dataset.starts_with(&format!("{p}/")))
    }
}

/// Compares the state with what was observed. `home` is this velo home's mark; `activity`
/// says whether a command is working on a branch.
pub fn compare(
    state: &State,
    home: &str,
    home_property: &str,
    seen: &Observed,
    activity: &dyn Fn(&Branch) -> Activity,
) -> Comparison {
    let mut out = Comparison::default();
    let known = Known::new(state, activity);
    let restarts = Restarts::infer(state, seen);
    let mut missing_pools = BTreeSet::new();
    for (pname, p) in &state.projects {
        if !seen.pools.contains(&p.pool) {
            missing_pools.insert(p.pool.clone());
            continue;
        }
        compare_project(pname, p, seen, activity, &restarts, &mut out);
    }
    for pool in missing_pools {
        out.findings.push(Finding {
            project: None,
            branch: None,
            problem: Problem::PoolMissing { pool },
            cause: "the pool was exported, or is not imported yet after a reboot".into(),
        });
    }
    orphans(home, home_property, seen, &known, &mut out);
    out
}

/// What the observations say about daemons that restarted behind velo's back.
struct Restarts {
    docker: bool,
    zfs: bool,
}

impl Restarts {
    /// Docker (or the host) restarted when none of several containers that should run does;
    /// ZFS restarted when none of several datasets is mounted or a dead FUSE mount is left.
    fn infer(state: &State, seen: &Observed) -> Restarts {
        let mut should_run = 0;
        let mut runs = 0;
        let mut datasets = 0;
        let mut mounted = 0;
        for (pname, p) in &state.projects {
            for (bname, b) in &p.branches {
                let r = BranchRef::new(pname.clone(), bname.clone());
                let name = names::container_name(&r);
                if let Some(c) = seen.containers.iter().find(|c| c.name == name)
                    && b.desired == RunState::Running
                {
                    should_run += 1;
                    runs += usize::from(c.running);
                }
                if let Some(e) = seen.datasets.get(&b.dataset(&p.pool, &r)) {
                    datasets += 1;
                    mounted += usize::from(e.mounted);
                }
            }
        }
        Restarts {
            docker: should_run >= 2 && runs == 0,
            zfs: !seen.stale_mounts.is_empty() || (datasets >= 2 && mounted == 0),
        }
    }
}

fn compare_project(
    pname: &ProjectName,
    p: &Project,
    seen: &Observed,
    activity: &dyn Fn(&Branch) -> Activity,
    restarts: &Restarts,
    out: &mut Comparison,
) {
    let pd = names::project_dataset(&p.pool, pname);
    let live: Vec<_> = p
        .branches
        .values()
        .filter(|b| matches!(activity(b), Activity::Live { .. }))
        .collect();
    if !seen.datasets.contains_key(&pd) && live.is_empty() {
        out.checked += p.branches.len();
        out.findings.push(Finding {
            project: Some(pname.clone()),
            branch: None,
            problem: Problem::ProjectGone { dataset: pd },
            cause: "destroyed outside velo (`zfs destroy -r`)".into(),
        });
        return;
    }
    for (bname, b) in &p.branches {
        let r = BranchRef::new(pname.clone(), bname.clone());
        let mut push = |problem: Problem, cause: String| {
            out.findings.push(Finding {
                project: Some(pname.clone()),
                branch: Some(r.clone()),
                problem,
                cause,
            })
        };
        match activity(b) {
            Activity::Live { operation, pid } => {
                out.in_progress.push((r.clone(), operation, pid));
                continue;
            }
            Activity::Interrupted { operation, pid } => push(
                Problem::Interrupted { operation, pid },
                "the process was killed, or the host lost power".into(),
            ),
            Activity::Idle => {}
        }
        out.checked += 1;
        let dataset = b.dataset(&p.pool, &r);
        let container = names::container_name(&r);
        let Some(entry) = seen.datasets.get(&dataset).filter(|e| !e.snapshot) else {
            push(
                Problem::DataGone {
                    dataset,
                    main: bname.is_main(),
                },
                "destroyed outside velo (`zfs destroy`)".into(),
            );
            continue;
        };
        for g in &b.retired {
            let old = names::branch_dataset(&p.pool, &r, g.generation);
            if !seen.datasets.contains_key(&old) {
                push(
                    Problem::RetiredGone {
                        generation: g.generation,
                        dataset: old,
                    },
                    "destroyed outside velo (`zfs destroy`)".into(),
                );
            }
        }
        for s in p.snapshots.iter().filter(|s| s.branch == *bname) {
            let on = names::branch_dataset(&p.pool, &r, s.generation);
            let snapshot = s.zfs_name(&p.pool, pname);
            if seen.datasets.contains_key(&on) && !seen.datasets.contains_key(&snapshot) {
                push(
                    Problem::SnapshotGone {
                        id: s.id.clone(),
                        snapshot,
                    },
                    "destroyed outside velo (`zfs destroy`)".into(),
                );
            }
        }
        if let Some(mountpoint) = &entry.mountpoint {
            let stale = seen.stale_mounts.contains(mountpoint);
            if stale || !entry.mounted {
                let cause = if stale {
                    "the zfs-fuse daemon died or was restarted and left its old mount behind"
                } else if restarts.zfs {
                    "ZFS was restarted (the zfs-fuse daemon, or the host rebooted): none of this home's datasets is mounted"
                } else {
                    "unmounted outside velo (`zfs unmount`)"
                };
                push(
                    Problem::Unmounted {
                        dataset: dataset.clone(),
                        mountpoint: mountpoint.clone(),
                        stale,
                    },
                    cause.into(),
                );
            }
        }
        let live = seen.containers.iter().find(|c| c.name == container);
        let running = live.is_some_and(|c| c.running);
        match live {
            None => push(
                Problem::ContainerGone {
                    container,
                    dataset: dataset.clone(),
                },
                "removed outside velo (`docker rm`), or Docker lost its containers".into(),
            ),
            Some(c) => {
                let expected = entry.mountpoint.as_deref().map(super::super::data_dir);
                if expected.is_some() && c.data_source != expected {
                    push(
                        Problem::ContainerOnOtherData {
                            container,
                            serving: c.data_source.clone(),
                            expected: expected.unwrap_or_default(),
                        },
                        "an interrupted reset or restore, or a container made by hand".into(),
                    );
                } else if !c.running && b.desired == RunState::Running {
                    let cause = if restarts.docker {
                        "dockerd or the host was restarted: none of this home's containers runs"
                    } else {
                        "stopped outside velo (`docker stop`), or PostgreSQL exited"
                    };
                    push(Problem::Stopped { container }, cause.into());
                } else if c.running && b.desired == RunState::Stopped {
                    push(
                        Problem::RunningUnasked { container },
                        "started outside velo (`docker start`)".into(),
                    );
                }
            }
        }
        if !running && seen.ports_taken.contains(&b.port) {
            push(
                Problem::PortTaken { port: b.port },
                format!(
                    "another program (or another velo home's branch) listens on 127.0.0.1:{}",
                    b.port
                ),
            );
        }
    }
}

fn orphans(home: &str, home_property: &str, seen: &Observed, known: &Known, out: &mut Comparison) {
    let cause = "velo made it but no longer records it (an interrupted command, or a state file restored from a backup)";
    for c in &seen.containers {
        if !known.owns_container(c) {
            out.findings.push(Finding {
                project: c.project.parse().ok(),
                branch: None,
                problem: Problem::OrphanContainer {
                    container: c.name.clone(),
                },
                cause: cause.into(),
            });
        }
    }
    // Candidates: this home's datasets that nothing records, top-most only.
    let mut orphaned: Vec<&str> = Vec::new();
    for (name, e) in seen.datasets.iter().filter(|(_, e)| !e.snapshot) {
        let Some(project_ds) = velo_project_of(name) else {
            continue;
        };
        if known.holds_dataset(name) || orphaned.iter().any(|o| is_under(name, o)) {
            continue;
        }
        let ours = match e.user.get(home_property) {
            Some(mark) => mark == home,
            None => known.projects.contains(project_ds),
        };
        if ours {
            orphaned.push(name);
        }
    }
    // A candidate that a kept dataset was cloned from is kept too, until nothing changes.
    let is_orphan =
        |orphaned: &[&str], name: &str| orphaned.iter().any(|o| *o == name || is_under(name, o));
    loop {
        let kept_origins: Vec<&str> = seen
            .datasets
            .iter()
            .filter(|(n, e)| !e.snapshot && !is_orphan(&orphaned, n))
            .filter_map(|(_, e)| e.origin.as_deref())
            .collect();
        let before = orphaned.len();
        orphaned.retain(|o| {
            !kept_origins
                .iter()
                .any(|origin| origin.starts_with(&format!("{o}@")))
        });
        if orphaned.len() == before {
            break;
        }
    }
    // Clones before the datasets they were cloned from, so each destroy can succeed.
    let origin_of = |name: &str| {
        seen.datasets
            .get(name)
            .and_then(|e| e.origin.as_deref())
            .and_then(|o| o.split_once('@'))
            .map(|(d, _)| d.to_string())
    };
    let chain = |name: &str| {
        let mut n = 0;
        let mut at = origin_of(name);
        while let Some(d) = at.filter(|d| is_orphan(&orphaned, d)) {
            n += 1;
            at = origin_of(&d);
            if n > orphaned.len() {
                break;
            }
        }
        n
    };
    let mut ordered: Vec<(usize, &str)> = orphaned.iter().map(|o| (chain(o), *o)).collect();
    ordered.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    for (_, name) in &ordered {
        out.findings.push(Finding {
            project: velo_project_of(name).and_then(project_name),
            branch: None,
            problem: Problem::OrphanDataset {
                dataset: name.to_string(),
            },
            cause: cause.into(),
        });
    }
    // Snapshots on kept datasets that nothing records and no kept dataset was cloned from.
    let kept_origins: BTreeSet<&str> = seen
        .datasets
        .iter()
        .filter(|(n, e)| !e.snapshot && !is_orphan(&orphaned, n))
        .filter_map(|(_, e)| e.origin.as_deref())
        .collect();
    for (name, _) in seen.datasets.iter().filter(|(_, e)| e.snapshot) {
        let Some((dataset, _)) = name.split_once('@') else {
            continue;
        };
        if !known.datasets.contains(dataset)
            || known.holds_snapshot(name)
            || kept_origins.contains(name.as_str())
        {
            continue;
        }
        out.findings.push(Finding {
            project: velo_project_of(dataset).and_then(project_name),
            branch: None,
            problem: Problem::OrphanSnapshot {
                snapshot: name.clone(),
            },
            cause: cause.into(),
        });
    }
}

fn is_under(name: &str, parent: &str) -> bool {
    name.len() > parent.len() && name.starts_with(parent) && name.as_bytes()[parent.len()] == b'/'
}

/// `<pool>/velo/<project>` for a dataset at or one level under a project dataset.
fn velo_project_of(dataset: &str) -> Option<&str> {
    let parts: Vec<&str> = dataset.split('/').collect();
    match parts.as_slice() {
        [_, "velo", _] => Some(dataset),
        [_, "velo", _, _] => dataset.rsplit_once('/').map(|(p, _)| p),
        _ => None,
    }
}

fn project_name(project_dataset: &str) -> Option<ProjectName> {
    project_dataset.rsplit('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::*;
    use crate::state::{Busy, Origin};

    const HOME: &str = "/home/a/.velo";
    const PROP: &str = "dev.velo:home";

    fn branch(parent: Option<&str>, port: u16) -> Branch {
        Branch {
            parent: parent.map(|p| p.parse().unwrap()),
            port,
            generation: 0,
            origin: parent.map(|p| Origin {
                branch: p.parse().unwrap(),
                generation: 0,
                snapshot: "s1".into(),
                owned: true,
                created_at: Utc::now(),
                wal_from: None,
                recovered: false,
            }),
            retired: Vec::new(),
            desired: RunState::Running,
            created_at: Utc::now(),
            busy: None,
        }
    }

    /// demo/main and demo/dev (cloned from main.0@s1) on pool tank, as the state has them.
    fn state() -> State {
        let project = Project {
            pool: "tank".into(),
            image: "postgres:17-alpine".into(),
            pg_version: None,
            user: "postgres".into(),
            password: "x".into(),
            database: "postgres".into(),
            pg_uid: 70,
            pg_gid: 70,
            created_at: Utc::now(),
            branches: BTreeMap::from([
                ("main".parse().unwrap(), branch(None, 54320)),
                ("dev".parse().unwrap(), branch(Some("main"), 54321)),
            ]),
            snapshots: Vec::new(),
        };
        State {
            projects: BTreeMap::from([("demo".parse().unwrap(), project)]),
            ..State::default()
        }
    }

    fn fs(mark: Option<&str>, origin: Option<&str>, name: &str) -> Entry {
        Entry {
            snapshot: false,
            mounted: true,
            mountpoint: Some(format!("/{name}")),
            origin: origin.map(str::to_string),
            user: mark
                .map(|m| (PROP.to_string(), m.to_string()))
                .into_iter()
                .collect(),
        }
    }

    fn snap() -> Entry {
        Entry {
            snapshot: true,
            ..Entry::default()
        }
    }

    fn container(branch: &str, running: bool) -> ManagedContainer {
        ManagedContainer {
            name: format!("velo-demo.{branch}"),
            project: "demo".into(),
            branch: branch.into(),
            running,
            data_source: Some(format!("/tank/velo/demo/{branch}.0/pgdata")),
        }
    }

    /// The world exactly as the state says.
    fn healthy() -> Observed {
        let mut datasets = BTreeMap::new();
        for (name, origin) in [
            ("tank/velo", None),
            ("tank/velo/demo", None),
            ("tank/velo/demo/main.0", None),
            ("tank/velo/demo/dev.0", Some("tank/velo/demo/main.0@s1")),
        ] {
            datasets.insert(name.to_string(), fs(Some(HOME), origin, name));
        }
        datasets.insert("tank/velo/demo/main.0@s1".into(), snap());
        Observed {
            pools: BTreeSet::from(["tank".to_string()]),
            datasets,
            containers: vec![container("main", true), container("dev", true)],
            ..Observed::default()
        }
    }

    fn idle(b: &Branch) -> Activity {
        match &b.busy {
            None => Activity::Idle,
            Some(x) if x.pid == 1 => Activity::Live {
                operation: x.operation.clone(),
                pid: 1,
            },
            Some(x) => Activity::Interrupted {
                operation: x.operation.clone(),
                pid: x.pid,
            },
        }
    }

    fn kinds(state: &State, seen: &Observed) -> Vec<(String, &'static str)> {
        compare(state, HOME, PROP, seen, &idle)
            .findings
            .iter()
            .map(|f| (f.place(), f.kind()))
            .collect()
    }

    fn kind(place: &str, kind: &'static str) -> (String, &'static str) {
        (place.to_string(), kind)
    }

    fn busy(pid: u32) -> Option<Busy> {
        Some(Busy {
            operation: "branch reset".into(),
            pid,
            since: Utc::now(),
        })
    }

    #[test]
    fn agreement_is_clean() {
        let c = compare(&state(), HOME, PROP, &healthy(), &idle);
        assert_eq!(c.findings, vec![]);
        assert_eq!(c.checked, 2);
    }

    #[test]
    fn containers_removed_stopped_or_started_by_hand() {
        let mut seen = healthy();
        seen.containers.retain(|c| c.branch != "dev");
        assert_eq!(
            kinds(&state(), &seen),
            vec![kind("demo/dev", "container-gone")]
        );

        let mut seen = healthy();
        seen.containers[1].running = false;
        let c = compare(&state(), HOME, PROP, &seen, &idle);
        assert_eq!(c.findings.len(), 1);
        assert_eq!(c.findings[0].kind(), "stopped");
        assert!(
            c.findings[0].cause.contains("docker stop"),
            "{:?}",
            c.findings
        );

        let mut st = state();
        st.projects
            .values_mut()
            .next()
            .unwrap()
            .branches
            .values_mut()
            .next()
            .unwrap()
            .desired = RunState::Stopped;
        assert_eq!(
            kinds(&st, &healthy()),
            vec![kind("demo/dev", "running-unasked")]
        );
    }

    #[test]
    fn every_container_stopped_reads_as_a_docker_restart() {
        let mut seen = healthy();
        for c in &mut seen.containers {
            c.running = false;
        }
        let c = compare(&state(), HOME, PROP, &seen, &idle);
        assert_eq!(c.findings.len(), 2);
        assert!(
            c.findings
                .iter()
                .all(|f| f.kind() == "stopped" && f.cause.contains("dockerd"))
        );
    }

    #[test]
    fn a_container_on_other_data() {
        let mut seen = healthy();
        seen.containers[1].data_source = Some("/tank/velo/demo/dev.1/pgdata".into());
        let c = compare(&state(), HOME, PROP, &seen, &idle);
        assert_eq!(c.findings[0].kind(), "container-on-other-data");
        assert_eq!(
            c.findings[0].branch.as_ref().unwrap().to_string(),
            "demo/dev"
        );
    }

    #[test]
    fn destroyed_datasets_are_forgotten_except_main() {
        let mut seen = healthy();
        seen.datasets.remove("tank/velo/demo/dev.0");
        seen.containers.retain(|c| c.branch != "dev");
        let c = compare(&state(), HOME, PROP, &seen, &idle);
        assert_eq!(c.findings.len(), 1, "{:?}", c.findings);
        assert!(c.findings[0].fixable());
        assert_eq!(c.findings[0].kind(), "data-gone");

        let mut seen = healthy();
        seen.datasets.remove("tank/velo/demo/main.0");
        let c = compare(&state(), HOME, PROP, &seen, &idle);
        assert_eq!(c.findings.len(), 1, "{:?}", c.findings);
        assert!(!c.findings[0].fixable());

        let mut seen = healthy();
        seen.datasets
            .retain(|n, _| !n.starts_with("tank/velo/demo"));
        assert_eq!(kinds(&state(), &seen), vec![kind("demo", "project-gone")]);
    }

    #[test]
    fn an_unimported_pool_is_not_data_gone() {
        let mut seen = healthy();
        seen.pools.clear();
        seen.datasets.clear();
        assert_eq!(kinds(&state(), &seen), vec![kind("tank", "pool-missing")]);
    }

    #[test]
    fn unmounted_and_dead_mounts() {
        let mut seen = healthy();
        seen.datasets
            .get_mut("tank/velo/demo/dev.0")
            .unwrap()
            .mounted = false;
        let c = compare(&state(), HOME, PROP, &seen, &idle);
        assert_eq!(c.findings.len(), 1);
        assert!(c.findings[0].cause.contains("zfs unmount"));

        let mut seen = healthy();
        seen.stale_mounts.insert("/tank/velo/demo/dev.0".into());
        let c = compare(&state(), HOME, PROP, &seen, &idle);
        assert_eq!(
            c.findings[0].problem,
            Problem::Unmounted {
                dataset: "tank/velo/demo/dev.0".into(),
                mountpoint: "/tank/velo/demo/dev.0".into(),
                stale: true
            }
        );
        assert!(c.findings[0].cause.contains("zfs-fuse"));
    }

    #[test]
    fn a_port_taken_matters_only_while_the_container_is_down() {
        let mut seen = healthy();
        seen.ports_taken.insert(54321);
        assert_eq!(kinds(&state(), &seen), vec![]);
        seen.containers[1].running = false;
        assert_eq!(
            kinds(&state(), &seen),
            vec![kind("demo/dev", "stopped"), kind("demo/dev", "port-taken")]
        );
    }

    #[test]
    fn orphans_are_only_this_homes() {
        let mut seen = healthy();
        let mut add = |name: &str, mark: Option<&str>| {
            seen.datasets.insert(name.into(), fs(mark, None, name));
        };
        add("tank/velo/demo/old.3", Some(HOME));
        add("tank/velo/demo/premark.0", None);
        add("tank/velo/demo/theirs.0", Some("/home/b/.velo"));
        add("tank/velo/gone", Some(HOME));
        add("tank/velo/gone/main.0", Some(HOME));
        add("tank/velo/other", None);
        add("tank/velo/other/main.0", None);
        seen.datasets
            .insert("tank/velo/demo/dev.0@junk".into(), snap());
        seen.datasets
            .insert("tank/velo/other/main.0@x".into(), snap());
        let mut stray = container("lost", false);
        stray.project = "demo".into();
        seen.containers.push(stray);
        assert_eq!(
            kinds(&state(), &seen),
            vec![
                kind("velo-demo.lost", "orphan-container"),
                kind("tank/velo/demo/old.3", "orphan-dataset"),
                kind("tank/velo/demo/premark.0", "orphan-dataset"),
                kind("tank/velo/gone", "orphan-dataset"),
                kind("tank/velo/demo/dev.0@junk", "orphan-snapshot"),
            ]
        );
        let f = compare(&state(), HOME, PROP, &seen, &idle).findings;
        assert!(
            f.iter()
                .filter(|f| f.kind() != "orphan-container")
                .all(Finding::needs_force)
        );
    }

    #[test]
    fn a_forgotten_branch_leaves_its_clone_and_base_snapshot_as_orphans() {
        let mut seen = healthy();
        seen.datasets.insert(
            "tank/velo/demo/extra.0".into(),
            fs(
                Some(HOME),
                Some("tank/velo/demo/main.0@s9"),
                "tank/velo/demo/extra.0",
            ),
        );
        seen.datasets
            .insert("tank/velo/demo/main.0@s9".into(), snap());
        assert_eq!(
            kinds(&state(), &seen),
            vec![
                kind("tank/velo/demo/extra.0", "orphan-dataset"),
                kind("tank/velo/demo/main.0@s9", "orphan-snapshot"),
            ]
        );
    }

    #[test]
    fn orphan_clones_come_before_their_origins() {
        let mut seen = healthy();
        for (name, origin) in [
            ("tank/velo/demo/a.0", None),
            ("tank/velo/demo/b.0", Some("tank/velo/demo/a.0@x")),
            ("tank/velo/demo/c.0", Some("tank/velo/demo/b.0@y")),
        ] {
            seen.datasets
                .insert(name.into(), fs(Some(HOME), origin, name));
        }
        let order: Vec<String> = kinds(&state(), &seen).into_iter().map(|(w, _)| w).collect();
        assert_eq!(
            order,
            [
                "tank/velo/demo/c.0",
                "tank/velo/demo/b.0",
                "tank/velo/demo/a.0"
            ]
        );
    }

    #[test]
    fn an_orphan_that_feeds_a_clone_is_kept() {
        let mut seen = healthy();
        seen.datasets.insert(
            "tank/velo/demo/dev.0".into(),
            fs(
                Some(HOME),
                Some("tank/velo/demo/old.1@s"),
                "tank/velo/demo/dev.0",
            ),
        );
        seen.datasets
            .insert("tank/velo/demo/old.1".into(), fs(Some(HOME), None, "x"));
        seen.datasets
            .insert("tank/velo/demo/old.1@s".into(), snap());
        assert_eq!(kinds(&state(), &seen), vec![]);
    }

    #[test]
    fn live_commands_are_left_alone_and_interrupted_ones_reported() {
        let mut st = state();
        let p = st.projects.values_mut().next().unwrap();
        p.branches.get_mut(&"dev".parse().unwrap()).unwrap().busy = busy(1);
        let mut seen = healthy();
        // A reset in progress: the next generation is cloned, the parent snapshotted, the
        // container swapped; none of it recorded yet.
        seen.datasets.insert(
            "tank/velo/demo/dev.1".into(),
            fs(
                Some(HOME),
                Some("tank/velo/demo/main.0@s2"),
                "tank/velo/demo/dev.1",
            ),
        );
        seen.datasets
            .insert("tank/velo/demo/main.0@s2".into(), snap());
        seen.containers[1].data_source = Some("/tank/velo/demo/dev.1/pgdata".into());
        let c = compare(&st, HOME, PROP, &seen, &idle);
        assert_eq!(c.findings, vec![]);
        assert_eq!(c.in_progress.len(), 1);

        let p = st.projects.values_mut().next().unwrap();
        p.branches.get_mut(&"dev".parse().unwrap()).unwrap().busy = busy(999_999);
        assert_eq!(
            kinds(&st, &seen),
            vec![
                kind("demo/dev", "interrupted"),
                kind("demo/dev", "container-on-other-data"),
                kind("tank/velo/demo/dev.1", "orphan-dataset"),
                kind("tank/velo/demo/main.0@s2", "orphan-snapshot"),
            ]
        );
    }
}
