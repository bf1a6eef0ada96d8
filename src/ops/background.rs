//! Work whose cost grows with the data, done after the command has answered: destroying a
//! deleted branch's or project's volumes, an old generation after a reset, WAL archives.
//!
//! The command first does what the user waits for (the server gone, the state changed) and
//! records the rest in the journal as an operation that is finished forward; then it hands
//! that operation to a background `velo` (`velo __background finish <id>`), which takes it
//! over and finishes it once velo is idle (see [`QUIET`]). A command that needs it done sooner
//! (a create of the same name, or one short of space) takes it over and finishes it itself
//! ([`wait_for`]). If the background process dies, the operation's owner is dead and the next
//! velo command finishes it, as after any crash. `velo status` lists what is pending.
//! `VELO_BACKGROUND=0` finishes everything before the command returns.

use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::journal::Undo;
use super::{Ctx, generation};
use crate::names::ProjectName;
use crate::state::{Operation, Owner, Recovery, State};

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
                op.deferred = true;
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

/// The `velo __background finish <id> <parent pid>` side: waits for velo to be idle, then
/// takes the operation over if its owner is still the command that started this process or
/// this process (a command that needed it done, or a recovery, may have taken it already),
/// and finishes it.
pub async fn run_finish(ctx: &Ctx, id: &str, parent: u32) -> Result<()> {
    // Whole owners, start times included: a later command that took the operation over may
    // have been given the parent's pid once the parent exited.
    let (me, parent) = (Owner::me(), Owner::of(parent));
    let ours = |op: &Operation| op.owner == parent || op.owner == me;
    defer_to_commands(ctx, |s| s.journal.get(id).is_some_and(ours)).await;
    let taken = ctx.store.update(|s| {
        let Some(op) = s.journal.get_mut(id).filter(|op| ours(op)) else {
            return Ok::<_, anyhow::Error>(None);
        };
        op.hand_to(&me);
        Ok(Some(op.clone()))
    })?;
    let Some(op) = taken else {
        return Ok(());
    };
    finish_taken(ctx, &op).await?;
    tidy_here(ctx, &op.project).await;
    Ok(())
}

/// Finishes a roll-forward operation this process has taken over.
async fn finish_taken(ctx: &Ctx, op: &Operation) -> Result<()> {
    super::recover::finish_forward(ctx, &Undo::adopt(op))
        .await
        .with_context(|| format!("finishing `velo {}` of {}", op.command, op.project))
}

/// A background velo destroys data once no command has changed velo's state for this long
/// and none is under way: a series of resets, or a delete followed by a create, runs at full
/// speed, what it retired destroyed when it pauses, instead of each command competing with the
/// destroy of the one before (zfs-fuse and the plain-copy storage free data synchronously, on
/// the same disk and daemon the next command needs).
const QUIET: Duration = Duration::from_secs(1);

/// The longest a background velo defers to commands by default, so old data never piles up
/// under a steady stream of them (`VELO_IDLE_WAIT` sets another, [`Ctx::idle_wait`]).
pub const IDLE_WAIT: Duration = Duration::from_secs(10);

/// The `velo __background tidy <project>` side: defers to commands (see [`QUIET`]), then
/// tidies.
pub async fn run_tidy(ctx: &Ctx, project: &ProjectName) {
    defer_to_commands(ctx, |_| true).await;
    tidy_here(ctx, project).await;
}

/// Waits until velo is idle, at most [`Ctx::idle_wait`], or until `wanted` no longer holds.
async fn defer_to_commands(ctx: &Ctx, wanted: impl Fn(&State) -> bool) {
    let start = Instant::now();
    while start.elapsed() < ctx.idle_wait {
        // The file's age first: reading the state takes its lock, which commands need.
        let since_change = ctx.store.changed_at().and_then(|t| t.elapsed().ok());
        if let Some(age) = since_change.filter(|age| *age < QUIET) {
            tokio::time::sleep(QUIET - age).await;
            continue;
        }
        match ctx.store.read() {
            Ok(state) if wanted(&state) && !idle(&state, since_change) => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            _ => break,
        }
    }
}

/// Whether velo is idle: its state unchanged for [`QUIET`] (`since_change`) and no command
/// under way (an operation that rolls back, of a live process). Work finished after its
/// command answered, like this, does not count.
fn idle(state: &State, since_change: Option<Duration>) -> bool {
    since_change.is_none_or(|age| age >= QUIET)
        && !state
            .journal
            .iter()
            .any(|op| matches!(op.recovery, Recovery::RollBack { .. }) && op.owner.is_alive())
}

/// Destroys what a project no longer needs (old generations, stale prepared clusters) now.
pub async fn tidy_here(ctx: &Ctx, project: &ProjectName) {
    generation::tidy(ctx, project).await;
    super::prepared::tidy(ctx).await;
}

/// Data being destroyed after its command answered, or waiting to be, for `velo status`.
#[derive(Debug, serde::Serialize)]
pub struct Pending {
    pub command: String,
    pub project: ProjectName,
    pub branches: Vec<String>,
    /// The process destroying it, or to destroy it; `None` for old generations no process
    /// has taken yet.
    pub pid: Option<u32>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether it waits for velo to be idle (see [`QUIET`]) before anything is destroyed.
    pub waiting: bool,
}

impl std::fmt::Display for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (Some(pid), Some(since)) = (self.pid, self.since) else {
            return write!(
                f,
                "old data of `{}/{}`: waiting for velo to be idle, then destroyed",
                self.project,
                self.branches.join(", ")
            );
        };
        write!(f, "`velo {}` of `{}`", self.command, self.project)?;
        if !self.branches.is_empty() {
            write!(f, " ({})", self.branches.join(", "))?;
        }
        let doing = if self.waiting {
            "data destroyed once velo is idle"
        } else {
            "destroying data"
        };
        write!(
            f,
            ": {doing} (pid {pid}, since {} UTC)",
            since.format("%H:%M:%S")
        )
    }
}

/// What is being finished after its command answered (a roll-forward operation), and the
/// branches with retired generations that nothing uses and no operation is destroying yet.
pub fn pending(state: &State) -> Vec<Pending> {
    let finishing = state
        .journal
        .iter()
        .filter(|op| matches!(op.recovery, Recovery::RollForward { .. }))
        .map(|op| Pending {
            command: op.command.clone(),
            project: op.project.clone(),
            branches: op.branches.iter().map(ToString::to_string).collect(),
            pid: Some(op.owner.pid),
            since: Some(op.started_at),
            waiting: op.deferred,
        });
    let waiting = state.projects.iter().flat_map(|(pname, p)| {
        p.branches.iter().filter_map(move |(bname, b)| {
            let r = crate::names::BranchRef::new(pname.clone(), bname.clone());
            b.retired
                .iter()
                .any(|g| !state.generation_in_use(&r, g.generation))
                .then(|| Pending {
                    command: "tidy".into(),
                    project: pname.clone(),
                    branches: vec![bname.to_string()],
                    pid: None,
                    since: None,
                    waiting: true,
                })
        })
    });
    finishing.chain(waiting).collect()
}

/// Waits, saying so, until no operation is deleting something `blocks` matches (a project or
/// branch of the name about to be made again, or space); at most `deadline`. What `project`'s
/// background velos still defer is taken over and finished here ([`hurry`]).
pub async fn wait_for(
    ctx: &Ctx,
    project: &ProjectName,
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
        if hurry(ctx, project).await? == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Takes over `project`'s operations whose background velo still waits for velo to be idle,
/// and finishes them here: the command waits for them, so they must not wait for it. Returns
/// how many it finished. What they leave to tidy goes to a background velo, as usual.
async fn hurry(ctx: &Ctx, project: &ProjectName) -> Result<usize> {
    let me = Owner::me();
    let claimed = ctx.store.update(|s| {
        let mut claimed = Vec::new();
        for op in s.journal.deferred_mut(project) {
            op.hand_to(&me);
            claimed.push(op.clone());
        }
        Ok::<_, anyhow::Error>(claimed)
    })?;
    for op in &claimed {
        finish_taken(ctx, op).await?;
    }
    if !claimed.is_empty() {
        tidy(ctx, project).await;
    }
    Ok(claimed.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fakes::{World, r, tokio};
    use crate::ops::journal::Intent;
    use crate::state::{Finish, Forget, Generation};

    fn open(state: &mut State, recovery: Recovery) -> String {
        let project = "demo".parse().unwrap();
        let intent = Intent {
            command: "reset",
            project: &project,
            branches: Vec::new(),
            pins: Vec::new(),
            recovery,
        };
        Undo::begin(state, intent).id().to_string()
    }

    #[test]
    fn velo_is_idle_once_its_state_rests_and_no_command_runs() {
        let mut state = State::default();
        assert!(idle(&state, None), "no state yet");
        assert!(idle(&state, Some(QUIET)));
        assert!(!idle(&state, Some(QUIET / 2)), "a command just changed it");

        // Work finished after its command answered does not count ...
        let forward = Finish::DeleteBranches {
            release: Vec::new(),
            volumes: Vec::new(),
        };
        open(&mut state, Recovery::RollForward { finish: forward });
        assert!(idle(&state, Some(QUIET)));
        // ... a command under way does, however long the state rests ...
        let back = Forget::Nothing;
        let command = open(&mut state, Recovery::RollBack { forget: back });
        assert!(!idle(&state, Some(QUIET * 30)));
        // ... unless its process is gone.
        state.journal.get_mut(&command).unwrap().owner = Owner {
            pid: u32::MAX - 1,
            started: None,
        };
        assert!(idle(&state, Some(QUIET)));
    }

    #[test]
    fn old_generations_waiting_for_idle_are_pending() {
        tokio().block_on(async {
            let w = World::with_project().await;
            let dev = r("demo/dev");
            let pending = |w: &World| pending(&w.ctx.store.read().unwrap());
            assert!(pending(&w).is_empty());
            w.ctx
                .store
                .update(|s| {
                    let b = s.projects.get_mut(&dev.project).unwrap();
                    let b = b.branches.get_mut(&dev.branch).unwrap();
                    b.retired.push(Generation {
                        generation: b.generation + 7,
                        origin: None,
                    });
                    Ok::<_, anyhow::Error>(())
                })
                .unwrap();
            let said = pending(&w);
            assert_eq!(said.len(), 1, "{said:?}");
            assert_eq!(
                (said[0].pid, said[0].branches.clone()),
                (None, vec!["dev".into()])
            );
            let line = said[0].to_string();
            assert!(line.contains("demo/dev") && line.contains("idle"), "{line}");
            // The tidy that finds them destroys them; nothing is pending after.
            tidy_here(&w.ctx, &dev.project).await;
            assert!(pending(&w).is_empty(), "{:?}", pending(&w));
        });
    }

    /// A delete whose destroy failed, handed (as `finish` does) to a background velo `heir`
    /// that still waits for velo to be idle. Returns its id and the volumes left.
    async fn deferred_delete(w: &World, heir: Owner) -> (String, Vec<String>) {
        let dev = r("demo/dev");
        let before = w.storage.contents();
        w.storage.fail_next("destroy_volume");
        crate::ops::branch::delete(&w.ctx, &dev, false)
            .await
            .unwrap();
        let id = w
            .ctx
            .store
            .update(|s| {
                let op = s.journal.deferred_mut(&dev.project).next();
                assert!(
                    op.is_none(),
                    "nothing is deferred without a background velo"
                );
                let op = s.journal.0.first_mut().expect("the delete's operation");
                (op.owner, op.deferred) = (heir, true);
                Ok::<_, anyhow::Error>(op.id.clone())
            })
            .unwrap();
        let left = before
            .intersection(&w.storage.contents())
            .filter(|c| c.contains("dev"))
            .cloned()
            .collect();
        (id, left)
    }

    #[test]
    fn a_create_of_the_name_finishes_a_deferred_delete_itself() {
        tokio().block_on(async {
            let w = World::with_project().await;
            let (_, left) = deferred_delete(&w, Owner::of(1)).await;
            assert!(!left.is_empty(), "the failed destroy left dev's data");
            let said = pending(&w.ctx.store.read().unwrap());
            assert_eq!((said.len(), said[0].waiting), (1, true), "{said:?}");
            assert!(
                said[0].to_string().contains("once velo is idle"),
                "{}",
                said[0]
            );

            // The background velo (pid 1 here) would wait for idle; the create does not.
            let dev = r("demo/dev");
            let parent = crate::ops::branch::Source::Parent(None);
            let create = crate::ops::branch::create(&w.ctx, &dev, parent);
            tokio::time::timeout(Duration::from_secs(30), create)
                .await
                .expect("the create does not wait for the background velo")
                .unwrap();
            let out = w.ctx.shell.output();
            assert!(out.contains("waiting for velo to finish deleting"), "{out}");
            let state = w.ctx.store.read().unwrap();
            assert!(state.journal.is_empty(), "{:?}", state.journal);
            assert!(pending(&state).is_empty(), "{:?}", pending(&state));
            // The old volume was destroyed and the name made again.
            let now = w.storage.contents();
            assert_eq!(
                now.iter().filter(|v| v.contains("dev")).count(),
                1,
                "{now:?}"
            );
        });
    }

    #[test]
    fn a_background_velo_finishes_only_what_is_still_its_own() {
        tokio().block_on(async {
            let w = World::with_project().await;
            // Taken over by another command (pid 1 here): left alone, at once.
            let (id, left) = deferred_delete(&w, Owner::of(1)).await;
            let start = Instant::now();
            run_finish(&w.ctx, &id, u32::MAX - 1).await.unwrap();
            assert!(start.elapsed() < QUIET * 3, "{:?}", start.elapsed());
            let state = w.ctx.store.read().unwrap();
            assert_eq!(state.journal.get(&id).map(|op| op.owner.pid), Some(1));
            drop(state);
            assert!(left.iter().all(|v| w.storage.contents().contains(v)));

            // Still its parent's or its own: finished, once velo is idle.
            w.ctx
                .store
                .update(|s| {
                    s.journal.get_mut(&id).unwrap().owner = Owner::me();
                    Ok::<_, anyhow::Error>(())
                })
                .unwrap();
            let start = Instant::now();
            run_finish(&w.ctx, &id, u32::MAX - 1).await.unwrap();
            assert!(start.elapsed() >= QUIET / 2, "{:?}", start.elapsed());
            let state = w.ctx.store.read().unwrap();
            assert!(state.journal.is_empty(), "{:?}", state.journal);
            drop(state);
            let now = w.storage.contents();
            assert!(left.iter().all(|v| !now.contains(v)), "{left:?} in {now:?}");
        });
    }
}
