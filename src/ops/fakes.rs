//! The operations on a fake storage, runtime and PostgreSQL: every step of create, reset,
//! restore, project create and delete made to fail, and what is left checked against what
//! was there before. The integration suite (tests/it) does the same on the real backends
//! for a sample of steps and for kill -9; this covers every step without them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::backends::Fixed;
use super::branch::{self, Source};
use super::choose::Choice;
use super::{Backends, Ctx, project};
use crate::config::Config;
use crate::names::{BranchRef, ProjectName};
use crate::pg::{BackupSession, Endpoint, PgError, Replication, Sql};
use crate::runtime::fake::FakeRuntime;
use crate::state::{RuntimeRecord, StorageRecord, Store};
use crate::storage::fake::FakeStorage;
use crate::ui::Shell;

/// PostgreSQL that answers at once when its server runs, or never when told so, with as many
/// clients connected as the world says.
struct FakeSql {
    runtime: Arc<FakeRuntime>,
    endpoint: Endpoint,
    silent: Arc<AtomicBool>,
    clients: Arc<AtomicU64>,
    standby: Arc<FakeStandby>,
}

/// What every fake server says of itself as a standby, and the positions it was asked to
/// replay to.
#[derive(Default)]
pub(super) struct FakeStandby {
    pub since_restartpoint: AtomicU64,
    pub replayed_to: Mutex<Vec<String>>,
}

struct FakeBackup;

#[async_trait]
impl BackupSession for FakeBackup {
    async fn stop(self: Box<Self>) -> Result<(String, String), PgError> {
        Ok(("label".into(), "000000010000000000000002".into()))
    }
}

#[async_trait]
impl Sql for FakeSql {
    async fn probe(&self) -> Result<bool, PgError> {
        Ok(!self.silent.load(Ordering::SeqCst)
            && self.runtime.running_on(&self.endpoint.socket_dir))
    }
    async fn checkpoint(&self) -> Result<String, PgError> {
        Ok("000000010000000000000001".into())
    }
    async fn set_password(&self, _: &str, _: &str) -> Result<(), PgError> {
        Ok(())
    }
    async fn flush_wal_archive(&self, _: Duration) -> Result<bool, PgError> {
        Ok(true)
    }
    async fn server_version(&self) -> Result<String, PgError> {
        Ok("17.2".into())
    }
    async fn batch(&self, _: &str) -> Result<(), PgError> {
        Ok(())
    }
    async fn client_connections(&self) -> Result<u64, PgError> {
        Ok(self.clients.load(Ordering::SeqCst))
    }
    async fn backup_start(&self) -> Result<Box<dyn BackupSession>, PgError> {
        Ok(Box::new(FakeBackup))
    }
    async fn replication(&self) -> Result<Replication, PgError> {
        Ok(Replication {
            receiver: "streaming".into(),
            replay_bytes: 0,
            since_last_commit: None,
        })
    }
    async fn since_restartpoint(&self) -> Result<u64, PgError> {
        Ok(self.standby.since_restartpoint.load(Ordering::SeqCst))
    }
    async fn replayed_to(&self, lsn: &str, _: Duration) -> Result<bool, PgError> {
        self.standby
            .replayed_to
            .lock()
            .unwrap()
            .push(lsn.to_string());
        Ok(true)
    }
}

pub(super) struct World {
    pub ctx: Ctx,
    pub storage: Arc<FakeStorage>,
    pub runtime: Arc<FakeRuntime>,
    silent: Arc<AtomicBool>,
    /// The clients every server reports connected (`pg_stat_activity`).
    pub clients: Arc<AtomicU64>,
    pub standby: Arc<FakeStandby>,
    _home: tempfile::TempDir,
}

/// What the world holds: the state's projects and branches, the storage's volumes and
/// snapshots, the runtime's servers and whether they run.
pub(super) type Snapshot = (String, BTreeSet<String>, Vec<(String, bool)>);

impl World {
    fn new() -> World {
        let home = tempfile::tempdir().unwrap();
        let (storage, runtime) = (
            Arc::new(FakeStorage::default()),
            Arc::new(FakeRuntime::default()),
        );
        let silent = Arc::new(AtomicBool::new(false));
        let clients = Arc::new(AtomicU64::new(0));
        let standby = Arc::new(FakeStandby::default());
        let (r, s, c, sb) = (
            runtime.clone(),
            silent.clone(),
            clients.clone(),
            standby.clone(),
        );
        let fixed = Fixed {
            storage: storage.clone(),
            runtime: runtime.clone(),
            sql: Arc::new(move |endpoint| {
                Arc::new(FakeSql {
                    runtime: r.clone(),
                    endpoint,
                    silent: s.clone(),
                    clients: c.clone(),
                    standby: sb.clone(),
                }) as Arc<dyn Sql>
            }),
        };
        let ctx = Ctx {
            config: Config::default(),
            store: Store::new(home.path()),
            shell: Shell::captured(),
            backends: Backends::fixed(home.path(), fixed),
            ready_timeout: None,
            idle_wait: super::background::IDLE_WAIT,
            ports: super::PORT_RANGE,
            background: false,
        };
        World {
            ctx,
            storage,
            runtime,
            silent,
            clients,
            standby,
            _home: home,
        }
    }

    /// A project `demo` with main and dev, both running.
    pub(super) async fn with_project() -> World {
        let w = World::new();
        let choice = Choice {
            storage: StorageRecord::Copy {
                dir: "/fake".into(),
            },
            runtime: RuntimeRecord::Docker {
                image: "fake".into(),
            },
            why: "tests".into(),
        };
        project::create_with(&w.ctx, &"demo".parse().unwrap(), choice, None)
            .await
            .unwrap();
        branch::create(&w.ctx, &r("demo/dev"), Source::Parent(None))
            .await
            .unwrap();
        w
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let state = self.ctx.store.read().unwrap();
        assert!(state.journal.is_empty(), "{:?}", state.journal);
        let branches = state
            .projects
            .iter()
            .map(|(n, p)| {
                let b: Vec<String> = p
                    .branches
                    .iter()
                    .map(|(bn, b)| format!("{bn}.{}@{}", b.generation, b.port))
                    .collect();
                format!("{n}: {}", b.join(" "))
            })
            .collect::<Vec<_>>()
            .join("; ");
        let servers = self
            .runtime
            .servers()
            .into_iter()
            .map(|(name, (_, running))| (name, running))
            .collect();
        (branches, self.storage.contents(), servers)
    }
}

pub(super) fn r(s: &str) -> BranchRef {
    s.parse().unwrap()
}

pub(super) fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A failure injected into the fakes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    Storage(&'static str),
    Runtime(&'static str),
    /// The server starts and exits at once.
    Dies,
}

impl Fault {
    pub(super) fn inject(self, w: &World) {
        match self {
            Fault::Storage(op) => w.storage.fail_next(op),
            Fault::Runtime(op) => w.runtime.fail_next(op),
            Fault::Dies => w.runtime.next_start_dies("FATAL: something broke"),
        }
    }
}

#[test]
fn a_branch_create_that_fails_at_any_step_leaves_nothing() {
    tokio().block_on(async {
        for fault in [
            Fault::Storage("snapshot"),
            Fault::Storage("clone"),
            Fault::Runtime("create"),
            Fault::Runtime("start"),
            Fault::Dies,
        ] {
            let w = World::with_project().await;
            let before = w.snapshot();
            fault.inject(&w);
            let err = branch::create(&w.ctx, &r("demo/new"), Source::Parent(None))
                .await
                .unwrap_err();
            assert!(
                format!("{err:#}").contains("nothing was left behind"),
                "{fault:?}: {err:#}"
            );
            assert_eq!(w.snapshot(), before, "{fault:?}");
        }
    });
}

#[test]
fn a_reset_or_restore_that_fails_at_any_step_leaves_the_branch_as_it_was() {
    tokio().block_on(async {
        for fault in [
            Fault::Runtime("rename"),
            Fault::Storage("snapshot"),
            Fault::Storage("clone"),
            Fault::Runtime("create"),
            Fault::Runtime("start"),
            Fault::Dies,
        ] {
            let w = World::with_project().await;
            super::snapshot::create(&w.ctx, &r("demo/dev"), None, Duration::ZERO)
                .await
                .unwrap();
            let id = w.ctx.store.read().unwrap().projects[&"demo".parse::<ProjectName>().unwrap()]
                .snapshots[0]
                .id
                .to_string();
            let before = w.snapshot();
            fault.inject(&w);
            let err = branch::reset(&w.ctx, &r("demo/dev")).await.unwrap_err();
            assert!(
                format!("{err:#}").contains("the branch is as it was"),
                "{fault:?}: {err:#}"
            );
            assert_eq!(w.snapshot(), before, "reset, {fault:?}");
            if matches!(fault, Fault::Storage("snapshot")) {
                continue; // A restore takes no snapshot.
            }
            fault.inject(&w);
            branch::restore(&w.ctx, &r("demo/dev"), &id)
                .await
                .unwrap_err();
            assert_eq!(w.snapshot(), before, "restore, {fault:?}");
        }
    });
}

#[test]
fn a_project_create_that_fails_at_any_step_leaves_nothing() {
    tokio().block_on(async {
        for fault in [
            Fault::Storage("create_volume"),
            Fault::Runtime("make_data_dir"),
            Fault::Runtime("init"),
            Fault::Runtime("create"),
            Fault::Runtime("start"),
            Fault::Dies,
        ] {
            let w = World::new();
            fault.inject(&w);
            let choice = Choice {
                storage: StorageRecord::Copy {
                    dir: "/fake".into(),
                },
                runtime: RuntimeRecord::Docker {
                    image: "fake".into(),
                },
                why: "tests".into(),
            };
            let err = project::create_with(&w.ctx, &"demo".parse().unwrap(), choice, None)
                .await
                .unwrap_err();
            assert!(
                format!("{err:#}").contains("nothing was left behind"),
                "{fault:?}: {err:#}"
            );
            // Nothing of the project; a prepared cluster only if it was finished (recorded),
            // for the next project to use.
            let kept: BTreeSet<String> = w
                .ctx
                .store
                .read()
                .unwrap()
                .prepared
                .iter()
                .flat_map(|p| [p.volume().to_string(), p.snapshot_ref().to_string()])
                .collect();
            assert_eq!(w.snapshot(), (String::new(), kept, Vec::new()), "{fault:?}");
            let archives = w.ctx.archives().project_dir(&"demo".parse().unwrap());
            assert!(!archives.exists(), "{fault:?}: archive left");
        }
    });
}

#[test]
fn projects_are_clones_of_one_prepared_cluster_made_once() {
    tokio().block_on(async {
        let w = World::with_project().await;
        let choice = Choice {
            storage: StorageRecord::Copy {
                dir: "/fake".into(),
            },
            runtime: RuntimeRecord::Docker {
                image: "fake".into(),
            },
            why: "tests".into(),
        };
        w.runtime.fail_next("init");
        project::create_with(&w.ctx, &"other".parse().unwrap(), choice, None)
            .await
            .unwrap();
        let state = w.ctx.store.read().unwrap();
        assert_eq!(state.prepared.len(), 1, "one prepared cluster for both");
        let name = &state.prepared[0].name;
        for p in state.projects.values() {
            assert_eq!(p.prepared_from.as_ref(), Some(name));
        }
        assert!(
            w.ctx.shell.output().matches("- Initialise").count() == 1,
            "initdb ran once: {}",
            w.ctx.shell.output()
        );
    });
}

#[test]
fn a_server_that_never_answers_is_given_up_and_rolled_back() {
    tokio().block_on(async {
        let mut w = World::with_project().await;
        let before = w.snapshot();
        w.silent.store(true, Ordering::SeqCst);
        w.ctx.ready_timeout = Some(Duration::from_millis(300));
        let err = branch::create(&w.ctx, &r("demo/slow"), Source::Parent(None))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("was not ready"), "{err:#}");
        assert_eq!(w.snapshot(), before);
    });
}

#[test]
fn a_port_taken_meanwhile_moves_a_new_branch_to_another() {
    tokio().block_on(async {
        let w = World::with_project().await;
        w.runtime.next_start_dies(
            "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use",
        );
        branch::create(&w.ctx, &r("demo/moved"), Source::Parent(None))
            .await
            .unwrap();
        assert!(w.ctx.shell.output().contains("was taken meanwhile; using"));
        let servers = w.runtime.servers();
        assert!(servers["velo-demo.moved"].1, "it runs");
    });
}

#[test]
fn a_port_taken_during_a_reset_moves_the_branch_to_another() {
    tokio().block_on(async {
        let w = World::with_project().await;
        let port = |w: &World| {
            w.ctx.store.read().unwrap().projects[&"demo".parse().unwrap()].branches
                [&"dev".parse().unwrap()]
                .port
        };
        let before = port(&w);
        w.runtime.next_start_dies(
            "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use",
        );
        branch::reset(&w.ctx, &r("demo/dev")).await.unwrap();
        assert!(w.ctx.shell.output().contains("was taken meanwhile"));
        assert_ne!(port(&w), before, "the branch moved");
        assert!(w.runtime.servers()["velo-demo.dev"].1, "it runs");
        assert!(w.ctx.store.read().unwrap().journal.iter().next().is_none());
    });
}

/// Makes every open operation's owner a process that is gone, as after the command exits.
fn orphan_all(w: &World) {
    use crate::state::Owner;
    w.ctx
        .store
        .update(|s| {
            let ids: Vec<String> = s.journal.iter().map(|op| op.id.clone()).collect();
            for id in ids {
                if let Some(op) = s.journal.get_mut(&id) {
                    op.owner = Owner {
                        pid: u32::MAX - 1,
                        started: None,
                    };
                }
            }
            Ok::<_, anyhow::Error>(())
        })
        .unwrap();
}

#[test]
fn a_delete_that_fails_before_forgetting_is_finished_when_run_again() {
    tokio().block_on(async {
        let w = World::with_project().await;
        w.runtime.fail_next("remove");
        let err = branch::delete(&w.ctx, &r("demo/dev"), false)
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("run `velo branch delete"),
            "{err:#}"
        );
        let (branches, _, _) = w.snapshot();
        assert!(branches.contains("dev"), "{branches}");
        branch::delete(&w.ctx, &r("demo/dev"), false).await.unwrap();
        let (branches, contents, servers) = w.snapshot();
        assert!(!branches.contains("dev"), "{branches}");
        assert!(contents.iter().all(|c| !c.contains("dev")), "{contents:?}");
        assert_eq!(servers, vec![("velo-demo.main".to_string(), true)]);
    });
}

#[test]
fn data_a_delete_could_not_destroy_is_destroyed_by_the_next_command() {
    tokio().block_on(async {
        let w = World::with_project().await;
        w.storage.fail_next("destroy_volume");
        branch::delete(&w.ctx, &r("demo/dev"), false).await.unwrap();
        let said = w.ctx.shell.output();
        assert!(said.contains("the next velo command tries again"), "{said}");
        // The branch is gone at once; its data stays recorded until it is destroyed.
        let state = w.ctx.store.read().unwrap();
        let pending = super::background::pending(&state);
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert!(pending[0].to_string().contains("dev"), "{}", pending[0]);
        assert!(
            !state
                .projects
                .values()
                .any(|p| p.branch(&r("demo/dev").branch).is_some())
        );
        drop(state);
        assert!(w.storage.contents().iter().any(|c| c.contains("dev")));
        orphan_all(&w);
        super::recover::recover(&w.ctx).await;
        let (branches, contents, servers) = w.snapshot();
        assert!(!branches.contains("dev"), "{branches}");
        assert!(contents.iter().all(|c| !c.contains("dev")), "{contents:?}");
        assert_eq!(servers, vec![("velo-demo.main".to_string(), true)]);
    });
}

#[test]
fn a_project_delete_forgets_first_and_destroys_after() {
    tokio().block_on(async {
        let w = World::with_project().await;
        w.storage.fail_next("destroy_project");
        project::delete(&w.ctx, &"demo".parse().unwrap(), true)
            .await
            .unwrap();
        let state = w.ctx.store.read().unwrap();
        assert!(state.projects.is_empty());
        assert_eq!(super::background::pending(&state).len(), 1);
        drop(state);
        assert!(w.storage.contents().iter().any(|c| c.starts_with("demo")));
        assert!(w.runtime.servers().is_empty());
        orphan_all(&w);
        super::recover::recover(&w.ctx).await;
        let (branches, contents, servers) = w.snapshot();
        assert_eq!(branches, "");
        // Only the prepared cluster stays, for the next project.
        assert!(
            contents.iter().all(|c| c.starts_with("prepared/")),
            "{contents:?}"
        );
        assert!(servers.is_empty());
    });
}

#[test]
fn a_killed_command_is_rolled_back_by_the_next() {
    use crate::names::{SnapshotId, SnapshotRef, VolumeId};
    use crate::state::{Branch, Forget, Owner, Recovery, UndoStep};
    use crate::storage::Storage;
    tokio().block_on(async {
        let w = World::with_project().await;
        let before = w.snapshot();
        // What a branch create killed after its clone leaves behind: its reservation, a
        // snapshot and a clone, each recorded in the journal first, and an owner that is gone.
        let (main, ghost) = (r("demo/main"), r("demo/ghost"));
        let snap: SnapshotId = "0123456789ab".parse().unwrap();
        let mut undo = w
            .ctx
            .store
            .update(|s| {
                let undo = super::Undo::begin(
                    s,
                    super::journal::Intent {
                        command: "branch create",
                        project: &ghost.project,
                        branches: vec![ghost.branch.clone()],
                        pins: Vec::new(),
                        recovery: Recovery::RollBack {
                            forget: Forget::NewBranch,
                        },
                    },
                );
                let b = Branch::new(
                    Some(main.branch.clone()),
                    54999,
                    None,
                    super::busy_marker("branch create"),
                );
                super::get_project_mut(s, &ghost.project)?
                    .branches
                    .insert(ghost.branch.clone(), b);
                Ok::<_, anyhow::Error>(undo)
            })
            .unwrap();
        let taken = SnapshotRef {
            volume: VolumeId::new(&main, 0),
            id: snap.clone(),
        };
        let step = UndoStep::DestroySnapshot {
            branch: main.branch.clone(),
            generation: 0,
            id: snap,
        };
        undo.intend(&w.ctx, "snapshot", step).await.unwrap();
        w.storage.snapshot(&taken).await.unwrap();
        let step = UndoStep::DestroyVolume {
            branch: ghost.branch.clone(),
            generation: 0,
        };
        undo.intend(&w.ctx, "clone", step).await.unwrap();
        w.storage
            .clone_snapshot(&taken, &VolumeId::new(&ghost, 0))
            .await
            .unwrap();
        drop(undo);
        w.ctx
            .store
            .update(|s| {
                for op in s.journal.0.iter_mut() {
                    op.owner = Owner {
                        pid: u32::MAX - 1,
                        started: None,
                    };
                }
                Ok::<_, anyhow::Error>(())
            })
            .unwrap();
        super::recover::recover(&w.ctx).await;
        let out = w.ctx.shell.output();
        assert!(out.contains("was interrupted; rolling it back"), "{out}");
        assert!(
            out.contains("Recovered `velo branch create` on `demo/ghost`"),
            "{out}"
        );
        assert_eq!(w.snapshot(), before);
    });
}
