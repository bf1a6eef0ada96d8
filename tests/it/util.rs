//! The test rig as tests see it: run the real `velo` binary in a private VELO_HOME, query
//! branches with `psql`, and look at ZFS and Docker directly to check what velo claims.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// The pool and image `scripts/rig-up.sh` prepared. Missing variables are a hard failure:
/// these tests must run against the real rig (use `scripts/test.sh`).
pub struct Rig {
    pub pool: String,
    pub image: String,
}

impl Rig {
    pub fn get() -> Rig {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the integration tests through scripts/test.sh, which sets up ZFS, Docker and the image")
            })
        };
        Rig {
            pool: var("VELO_TEST_POOL"),
            image: var("VELO_TEST_IMAGE"),
        }
    }
}

/// Where tests (of every test process on the machine) coordinate their use of the rig.
const RIG_LOCK: &str = "/run/velo-rig-tests.lock";

/// A hold on the rig: shared for ordinary tests, exclusive for tests that disrupt the rig
/// itself (stop or restart dockerd or zfs-fuse, export the pool). An exclusive holder waits
/// until no other test, in this process or another, uses the rig. `flock` locks belong to
/// the open file, so two holds in one process exclude each other like two processes do.
struct RigHold {
    _file: std::fs::File,
}

impl RigHold {
    fn take(exclusive: bool) -> RigHold {
        use fs4::FileExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(RIG_LOCK)
            .expect("open the rig lock");
        if exclusive {
            FileExt::lock(&file).expect("lock the rig exclusively");
        } else {
            FileExt::lock_shared(&file).expect("lock the rig shared");
        }
        RigHold { _file: file }
    }
}

/// One test's private velo: its own home, its own project names, cleaned up on drop.
pub struct Sandbox {
    pub rig: Rig,
    home: tempfile::TempDir,
    prefix: String,
    extra_env: Vec<(String, String)>,
    // Dropped last (fields drop in order, after `Drop::drop`), once the projects are gone.
    _hold: RigHold,
}

impl Sandbox {
    /// A sandbox that shares the rig with other tests.
    pub fn new() -> Sandbox {
        Self::with_hold(RigHold::take(false))
    }

    /// A sandbox for a test that disrupts the rig (stops dockerd, exports the pool, …): it
    /// waits until no other test runs, and no other test starts until it is dropped. The test
    /// must leave the rig as it found it (`rig_up`).
    pub fn exclusive() -> Sandbox {
        Self::with_hold(RigHold::take(true))
    }

    fn with_hold(hold: RigHold) -> Sandbox {
        let n: u32 = rand::random();
        Sandbox {
            rig: Rig::get(),
            home: tempfile::tempdir().expect("temp dir"),
            prefix: format!("t{n:08x}"),
            extra_env: Vec::new(),
            _hold: hold,
        }
    }

    /// Brings the rig back up (daemons, pool, mounts) after a test disrupted it.
    pub fn rig_up(&self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rig-up.sh");
        let out = Command::new(script)
            .env("VELO_TEST_POOL", &self.rig.pool)
            .env("VELO_TEST_IMAGE", &self.rig.image)
            .output()
            .expect("rig-up runs");
        assert!(
            out.status.success(),
            "rig-up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The private VELO_HOME.
    pub fn home(&self) -> &std::path::Path {
        self.home.path()
    }

    /// A project name unique to this test run.
    pub fn project(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// Runs velo with an extra environment variable for the following commands.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.push((key.into(), value.into()));
    }

    pub fn clear_env(&mut self) {
        self.extra_env.clear();
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_velo"));
        cmd.args(args)
            .env("VELO_HOME", self.home.path())
            .env("VELO_CONFIG", self.home.path().join("config.json"));
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("velo runs");
        self.settle();
        out
    }

    /// Runs velo and returns at once, without waiting for what it finishes in the background.
    pub fn run_unsettled(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_velo"));
        cmd.args(args)
            .env("VELO_HOME", self.home.path())
            .env("VELO_CONFIG", self.home.path().join("config.json"));
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd.output().expect("velo runs")
    }

    /// Waits until no background velo of this sandbox's home runs: what a command left to one
    /// (destroying a deleted branch's data, old generations) is done, so each test sees the
    /// end state. Operations of other commands (a paused one) and of dead owners are left.
    pub fn settle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        while background_of(self.home.path()).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "background velo still running after 300 s: {:?}",
                self.state()["journal"]
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Starts velo with the test-only pause hook (`VELO_TEST_PAUSE_AT`) at `step` and returns
    /// once it has paused there, having recorded the step's intent and not yet run it.
    pub fn paused(&self, step: &str, args: &[&str]) -> Paused {
        use std::io::BufRead;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_velo"));
        cmd.args(args)
            .env("VELO_HOME", self.home.path())
            .env("VELO_TEST_PAUSE_AT", step)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("velo starts");
        let mut reader = std::io::BufReader::new(child.stderr.take().expect("piped"));
        let marker = format!("velo-test: paused at {step}");
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read velo's stderr");
            assert!(
                n > 0,
                "velo {args:?} ended before pausing at {step}:\n{seen}"
            );
            seen.push_str(&line);
            if line.contains(&marker) {
                break;
            }
        }
        // Keep reading, so velo never blocks on a full pipe, and hand the rest to the test.
        let rest = std::thread::spawn(move || {
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut reader, &mut rest).ok();
            seen + &rest
        });
        Paused { child, rest }
    }

    /// Asserts that the state, ZFS and Docker agree about a project: no operation open, no
    /// branch busy, exactly the datasets, snapshots and containers the state records.
    pub fn assert_consistent(&self, project: &str) {
        self.settle();
        let state = self.state();
        let journal = state["journal"].as_array().cloned().unwrap_or_default();
        assert!(journal.is_empty(), "operations left open: {journal:?}");
        let p = &state["projects"][project];
        let mut datasets = Vec::new();
        let mut snapshots = Vec::new();
        let mut containers = Vec::new();
        let origin_of = |o: &Value, snapshots: &mut Vec<String>| {
            if o.is_object() {
                let generation = o["generation"].as_u64().unwrap();
                let on = self.dataset(project, o["branch"].as_str().unwrap(), generation);
                snapshots.push(format!("{on}@{}", o["snapshot"].as_str().unwrap()));
            }
        };
        for (name, b) in p["branches"].as_object().expect("branches") {
            assert!(b["busy"].is_null(), "{name} is still busy: {}", b["busy"]);
            datasets.push(self.dataset(project, name, b["generation"].as_u64().unwrap()));
            origin_of(&b["origin"], &mut snapshots);
            for g in b["retired"].as_array().cloned().unwrap_or_default() {
                datasets.push(self.dataset(project, name, g["generation"].as_u64().unwrap()));
                origin_of(&g["origin"], &mut snapshots);
            }
            containers.push(format!("velo-{project}.{name}"));
        }
        for s in p["snapshots"].as_array().cloned().unwrap_or_default() {
            let on = self.dataset(
                project,
                s["branch"].as_str().unwrap(),
                s["generation"].as_u64().unwrap(),
            );
            snapshots.push(format!("{on}@{}", s["id"].as_str().unwrap()));
        }
        let mut expected: Vec<String> = datasets.into_iter().chain(snapshots).collect();
        expected.sort();
        expected.dedup();
        let mut tree = self.zfs_tree(project);
        tree.sort();
        assert_eq!(tree, expected, "ZFS and the state disagree");
        containers.sort();
        assert_eq!(
            self.containers(project),
            containers,
            "Docker and the state disagree"
        );
    }

    /// The base dataset of the user the tests run velo as (root).
    pub fn base(&self) -> String {
        format!("{}/velo/user.root", self.rig.pool)
    }

    /// The dataset of a branch generation.
    pub fn dataset(&self, project: &str, branch: &str, generation: u64) -> String {
        format!("{}/{project}.{branch}.{generation}", self.base())
    }

    /// Runs velo and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "velo {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs velo and expects failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "velo {args:?} succeeded but should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).expect("velo printed JSON")
    }

    /// Creates a project on the rig's pool and image.
    pub fn create_project(&self, suffix: &str) -> String {
        let name = self.project(suffix);
        self.ok(&[
            "project",
            "create",
            &name,
            "--pool",
            &self.rig.pool,
            "--image",
            &self.rig.image,
        ]);
        name
    }

    /// Runs SQL on a branch through psql and returns the unaligned, tuples-only output.
    pub fn sql(&self, branch: &str, sql: &str) -> String {
        let creds = self.json(&["branch", "password", branch]);
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGHOST", creds["host"].as_str().unwrap())
            .env("PGPORT", creds["port"].to_string())
            .env("PGUSER", creds["user"].as_str().unwrap())
            .env("PGPASSWORD", creds["password"].as_str().unwrap())
            .env("PGDATABASE", creds["database"].as_str().unwrap())
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql on {branch} failed for {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The names in the users table of a branch, in id order, comma-separated.
    pub fn users(&self, branch: &str) -> String {
        self.sql(
            branch,
            "SELECT string_agg(name, ',' ORDER BY id) FROM users",
        )
    }

    pub fn port(&self, branch: &str) -> u64 {
        self.json(&["branch", "get", branch])["port"]
            .as_u64()
            .unwrap()
    }

    /// Every dataset and snapshot ZFS has for a project.
    pub fn zfs_tree(&self, project: &str) -> Vec<String> {
        let out = Command::new("zfs")
            .args([
                "list",
                "-H",
                "-o",
                "name",
                "-t",
                "filesystem,snapshot",
                "-r",
                &self.base(),
            ])
            .output()
            .expect("zfs runs");
        let prefix = format!("{}/{project}.", self.base());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }

    /// `used` of a dataset in bytes.
    pub fn zfs_used(&self, dataset: &str) -> u64 {
        let out = Command::new("zfs")
            .args(["get", "-H", "-p", "-o", "value", "used", dataset])
            .output()
            .expect("zfs runs");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// Names of the Docker containers (any state) labelled with a project.
    pub fn containers(&self, project: &str) -> Vec<String> {
        let out = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--format",
                "{{.Names}}",
                "--filter",
                &format!("label=dev.velo.project={project}"),
            ])
            .output()
            .expect("docker runs");
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }
    pub fn state(&self) -> Value {
        let path = self.home.path().join("state.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).unwrap(),
            Err(_) => Value::Null,
        }
    }

    /// A script that runs the real `zfs` but fails `zfs <verb> …` — to inject failures.
    pub fn failing_zfs(&self, verb: &str) -> PathBuf {
        let path = self.home.path().join(format!("zfs-failing-{verb}"));
        let real = which("zfs");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nif [ \"$1\" = {verb} ]; then echo \"cannot {verb}: injected failure\" >&2; exit 1; fi\nexec {real} \"$@\"\n"
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

/// A velo process stopped by the pause hook.
pub struct Paused {
    pub child: std::process::Child,
    rest: std::thread::JoinHandle<String>,
}

impl Paused {
    /// SIGKILLs it (a crash, as far as velo can tell) and waits for it to be gone.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill velo");
        self.child.wait().expect("reap velo");
    }

    /// Sends a signal (`INT`, `TERM`) and waits for velo to exit; returns its exit code and
    /// its whole stderr.
    pub fn signal(mut self, sig: &str) -> (Option<i32>, String) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let code = self.child.wait().expect("reap velo").code();
        (code, self.rest.join().expect("reader thread"))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.extra_env.clear();
        if let Value::Object(state) = self.state()
            && let Some(Value::Object(projects)) = state.get("projects")
        {
            for name in projects.keys() {
                let _ = self.run(&["project", "delete", name, "--force"]);
            }
        }
    }
}

/// A running `velo __background` process of the velo home `home`, if any.
pub fn background_of(home: &std::path::Path) -> Option<u32> {
    let want = [
        b"VELO_HOME=".as_slice(),
        home.as_os_str().as_encoded_bytes(),
    ]
    .concat();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let zombie = stat
                .rsplit_once(") ")
                .is_none_or(|(_, rest)| rest.starts_with('Z'));
            let ours = cmdline.split(|b| *b == 0).any(|a| a == b"__background")
                && environ.split(|b| *b == 0).any(|v| v == want.as_slice());
            (ours && !zombie).then_some(pid)
        })
}

fn which(program: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("sh runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
