//! The server an import restores into: PostgreSQL on the new volume, made like the branch's
//! own but reachable only through a socket of its own (no TCP, so nobody logs in before the
//! import is done and masked), with no WAL archiving (the restore's WAL would only fill the
//! archive) and without waiting for each commit to reach the disk (a crash mid-import rolls
//! the whole import back; the shutdown checkpoint at the end makes the data durable).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};

use super::super::Ctx;
use super::super::server::{self, STOP_TIMEOUT};
use super::super::signal::{self, Interrupted};
use super::space;
use crate::hostdir::{self, Access};
use crate::names::{self, BranchRef};
use crate::pg::{Endpoint, Sql};
use crate::runtime::{Runtime, ServerStatus};
use crate::state::{Branch, Project};

/// How long the import server may take to answer (it replays no WAL: a fresh clone).
const READY: std::time::Duration = std::time::Duration::from_secs(120);

/// Creates and starts the import server on the volume at `root` and waits until it answers.
/// The caller recorded [`crate::state::UndoStep::StopImport`] first.
pub async fn start(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    root: &Path,
) -> Result<()> {
    let runtime = ctx.runtime(project)?;
    let mut spec = server::spec(ctx, project, r, branch, root, runtime.as_ref(), None)?;
    spec.name = names::import_server_name(r);
    let user = server::server_user(project);
    let sockets = space::socket_dir(ctx, branch.port);
    hostdir::server_dir(&sockets, user.uid, user.gid, Access::ReadWrite)
        .with_context(|| format!("preparing the socket directory {}", sockets.display()))?;
    spec.paths.socket_dir = sockets;
    let view = runtime.view(&spec.paths);
    spec.settings.extend(
        [
            (
                "unix_socket_directories",
                view.socket_dir.display().to_string(),
            ),
            ("listen_addresses", String::new()),
            ("cluster_name", spec.name.clone()),
            ("archive_mode", "off".into()),
            ("synchronous_commit", "off".into()),
            ("maintenance_work_mem", "128MB".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    // A server left by an import that velo did not see end (its undo removes it too).
    runtime.remove(&spec.name).await?;
    ctx.shell
        .step("Create import server", runtime.create(&spec))
        .await?;
    ctx.shell
        .step("Start import server", runtime.start(&spec.name))
        .await?;
    let sql = sql(ctx, project, branch.port, "postgres");
    let waiting = server::poll_ready(sql.as_ref(), ctx.ready_timeout(READY), false, || async {
        alive(runtime.as_ref(), &spec.name).await
    });
    let ready = tokio::select! {
        ready = ctx.shell.step("Ready", waiting) => ready,
        () = signal::until_interrupted() => return Err(Interrupted.into()),
    };
    if let Err(e) = ready {
        let logs = runtime.logs_tail(&spec.name, 15).await;
        return Err(e.context(format!(
            "the import server of `{r}` did not become ready; its last log lines:\n{}",
            logs.trim_end()
        )));
    }
    Ok(())
}

async fn alive(runtime: &dyn Runtime, name: &str) -> Result<(), String> {
    match runtime.status(name).await {
        Ok(ServerStatus::Running) | Err(_) => Ok(()),
        Ok(other) => Err(format!("server {name} is not running: {}", other.word())),
    }
}

/// Checkpoints and stops the import server (a fast shutdown, which makes everything written
/// durable), then removes it.
pub async fn stop(ctx: &Ctx, project: &Project, r: &BranchRef, port: u16) -> Result<()> {
    let runtime = ctx.runtime(project)?;
    let name = names::import_server_name(r);
    ctx.shell
        .step(
            "Checkpoint",
            sql(ctx, project, port, "postgres").checkpoint(),
        )
        .await?;
    ctx.shell
        .step("Stop import server", async {
            runtime.stop(&name, STOP_TIMEOUT).await?;
            runtime.remove(&name).await
        })
        .await?;
    Ok(())
}

/// How velo talks to database `database` of the import server of a branch on `port`.
pub fn sql(ctx: &Ctx, project: &Project, port: u16, database: &str) -> Arc<dyn Sql> {
    ctx.backends.sql(Endpoint {
        socket_dir: space::socket_dir(ctx, port),
        port,
        user: project.user.clone(),
        database: database.to_string(),
        server_uid: project.pg_uid,
    })
}
