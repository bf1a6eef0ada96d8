//! Servers as Docker containers of a PostgreSQL image.
//!
//! A server's container runs `postgres` directly as the image's postgres user, not through the
//! image's entrypoint: the data directory is always initialised already (by [`Runtime::init`],
//! a helper container of the same image running `initdb`), so the entrypoint would only check
//! ownership and `exec` the server. Running it directly means no root process in any server
//! container, and no password in any container's environment (docs/design.md says which parts
//! of the image's contract this keeps). Containers share the host's network (the server
//! listens on 127.0.0.1 only) and see velo's host directories at fixed paths ([`view`]).
//!
//! An image that is not on the host is pulled, with its progress shown, the first time a
//! command needs it: a project's first run, or after the image was removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{
    ClientDirs, ClientJob, ClientOutput, InitOptions, LineSink, ManagedServer, Result, Runtime,
    RuntimeError, ServerPaths, ServerSpec, ServerStatus, ServerUser,
};
use crate::docker::{
    BindMount, ContainerSpec, ContainerStatus, Engine, LABEL_BRANCH, LABEL_HOME, LABEL_MANAGED,
    LABEL_PROJECT, PullProgress,
};
use crate::fsx;
use crate::ui::Shell;

/// Where a container sees velo's host directories.
const DATA: &str = "/var/lib/postgresql/data";
const SOCKET: &str = "/run/velo";
const ARCHIVE: &str = "/var/lib/postgresql/wal-archive";
const ARCHIVES: &str = "/var/lib/postgresql/wal-archives";
const HBA: &str = "/etc/velo/pg_hba.conf";
const SERVER_SECRETS: &str = "/etc/velo/secrets";
const SOURCE_WAL: &str = "/var/lib/postgresql/source-wal";
/// Where a helper that prepares a new volume sees its root.
const PREPARE: &str = "/velo-prepare";
/// Where a client program sees its directories ([`ClientDirs`]).
const CLIENT_WORK: &str = "/velo/work";
const CLIENT_SECRETS: &str = "/velo/secrets";
const CLIENT_INPUT: &str = "/velo/input";
/// The exit code of a helper whose client program is not in the image.
const NO_TOOL: i64 = 127;

/// The Docker runtime of one image.
#[derive(Debug)]
pub struct DockerRuntime {
    engine: Arc<Engine>,
    image: String,
    home: String,
    user: OnceCell<ServerUser>,
    /// Set once the image is known to be on this host (found, or pulled).
    image_here: OnceCell<()>,
    /// Where a pull shows its progress.
    shell: Shell,
}

impl DockerRuntime {
    pub fn new(engine: Arc<Engine>, image: String, home: String, shell: Shell) -> Self {
        Self {
            engine,
            image,
            home,
            user: OnceCell::new(),
            image_here: OnceCell::new(),
            shell,
        }
    }

    /// Pulls the image unless it is on this host: the first project of a new image, or one
    /// whose image was removed since. Asked once per command.
    async fn ensure_image(&self) -> Result<()> {
        self.image_here
            .get_or_try_init(|| async {
                if self.engine.image_id(&self.image).await?.is_none() {
                    self.pull().await?;
                }
                Ok::<_, RuntimeError>(())
            })
            .await?;
        Ok(())
    }

    async fn pull(&self) -> Result<(), crate::docker::DockerError> {
        let start = Instant::now();
        let mut shown = self.shell.transfer(&format!("Pull {}", self.image));
        let mut report = |p: PullProgress| {
            shown.update(p.layers_done, p.layers, p.bytes, p.bytes_total);
        };
        let pulled = self.engine.pull(&self.image, &mut report).await;
        shown.finish(pulled.is_ok(), start.elapsed());
        pulled
    }

    fn helper(
        &self,
        user: ServerUser,
        mounts: Vec<BindMount>,
        script: &str,
        args: &[&str],
    ) -> ContainerSpec {
        ContainerSpec {
            image: self.image.clone(),
            user: Some(format!("{}:{}", user.uid, user.gid)),
            entrypoint: vec!["/bin/sh".into(), "-c".into(), script.into()],
            cmd: args.iter().map(|a| a.to_string()).collect(),
            labels: vec![
                (LABEL_MANAGED.into(), "helper".into()),
                (LABEL_HOME.into(), self.home.clone()),
            ],
            mounts,
            ..ContainerSpec::default()
        }
    }

    fn missing_client(&self, missing: &str) -> RuntimeError {
        RuntimeError::MissingClient {
            place: format!("the image {}", self.image),
            missing: missing.trim().to_string(),
            fix: "an import runs the image's own client programs (psql, pg_dump, pg_restore, pg_dumpall): use an image that has them, as the official postgres images do (--pg-version N picks postgres:N-alpine), or import with the native runtime and the host's client programs (--runtime native)".into(),
        }
    }

    /// Removes the container `name` if this velo home made it (never someone else's).
    async fn remove_ours(&self, name: &str) -> Result<()> {
        let ours = self
            .engine
            .list_managed(&self.home)
            .await?
            .iter()
            .any(|c| c.name == name);
        if ours {
            self.engine.remove(name).await?;
        }
        Ok(())
    }
}

fn bind(source: &Path, target: &str, read_only: bool) -> BindMount {
    BindMount {
        source: source.display().to_string(),
        target: target.to_string(),
        read_only,
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn describe(&self) -> String {
        format!("docker, image {}", self.image)
    }

    async fn prepare(&self) -> Result<ServerUser> {
        self.ensure_image().await?;
        let user = self
            .user
            .get_or_try_init(|| async {
                let u = self.engine.postgres_user(&self.image).await?;
                Ok::<_, RuntimeError>(ServerUser {
                    uid: u.uid,
                    gid: u.gid,
                })
            })
            .await?;
        Ok(*user)
    }

    async fn software(&self) -> Result<String> {
        self.ensure_image().await?;
        self.engine.image_id(&self.image).await?.ok_or_else(|| {
            crate::docker::DockerError::ImageMissing {
                image: self.image.clone(),
            }
            .into()
        })
    }

    async fn make_data_dir(&self, volume_root: &Path, user: ServerUser) -> Result<PathBuf> {
        let pgdata = volume_root.join("pgdata");
        if rustix::process::geteuid().is_root() {
            // A volume velo made a moment ago: nobody else has written in it yet.
            let io = |action| {
                let path = pgdata.clone();
                move |source: std::io::Error| RuntimeError::Io {
                    action,
                    path,
                    source,
                }
            };
            let root = fsx::open_dir(volume_root).map_err(io("opening"))?;
            fsx::make_dir_at(&root, "pgdata", 0o700, Some((user.uid, user.gid)))
                .map_err(io("creating"))?;
            return Ok(pgdata);
        }
        // A user cannot give a directory to another uid; Docker access is root-equivalent, so a
        // throw-away root container of the image does it (docs/setup.md).
        self.ensure_image().await?;
        let root = ServerUser { uid: 0, gid: 0 };
        let mut helper = self.helper(
            root,
            vec![bind(volume_root, PREPARE, false)],
            "mkdir -m 700 \"$0/pgdata\" && chown \"$1\" \"$0/pgdata\"",
            &[PREPARE, &format!("{}:{}", user.uid, user.gid)],
        );
        helper.cap_add = vec!["CHOWN".into(), "DAC_OVERRIDE".into(), "FOWNER".into()];
        self.engine.run_helper(&helper).await?;
        Ok(pgdata)
    }

    async fn init(
        &self,
        data_dir: &Path,
        superuser: &str,
        user: ServerUser,
        options: InitOptions,
    ) -> Result<()> {
        self.ensure_image().await?;
        let mut args = vec![DATA.to_string(), superuser.to_string()];
        args.extend(options.args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let helper = self.helper(
            user,
            vec![bind(data_dir, DATA, false)],
            "d=$0 u=$1; shift; exec initdb -D \"$d\" -U \"$u\" --auth-local=trust --auth-host=scram-sha-256 -E UTF8 \"$@\" >/dev/null",
            &args,
        );
        Ok(self.engine.run_helper(&helper).await?)
    }

    fn view(&self, paths: &ServerPaths) -> ServerPaths {
        ServerPaths {
            data_dir: DATA.into(),
            socket_dir: SOCKET.into(),
            archive_dir: ARCHIVE.into(),
            archives_root: ARCHIVES.into(),
            hba_file: if paths.hba_file.as_os_str().is_empty() {
                PathBuf::new()
            } else {
                HBA.into()
            },
            secrets_dir: paths.secrets_dir.as_ref().map(|_| SERVER_SECRETS.into()),
            source_wal: paths.source_wal.as_ref().map(|_| SOURCE_WAL.into()),
        }
    }

    async fn create(&self, spec: &ServerSpec) -> Result<()> {
        self.ensure_image().await?;
        let p = &spec.paths;
        let mut cmd = vec!["-D".to_string(), DATA.to_string()];
        for (k, v) in &spec.settings {
            cmd.push("-c".into());
            cmd.push(format!("{k}={v}"));
        }
        let mut container = ContainerSpec {
            name: Some(spec.name.clone()),
            image: self.image.clone(),
            user: Some(format!("{}:{}", spec.user.uid, spec.user.gid)),
            entrypoint: vec!["postgres".into()],
            cmd,
            labels: vec![
                (LABEL_MANAGED.into(), "true".into()),
                (LABEL_PROJECT.into(), spec.labels.project.clone()),
                (LABEL_BRANCH.into(), spec.labels.branch.clone()),
                (LABEL_HOME.into(), spec.labels.home.clone()),
            ],
            mounts: vec![
                bind(&p.data_dir, DATA, false),
                bind(&p.socket_dir, SOCKET, false),
                bind(&p.archive_dir, ARCHIVE, false),
                bind(&p.archives_root, ARCHIVES, true),
                bind(&p.hba_file, HBA, true),
            ],
            host_network: true,
            stop_signal: Some("SIGINT".into()),
            ..ContainerSpec::default()
        };
        if let Some(secrets) = &p.secrets_dir {
            container.mounts.push(bind(secrets, SERVER_SECRETS, true));
        }
        if let Some(wal) = &p.source_wal {
            container.mounts.push(bind(wal, SOURCE_WAL, true));
        }
        self.engine.create(&container).await?;
        Ok(())
    }

    async fn signal_file(&self, spec: &ServerSpec, name: &str, user: ServerUser) -> Result<()> {
        // As the server's own user inside the container: a link planted in the data directory
        // can only lead to what that user reaches in a container of its own.
        self.ensure_image().await?;
        let helper = self.helper(
            user,
            vec![bind(&spec.paths.data_dir, DATA, false)],
            "umask 077 && rm -f \"$0/$1\" && : > \"$0/$1\"",
            &[DATA, name],
        );
        Ok(self.engine.run_helper(&helper).await?)
    }

    async fn remove_file(&self, spec: &ServerSpec, name: &str, user: ServerUser) -> Result<()> {
        self.ensure_image().await?;
        let helper = self.helper(
            user,
            vec![bind(&spec.paths.data_dir, DATA, false)],
            "rm -f \"$0/$1\"",
            &[DATA, name],
        );
        Ok(self.engine.run_helper(&helper).await?)
    }

    async fn hand_over(&self, dir: &Path, name: &str, user: ServerUser) -> Result<()> {
        self.ensure_image().await?;
        let root = ServerUser { uid: 0, gid: 0 };
        let mut helper = self.helper(
            root,
            vec![bind(dir, PREPARE, false)],
            "exec chown -h \"$1\" \"$0/$2\"",
            &[PREPARE, &format!("{}:{}", user.uid, user.gid), name],
        );
        // To enter velo's user's private directory, and to chown in it.
        helper.cap_add = vec!["CHOWN".into(), "DAC_READ_SEARCH".into()];
        Ok(self.engine.run_helper(&helper).await?)
    }

    fn client_view(&self, dirs: &ClientDirs) -> ClientDirs {
        let at = |p: &Option<PathBuf>, target: &str| p.as_ref().map(|_| PathBuf::from(target));
        ClientDirs {
            work: at(&dirs.work, CLIENT_WORK),
            socket: at(&dirs.socket, SOCKET),
            secrets: at(&dirs.secrets, CLIENT_SECRETS),
            input: at(&dirs.input, CLIENT_INPUT),
        }
    }

    async fn client_version(&self, tools: &[&str]) -> Result<String> {
        let script = "for t in \"$@\"; do command -v \"$t\" >/dev/null 2>&1 || m=\"$m $t\"; done; \
            if [ -n \"$m\" ]; then echo \"$m\"; exit 127; fi; exec \"$1\" --version";
        let mut args = vec!["velo-tools"];
        args.extend_from_slice(tools);
        let helper = self.helper(ServerUser { uid: 0, gid: 0 }, Vec::new(), script, &args);
        let out = self.engine.run_streaming(&helper, &|_| {}).await?;
        match out.code {
            0 => Ok(out.stdout.trim().to_string()),
            NO_TOOL => Err(self.missing_client(out.stdout.trim())),
            code => Err(RuntimeError::Failed(format!(
                "asking the image {} for its client programs failed (exit code {code}): {}",
                self.image,
                out.stderr.trim()
            ))),
        }
    }

    async fn run_client(&self, job: &ClientJob, line: &LineSink<'_>) -> Result<ClientOutput> {
        let d = &job.dirs;
        let mounts = [
            (&d.work, CLIENT_WORK, false),
            (&d.socket, SOCKET, false),
            (&d.secrets, CLIENT_SECRETS, true),
            (&d.input, CLIENT_INPUT, true),
        ]
        .into_iter()
        .filter_map(|(host, target, ro)| host.as_ref().map(|h| bind(h, target, ro)))
        .collect();
        let mut args = vec![job.tool.as_str()];
        args.extend(job.args.iter().map(String::as_str));
        let mut spec = self.helper(job.user, mounts, "exec \"$0\" \"$@\"", &args);
        spec.name = Some(job.name.clone());
        if job.user.uid == 0 {
            // Root in a container with no capability cannot enter directories root gave to
            // another uid on the host (a server's socket directory): it gets back searching
            // and reading them, in the directories it mounts, and nothing else.
            spec.cap_add = vec!["DAC_READ_SEARCH".into()];
        }
        spec.env = job.env.clone();
        spec.host_network = job.network;
        spec.labels.extend([
            (LABEL_PROJECT.into(), job.labels.project.clone()),
            (LABEL_BRANCH.into(), job.labels.branch.clone()),
        ]);
        // A helper of this name that a killed velo of this home left behind.
        self.remove_ours(&job.name).await?;
        let out = self.engine.run_streaming(&spec, line).await?;
        if out.code == NO_TOOL && out.stderr.contains("not found") {
            return Err(self.missing_client(&job.tool));
        }
        Ok(ClientOutput {
            code: out.code,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn start(&self, name: &str) -> Result<()> {
        Ok(self.engine.start(name).await?)
    }

    async fn stop(&self, name: &str, timeout: Duration) -> Result<()> {
        Ok(self.engine.stop(name, timeout).await?)
    }

    async fn kill(&self, name: &str) -> Result<()> {
        Ok(self.engine.kill(name).await?)
    }

    async fn rename(&self, name: &str, to: &str) -> Result<bool> {
        Ok(self.engine.rename(name, to).await?)
    }

    async fn remove(&self, name: &str) -> Result<()> {
        Ok(self.engine.remove(name).await?)
    }

    async fn status(&self, name: &str) -> Result<ServerStatus> {
        Ok(match self.engine.status(name).await? {
            ContainerStatus::Missing => ServerStatus::Missing,
            ContainerStatus::Running => ServerStatus::Running,
            ContainerStatus::Stopped { exit_code } => ServerStatus::Stopped { exit_code },
            ContainerStatus::Other(o) => ServerStatus::Other(o),
        })
    }

    async fn logs_tail(&self, name: &str, lines: usize) -> String {
        self.engine.logs_tail(name, lines).await
    }

    async fn list_managed(&self) -> Result<Vec<ManagedServer>> {
        Ok(self
            .engine
            .list_managed(&self.home)
            .await?
            .into_iter()
            .map(|c| ManagedServer {
                data_dir: c
                    .mounts
                    .iter()
                    .find(|(target, _)| target == DATA)
                    .map(|(_, source)| PathBuf::from(source)),
                outdated: !c.mounts.iter().any(|(target, _)| target == SOCKET),
                name: c.name,
                project: c.project,
                branch: c.branch,
                running: c.running,
                volumes: c.volumes,
            })
            .collect())
    }

    async fn version(&self) -> Result<String> {
        Ok(format!("Docker {}", self.engine.version().await?))
    }
}
