//! The native runtime driven through [`Runtime`], with a fake `postgres` (a shell script) in
//! place of PostgreSQL, which refuses root, the user the test suite runs as. The script does
//! what velo relies on a postmaster doing: it enters its data directory, writes
//! `postmaster.pid`, starts a child, and (unless told to ignore it) ends on SIGINT.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Instant;

use super::*;
use crate::runtime::Labels;

const HOME_LABEL: &str = "/home/me/.velo";

/// A fake postmaster; `on_int` is the shell's SIGINT trap. Like PostgreSQL's, its child (the
/// same program, so also called `postgres`) runs in a session of its own, and has a child of
/// its own (as an archiver has its `archive_command`).
fn fake_postgres(bindir: &Path, on_int: &str) {
    std::fs::create_dir_all(bindir).unwrap();
    let script = format!(
        r#"#!/bin/sh
if [ "$1" = child ]; then
    trap 'kill $!; exit 0' TERM
    sleep 60 &
    wait
    exit 0
fi
trap '{on_int}' INT
cd "$2" || exit 1
printf '%s\n%s\n' "$$" "$2" > postmaster.pid
{{ echo "args: $*"; env; echo "session: $(cut -d' ' -f6 /proc/$$/stat)"; }} > report.tmp
setsid "$0" child &
echo "ready to accept connections"
mv report.tmp report
wait
"#
    );
    for program in ["postgres", "initdb"] {
        let path = bindir.join(program);
        std::fs::write(&path, &script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

struct Rig {
    dir: tempfile::TempDir,
    rt: NativeRuntime,
}

impl Rig {
    fn new(on_int: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        fake_postgres(&dir.path().join("bin"), on_int);
        std::fs::create_dir(dir.path().join("home")).unwrap();
        let rt = NativeRuntime::new(
            dir.path().join("bin"),
            dir.path().join("home"),
            HOME_LABEL.into(),
        );
        Rig { dir, rt }
    }

    /// A server spec whose data directory exists (`<tmp>/<branch>/pgdata`).
    fn spec(&self, name: &str, branch: &str) -> ServerSpec {
        let root = self.dir.path().join(branch);
        std::fs::create_dir_all(root.join("pgdata")).unwrap();
        std::fs::create_dir_all(root.join("run")).unwrap();
        ServerSpec {
            name: name.into(),
            user: crate::runtime::ServerUser {
                uid: 1000,
                gid: 1000,
            },
            labels: Labels {
                project: "demo".into(),
                branch: branch.into(),
                home: HOME_LABEL.into(),
            },
            paths: ServerPaths {
                data_dir: root.join("pgdata"),
                socket_dir: root.join("run"),
                archive_dir: root.join("wal"),
                archives_root: root.join("wal"),
                hba_file: root.join("pg_hba.conf"),
                secrets_dir: None,
                source_wal: None,
            },
            settings: vec![
                ("port".into(), "54321".into()),
                ("archive_command".into(), "cp %p /x/%f".into()),
            ],
        }
    }

    async fn started(&self, spec: &ServerSpec) -> Identity {
        let _ = std::fs::remove_file(spec.paths.data_dir.join("report"));
        self.rt.start(&spec.name).await.unwrap();
        let report = spec.paths.data_dir.join("report");
        let start = Instant::now();
        while !report.exists() && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            report.exists(),
            "{}",
            self.rt.logs_tail(&spec.name, 10).await
        );
        self.rt.registry.process(&spec.name).unwrap().unwrap()
    }
}

/// The processes (not zombies) working in the data directory of `spec`, whatever they are.
fn serving(spec: &ServerSpec) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc::stat(*pid).is_some_and(|s| !s.is_zombie()))
        .filter(|pid| proc::cwd(*pid).as_deref() == Some(spec.paths.data_dir.as_path()))
        .collect()
}

fn report(spec: &ServerSpec) -> String {
    std::fs::read_to_string(spec.paths.data_dir.join("report")).unwrap()
}

#[tokio::test]
async fn a_server_starts_in_its_own_session_with_nothing_of_velos_environment() {
    let rig = Rig::new("kill $!; exit 0");
    let spec = rig.spec("velo-demo.main", "main");
    assert_eq!(
        rig.rt.status(&spec.name).await.unwrap(),
        ServerStatus::Missing
    );
    rig.rt.create(&spec).await.unwrap();
    assert!(rig.rt.create(&spec).await.is_err(), "the name is taken");
    let stopped = ServerStatus::Stopped { exit_code: None };
    assert_eq!(rig.rt.status(&spec.name).await.unwrap(), stopped);

    let id = rig.started(&spec).await;
    let text = report(&spec);
    let data = spec.paths.data_dir.display();
    assert!(
        text.contains(&format!(
            "args: -D {data} -c port=54321 -c archive_command=cp %p /x/%f"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("session: {}", id.pid)), "{text}");
    assert!(text.contains("LC_MESSAGES=C\n"), "{text}");
    assert!(!text.contains("CARGO"), "velo's environment leaked: {text}");
    assert_eq!(
        rig.rt.status(&spec.name).await.unwrap(),
        ServerStatus::Running
    );

    rig.rt.start(&spec.name).await.unwrap();
    assert_eq!(rig.rt.registry.process(&spec.name).unwrap(), Some(id));
    assert!(
        rig.rt
            .logs_tail(&spec.name, 5)
            .await
            .contains("ready to accept connections")
    );

    rig.rt
        .stop(&spec.name, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(rig.rt.status(&spec.name).await.unwrap(), stopped);
    rig.rt
        .stop(&spec.name, Duration::from_secs(1))
        .await
        .unwrap();
    rig.rt.kill(&spec.name).await.unwrap();
}

#[tokio::test]
async fn kill_ends_every_process_of_the_server_and_stop_falls_back_to_it() {
    let rig = Rig::new("");
    let spec = rig.spec("velo-demo.main", "main");
    rig.rt.create(&spec).await.unwrap();
    let id = rig.started(&spec).await;
    let t = Instant::now();
    rig.rt
        .stop(&spec.name, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "SIGINT is ignored"
    );
    assert_eq!(id.presence(), Presence::Gone);
    assert_eq!(serving(&spec), Vec::<u32>::new(), "the child went with it");

    let id = rig.started(&spec).await;
    let start = Instant::now();
    while serving(&spec).len() < 3 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        serving(&spec).len(),
        3,
        "the postmaster, its child and grandchild"
    );
    rig.rt.kill(&spec.name).await.unwrap();
    assert_eq!(id.presence(), Presence::Gone);
    assert_eq!(serving(&spec), Vec::<u32>::new());
    rig.rt.kill(&spec.name).await.unwrap();
    rig.rt.remove(&spec.name).await.unwrap();
    rig.rt.remove(&spec.name).await.unwrap();
    rig.rt.kill("never-made").await.unwrap();
    rig.rt
        .stop("never-made", Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn stale_locks_go_and_a_live_postmasters_stays() {
    let rig = Rig::new("kill $!; exit 0");
    let main = rig.spec("velo-demo.main", "main");
    rig.rt.create(&main).await.unwrap();
    // After a reboot: the pid in the lock is alive, and not a postgres (it is this test).
    let pid_file = main.paths.data_dir.join("postmaster.pid");
    std::fs::write(&pid_file, format!("{}\n/elsewhere\n", std::process::id())).unwrap();
    let socket_lock = main.paths.socket_dir.join(".s.PGSQL.54321.lock");
    std::fs::write(&socket_lock, "999999\n/elsewhere\n").unwrap();
    let main_id = rig.started(&main).await;
    assert!(!socket_lock.exists());
    let pid_line = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(
        pid_line.lines().next(),
        Some(main_id.pid.to_string().as_str())
    );

    let twin = ServerSpec {
        name: "velo-demo.twin".into(),
        user: crate::runtime::ServerUser {
            uid: 1000,
            gid: 1000,
        },
        ..main.clone()
    };
    rig.rt.create(&twin).await.unwrap();
    let err = rig.rt.start(&twin.name).await.unwrap_err().to_string();
    assert!(err.contains(&format!("(pid {})", main_id.pid)), "{err}");
    assert!(pid_file.exists());
    rig.rt.remove(&twin.name).await.unwrap();
    rig.rt.remove(&main.name).await.unwrap();
    assert_eq!(main_id.presence(), Presence::Gone);
}

#[tokio::test]
async fn a_running_server_is_renamed_listed_and_removed() {
    let rig = Rig::new("kill $!; exit 0");
    let spec = rig.spec("velo-demo.main", "main");
    rig.rt.create(&spec).await.unwrap();
    let id = rig.started(&spec).await;
    assert!(
        rig.rt
            .rename(&spec.name, "velo-demo.main.old")
            .await
            .unwrap()
    );
    assert!(
        !rig.rt
            .rename(&spec.name, "velo-demo.main.old")
            .await
            .unwrap()
    );
    assert_eq!(
        rig.rt.status(&spec.name).await.unwrap(),
        ServerStatus::Missing
    );
    let old = "velo-demo.main.old";
    assert_eq!(rig.rt.status(old).await.unwrap(), ServerStatus::Running);

    let foreign = ServerSpec {
        name: "velo-other.main".into(),
        user: crate::runtime::ServerUser {
            uid: 1000,
            gid: 1000,
        },
        labels: Labels {
            home: "/another/home".into(),
            ..spec.labels.clone()
        },
        ..spec.clone()
    };
    rig.rt.create(&foreign).await.unwrap();
    let listed = rig.rt.list_managed().await.unwrap();
    assert_eq!(
        listed,
        [ManagedServer {
            name: old.into(),
            project: "demo".into(),
            branch: "main".into(),
            running: true,
            data_dir: Some(spec.paths.data_dir.clone()),
            volumes: Vec::new(),
            outdated: false,
        }]
    );
    rig.rt.remove(old).await.unwrap();
    assert_eq!(id.presence(), Presence::Gone);
    assert_eq!(rig.rt.status(old).await.unwrap(), ServerStatus::Missing);
    assert!(rig.rt.remove("../escape").await.is_err());
}

#[tokio::test]
async fn data_directories_and_signal_files_never_follow_links() {
    let rig = Rig::new("");
    let volume = rig.dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let user = ServerUser { uid: 0, gid: 0 };
    let data = rig.rt.make_data_dir(&volume, user).await.unwrap();
    assert_eq!(data, volume.join("pgdata"));
    assert_eq!(std::fs::metadata(&data).unwrap().mode() & 0o777, 0o700);
    assert!(rig.rt.make_data_dir(&volume, user).await.is_err());

    let spec = rig.spec("velo-demo.main", "main");
    let victim = rig.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let signal = spec.paths.data_dir.join("recovery.signal");
    std::os::unix::fs::symlink(&victim, &signal).unwrap();
    rig.rt
        .signal_file(&spec, "recovery.signal", user)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let meta = std::fs::symlink_metadata(&signal).unwrap();
    assert!(meta.is_file() && meta.len() == 0);
    assert!(rig.rt.signal_file(&spec, "../x", user).await.is_err());
}

#[tokio::test]
async fn root_is_refused_and_a_missing_bindir_named() {
    let rig = Rig::new("");
    if rustix::process::geteuid().is_root() {
        let err = rig.rt.prepare().await.unwrap_err();
        assert!(matches!(err, RuntimeError::Native(NativeError::RunAsRoot)));
    }
    assert!(refuse_root(1000).is_ok());
    let missing = NativeRuntime::new("/nonexistent".into(), "/nonexistent".into(), "h".into());
    assert!(matches!(
        missing.version().await,
        Err(RuntimeError::Native(NativeError::MissingBinary { .. }))
    ));
    assert!(missing.describe().contains("/nonexistent"));
}
