//! An in-memory runtime for unit tests of the operations: servers are records that start and
//! stop; the next call of an operation fails on request, and a started server can be made to
//! die at once (as when its port is taken).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    ClientDirs, ClientJob, ClientOutput, InitOptions, LineSink, ManagedServer, Result, Runtime,
    RuntimeError, ServerPaths, ServerSpec, ServerStatus, ServerUser,
};

#[derive(Debug, Default)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Server {
    spec: ServerSpec,
    running: bool,
    log: String,
}

#[derive(Debug, Default)]
struct Inner {
    servers: BTreeMap<String, Server>,
    fail: BTreeSet<&'static str>,
    /// The next server started dies at once, logging this.
    dies: Option<String>,
    /// What the next client programs print, in order (else success and no output).
    client_outputs: std::collections::VecDeque<ClientOutput>,
    /// The client programs run, in order.
    client_jobs: Vec<ClientJob>,
    /// The next client program never ends (until it is dropped).
    client_hangs: bool,
}

impl FakeRuntime {
    /// The next call of `op` (`make_data_dir`, `init`, `create`, `signal_file`, `start`,
    /// `kill`, `rename`, `remove`) fails.
    pub fn fail_next(&self, op: &'static str) {
        self.inner.lock().unwrap().fail.insert(op);
    }

    /// The next server started exits at once, having logged `log`.
    pub fn next_start_dies(&self, log: &str) {
        self.inner.lock().unwrap().dies = Some(log.to_string());
    }

    /// The next client program run ends like this.
    pub fn next_client_output(&self, output: ClientOutput) {
        self.inner.lock().unwrap().client_outputs.push_back(output);
    }

    /// The next client program run never ends.
    pub fn next_client_hangs(&self) {
        self.inner.lock().unwrap().client_hangs = true;
    }

    /// The client programs run so far.
    pub fn client_jobs(&self) -> Vec<ClientJob> {
        self.inner.lock().unwrap().client_jobs.clone()
    }

    /// The servers that exist: name → (data directory, running).
    pub fn servers(&self) -> BTreeMap<String, (PathBuf, bool)> {
        self.inner
            .lock()
            .unwrap()
            .servers
            .iter()
            .map(|(n, s)| (n.clone(), (s.spec.paths.data_dir.clone(), s.running)))
            .collect()
    }

    /// Whether a running server makes its socket in `socket_dir`.
    pub fn running_on(&self, socket_dir: &Path) -> bool {
        let inner = self.inner.lock().unwrap();
        inner
            .servers
            .values()
            .any(|s| s.running && s.spec.paths.socket_dir == socket_dir)
    }

    /// The settings a server was made with.
    pub fn settings(&self, name: &str) -> Vec<(String, String)> {
        self.inner.lock().unwrap().servers[name]
            .spec
            .settings
            .clone()
    }

    fn run(&self, op: &'static str) -> Result<std::sync::MutexGuard<'_, Inner>> {
        let mut inner = self.inner.lock().unwrap();
        if inner.fail.remove(op) {
            return Err(RuntimeError::Failed(format!("{op}: injected failure")));
        }
        Ok(inner)
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn describe(&self) -> String {
        "fake".into()
    }

    async fn prepare(&self) -> Result<ServerUser> {
        self.run("prepare").map(drop)?;
        Ok(ServerUser {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        })
    }

    async fn software(&self) -> Result<String> {
        Ok("fake 1".into())
    }

    async fn make_data_dir(&self, root: &Path, _: ServerUser) -> Result<PathBuf> {
        self.run("make_data_dir").map(drop)?;
        Ok(root.join("pgdata"))
    }

    async fn init(&self, _: &Path, _: &str, _: ServerUser, _: InitOptions) -> Result<()> {
        self.run("init").map(drop)
    }

    fn view(&self, paths: &ServerPaths) -> ServerPaths {
        paths.clone()
    }

    async fn create(&self, spec: &ServerSpec) -> Result<()> {
        let mut inner = self.run("create")?;
        if inner.servers.contains_key(&spec.name) {
            return Err(RuntimeError::Failed(format!("{} exists", spec.name)));
        }
        let server = Server {
            spec: spec.clone(),
            running: false,
            log: String::new(),
        };
        inner.servers.insert(spec.name.clone(), server);
        Ok(())
    }

    async fn signal_file(&self, _: &ServerSpec, _: &str, _: ServerUser) -> Result<()> {
        self.run("signal_file").map(drop)
    }

    async fn remove_file(&self, _: &ServerSpec, _: &str, _: ServerUser) -> Result<()> {
        self.run("remove_file").map(drop)
    }

    async fn hand_over(&self, _: &Path, _: &str, _: ServerUser) -> Result<()> {
        self.run("hand_over").map(drop)
    }

    fn client_view(&self, dirs: &ClientDirs) -> ClientDirs {
        dirs.clone()
    }

    async fn client_version(&self, _: &[&str]) -> Result<String> {
        self.run("client_version").map(drop)?;
        Ok("pg_dump (PostgreSQL) 17.2".into())
    }

    async fn run_client(&self, job: &ClientJob, line: &LineSink<'_>) -> Result<ClientOutput> {
        let hangs = {
            let mut inner = self.run("run_client")?;
            inner.client_jobs.push(job.clone());
            std::mem::take(&mut inner.client_hangs)
        };
        if hangs {
            std::future::pending::<()>().await;
        }
        let mut inner = self.run("run_client")?;
        let out = inner.client_outputs.pop_front().unwrap_or(ClientOutput {
            code: 0,
            stdout: String::new(),
            stderr: String::new(),
        });
        for l in out.stderr.lines() {
            line(l);
        }
        Ok(out)
    }

    async fn start(&self, name: &str) -> Result<()> {
        let mut inner = self.run("start")?;
        let dies = inner.dies.take();
        let server = inner
            .servers
            .get_mut(name)
            .ok_or_else(|| RuntimeError::NoSuchServer {
                name: name.to_string(),
            })?;
        server.running = dies.is_none();
        server.log = dies.unwrap_or_default();
        Ok(())
    }

    async fn stop(&self, name: &str, _: Duration) -> Result<()> {
        let mut inner = self.run("stop")?;
        if let Some(s) = inner.servers.get_mut(name) {
            s.running = false;
        }
        Ok(())
    }

    async fn kill(&self, name: &str) -> Result<()> {
        self.stop(name, Duration::ZERO).await
    }

    async fn rename(&self, name: &str, to: &str) -> Result<bool> {
        let mut inner = self.run("rename")?;
        let Some(mut server) = inner.servers.remove(name) else {
            return Ok(false);
        };
        server.spec.name = to.to_string();
        inner.servers.insert(to.to_string(), server);
        Ok(true)
    }

    async fn remove(&self, name: &str) -> Result<()> {
        let mut inner = self.run("remove")?;
        inner.servers.remove(name);
        Ok(())
    }

    async fn status(&self, name: &str) -> Result<ServerStatus> {
        let inner = self.inner.lock().unwrap();
        Ok(match inner.servers.get(name) {
            None => ServerStatus::Missing,
            Some(s) if s.running => ServerStatus::Running,
            Some(_) => ServerStatus::Stopped { exit_code: None },
        })
    }

    async fn logs_tail(&self, name: &str, _: usize) -> String {
        let inner = self.inner.lock().unwrap();
        inner
            .servers
            .get(name)
            .map(|s| s.log.clone())
            .unwrap_or_default()
    }

    async fn list_managed(&self) -> Result<Vec<ManagedServer>> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .servers
            .iter()
            .map(|(name, s)| ManagedServer {
                name: name.clone(),
                project: s.spec.labels.project.clone(),
                branch: s.spec.labels.branch.clone(),
                running: s.running,
                data_dir: Some(s.spec.paths.data_dir.clone()),
                volumes: Vec::new(),
                outdated: false,
            })
            .collect())
    }

    async fn version(&self) -> Result<String> {
        Ok("fake".into())
    }
}
