//! Use cases: one public function per command, orchestrating the infrastructure layers
//! (`zfs`, `docker`, `pg`, `state`) and undoing their own steps when a later step fails.
//!
//! The pattern of every multi-step command:
//! 1. a short state transaction validates the request, reserves names and ports, marks the
//!    branch busy and opens an operation in the journal ([`Undo::begin`]);
//! 2. the slow steps run without the state lock, each recording in the journal how to undo
//!    itself *before* it runs ([`Undo::intend`]);
//! 3. a final transaction records the result and closes the operation ([`Undo::commit`]), or
//!    the undo steps run in reverse and the reservation is removed ([`Undo::roll_back`]).
//!
//! A command that dies mid-way is ended by the next one ([`journal::recover`]).

pub mod branch;
pub mod doctor;
pub mod drift;
pub mod journal;
mod owner;
pub mod project;
pub mod setup;
pub mod snapshot;
pub mod status;
pub mod wal;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use chrono::Utc;
use rand::RngExt;

use crate::archive::{self, Archives};
use crate::config::Config;
use crate::docker::{self, BindMount, ContainerSpec, ContainerStatus, Runtime};
use crate::names::{self, BranchRef, ProjectName};
use crate::pg::Endpoint;
pub use journal::Undo;

use crate::state::{Branch, Busy, Project, State, Store, UndoStep};
use crate::ui::Shell;
use crate::zfs::Zfs;

/// Host ports velo hands out, on 127.0.0.1.
pub const PORT_RANGE: std::ops::RangeInclusive<u16> = 54320..=54999;

/// The one host address every branch's PostgreSQL listens on.
pub const DEFAULT_HOST_IP: &str = "127.0.0.1";

/// The client authentication file every branch's server uses (`hba_file`), in place of the
/// `pg_hba.conf` in its data directory. Branch containers share the host's network (no
/// bridge, NAT or docker-proxy: that was 0.3 s of every start here, docs/benchmarks.md), and
/// the `pg_hba.conf` that initdb and the official image write trusts every TCP connection from
/// 127.0.0.1, which on the host's network means every local user. Here TCP always needs the
/// password. `md5` does SCRAM for SCRAM-hashed passwords (PostgreSQL 14+), and still accepts an
/// older image's MD5 hashes. The Unix socket stays inside the container, as in the image.
const HBA: &str = "\
# Written by velo; every branch server reads it (hba_file). Edits are overwritten.
local all all trust
host all all all md5
host replication all all md5
";

/// Where a branch's container sees [`HBA`].
const HBA_IN_CONTAINER: &str = "/etc/velo/pg_hba.conf";

/// What PostgreSQL logs when another program holds its port.
const PORT_TAKEN_LOG: &str = "Address already in use";

/// Another program holds the port a branch's server should listen on.
#[derive(Debug, thiserror::Error)]
#[error(
    "port {port} on {DEFAULT_HOST_IP} is already in use by another program: stop it, or let `velo repair --fix` move the branch to a free port"
)]
pub struct PortTaken {
    pub port: u16,
}

/// The ZFS user property velo sets on every dataset it creates, naming the velo home that owns
/// it: several velo homes (users) can share one pool, and only a dataset with this home's mark
/// (or, from before the mark, one under a project of this home) is ever called an orphan.
pub const HOME_PROPERTY: &str = "dev.velo:home";

/// What an operation may touch.
pub struct Ctx {
    /// The host configuration `velo setup` wrote (empty before setup).
    pub config: Config,
    pub store: Store,
    pub zfs: Zfs,
    pub runtime: Runtime,
    pub shell: Shell,
}

impl Ctx {
    pub fn new(home: PathBuf, shell: Shell) -> Result<Self> {
        let config = Config::load(&Config::path())?;
        Ok(Self {
            zfs: Zfs::new(config.zfs.clone(), config.zpool.clone()),
            config,
            store: Store::new(home),
            runtime: Runtime::new(),
            shell,
        })
    }

    pub fn archives(&self) -> Archives {
        Archives::new(self.store.dir())
    }

    /// The velo home as a string, for container labels.
    pub fn home_label(&self) -> String {
        self.store.dir().display().to_string()
    }

    /// How long to wait for PostgreSQL to answer (`VELO_READY_TIMEOUT`, e.g. "90s").
    pub fn ready_timeout(&self, default: Duration) -> Duration {
        std::env::var("VELO_READY_TIMEOUT")
            .ok()
            .and_then(|v| humantime::parse_duration(&v).ok())
            .unwrap_or(default)
    }
}

/// A new random password: 24 characters from a 62-letter alphabet, drawn uniformly
/// (`random_range` rejects out-of-range draws, so there is no modulo bias).
pub fn new_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..24)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A new snapshot id: 12 hex digits (48 random bits), unique enough within one dataset.
pub fn new_snapshot_id() -> String {
    let n: u64 = rand::rng().random_range(0..(1u64 << 48));
    format!("{n:012x}")
}

/// Picks a port no velo branch holds and nothing on the host is listening on right now,
/// scanning from a random point so that velo homes (users) on one host rarely race for one.
/// A port can still be taken between this check and the container's start; callers creating a
/// new branch retry with another port when Docker reports the conflict.
pub fn allocate_port(state: &State, avoid: &[u16]) -> Result<u16> {
    let taken: std::collections::HashSet<u16> = state
        .projects
        .values()
        .flat_map(|p| p.branches.values().map(|b| b.port))
        .chain(avoid.iter().copied())
        .collect();
    let (lo, hi) = (*PORT_RANGE.start(), *PORT_RANGE.end());
    let span = hi - lo + 1;
    let offset = rand::rng().random_range(0..span);
    (0..span)
        .map(|i| lo + (offset + i) % span)
        .find(|p| !taken.contains(p) && TcpListener::bind((DEFAULT_HOST_IP, *p)).is_ok())
        .ok_or_else(|| {
            anyhow!(
                "no free port in {lo}-{hi}: delete branches you no longer need, or stop what holds those ports"
            )
        })
}

pub fn get_project<'a>(state: &'a State, name: &ProjectName) -> Result<&'a Project> {
    state
        .projects
        .get(name)
        .ok_or_else(|| anyhow!("project `{name}` does not exist (see `velo project list`)"))
}

pub fn get_project_mut<'a>(state: &'a mut State, name: &ProjectName) -> Result<&'a mut Project> {
    state
        .projects
        .get_mut(name)
        .ok_or_else(|| anyhow!("project `{name}` does not exist (see `velo project list`)"))
}

/// A branch in the state that a command reserved earlier and is now finishing.
pub fn branch_mut<'a>(state: &'a mut State, r: &BranchRef) -> Result<&'a mut Branch> {
    get_project_mut(state, &r.project)?
        .branches
        .get_mut(&r.branch)
        .ok_or_else(|| anyhow!("branch `{r}` vanished from state"))
}

pub fn get_branch<'a>(project: &'a Project, r: &BranchRef) -> Result<&'a Branch> {
    project.branch(&r.branch).ok_or_else(|| {
        anyhow!(
            "branch `{r}` does not exist (see `velo branch list {}`)",
            r.project
        )
    })
}

/// Marks a branch busy for `operation`, failing if another command holds it.
pub fn claim(branch: &mut Branch, r: &BranchRef, operation: &str) -> Result<()> {
    claim_inner(branch, r, operation, false)
}

/// Like [`claim`], but takes over a marker left by a command that is no longer running: for
/// deletes, which must be able to finish what an interrupted command left.
pub fn claim_taking_over(branch: &mut Branch, r: &BranchRef, operation: &str) -> Result<()> {
    claim_inner(branch, r, operation, true)
}

/// Another live command holds the branch.
#[derive(Debug, thiserror::Error)]
#[error(
    "branch `{branch}` is busy: `velo {operation}` (pid {pid}) is working on it since {since}; wait for it to finish"
)]
pub struct BranchBusy {
    branch: String,
    operation: String,
    pid: u32,
    since: String,
}

fn claim_inner(branch: &mut Branch, r: &BranchRef, operation: &str, take_over: bool) -> Result<()> {
    if let Some(busy) = &branch.busy {
        if pid_alive(busy.pid) {
            return Err(BranchBusy {
                branch: r.to_string(),
                operation: busy.operation.clone(),
                pid: busy.pid,
                since: busy.since.format("%H:%M:%S").to_string(),
            }
            .into());
        }
        if !take_over {
            bail!(
                "branch `{r}` was left mid-way by an interrupted `velo {}` (pid {}, {}); check it with `velo branch get {r}`, and `velo branch delete {r}` and re-create it if it is broken",
                busy.operation,
                busy.pid,
                busy.since.format("%Y-%m-%d %H:%M:%S UTC")
            );
        }
    }
    branch.busy = Some(busy_marker(operation));
    Ok(())
}

/// Runs a claiming transaction, retrying for up to `wait` while the branch is busy with another
/// live command (for cron jobs, which should wait rather than fail).
pub async fn claim_waiting<T>(
    ctx: &Ctx,
    wait: Duration,
    mut attempt: impl FnMut(&mut State) -> Result<T>,
) -> Result<T> {
    let start = std::time::Instant::now();
    let mut told = false;
    loop {
        match ctx.store.update(&mut attempt) {
            Err(e) if start.elapsed() < wait && !journal::interrupted() => {
                let Some(busy) = e.downcast_ref::<BranchBusy>() else {
                    return Err(e);
                };
                if !told {
                    ctx.shell.note(&format!(
                        "{busy}; waiting up to {}",
                        humantime::format_duration(wait)
                    ));
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            done => return done,
        }
    }
}

pub fn busy_marker(operation: &str) -> Busy {
    Busy {
        operation: operation.to_string(),
        pid: std::process::id(),
        since: Utc::now(),
    }
}

fn pid_alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

/// Clears the busy marker of a branch that still exists.
pub fn release(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    ctx.store.update(|s| {
        if let Some(b) = s
            .projects
            .get_mut(&r.project)
            .and_then(|p| p.branches.get_mut(&r.branch))
        {
            b.busy = None;
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// How to reach a branch's server from the host.
pub fn endpoint(project: &Project, branch: &Branch) -> Endpoint {
    Endpoint {
        host: DEFAULT_HOST_IP.to_string(),
        port: branch.port,
        user: project.user.clone(),
        password: project.password.clone(),
        database: project.database.clone(),
    }
}

/// The connection URL, without the password (shown only by `velo branch password`).
pub fn url(project: &Project, branch: &Branch) -> String {
    format!(
        "postgresql://{}@{}:{}/{}",
        project.user, DEFAULT_HOST_IP, branch.port, project.database
    )
}

/// The container for a branch whose data lives at `mountpoint`: PGDATA from the dataset, the
/// generation's own WAL archive (read-write) and the project's archives (read-only, for PITR).
pub fn container_spec(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    mountpoint: &str,
) -> Result<ContainerSpec> {
    let hba = write_hba(ctx)?;
    let archives = ctx.archives();
    let bind = |source: PathBuf, target: &str, read_only| BindMount {
        source: source.display().to_string(),
        target: target.to_string(),
        read_only,
    };
    Ok(ContainerSpec {
        name: names::container_name(r),
        image: project.image.clone(),
        labels: vec![
            (docker::LABEL_MANAGED.into(), "true".into()),
            (docker::LABEL_PROJECT.into(), r.project.to_string()),
            (docker::LABEL_BRANCH.into(), r.branch.to_string()),
            (docker::LABEL_HOME.into(), ctx.home_label()),
        ],
        env: vec![
            ("POSTGRES_USER".into(), project.user.clone()),
            ("POSTGRES_PASSWORD".into(), project.password.clone()),
            ("POSTGRES_DB".into(), project.database.clone()),
            ("PGDATA".into(), docker::PGDATA.into()),
        ],
        mounts: vec![
            bind(PathBuf::from(data_dir(mountpoint)), docker::PGDATA, false),
            bind(
                archives.generation_dir(&r.project, &r.branch, branch.generation),
                archive::OWN_ARCHIVE_IN_CONTAINER,
                false,
            ),
            bind(
                archives.project_dir(&r.project),
                archive::PROJECT_ARCHIVES_IN_CONTAINER,
                true,
            ),
            bind(hba, HBA_IN_CONTAINER, true),
        ],
        postgres_args: postgres_args(branch.port),
    })
}

/// Writes [`HBA`] into the velo home unless it is there already; returns its path.
fn write_hba(ctx: &Ctx) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = ctx.store.dir().join("pg_hba.conf");
    if std::fs::read_to_string(&path).is_ok_and(|text| text == HBA) {
        return Ok(path);
    }
    // A name of its own: two commands may write it at once (it is the same text).
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, HBA)
        // The image's postgres user reads it through the bind mount: it holds no secret.
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Server settings every branch runs with: listening on `port` of the host's 127.0.0.1 only,
/// with velo's client authentication ([`HBA`]); WAL archiving into its own archive; and a crash
/// recovery that syncs the data directory's file system with one `syncfs` instead of an
/// `fsync` of every file. A clone of a running server always starts with crash recovery, and
/// on this rig the per-file walk was 0.3 s of a branch's start (docs/benchmarks.md).
fn postgres_args(port: u16) -> Vec<String> {
    [
        format!("listen_addresses={DEFAULT_HOST_IP}"),
        format!("port={port}"),
        format!("hba_file={HBA_IN_CONTAINER}"),
        "wal_level=replica".to_string(),
        "archive_mode=on".to_string(),
        format!("archive_command={}", archive::archive_command()),
        "recovery_init_sync_method=syncfs".to_string(),
    ]
    .into_iter()
    .flat_map(|setting| ["-c".to_string(), setting])
    .collect()
}

/// Creates the WAL archive directory of a branch generation, owned by the image's postgres user.
pub fn create_archive(ctx: &Ctx, project: &Project, r: &BranchRef, generation: u32) -> Result<()> {
    ctx.archives()
        .create(
            &r.project,
            &r.branch,
            generation,
            project.pg_uid,
            project.pg_gid,
        )
        .map(drop)
        .with_context(|| format!("creating the WAL archive of `{r}`"))
}

/// PGDATA lives in a subdirectory of the dataset, so a dataset that is not mounted leaves
/// nothing for the container to mount (and initialise as an empty database).
pub fn data_dir(mountpoint: &str) -> String {
    format!("{mountpoint}/pgdata")
}

/// The mountpoint of a branch's current dataset; an error that says how to mount it if it is not.
pub async fn mounted_at(ctx: &Ctx, dataset: &str) -> Result<String> {
    ctx.zfs
        .mountpoint(dataset)
        .await
        .with_context(|| format!("checking that {dataset} is mounted"))?
        .ok_or_else(|| anyhow!("dataset {dataset} is not mounted: run `zfs mount {dataset}`"))
}

/// Mounts a branch's dataset, and its parents first, where they are not mounted (after a
/// reboot, or a restart of the zfs-fuse daemon, which also leaves dead FUSE mounts behind that
/// must go before anything can be mounted there) and returns the dataset's mountpoint.
pub async fn ensure_mounted(ctx: &Ctx, dataset: &str) -> Result<String> {
    let chain: Vec<&str> = dataset
        .match_indices('/')
        .map(|(i, _)| &dataset[..i])
        .chain([dataset])
        .collect();
    for ds in chain {
        // Asked afresh each time: clearing a dead mount also detaches the dead mounts below it.
        let props = ctx
            .zfs
            .get(&[ds], &["mounted", "mountpoint"])
            .await
            .with_context(|| format!("checking that {ds} is mounted"))?;
        let value = |k: &str| props.get(ds).and_then(|p| p.get(k)).cloned().flatten();
        let Some(mountpoint) = value("mountpoint").filter(|m| m.starts_with('/')) else {
            continue;
        };
        let stale = ctx.zfs.stale_mounts().contains(&mountpoint);
        if value("mounted").as_deref() == Some("yes") && !stale {
            continue;
        }
        ctx.shell
            .step(&format!("Mount {ds}"), async {
                if stale {
                    ctx.zfs.clear_stale_mount(&mountpoint).await?;
                }
                match ctx.zfs.mount(ds).await {
                    Err(e) if !e.to_string().contains("already mounted") => Err(e),
                    _ => Ok(()),
                }
            })
            .await
            .with_context(|| format!("mounting {ds}"))?;
    }
    mounted_at(ctx, dataset).await
}

/// Starts a branch's container and waits until PostgreSQL answers.
pub async fn start_and_wait(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    deadline: Duration,
) -> Result<()> {
    let name = names::container_name(r);
    ctx.shell
        .step("Start container", ctx.runtime.start(&name))
        .await?;
    wait_ready(ctx, project, r, branch, deadline).await
}

/// Creates a branch's container, having recorded first that the undo removes it. The undo
/// removes only a container labelled with this velo home, so a name clash with someone else's
/// container never removes theirs.
pub async fn create_container(ctx: &Ctx, spec: &ContainerSpec, undo: &mut Undo) -> Result<()> {
    undo.intend(
        ctx,
        "container",
        UndoStep::RemoveContainer {
            name: spec.name.clone(),
        },
    )
    .await?;
    ctx.shell
        .step("Create container", ctx.runtime.create(spec))
        .await?;
    Ok(())
}

/// Creates and starts the container of a branch that is new (nobody relies on its port yet)
/// and waits until it is ready. If another program took the reserved port in the meantime, it
/// moves the branch to a fresh port and tries again. Returns the branch as it now is.
pub async fn launch_new(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    mountpoint: &str,
    deadline: Duration,
    undo: &mut Undo,
) -> Result<Branch> {
    const ATTEMPTS: usize = 5;
    let mut branch = branch.clone();
    let mut tried = Vec::new();
    loop {
        let spec = container_spec(ctx, project, r, &branch, mountpoint)?;
        create_container(ctx, &spec, undo).await?;
        undo.step(ctx, "start").await?;
        ctx.shell
            .step("Start container", ctx.runtime.start(&spec.name))
            .await?;
        undo.step(ctx, "ready").await?;
        match wait_ready(ctx, project, r, &branch, deadline).await {
            Ok(()) => return Ok(branch),
            Err(e) if tried.len() < ATTEMPTS && e.downcast_ref::<PortTaken>().is_some() => {
                ctx.runtime.remove(&spec.name).await?;
                tried.push(branch.port);
                let taken = branch.port;
                branch.port = ctx.store.update(|s| {
                    let port = allocate_port(s, &tried)?;
                    let b = branch_mut(s, r)?;
                    b.port = port;
                    Ok::<_, anyhow::Error>(port)
                })?;
                ctx.shell.note(&format!(
                    "port {taken} was taken meanwhile; using {}",
                    branch.port
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Waits until the log of container `name` says, since its last start, that its server
/// listens on `port`. Only then does velo connect with the password: on the host's network
/// another local program could take the port before the server does (during a reset, say),
/// and the password, which tokio-postgres would send in clear if asked, must never reach it.
/// Once the server listens, nothing else can bind the port.
pub async fn until_listening(ctx: &Ctx, name: &str, port: u16, deadline: Duration) -> Result<()> {
    let needle = format!("listening on IPv4 address \"{DEFAULT_HOST_IP}\", port {port}");
    let start = std::time::Instant::now();
    let mut asked_alive = start;
    while !ctx.runtime.logged_since_start(name, &needle).await? {
        if start.elapsed() > deadline {
            bail!(
                "PostgreSQL in {name} did not listen on {DEFAULT_HOST_IP}:{port} within {deadline:?}"
            );
        }
        if asked_alive.elapsed() > Duration::from_millis(200) {
            asked_alive = std::time::Instant::now();
            let status = ctx.runtime.status(name).await?;
            if status != ContainerStatus::Running {
                bail!("container {name} is not running: {status:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Waits until a branch's PostgreSQL answers `SELECT 1`; on failure the error carries the
/// container's last log lines.
pub async fn wait_ready(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    deadline: Duration,
) -> Result<()> {
    let name = names::container_name(r);
    let deadline = ctx.ready_timeout(deadline);
    let waiting = ctx.shell.step("Ready", async {
        until_listening(ctx, &name, branch.port, deadline).await?;
        endpoint(project, branch)
            .wait_ready(deadline, || async {
                match ctx.runtime.status(&name).await {
                    Ok(ContainerStatus::Running) | Err(_) => Ok(()),
                    Ok(other) => Err(format!("container {name} is not running: {other:?}")),
                }
            })
            .await
            .map_err(anyhow::Error::new)
    });
    let ready = tokio::select! {
        ready = waiting => ready,
        () = journal::until_interrupted() => return Err(journal::Interrupted.into()),
    };
    if let Err(e) = ready {
        let logs = ctx.runtime.logs_tail(&name, 15).await;
        if logs.contains(PORT_TAKEN_LOG)
            && ctx.runtime.status(&name).await.ok() != Some(ContainerStatus::Running)
        {
            return Err(PortTaken { port: branch.port }.into());
        }
        return Err(e.context(format!(
            "PostgreSQL for `{r}` did not become ready; its last log lines:\n{}",
            logs.trim_end()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_free_port_names_the_fix() {
        let all: Vec<u16> = PORT_RANGE.collect();
        let err = allocate_port(&State::default(), &all)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no free port") && err.contains("delete branches"),
            "{err}"
        );
    }
}
