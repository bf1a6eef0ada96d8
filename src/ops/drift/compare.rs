//! The pure half of drift detection: velo's state against what the storages, runtimes and the
//! host's ports say, as a list of [`Finding`]s. No I/O here, so every case is unit-tested on
//! fake inputs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::names::{self, BranchRef, ProjectName, SnapshotRef, VolumeId};
use crate::runtime::ManagedServer;
use crate::state::{Branch, Project, RunState, State, StorageRecord};
use crate::storage::{Availability, Entry, Inventory};

pub use super::findings::{Finding, Problem};

/// What velo saw of the world, gathered in a handful of calls (see [`super::observe`]).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Each storage the projects use, with what it holds of velo's.
    pub storages: BTreeMap<StorageRecord, Inventory>,
    /// The servers labelled with this velo home.
    pub servers: Vec<ManagedServer>,
    /// Ports of branches whose server is not running that something else listens on.
    pub ports_taken: BTreeSet<u16>,
}

/// Whether a command is working on a branch. This is the one question drift asks about
/// operations in progress.
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

/// The comparison's result: findings, and the branches left alone because a live command is
/// working on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    pub findings: Vec<Finding>,
    pub in_progress: Vec<(BranchRef, String, u32)>,
    /// How many branches were compared.
    pub checked: usize,
}

/// A storage's name for a volume.
pub type Namer<'a> = &'a dyn Fn(&StorageRecord, &VolumeId) -> String;

/// What the state records, and what a live command may be creating right now.
pub struct Known {
    volumes: BTreeSet<(StorageRecord, VolumeId)>,
    snapshots: BTreeSet<(StorageRecord, SnapshotRef)>,
    /// Branches a live command works on: a reset or restore clones its next generation before
    /// the state records it.
    live_branches: BTreeSet<(ProjectName, names::BranchName)>,
    /// Projects with a live command: it may be taking a snapshot the state does not record yet
    /// (a reset snapshots the parent before it records the origin).
    live_projects: BTreeSet<ProjectName>,
    /// Each project's storage.
    projects: BTreeMap<ProjectName, StorageRecord>,
    servers: BTreeSet<String>,
}

impl Known {
    pub fn new(state: &State, activity: &dyn Fn(&Branch) -> Activity) -> Known {
        let mut k = Known {
            volumes: BTreeSet::new(),
            snapshots: BTreeSet::new(),
            live_branches: BTreeSet::new(),
            live_projects: BTreeSet::new(),
            projects: BTreeMap::new(),
            servers: BTreeSet::new(),
        };
        for p in &state.prepared {
            k.volumes.insert((p.storage.clone(), p.volume()));
            k.snapshots.insert((p.storage.clone(), p.snapshot_ref()));
        }
        for (pname, p) in &state.projects {
            let rec = &p.storage;
            k.projects.insert(pname.clone(), rec.clone());
            for s in &p.snapshots {
                let r = BranchRef::new(pname.clone(), s.branch.clone());
                let s = SnapshotRef {
                    volume: VolumeId::new(&r, s.generation),
                    id: s.id.clone(),
                };
                k.snapshots.insert((rec.clone(), s));
            }
            for (bname, b) in &p.branches {
                let r = BranchRef::new(pname.clone(), bname.clone());
                k.servers.insert(names::server_name(&r));
                let generations = b.retired.iter().map(|g| (g.generation, g.origin.as_ref()));
                for (generation, origin) in generations.chain([(b.generation, b.origin.as_ref())]) {
                    k.volumes
                        .insert((rec.clone(), VolumeId::new(&r, generation)));
                    if let Some(o) = origin {
                        k.snapshots.insert((rec.clone(), o.snapshot_ref(pname)));
                    }
                }
                if let Activity::Live { .. } = activity(b) {
                    k.live_branches.insert((pname.clone(), bname.clone()));
                    k.live_projects.insert(pname.clone());
                }
            }
        }
        // Names another live command holds for a branch the state does not record yet (a
        // rename's new name): its servers, volumes and snapshots are work in progress.
        let others = state
            .journal
            .iter()
            .filter(|op| op.owner.pid != std::process::id() && op.owner.is_alive());
        for op in others {
            for b in &op.branches {
                let r = BranchRef::new(op.project.clone(), b.clone());
                k.servers.insert(names::server_name(&r));
                k.live_branches.insert((op.project.clone(), b.clone()));
            }
            k.live_projects.insert(op.project.clone());
        }
        k
    }

    /// Whether a server belongs to a branch the state records.
    pub fn owns_server(&self, name: &str) -> bool {
        self.servers.contains(name)
    }

    /// Whether a volume is recorded, or may be a live command's work in progress.
    pub fn holds_volume(&self, rec: &StorageRecord, v: &VolumeId) -> bool {
        self.volumes.contains(&(rec.clone(), v.clone()))
            || self
                .live_branches
                .contains(&(v.project.clone(), v.branch.clone()))
    }

    /// Whether a snapshot is recorded, or may be a live command's work in progress.
    pub fn holds_snapshot(&self, rec: &StorageRecord, s: &SnapshotRef) -> bool {
        self.snapshots.contains(&(rec.clone(), s.clone()))
            || self.live_projects.contains(&s.volume.project)
    }

    /// Whether an entry is this home's: marked with it, or (made before marks) in a project
    /// of this home on the same storage.
    fn ours(&self, rec: &StorageRecord, e: &Entry, home: &str) -> bool {
        match (&e.home, &e.volume, &e.snapshot) {
            (Some(mark), _, _) => mark == home,
            (None, Some(v), _) => self.projects.get(&v.project) == Some(rec),
            (None, None, Some(s)) => self.projects.get(&s.volume.project) == Some(rec),
            (None, None, None) => false,
        }
    }
}

/// Compares the state with what was observed. `home` is this velo home's mark; `activity`
/// says whether a command is working on a branch; `name_of` names a volume for reports.
pub fn compare(
    state: &State,
    home: &str,
    seen: &Observed,
    activity: &dyn Fn(&Branch) -> Activity,
    name_of: Namer<'_>,
) -> Comparison {
    let mut out = Comparison::default();
    let known = Known::new(state, activity);
    let restarts = Restarts::infer(state, seen);
    let mut missing = BTreeSet::new();
    for (pname, p) in &state.projects {
        match seen.storages.get(&p.storage) {
            Some(inv) if inv.present => {
                let ctx = ProjectView {
                    name: pname,
                    project: p,
                    inventory: inv,
                    seen,
                    restarts: &restarts,
                    name_of,
                };
                ctx.compare(activity, &mut out);
            }
            _ => {
                missing.insert(p.storage.clone());
            }
        }
    }
    for storage in missing {
        out.findings.push(Finding {
            project: None,
            branch: None,
            cause: match storage {
                StorageRecord::Zfs { .. } => {
                    "the pool was exported, or is not imported yet after a reboot"
                }
                _ => "its file system is not mounted, or the directory was removed",
            }
            .into(),
            problem: Problem::StorageMissing { storage },
        });
    }
    super::orphans::find(home, seen, &known, &mut out);
    out
}

/// What the observations say about daemons that restarted behind velo's back.
pub struct Restarts {
    pub runtime: bool,
    pub storage: bool,
}

impl Restarts {
    /// The runtime (or the host) restarted when none of several servers that should run
    /// does; the storage restarted when none of several volumes is mounted, or a dead mount is
    /// left behind.
    fn infer(state: &State, seen: &Observed) -> Restarts {
        let (mut should_run, mut runs, mut volumes, mut available, mut dead) = (0, 0, 0, 0, false);
        for (pname, p) in &state.projects {
            let entries = seen.storages.get(&p.storage).map(|i| i.entries.as_slice());
            for (bname, b) in &p.branches {
                let r = BranchRef::new(pname.clone(), bname.clone());
                let name = names::server_name(&r);
                if let Some(s) = seen.servers.iter().find(|s| s.name == name)
                    && b.desired == RunState::Running
                {
                    should_run += 1;
                    runs += usize::from(s.running);
                }
                let v = b.volume(&r);
                if let Some(e) =
                    entries.and_then(|es| es.iter().find(|e| e.volume.as_ref() == Some(&v)))
                {
                    volumes += 1;
                    available += usize::from(matches!(e.available, Availability::Available { .. }));
                    dead |= matches!(e.available, Availability::Dead { .. });
                }
            }
        }
        Restarts {
            runtime: should_run >= 2 && runs == 0,
            storage: dead || (volumes >= 2 && available == 0),
        }
    }
}

/// One project and what its storage holds.
struct ProjectView<'a> {
    name: &'a ProjectName,
    project: &'a Project,
    inventory: &'a Inventory,
    seen: &'a Observed,
    restarts: &'a Restarts,
    name_of: Namer<'a>,
}

impl ProjectView<'_> {
    fn entry(&self, v: &VolumeId) -> Option<&Entry> {
        self.inventory
            .entries
            .iter()
            .find(|e| e.volume.as_ref() == Some(v))
    }

    fn has_snapshot(&self, s: &SnapshotRef) -> bool {
        self.inventory
            .entries
            .iter()
            .any(|e| e.snapshot.as_ref() == Some(s))
    }

    fn compare(&self, activity: &dyn Fn(&Branch) -> Activity, out: &mut Comparison) {
        let p = self.project;
        let any_live = p
            .branches
            .values()
            .any(|b| matches!(activity(b), Activity::Live { .. }));
        let all_gone = p.branches.iter().all(|(bn, b)| {
            self.entry(&b.volume(&BranchRef::new(self.name.clone(), bn.clone())))
                .is_none()
        });
        if all_gone && !any_live {
            out.checked += p.branches.len();
            out.findings.push(Finding {
                project: Some(self.name.clone()),
                branch: None,
                problem: Problem::ProjectGone,
                cause: "destroyed outside velo".into(),
            });
            return;
        }
        for (bname, b) in &p.branches {
            let r = BranchRef::new(self.name.clone(), bname.clone());
            let mut found = Vec::new();
            match activity(b) {
                Activity::Live { operation, pid } => {
                    out.in_progress.push((r.clone(), operation, pid));
                    continue;
                }
                Activity::Interrupted { operation, pid } => found.push((
                    Problem::Interrupted { operation, pid },
                    "the process was killed, or the host lost power".to_string(),
                )),
                Activity::Idle => {}
            }
            out.checked += 1;
            self.branch(&r, b, &mut found);
            out.findings
                .extend(found.into_iter().map(|(problem, cause)| Finding {
                    project: Some(self.name.clone()),
                    branch: Some(r.clone()),
                    problem,
                    cause,
                }));
        }
    }

    fn branch(&self, r: &BranchRef, b: &Branch, found: &mut Vec<(Problem, String)>) {
        let gone = "destroyed outside velo".to_string();
        let v = b.volume(r);
        let name = (self.name_of)(&self.project.storage, &v);
        let Some(entry) = self.entry(&v) else {
            found.push((
                Problem::DataGone {
                    name,
                    main: r.branch.is_main(),
                },
                gone,
            ));
            return;
        };
        for g in &b.retired {
            let old = VolumeId::new(r, g.generation);
            if self.entry(&old).is_none() {
                let name = (self.name_of)(&self.project.storage, &old);
                found.push((
                    Problem::RetiredGone {
                        generation: g.generation,
                        name,
                    },
                    gone.clone(),
                ));
            }
        }
        for s in self
            .project
            .snapshots
            .iter()
            .filter(|s| s.branch == r.branch)
        {
            let sr = SnapshotRef {
                volume: VolumeId::new(r, s.generation),
                id: s.id.clone(),
            };
            if self.entry(&sr.volume).is_some() && !self.has_snapshot(&sr) {
                found.push((Problem::SnapshotGone { id: s.id.clone() }, gone.clone()));
            }
        }
        let path = match &entry.available {
            Availability::Available { path } => Some(path.clone()),
            Availability::Unmounted { path } | Availability::Dead { path } => {
                let stale = matches!(entry.available, Availability::Dead { .. });
                let cause = if stale {
                    "the zfs-fuse daemon died or was restarted and left its old mount behind"
                } else if self.restarts.storage {
                    "the storage was restarted (the zfs-fuse daemon, or the host rebooted): none of this home's volumes is mounted"
                } else {
                    "unmounted outside velo (`zfs unmount`)"
                };
                found.push((
                    Problem::Unmounted {
                        name: name.clone(),
                        path: path.clone(),
                        stale,
                    },
                    cause.into(),
                ));
                Some(path.clone())
            }
            Availability::NotApplicable => None,
        };
        self.server(r, b, &name, path, found);
    }

    fn server(
        &self,
        r: &BranchRef,
        b: &Branch,
        volume: &str,
        path: Option<PathBuf>,
        found: &mut Vec<(Problem, String)>,
    ) {
        let server = names::server_name(r);
        let live = self.seen.servers.iter().find(|s| s.name == server);
        let running = live.is_some_and(|s| s.running);
        match live {
            None => found.push((
                Problem::ServerGone {
                    server,
                    volume: volume.to_string(),
                },
                "removed outside velo (`docker rm`), or the runtime lost its servers".into(),
            )),
            Some(s) => {
                let expected = path.map(|p| crate::ops::server::data_dir(&p));
                if expected.is_some() && s.data_dir != expected {
                    found.push((
                        Problem::ServerOnOtherData {
                            server,
                            serving: s.data_dir.clone(),
                            expected: expected.unwrap_or_default(),
                        },
                        "an interrupted reset or restore, or a server made by hand".into(),
                    ));
                } else if s.outdated {
                    found.push((
                        Problem::ServerOutdated { server },
                        "made by velo 0.1, before servers had a private socket directory".into(),
                    ));
                } else if !s.volumes.is_empty() {
                    found.push((
                        Problem::HoldsVolumes {
                            server,
                            volumes: s.volumes.clone(),
                        },
                        "made by an older velo, whose containers let Docker create a volume for the image's VOLUME".into(),
                    ));
                } else if !s.running && b.desired == RunState::Running {
                    let cause = if self.restarts.runtime {
                        "the runtime or the host was restarted: none of this home's servers runs"
                    } else {
                        "stopped outside velo (`docker stop`), or PostgreSQL exited"
                    };
                    found.push((Problem::Stopped { server }, cause.into()));
                } else if s.running && b.desired == RunState::Stopped {
                    found.push((
                        Problem::RunningUnasked { server },
                        "started outside velo (`docker start`)".into(),
                    ));
                }
            }
        }
        if !running && self.seen.ports_taken.contains(&b.port) {
            found.push((
                Problem::PortTaken { port: b.port },
                format!(
                    "another program (or another velo home's branch) listens on 127.0.0.1:{}",
                    b.port
                ),
            ));
        }
    }
}

/// Orphans need [`Known::ours`] and the entry helpers.
pub(super) fn ours(known: &Known, rec: &StorageRecord, e: &Entry, home: &str) -> bool {
    known.ours(rec, e, home)
}
