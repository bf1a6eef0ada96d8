//! Work whose cost grows with the data, done after the command has answered: destroying a
//! deleted branch's or project's volumes, an old generation after a reset, WAL archives.
//!
//! The command first does what the user waits for (the server gone, the state changed) and
//! records the rest in the journal as an operation that is finished forward; then it hands
//! that operation to a background `velo` (`velo __background finish <id>`), which takes it
//! over and finishes it. If the background process dies, the operation's owner is dead and
//! the next velo command finishes it, as after any crash. `velo status` lists what is pending.
//! `VELO_BACKGROUND=0` finishes everything before the command returns.

use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::journal::Undo;
use super::{Ctx, generation};
use crate::names::ProjectName;
use crate::state::{Owner, Recovery, State};

/// Finishes a roll-forward operation after the command's own part: in a background `velo`
/// when possible, else here.
pub async fn finish(ctx: &Ctx, undo: Undo) -> Result<()> {
    let parent = std::process::id().to_string();
    if ctx.background
        && let Ok(child) = spawn(ctx, &["finish", undo.id(), &parent])
    {
        // The operation passes to the background process before this one exits, so that it
        // never looks abandoned (the child takes it too, if it gets there first).
        let me = Owner::me();
        ctx.store.update(|s| {
            // A child already gone has no start time to record: a bare pid would look alive
            // to whatever process gets it next, so the operation stays this one's and is
            // finished as after a crash.
            let heir = Owner::of(child);
            if let Some(op) = s.journal.get_mut(undo.id())
                && op.owner == me
                && heir.started.is_some()
            {
                op.owner = heir;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        return Ok(());
    }
    let project = undo.record(&ctx.store.read()?).map(|op| op.project.clone());
    match super::recover::finish_forward(ctx, &undo).await {
        Ok(()) => {
            if let Some(project) = project {
                tidy_here(ctx, &project).await;
            }
        }
        Err(e) => ctx.shell.warn(&format!(
            "its data is not destroyed yet (the next velo command tries again; `velo status` shows it): {e:#}"
        )),
    }
    Ok(())
}

/// Removes what a project no longer needs (old generations, stale prepared clusters): in a
/// background `velo` when possible, else here.
pub async fn tidy(ctx: &Ctx, project: &ProjectName) {
    if ctx.background && spawn(ctx, &["tidy", project.as_str()]).is_ok() {
        return;
    }
    generation::tidy(ctx, project).await;
}

/// Starts `velo __background <args>` on its own: its own process group (a Ctrl-C in the
/// terminal does not reach it), output appended to `$VELO_HOME/background.log`. Returns its pid.
fn spawn(ctx: &Ctx, args: &[&str]) -> Result<u32> {
    let home = ctx.store.open_home()?;
    let log = crate::fsx::open_append_at(&home, "background.log", 0o600)
        .context("opening background.log")?;
    let exe = std::env::current_exe().context("finding velo's own program")?;
    let child = std::process::Command::new(exe)
        .arg("__background")
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting a background velo")?;
    // Never waited for: when this process exits, init reaps it.
    Ok(child.id())
}

/// The `velo __background finish <id> <parent pid>` side: takes the operation over if its
/// owner is still the command that started this process (another velo may have recovered it
/// already), and finishes it.
pub async fn run_finish(ctx: &Ctx, id: &str, parent: u32) -> Result<()> {
    let me = Owner::me();
    let taken = ctx.store.update(|s| {
        let Some(op) = s.journal.get_mut(id) else {
            return Ok::<_, anyhow::Error>(None);
        };
        if op.owner.pid != parent && op.owner.pid != me.pid {
            return Ok(None);
        }
        op.owner = me.clone();
        Ok(Some(op.clone()))
    })?;
    let Some(op) = taken else {
        return Ok(());
    };
    let undo = Undo::adopt(&op);
    super::recover::finish_forward(ctx, &undo)
        .await
        .with_context(|| format!("finishing `velo {}` of {}", op.command, op.project))?;
    tidy_here(ctx, &op.project).await;
    Ok(())
}

/// The `velo __background tidy <project>` side.
pub async fn tidy_here(ctx: &Ctx, project: &ProjectName) {
    generation::tidy(ctx, project).await;
    super::prepared::tidy(ctx).await;
}

/// An operation being finished after its command answered, for `velo status`.
#[derive(Debug, serde::Serialize)]
pub struct Pending {
    pub command: String,
    pub project: ProjectName,
    pub branches: Vec<String>,
    pub pid: u32,
    pub since: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Display for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`velo {}` of `{}`", self.command, self.project)?;
        if !self.branches.is_empty() {
            write!(f, " ({})", self.branches.join(", "))?;
        }
        write!(
            f,
            ": destroying data (pid {}, since {} UTC)",
            self.pid,
            self.since.format("%H:%M:%S")
        )
    }
}

/// What is being finished after its command answered (a roll-forward operation).
pub fn pending(state: &State) -> Vec<Pending> {
    state
        .journal
        .iter()
        .filter(|op| matches!(op.recovery, Recovery::RollForward { .. }))
        .map(|op| Pending {
            command: op.command.clone(),
            project: op.project.clone(),
            branches: op.branches.iter().map(ToString::to_string).collect(),
            pid: op.owner.pid,
            since: op.started_at,
        })
        .collect()
}

/// Waits, saying so, until no operation is deleting something `blocks` matches (a project or
/// branch of the name about to be made again); at most `deadline`.
pub async fn wait_for(
    ctx: &Ctx,
    what: &str,
    deadline: Duration,
    blocks: impl Fn(&State) -> bool,
) -> Result<()> {
    let start = Instant::now();
    let mut told = false;
    loop {
        super::recover::recover(ctx).await;
        if !blocks(&ctx.store.read()?) {
            return Ok(());
        }
        if !told {
            ctx.shell
                .note(&format!("waiting for velo to finish deleting {what}"));
            told = true;
        }
        if start.elapsed() > deadline {
            anyhow::bail!(
                "{what} is still being deleted after {}; see `velo status`, and try again",
                humantime::format_duration(deadline)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
