//! The native runtime: each branch's server is a `postgres` process of the user who runs velo,
//! from the host's PostgreSQL binaries ([`bins`]); no Docker, no root.
//!
//! A server is an entry in velo's home (`registry`): its spec, the identity of its running
//! postmaster (`proc::Identity`: pid, start time, boot id) and its log. `start` spawns
//! `postgres -D <data> -c …` in a session of its own, so neither Ctrl-C to velo nor velo's exit
//! reaches it, and returns at once; velo waits for readiness over the Unix socket. `stop` asks
//! the postmaster for a fast shutdown (SIGINT). `kill` asks for an immediate shutdown
//! (SIGQUIT, which frees the server's shared memory) and SIGKILLs the postmaster if it is not
//! gone at once, then every process left working in its data directory (PostgreSQL gives each
//! child a session of its own, so no process group holds them all). A signal goes to the recorded pid only while its
//! start time and boot id still match.
//!
//! This module touches `<home>/servers`, the data directories it is given (`pgdata`, signal
//! files, stale lock files) and the socket directory's stale lock file; it runs the programs of
//! its bin directory.

pub mod bins;
mod client;
mod command;
mod error;
mod lockfile;
mod proc;
mod registry;
#[cfg(test)]
mod tests;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rustix::process::Signal;

pub use error::NativeError;
use lockfile::Verdict;
use proc::{Identity, Presence};
use registry::Registry;

use super::{
    ClientDirs, ClientJob, ClientOutput, InitOptions, LineSink, ManagedServer, Result, Runtime,
    RuntimeError, ServerPaths, ServerSpec, ServerStatus, ServerUser,
};
use crate::fsx;

/// How long `kill` waits for each of: the postmaster to die, then its children.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How long `kill` gives an immediate shutdown before it kills the server outright.
const QUIT_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct NativeRuntime {
    bindir: PathBuf,
    registry: Registry,
    home_label: String,
    /// `postgres --version`, once asked.
    version: OnceLock<String>,
}

impl NativeRuntime {
    /// A runtime running the programs of `bindir`, recording its servers in `home` (velo's
    /// home) under the label `home_label`.
    pub fn new(bindir: PathBuf, home: PathBuf, home_label: String) -> Self {
        Self {
            bindir,
            registry: Registry::new(&home),
            home_label,
            version: OnceLock::new(),
        }
    }

    fn program(&self, name: &str) -> Result<PathBuf> {
        let path = self.bindir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(NativeError::MissingBinary { path }.into())
        }
    }

    /// `postgres --version`, asked once.
    fn postgres_version(&self) -> Result<String> {
        if let Some(v) = self.version.get() {
            return Ok(v.clone());
        }
        let mut cmd = command::quiet(&self.program("postgres")?);
        cmd.arg("--version");
        let out = command::checked(&command::line(&cmd), cmd.output())?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(self.version.get_or_init(|| version).clone())
    }

    /// The client program `tool` of the server's major.
    fn client_program(&self, tool: &str) -> Result<PathBuf> {
        let version = self.postgres_version()?;
        let major = bins::parse_version(&version)
            .map(|(_, major)| major)
            .ok_or_else(|| RuntimeError::Failed(format!("cannot read a version in `{version}`")))?;
        client::program(&self.bindir, major, tool)
    }

    fn spec(&self, name: &str) -> Result<ServerSpec> {
        self.registry
            .spec(name)?
            .ok_or_else(|| RuntimeError::NoSuchServer {
                name: name.to_string(),
            })
    }

    /// The recorded postmaster of `name` if it is running; a zombie of it is reaped.
    fn running(&self, name: &str) -> Result<Option<Identity>> {
        let Some(id) = self.registry.process(name)? else {
            return Ok(None);
        };
        id.reap();
        Ok((id.presence() == Presence::Running).then_some(id))
    }

    /// Removes the lock files a server of `spec` left behind, unless a PostgreSQL process
    /// works in the data directory they are about ([`lockfile`]).
    fn clear_stale_locks(&self, spec: &ServerSpec) -> Result<()> {
        let running = proc::postgres_processes();
        let served = canonical(&spec.paths.data_dir);
        self.clear_stale_lock(
            spec,
            &running,
            &spec.paths.data_dir,
            "postmaster.pid",
            |_| served.clone(),
        )?;
        let socket_lock = format!(".s.PGSQL.{}.lock", command::port(&spec.settings));
        self.clear_stale_lock(
            spec,
            &running,
            &spec.paths.socket_dir,
            &socket_lock,
            |content| lockfile::data_dir_in(content).map_or_else(|| served.clone(), canonical),
        )
    }

    /// Removes `dir/file` unless a PostgreSQL process of `running` works in the directory
    /// `served` finds in the file.
    fn clear_stale_lock(
        &self,
        spec: &ServerSpec,
        running: &[proc::Postgres],
        dir: &Path,
        file: &str,
        served: impl Fn(&str) -> PathBuf,
    ) -> Result<()> {
        let path = dir.join(file);
        let io = |action| {
            let path = path.clone();
            move |source| RuntimeError::Io {
                action,
                path,
                source,
            }
        };
        let handle = match fsx::open_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            other => other.map_err(io("opening"))?,
        };
        let Some(bytes) =
            fsx::read_regular_at(handle.as_fd(), file, 4096).map_err(io("reading"))?
        else {
            return Ok(());
        };
        match lockfile::judge(&served(&String::from_utf8_lossy(&bytes)), running) {
            Verdict::Stale => fsx::remove_at(handle.as_fd(), file).map_err(io("removing")),
            Verdict::Live { pid } => Err(NativeError::AlreadyServed {
                name: spec.name.clone(),
                pid,
                lock: path,
            }
            .into()),
        }
    }

    /// Kills what is left of the server whose postmaster was `postmaster`: the processes of
    /// this boot, started with it or after, that work in its data directory. PostgreSQL puts
    /// each child in a session of its own, so no single signal reaches them all; they are
    /// killed once the postmaster is dead, which could otherwise fork new ones. Returns
    /// whether none is left within [`KILL_WAIT`].
    async fn kill_leftovers(&self, postmaster: &Identity, data_dir: &Path) -> Result<bool> {
        if postmaster.boot_id != proc::boot_id() {
            return Ok(true);
        }
        let served = canonical(data_dir);
        let start = Instant::now();
        loop {
            let left: Vec<Identity> = proc::postgres_processes()
                .into_iter()
                .filter(|p| p.start_ticks >= postmaster.start_ticks)
                .filter(|p| p.cwd.as_deref() == Some(served.as_path()))
                .map(|p| p.identity())
                .collect();
            if left.is_empty() {
                return Ok(true);
            }
            if start.elapsed() > KILL_WAIT {
                return Ok(false);
            }
            for process in &left {
                process
                    .kill_group()
                    .map_err(|source| signal_error(process, source))?;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Spawns the postmaster of `spec` and records it.
    fn spawn(&self, spec: &ServerSpec) -> Result<()> {
        let log = self.registry.open_log(&spec.name)?;
        let log_err = log.try_clone().map_err(|source| RuntimeError::Io {
            action: "opening",
            path: self.registry.log_path(&spec.name),
            source,
        })?;
        let mut cmd = command::server(&self.program("postgres")?, spec);
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let mut child = cmd.spawn().map_err(|source| NativeError::Spawn {
            command: command::line(&cmd),
            source,
        })?;
        let recorded = Identity::of(child.id())
            .map_err(|source| RuntimeError::Io {
                action: "reading",
                path: PathBuf::from(format!("/proc/{}/stat", child.id())),
                source,
            })
            .and_then(|id| {
                self.registry
                    .set_process(&spec.name, Some(&id))
                    .map(|()| id)
            });
        if recorded.is_err() {
            // Unrecorded, nothing could find it again: it must not run.
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            let _ = child.wait();
        }
        recorded.map(drop)
    }
}

fn refuse_root(euid: u32) -> Result<()> {
    if euid == 0 {
        Err(NativeError::RunAsRoot.into())
    } else {
        Ok(())
    }
}

#[async_trait]
impl Runtime for NativeRuntime {
    fn describe(&self) -> String {
        match self.postgres_version() {
            Ok(v) => format!("native: {v} from {}", self.bindir.display()),
            Err(_) => format!("native: PostgreSQL from {}", self.bindir.display()),
        }
    }

    async fn software(&self) -> Result<String> {
        Ok(format!(
            "{} in {}",
            self.postgres_version()?,
            self.bindir.display()
        ))
    }

    async fn prepare(&self) -> Result<ServerUser> {
        refuse_root(rustix::process::geteuid().as_raw())?;
        let mut initdb = command::quiet(&self.program("initdb")?);
        initdb.arg("--version");
        command::checked(&command::line(&initdb), initdb.output())?;
        self.postgres_version()?;
        Ok(ServerUser {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        })
    }

    async fn make_data_dir(&self, volume_root: &Path, _user: ServerUser) -> Result<PathBuf> {
        let path = volume_root.join("pgdata");
        fsx::open_dir(volume_root)
            .and_then(|root| fsx::create_dir_at(root.as_fd(), "pgdata", 0o700))
            .map_err(|source| RuntimeError::Io {
                action: "creating",
                path: path.clone(),
                source,
            })?;
        Ok(path)
    }

    async fn init(
        &self,
        data_dir: &Path,
        superuser: &str,
        _user: ServerUser,
        options: InitOptions,
    ) -> Result<()> {
        let locale = command::initdb_locale().await;
        let mut cmd = command::initdb(&self.program("initdb")?, data_dir, superuser, locale);
        cmd.args(options.args());
        let line = command::line(&cmd);
        let output = tokio::process::Command::from(cmd).output().await;
        command::checked(&line, output).map(drop)
    }

    fn view(&self, paths: &ServerPaths) -> ServerPaths {
        paths.clone()
    }

    async fn create(&self, spec: &ServerSpec) -> Result<()> {
        self.registry.create(spec)
    }

    async fn signal_file(&self, spec: &ServerSpec, name: &str, _user: ServerUser) -> Result<()> {
        let data = &spec.paths.data_dir;
        fsx::open_dir(data)
            .and_then(|dir| fsx::replace_at(dir.as_fd(), name, b"", 0o600, None))
            .map_err(|source| RuntimeError::Io {
                action: "writing",
                path: data.join(name),
                source,
            })
    }

    async fn remove_file(&self, spec: &ServerSpec, name: &str, _user: ServerUser) -> Result<()> {
        let data = &spec.paths.data_dir;
        let removed = fsx::open_dir(data).and_then(|dir| {
            match rustix::fs::unlinkat(dir.as_fd(), name, rustix::fs::AtFlags::empty()) {
                Err(rustix::io::Errno::NOENT) => Ok(()),
                other => Ok(other?),
            }
        });
        removed.map_err(|source| RuntimeError::Io {
            action: "removing",
            path: data.join(name),
            source,
        })
    }

    async fn hand_over(&self, _dir: &Path, _name: &str, _user: ServerUser) -> Result<()> {
        // Its servers and programs run as velo's own user, who has the file already.
        Ok(())
    }

    fn client_view(&self, dirs: &ClientDirs) -> ClientDirs {
        dirs.clone()
    }

    async fn client_version(&self, tools: &[&str]) -> Result<String> {
        let programs = tools
            .iter()
            .map(|tool| self.client_program(tool))
            .collect::<Result<Vec<_>>>()?;
        match programs.first() {
            Some(first) => client::version(first),
            None => Ok(String::new()),
        }
    }

    async fn run_client(&self, job: &ClientJob, line: &LineSink<'_>) -> Result<ClientOutput> {
        client::run(&self.client_program(&job.tool)?, job, line).await
    }

    async fn start(&self, name: &str) -> Result<()> {
        let spec = self.spec(name)?;
        if self.running(name)?.is_some() {
            return Ok(());
        }
        self.clear_stale_locks(&spec)?;
        self.spawn(&spec)
    }

    async fn stop(&self, name: &str, timeout: Duration) -> Result<()> {
        let Some(id) = self.running(name)? else {
            return Ok(());
        };
        // SIGINT is PostgreSQL's fast shutdown: it ends sessions, checkpoints and exits.
        id.signal(Signal::INT)
            .map_err(|source| signal_error(&id, source))?;
        if id.wait_stopped(timeout).await {
            return self.registry.set_process(name, None);
        }
        self.kill(name).await
    }

    async fn kill(&self, name: &str) -> Result<()> {
        let (Some(postmaster), Some(spec)) =
            (self.registry.process(name)?, self.registry.spec(name)?)
        else {
            return Ok(());
        };
        // An immediate shutdown ends the server about as fast as a kill, and its postmaster
        // removes its shared memory (`/dev/shm/PostgreSQL.*`, its System V segment) on the way
        // out, which after a SIGKILL would stay until the host reboots.
        postmaster
            .signal(Signal::QUIT)
            .map_err(|source| signal_error(&postmaster, source))?;
        if !postmaster.wait_stopped(QUIT_WAIT).await {
            postmaster
                .kill_group()
                .map_err(|source| signal_error(&postmaster, source))?;
        }
        let gone = postmaster.wait_stopped(KILL_WAIT).await
            && self
                .kill_leftovers(&postmaster, &spec.paths.data_dir)
                .await?;
        if !gone {
            return Err(NativeError::Unkillable {
                name: name.to_string(),
                pid: postmaster.pid,
                waited: KILL_WAIT,
            }
            .into());
        }
        self.registry.set_process(name, None)
    }

    async fn rename(&self, name: &str, to: &str) -> Result<bool> {
        self.registry.rename(name, to)
    }

    async fn remove(&self, name: &str) -> Result<()> {
        registry::check_name(name)?;
        self.kill(name).await?;
        self.registry.remove(name)
    }

    async fn status(&self, name: &str) -> Result<ServerStatus> {
        if self.registry.spec(name)?.is_none() {
            return Ok(ServerStatus::Missing);
        }
        if self.running(name)?.is_none() {
            return Ok(ServerStatus::Stopped { exit_code: None });
        }
        self.registry.trim_log(name)?;
        Ok(ServerStatus::Running)
    }

    async fn logs_tail(&self, name: &str, lines: usize) -> String {
        self.registry.log_tail(name, lines)
    }

    async fn list_managed(&self) -> Result<Vec<ManagedServer>> {
        let mut servers = Vec::new();
        for name in self.registry.names()? {
            let Some(spec) = self.registry.spec(&name)? else {
                continue;
            };
            if spec.labels.home != self.home_label {
                continue;
            }
            servers.push(ManagedServer {
                running: self.running(&name)?.is_some(),
                name,
                project: spec.labels.project,
                branch: spec.labels.branch,
                data_dir: Some(spec.paths.data_dir),
                volumes: Vec::new(),
                outdated: false,
            });
        }
        Ok(servers)
    }

    async fn version(&self) -> Result<String> {
        self.postgres_version()
    }
}

/// `path` with links resolved, as `/proc/<pid>/cwd` shows it; as it is if it cannot be.
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

fn signal_error(id: &Identity, source: std::io::Error) -> RuntimeError {
    RuntimeError::Io {
        action: "signalling",
        path: PathBuf::from(format!("/proc/{}", id.pid)),
        source,
    }
}
