//! The test rig as tests see it: run the real `velo` binary in a private VELO_HOME, as root
//! (ZFS and Docker) or as the rig's non-root user (the native runtime refuses root), query
//! branches with `psql` over TCP with the password (a client's view), and look at the
//! backend directly ([`world`]) to check what velo claims.

mod faults;
pub mod hold;
mod ports;
pub mod rig;
pub mod source;
pub mod world;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

pub use faults::Fault;
use hold::RigHold;
use ports::PortBlock;
pub use rig::{Backend, Rig, User};
pub use world::{background_of, sh};

/// Where velo keeps its state for a sandbox.
enum Home {
    /// A private temporary directory, passed as `VELO_HOME`.
    Temp(tempfile::TempDir),
    /// velo's default, `~/.velo` of the user it runs as (no `VELO_HOME`).
    Default(PathBuf),
}

/// One test's private velo: its own home, its own project names, cleaned up on drop.
pub struct Sandbox {
    pub rig: Rig,
    backend: Backend,
    major: u32,
    /// Who velo runs as; root when `None`.
    user: Option<User>,
    home: Home,
    /// The test's directory on the backend's file system (btrfs, reflink, copy).
    data: Option<tempfile::TempDir>,
    prefix: String,
    extra_env: Vec<(String, String)>,
    /// The ports velo gives this sandbox's branches (`VELO_PORTS`).
    ports: PortBlock,
    /// Paths made immutable to inject a failure ([`faults`]), made mutable again on drop.
    immutable: Vec<PathBuf>,
    // Dropped last (fields drop in order, after `Drop::drop`), once the projects are gone.
    _hold: Option<RigHold>,
}

impl Sandbox {
    /// A sandbox on the suite's backend and major, sharing the rig with other tests.
    pub fn new() -> Sandbox {
        Self::on(Backend::from_env(), rig::suite_major())
    }

    /// A sandbox for a test that only means something on `backend`: fails, rather than
    /// passing by doing nothing, when the suite runs another (`scripts/test.sh` runs each
    /// module only where it holds).
    pub fn only(backend: Backend) -> Sandbox {
        Self::assert_suite(&[backend]);
        Self::on(backend, rig::suite_major())
    }

    /// A sandbox for a test of the native runtime, on the suite's backend.
    pub fn native() -> Sandbox {
        let native: Vec<Backend> = Backend::ALL.into_iter().filter(|b| b.is_native()).collect();
        Self::assert_suite(&native);
        Self::new()
    }

    fn assert_suite(backends: &[Backend]) {
        let suite = Backend::from_env();
        assert!(
            backends.contains(&suite),
            "this test is for {backends:?}, but VELO_TEST_BACKEND is {}: run it where it holds (scripts/test.sh)",
            suite.name()
        );
    }

    /// A ZFS and Docker sandbox for a test that disrupts the rig (stops dockerd, exports the
    /// pool, …): it waits until no other test uses ZFS or Docker, and no other such test
    /// starts until it is dropped. The test must leave the rig as it found it (`rig_up`).
    pub fn exclusive() -> Sandbox {
        Self::assert_suite(&[Backend::ZfsDocker]);
        Self::make(
            Backend::ZfsDocker,
            rig::suite_major(),
            Some(RigHold::take(true)),
        )
    }

    /// A sandbox on `backend` with PostgreSQL `major`, whatever the suite's.
    pub fn on(backend: Backend, major: u32) -> Sandbox {
        let hold = (!backend.is_native()).then(|| RigHold::take(false));
        Self::make(backend, major, hold)
    }

    fn make(backend: Backend, major: u32, hold: Option<RigHold>) -> Sandbox {
        let user = backend.is_native().then(User::test_user);
        let home = tempfile::Builder::new()
            .prefix("velo-it-")
            .tempdir()
            .expect("temp dir");
        let data = backend.dir_var().map(|var| {
            let dir = tempfile::Builder::new()
                .prefix("velo-it-")
                .tempdir_in(rig::var(var))
                .expect("a directory on the backend's file system");
            user.as_ref()
                .expect("native runs as a user")
                .own(dir.path());
            dir
        });
        if let Some(user) = &user {
            user.own(home.path());
        }
        let n: u32 = rand::random();
        Sandbox {
            rig: Rig::for_major(major),
            backend,
            major,
            user,
            home: Home::Temp(home),
            data,
            prefix: format!("t{n:08x}"),
            extra_env: Vec::new(),
            ports: PortBlock::take(),
            immutable: Vec::new(),
            _hold: hold,
        }
    }

    /// A sandbox that runs velo as `user` with velo's defaults: no `VELO_HOME` (so
    /// `~/.velo`), no flags choosing storage or runtime.
    pub fn default_for(user: User) -> Sandbox {
        let home = user.home.join(".velo");
        let n: u32 = rand::random();
        Sandbox {
            rig: Rig::for_major(rig::suite_major()),
            backend: Backend::CopyNative,
            major: rig::suite_major(),
            user: Some(user),
            home: Home::Default(home),
            data: None,
            prefix: format!("t{n:08x}"),
            extra_env: Vec::new(),
            ports: PortBlock::take(),
            immutable: Vec::new(),
            _hold: None,
        }
    }

    /// The ports velo gives this sandbox's branches.
    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        self.ports.range()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The user velo runs as, if not root.
    pub fn user(&self) -> Option<&User> {
        self.user.as_ref()
    }

    /// Brings the rig back up (daemons, pool, mounts) after a test disrupted it.
    pub fn rig_up(&self) {
        let out = rig_up_command(&self.rig).output().expect("rig-up runs");
        assert!(
            out.status.success(),
            "rig-up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The VELO_HOME.
    pub fn home(&self) -> &Path {
        match &self.home {
            Home::Temp(dir) => dir.path(),
            Home::Default(path) => path,
        }
    }

    /// The data directory velo keeps btrfs, reflink and copy volumes in.
    pub fn data_dir(&self) -> PathBuf {
        match (&self.data, &self.home) {
            (Some(dir), _) => dir.path().join("data"),
            (None, home) => match home {
                Home::Default(path) => path.join("data"),
                Home::Temp(dir) => dir.path().join("data"),
            },
        }
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

    /// `velo <args>` as the sandbox runs it (its user, home and environment), not started.
    pub fn command(&self, args: &[&str]) -> Command {
        // The sandbox's ports first, so that a test's own `VELO_PORTS` wins.
        let mut env = vec![("VELO_PORTS".to_string(), self.ports.env())];
        env.extend(self.extra_env.iter().cloned());
        if let Home::Temp(dir) = &self.home {
            let home = dir.path().display().to_string();
            env.push(("VELO_HOME".into(), home.clone()));
            env.push(("VELO_CONFIG".into(), format!("{home}/config.json")));
        }
        let mut cmd = match &self.user {
            None => {
                let mut cmd = Command::new(velo_exe());
                cmd.envs(env);
                cmd
            }
            Some(user) => {
                if matches!(self.home, Home::Temp(_)) {
                    env.push(("VELO_PG_ROOT".into(), rig::pg_root().display().to_string()));
                }
                user.command(velo_exe(), &env)
            }
        };
        cmd.args(args);
        cmd
    }

    /// Runs velo, then waits for what it left to a background velo ([`Sandbox::settle`]).
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.run_unsettled(args);
        self.settle();
        out
    }

    /// Runs velo and returns at once, without waiting for what it finishes in the background.
    pub fn run_unsettled(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("velo runs")
    }

    /// `velo status --json`'s `pending`, without waiting for a background velo to end.
    pub fn pending_now(&self) -> Vec<Value> {
        let out = self.run_unsettled(&["status", "--json"]);
        let status: Value = serde_json::from_slice(&out.stdout).expect("status --json");
        status["pending"].as_array().expect("pending").clone()
    }

    /// Waits until no background velo of this sandbox's home runs: what a command left to one
    /// (destroying a deleted branch's data, old generations) is done, so each test sees the
    /// end state. Operations of other commands (a paused one) and of dead owners are left.
    pub fn settle(&self) {
        let limit = std::time::Duration::from_secs(300);
        world::wait_until("the background velo ends", limit, || {
            world::background_of(self.home()).is_none()
        });
    }

    /// Starts velo without waiting for it, its output piped.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("velo starts")
    }

    /// Starts velo with the test-only pause hook (`VELO_TEST_PAUSE_AT`) at `step` and returns
    /// once it has paused there, having recorded the step's intent and not yet run it. velo
    /// leads a process group of its own, which a test may kill whole (a closed terminal).
    pub fn paused(&self, step: &str, args: &[&str]) -> Paused {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut cmd = self.command(args);
        cmd.env("VELO_TEST_PAUSE_AT", step)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
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

    /// The flags that put a new project on the sandbox's backend and major.
    pub fn create_flags(&self) -> Vec<String> {
        let storage = ["--storage", self.backend.storage()];
        let mut flags: Vec<String> = storage.iter().map(|s| s.to_string()).collect();
        if self.backend.is_native() {
            flags.extend([
                "--runtime".into(),
                "native".into(),
                "--data-dir".into(),
                self.data_dir().display().to_string(),
                "--pg-version".into(),
                self.major.to_string(),
            ]);
        } else {
            flags.extend([
                "--runtime".into(),
                "docker".into(),
                "--pool".into(),
                self.rig.pool.clone(),
                "--image".into(),
                self.rig.image.clone(),
            ]);
        }
        flags
    }

    /// `velo project create <name>` with the sandbox's flags.
    pub fn create_args(&self, name: &str) -> Vec<String> {
        let mut args = vec!["project".to_string(), "create".into(), name.into()];
        args.extend(self.create_flags());
        args
    }

    /// Creates a project on the sandbox's backend and major.
    pub fn create_project(&self, suffix: &str) -> String {
        let name = self.project(suffix);
        let args = self.create_args(&name);
        self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        name
    }

    /// Runs SQL on a branch through psql and returns the unaligned, tuples-only output.
    pub fn sql(&self, branch: &str, sql: &str) -> String {
        let out = self
            .psql(
                branch,
                &["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            )
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql on {branch} failed for {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A libpq client program (`psql`, `pgbench`, …) with `args`, connected to a branch over
    /// TCP with its password (through PGPASSWORD, never argv).
    pub fn client(&self, program: &str, branch: &str, args: &[&str]) -> Command {
        let creds = self.json(&["branch", "password", branch]);
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("PGHOST", creds["host"].as_str().unwrap())
            .env("PGPORT", creds["port"].to_string())
            .env("PGUSER", creds["user"].as_str().unwrap())
            .env("PGPASSWORD", creds["password"].as_str().unwrap())
            .env("PGDATABASE", creds["database"].as_str().unwrap());
        cmd
    }

    fn psql(&self, branch: &str, args: &[&str]) -> Command {
        self.client("psql", branch, args)
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

    pub fn state(&self) -> Value {
        let path = self.home().join("state.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).unwrap(),
            Err(_) => Value::Null,
        }
    }
}

/// `scripts/rig-up.sh` for the rig's pool (its own default image: an image the tests
/// override never reaches the rig).
pub fn rig_up_command(rig: &Rig) -> Command {
    let mut cmd = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rig-up.sh"));
    cmd.env("VELO_TEST_POOL", &rig.pool)
        .env_remove("VELO_TEST_IMAGE");
    cmd
}

/// The velo binary, where every user may run it: cargo's own if every directory above it
/// lets others through, else a copy in a temporary directory (once per test process).
pub fn velo_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let built = PathBuf::from(env!("CARGO_BIN_EXE_velo"));
        let open = built
            .ancestors()
            .skip(1)
            .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
        if open {
            return built;
        }
        let dir = std::env::temp_dir().join(format!("velo-it-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for velo");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let copy = dir.join("velo");
        std::fs::copy(&built, &copy).expect("copy velo");
        copy
    })
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
        self.heal();
        if let Value::Object(state) = self.state()
            && let Some(Value::Object(projects)) = state.get("projects")
        {
            for name in projects.keys() {
                let _ = self.run_unsettled(&["project", "delete", name, "--force"]);
            }
        }
        // What the deletes left to a background velo is done before the home goes; one a
        // failed test left paused is not waited for (never a panic here: it would abort).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while world::background_of(self.home()).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if let Some(data) = &self.data {
            // Whatever a failed test left running there goes, and read-only Btrfs snapshots
            // (inode 256: subvolumes) are made writable, so the directory can be removed.
            for pid in world::processes_in(data.path()) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .output();
            }
            if self.backend == Backend::BtrfsNative {
                let _ = Command::new("find")
                    .arg(data.path())
                    .args(["-type", "d", "-inum", "256", "-exec", "btrfs", "property"])
                    .args(["set", "-ts", "{}", "ro", "false", ";"])
                    .output();
            }
        }
    }
}
