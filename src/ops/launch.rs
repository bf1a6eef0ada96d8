//! Making a branch's server within an operation: each step recorded in the journal first.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::server::{self, PortTaken, Recovery};
use super::{Ctx, Undo, allocate_port, branch_mut, follow};
use crate::names::BranchRef;
use crate::runtime::{Runtime, ServerSpec};
use crate::state::{Branch, Project, UndoStep};

/// Creates a branch's server, having recorded first that the undo removes it. The undo
/// removes only a server labelled with this velo home, so a name clash with someone else's
/// never removes theirs.
pub async fn create_server(
    ctx: &Ctx,
    runtime: &dyn Runtime,
    spec: &ServerSpec,
    r: &BranchRef,
    undo: &mut Undo,
) -> Result<()> {
    undo.intend(
        ctx,
        "container",
        UndoStep::RemoveServer {
            branch: r.branch.clone(),
        },
    )
    .await?;
    ctx.shell
        .step("Create server", runtime.create(spec))
        .await?;
    Ok(())
}

/// How to launch a new branch's server.
pub struct Launch<'a> {
    /// The root of the volume it serves.
    pub root: &'a Path,
    /// How long it may take to answer.
    pub deadline: Duration,
    /// Set for a point-in-time branch.
    pub recovery: Option<&'a Recovery>,
}

/// Creates and starts the server of a branch that is new (nobody relies on its port yet) and
/// waits until it is ready. If another program took the reserved port in the meantime, it
/// moves the branch to a fresh port and tries again. Returns the branch as it now is.
pub async fn launch_new(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    how: Launch<'_>,
    undo: &mut Undo,
) -> Result<Branch> {
    const ATTEMPTS: usize = 5;
    let runtime = ctx.runtime(project)?;
    let (root, deadline, recovery) = (how.root, how.deadline, how.recovery);
    let mut branch = branch.clone();
    let mut tried = Vec::new();
    let mut promoted = false;
    loop {
        let spec = server::spec(ctx, project, r, &branch, root, runtime.as_ref(), recovery)?;
        create_server(ctx, runtime.as_ref(), &spec, r, undo).await?;
        if tried.is_empty() {
            promoted = follow::promote_clone(ctx, project, r, &spec).await?;
        }
        if recovery.is_some() && tried.is_empty() {
            ctx.shell
                .step(
                    "Recovery settings",
                    runtime.signal_file(&spec, "recovery.signal", server::server_user(project)),
                )
                .await?;
        }
        undo.step(ctx, "start").await?;
        ctx.shell
            .step("Start server", runtime.start(&spec.name))
            .await?;
        undo.step(ctx, "ready").await?;
        match server::wait_ready(ctx, project, r, &branch, deadline).await {
            Ok(()) if promoted => {
                follow::own_password(ctx, project, &branch).await?;
                return Ok(branch);
            }
            Ok(()) => return Ok(branch),
            Err(e) if tried.len() < ATTEMPTS && e.downcast_ref::<PortTaken>().is_some() => {
                runtime.remove(&spec.name).await?;
                tried.push(branch.port);
                let taken = branch.port;
                branch.port = ctx.store.update(|s| {
                    let port = allocate_port(s, &tried, &ctx.ports)?;
                    branch_mut(s, r)?.port = port;
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
