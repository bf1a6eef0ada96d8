//! A branch's server as velo makes it: its spec from the state, its private Unix socket, its
//! settings, waiting until it answers, and putting it back on the data the state records.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, Utc};

use super::{Ctx, follow, signal};
use crate::archive;
use crate::fsx;
use crate::hostdir::{self, Access};
use crate::names::{self, BranchName, BranchRef};
use crate::pg::{Endpoint, Sql};
use crate::runtime::{Labels, Runtime, ServerPaths, ServerSpec, ServerStatus, ServerUser};
use crate::state::{Branch, Project};

/// The one host address every branch's PostgreSQL listens on.
pub const HOST_IP: &str = "127.0.0.1";

/// How long a branch (which needs no initdb) may take to answer.
pub const BRANCH_READY: Duration = Duration::from_secs(60);

/// How long one readiness attempt may take, connection and query.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long PostgreSQL gets for a fast shutdown before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The client authentication file every branch's server uses (`hba_file`), in place of the
/// `pg_hba.conf` in its data directory. The Unix socket, in a directory only velo's user (and
/// the server) can enter, is trusted: that is how velo itself connects, with no password on
/// any wire. Every TCP connection needs the password, by SCRAM only: velo sets SCRAM
/// verifiers, and an MD5 hash a branch's superuser can read (a physical import copies every
/// source role's) would let anyone who has it log in to another server with `md5` challenges,
/// main among them, without knowing the password.
const HBA: &str = "\
# Written by velo; every branch server reads it (hba_file). Edits are overwritten.
local all all trust
host all all all scram-sha-256
host replication all all scram-sha-256
";

/// What PostgreSQL logs when another program holds its port.
const PORT_TAKEN_LOG: &str = "Address already in use";

/// Another program holds the port a branch's server should listen on.
#[derive(Debug, thiserror::Error)]
#[error(
    "port {port} on {HOST_IP} is already in use by another program: stop it, or let `velo repair --fix` move the branch to a free port"
)]
pub struct PortTaken {
    pub port: u16,
}

/// A branch's data directory inside its volume. PGDATA lives in a subdirectory, so a volume
/// that is not mounted leaves nothing for a server to initialise as an empty database.
pub fn data_dir(volume_root: &Path) -> PathBuf {
    volume_root.join("pgdata")
}

/// The directory of a branch's Unix socket. Named by port (unique among the home's branches,
/// and short: a socket's path has at most 107 bytes).
pub fn socket_dir(ctx: &Ctx, port: u16) -> PathBuf {
    ctx.store.dir().join("run").join(port.to_string())
}

/// How velo talks to a branch's server: over its socket, as the project's superuser, with no
/// password.
pub fn sql(ctx: &Ctx, project: &Project, branch: &Branch) -> Arc<dyn Sql> {
    ctx.backends.sql(Endpoint {
        socket_dir: socket_dir(ctx, branch.port),
        port: branch.port,
        user: project.user.clone(),
        database: project.database.clone(),
        server_uid: project.pg_uid,
    })
}

/// The connection URL users get, without the password.
pub fn url(project: &Project, branch: &Branch) -> String {
    format!(
        "postgresql://{}@{HOST_IP}:{}/{}",
        project.user, branch.port, project.database
    )
}

/// Who a project's servers run as.
pub fn server_user(project: &Project) -> ServerUser {
    ServerUser {
        uid: project.pg_uid,
        gid: project.pg_gid,
    }
}

/// A point-in-time branch's first start: replay `source`'s generation `generation` archive up
/// to `target`, then promote. The settings are passed to the server, never written into its
/// data directory, and do nothing once recovery has ended (PostgreSQL removes the
/// `recovery.signal` that starts it when it promotes).
pub struct Recovery {
    pub source: BranchName,
    pub generation: u32,
    pub target: DateTime<Utc>,
}

impl Recovery {
    fn settings(&self, view: &ServerPaths) -> Vec<(String, String)> {
        let root = view.archives_root.display().to_string();
        vec![
            (
                "restore_command".into(),
                archive::restore_command(&root, &self.source, self.generation),
            ),
            (
                "recovery_target_time".into(),
                self.target.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            ),
            ("recovery_target_action".into(), "promote".into()),
        ]
    }
}

/// The spec of a branch's server on the volume at `volume_root` (for its recovery, if given).
/// Makes sure its socket directory and velo's `pg_hba.conf` exist.
pub fn spec(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    volume_root: &Path,
    runtime: &dyn Runtime,
    recovery: Option<&Recovery>,
) -> Result<ServerSpec> {
    let user = server_user(project);
    let sockets = socket_dir(ctx, branch.port);
    hostdir::private_dir(sockets.parent().expect("run/<port>"))
        .and_then(|_| hostdir::server_dir(&sockets, user.uid, user.gid, Access::ReadWrite))
        .with_context(|| format!("preparing the socket directory {}", sockets.display()))?;
    let archives = ctx.archives();
    let paths = ServerPaths {
        data_dir: data_dir(volume_root),
        socket_dir: sockets,
        archive_dir: archives.generation_dir(&r.project, &r.branch, branch.generation),
        archives_root: archives.project_dir(&r.project),
        hba_file: write_hba(ctx)?,
        secrets_dir: follow::is_standby(project, r).then(|| follow::secrets_dir(ctx, &r.project)),
        source_wal: follow::source_wal(project, r),
    };
    let name = names::server_name(r);
    let view = runtime.view(&paths);
    let mut settings = settings(&view, branch.port, &name);
    if !ctx.storage(project)?.capabilities().copies_data {
        settings.extend(copy_on_write_settings());
    }
    settings.extend(recovery.map(|x| x.settings(&view)).unwrap_or_default());
    settings.extend(follow::standby_settings(project, r, &view));
    Ok(ServerSpec {
        name,
        labels: Labels {
            project: r.project.to_string(),
            branch: r.branch.to_string(),
            home: ctx.home_label(),
        },
        user,
        paths,
        settings,
    })
}

/// Writes [`HBA`] into the velo home unless it is there already; returns its path. Readable by
/// all (a server in a container reads it as another uid): it holds no secret.
fn write_hba(ctx: &Ctx) -> Result<PathBuf> {
    let path = ctx.store.dir().join("pg_hba.conf");
    let home = ctx.store.open_home()?;
    let current = fsx::read_regular_at(home.as_fd(), "pg_hba.conf", 4096)
        .ok()
        .flatten();
    if current.as_deref() != Some(HBA.as_bytes()) {
        fsx::replace_at(home.as_fd(), "pg_hba.conf", HBA.as_bytes(), 0o644, None)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(path)
}

/// Settings every branch runs with, for a server that sees its directories as `view`:
/// listening on `port` of 127.0.0.1 and on its private socket, with velo's client
/// authentication; WAL archiving into its own archive; and a crash recovery that syncs the
/// data directory's file system with one `syncfs` instead of an `fsync` of every file (a clone
/// of a running server always starts with crash recovery, and the per-file walk was 0.3 s of
/// a branch's start here, docs/benchmarks.md).
fn settings(view: &ServerPaths, port: u16, name: &str) -> Vec<(String, String)> {
    let path = |p: &Path| p.display().to_string();
    [
        ("listen_addresses", HOST_IP.to_string()),
        ("port", port.to_string()),
        ("unix_socket_directories", path(&view.socket_dir)),
        ("hba_file", path(&view.hba_file)),
        ("cluster_name", name.to_string()),
        ("wal_level", "replica".into()),
        ("archive_mode", "on".into()),
        (
            "archive_command",
            archive::archive_command(&path(&view.archive_dir)),
        ),
        ("recovery_init_sync_method", "syncfs".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// On storage that shares blocks (ZFS, Btrfs, reflink), WAL segments are made new and left
/// unfilled, as PostgreSQL's documentation advises for copy-on-write file systems: filling a
/// new segment with zeros, or writing over a recycled one whose blocks a snapshot or the
/// reflinked WAL archive shares, takes a segment's worth of new blocks before any record is
/// written, in every branch and after every snapshot. On a plain copy (ext4 and the like)
/// PostgreSQL's defaults stay: there the zeros reserve the space the segment will need.
fn copy_on_write_settings() -> [(String, String); 2] {
    [
        ("wal_init_zero".into(), "off".into()),
        ("wal_recycle".into(), "off".into()),
    ]
}

/// Starts a branch's server and waits until PostgreSQL answers.
pub async fn start_and_wait(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    deadline: Duration,
) -> Result<()> {
    let runtime = ctx.runtime(project)?;
    ctx.shell
        .step("Start server", runtime.start(&names::server_name(r)))
        .await?;
    wait_ready(ctx, project, r, branch, deadline).await
}

/// Waits until a branch's PostgreSQL answers `SELECT 1` out of recovery; on failure the error
/// carries the server's last log lines. A signal stops the wait.
pub async fn wait_ready(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    deadline: Duration,
) -> Result<()> {
    let waiting = ctx.shell.step(
        "Ready",
        ready_or_why(ctx, project, r, branch, ctx.ready_timeout(deadline)),
    );
    tokio::select! {
        ready = waiting => ready,
        () = signal::until_interrupted() => Err(signal::Interrupted.into()),
    }
}

/// [`wait_ready`] without its step line and not stopped by a signal. A server that stops
/// ends the wait at once; the error says why: its port taken ([`PortTaken`]), or its log.
async fn ready_or_why(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    deadline: Duration,
) -> Result<()> {
    let runtime = ctx.runtime(project)?;
    let name = names::server_name(r);
    let sql = sql(ctx, project, branch);
    let standby = follow::is_standby(project, r);
    let ready = poll_ready(sql.as_ref(), deadline, standby, || async {
        match runtime.status(&name).await {
            Ok(ServerStatus::Running) | Err(_) => Ok(()),
            Ok(other) => Err(format!("server {name} is not running: {}", other.word())),
        }
    })
    .await;
    let Err(e) = ready else {
        return Ok(());
    };
    let logs = runtime.logs_tail(&name, 15).await;
    if logs.contains(PORT_TAKEN_LOG)
        && runtime.status(&name).await.ok() != Some(ServerStatus::Running)
    {
        return Err(PortTaken { port: branch.port }.into());
    }
    Err(e.context(format!(
        "PostgreSQL for `{r}` did not become ready; its last log lines:\n{}",
        logs.trim_end()
    )))
}

/// Polls until the server answers `SELECT 1` out of recovery (a `standby`: in recovery, as it
/// stays), or `deadline` passes. `alive` is asked between attempts so a server that died is
/// reported at once instead of after the whole deadline.
pub async fn poll_ready<F, Fut>(
    sql: &dyn Sql,
    deadline: Duration,
    standby: bool,
    mut alive: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    // A missing socket costs nothing and a starting server answers "starting up" from a
    // short-lived backend, so the first seconds are polled tightly: every pause is time lost.
    let mut pause = Duration::from_millis(5);
    let mut last = String::from("no attempt made");
    let mut asked_alive = Instant::now();
    while start.elapsed() < deadline {
        match tokio::time::timeout(PROBE_TIMEOUT, sql.probe()).await {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) if standby => return Ok(()),
            Ok(Ok(false)) => last = "still in recovery".into(),
            Ok(Err(e)) => last = format!("{:#}", anyhow::Error::new(e)),
            Err(_) => last = format!("no answer within {PROBE_TIMEOUT:?}"),
        }
        if asked_alive.elapsed() > Duration::from_millis(200) {
            asked_alive = Instant::now();
            if let Err(why) = alive().await {
                last = why;
                break;
            }
        }
        tokio::time::sleep(pause).await;
        if start.elapsed() > Duration::from_secs(2) {
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
    bail!(
        "PostgreSQL was not ready after {:.1} s: {last}",
        start.elapsed().as_secs_f64()
    )
}

/// Puts a branch's server back on the generation the state records (the undo of a reset,
/// restore, rename or start), mounting its volume if it is not, started and answering again
/// if `start`: a command that waited for this one (a snapshot's CHECKPOINT, say) must not
/// meet it half started. Not cut short by a signal: this is the roll-back a signal asked for.
pub async fn restore(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    start: bool,
) -> Result<()> {
    let (storage, runtime) = (ctx.storage(project)?, ctx.runtime(project)?);
    let note = |what: &str| ctx.shell.note(&format!("▸ {what}"));
    let root = storage
        .ensure_available(&branch.volume(r), &note)
        .await
        .with_context(|| format!("the data of `{r}` is not available"))?;
    let spec = spec(ctx, project, r, branch, &root, runtime.as_ref(), None)?;
    runtime.remove(&names::retired_server_name(r)).await?;
    runtime.remove(&spec.name).await?;
    runtime.create(&spec).await?;
    if start {
        runtime.start(&spec.name).await?;
        // At least the usual wait: a `VELO_READY_TIMEOUT` short enough to fail a start must
        // not fail the roll-back of that start too.
        let deadline = ctx.ready_timeout(BRANCH_READY).max(BRANCH_READY);
        ready_or_why(ctx, project, r, branch, deadline).await?;
    }
    Ok(())
}
