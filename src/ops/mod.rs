//! Use cases: one public function per command, orchestrating storage ([`crate::storage`]), a
//! runtime ([`crate::runtime`]), PostgreSQL ([`crate::pg`]) and the state, and undoing their
//! own steps when a later step fails. Operations never name a backend: they ask the project's
//! storage and runtime ([`Ctx::storage`], [`Ctx::runtime`]) and branch on capabilities.
//!
//! The pattern of every multi-step command:
//! 1. a short state transaction validates the request, reserves names and ports, marks the
//!    branch busy and opens an operation in the journal ([`Undo::begin`]);
//! 2. the slow steps run without the state lock, each recording in the journal how to undo
//!    itself *before* it runs ([`Undo::intend`]);
//! 3. a final transaction records the result and closes the operation ([`Undo::commit`]), or
//!    the undo steps run in reverse and the reservation is removed ([`Undo::roll_back`]).
//!
//! A command that dies mid-way is ended by the next one ([`recover::recover`]).
//!
//! Modules depend one way: `signal` ← `journal` ← `undo` ← `server`; `launch` and
//! `generation` build on those; the use cases (`branch`, `project`, `snapshot`, `wal`, …) on
//! all of them; `recover` above the use cases it finishes.

mod backends;
pub mod background;
pub mod branch;
pub mod choose;
pub mod connfiles;
pub mod current;
pub mod doctor;
pub mod drift;
#[cfg(test)]
mod fakes;
#[cfg(test)]
mod fakes_follow;
#[cfg(test)]
mod fakes_lifetimes;
pub mod follow;
pub mod gc;
mod generation;
pub mod import;
pub mod journal;
mod launch;
pub mod lifetime;
mod prepared;
pub mod project;
pub mod recover;
pub mod server;
pub mod setup;
pub mod signal;
pub mod snapshot;
pub mod status;
mod undo;
pub mod wal;

use std::net::TcpListener;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail, ensure};
use chrono::Utc;
use rand::RngExt;

pub use backends::Backends;
pub use journal::Undo;

use crate::archive::Archives;
use crate::config::Config;
use crate::names::{BranchRef, ProjectName};
use crate::runtime::Runtime;
use crate::state::{Branch, Busy, Project, State, Store};
use crate::storage::Storage;
use crate::ui::Shell;

/// Host ports velo hands out, on 127.0.0.1, unless `VELO_PORTS` names others.
pub const PORT_RANGE: RangeInclusive<u16> = 54320..=54999;

/// What an operation may touch.
pub struct Ctx {
    /// The host configuration `velo setup` wrote (empty before setup).
    pub config: Config,
    pub store: Store,
    pub shell: Shell,
    pub backends: Backends,
    /// How long to wait for PostgreSQL to answer instead of each command's default
    /// (`VELO_READY_TIMEOUT`, e.g. "90s").
    pub ready_timeout: Option<Duration>,
    /// The longest a background velo waits for velo to be idle before it destroys data
    /// anyway (`VELO_IDLE_WAIT`; [`background::IDLE_WAIT`] by default).
    pub idle_wait: Duration,
    /// The ports velo gives new branches (`VELO_PORTS`, e.g. "20000-20999"; [`PORT_RANGE`] by
    /// default): users of one host who each take their own never race for a port.
    pub ports: RangeInclusive<u16>,
    /// Whether what grows with the data is finished by a background velo after the command
    /// answers ([`background`]); `VELO_BACKGROUND=0` finishes it before.
    pub background: bool,
}

impl Ctx {
    pub fn new(home: PathBuf, shell: Shell) -> Result<Self> {
        let config = Config::load(&Config::path())?;
        let store = Store::new(home);
        let backends = Backends::new(&config, store.dir(), shell.clone());
        let ready_timeout = env_duration("VELO_READY_TIMEOUT", &shell);
        let idle_wait = env_duration("VELO_IDLE_WAIT", &shell).unwrap_or(background::IDLE_WAIT);
        let ports = env_ports(&shell).unwrap_or(PORT_RANGE);
        Ok(Self {
            config,
            store,
            shell,
            backends,
            ready_timeout,
            idle_wait,
            ports,
            background: std::env::var_os("VELO_BACKGROUND").is_none_or(|v| v != "0"),
        })
    }

    /// The storage a project keeps its data in.
    pub fn storage(&self, p: &Project) -> Result<Arc<dyn Storage>> {
        self.backends.storage(&p.storage)
    }

    /// The runtime that serves a project's branches.
    pub fn runtime(&self, p: &Project) -> Result<Arc<dyn Runtime>> {
        self.backends.runtime(&p.runtime)
    }

    pub fn archives(&self) -> Archives {
        Archives::new(self.store.dir())
    }

    /// The velo home as a string, for labels and marks.
    pub fn home_label(&self) -> String {
        self.store.dir().display().to_string()
    }

    /// How long to wait for PostgreSQL to answer.
    pub fn ready_timeout(&self, default: Duration) -> Duration {
        self.ready_timeout.unwrap_or(default)
    }
}

/// A duration from the environment variable `name` (such as "90s" or "5m"); a value that is
/// not one is warned about and ignored.
fn env_duration(name: &str, shell: &Shell) -> Option<Duration> {
    let value = std::env::var(name).ok()?;
    let parsed = humantime::parse_duration(value.trim()).ok();
    if parsed.is_none() {
        shell.warn(&format!(
            "{name}=`{value}` is not a duration (give a number and a unit, such as 90s or 5m); using the default"
        ));
    }
    parsed
}

/// The port range in `VELO_PORTS` ("LO-HI", within 1024-65535); a value that is not one is
/// warned about and ignored.
fn env_ports(shell: &Shell) -> Option<RangeInclusive<u16>> {
    let value = std::env::var("VELO_PORTS").ok()?;
    let parsed = parse_ports(&value);
    if parsed.is_none() {
        shell.warn(&format!(
            "VELO_PORTS=`{value}` is not a port range (give two ports from 1024 to 65535, such as 20000-20999); using {}-{}",
            PORT_RANGE.start(),
            PORT_RANGE.end()
        ));
    }
    parsed
}

fn parse_ports(value: &str) -> Option<RangeInclusive<u16>> {
    let (lo, hi) = value.trim().split_once('-')?;
    let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    (1024 <= lo && lo <= hi).then_some(lo..=hi)
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

/// Picks a port no velo branch holds and nothing on the host is listening on right now,
/// scanning from a random point so that velo homes (users) on one host rarely race for one.
/// A port can still be taken between this check and the server's start; callers creating a
/// new branch retry with another port when the server reports the conflict.
pub fn allocate_port(state: &State, avoid: &[u16], ports: &RangeInclusive<u16>) -> Result<u16> {
    let taken: std::collections::HashSet<u16> = state
        .projects
        .values()
        .flat_map(|p| p.branches.values().map(|b| b.port))
        .chain(avoid.iter().copied())
        .collect();
    let (lo, hi) = (*ports.start(), *ports.end());
    ensure!(lo <= hi, "the port range {lo}-{hi} is empty");
    let span = u32::from(hi - lo) + 1;
    let offset = rand::rng().random_range(0..span);
    (0..span)
        .map(|i| lo + ((offset + i) % span) as u16)
        .find(|p| !taken.contains(p) && TcpListener::bind((server::HOST_IP, *p)).is_ok())
        .ok_or_else(|| {
            anyhow!(
                "no free port in {lo}-{hi}: delete branches you no longer need, stop what holds those ports, or give velo others (VELO_PORTS)"
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

/// A request that cannot work as given: options that contradict each other, a branch that
/// needs a default project. velo exits with status 2 for it, as for clap's usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

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
            Err(e) if start.elapsed() < wait && !signal::interrupted() => {
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

/// Whether a process runs (a zombie has exited: it does not).
fn pid_alive(pid: u32) -> bool {
    crate::state::process_start(pid).is_some()
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

/// How a failed command left things, for its error message.
pub fn rolled_back(clean: bool) -> &'static str {
    if clean {
        "nothing was left behind"
    } else {
        "some steps could not be undone, see the warnings above; the next velo command tries again"
    }
}

/// Removes a directory tree; missing is success.
pub fn remove_dir(dir: &std::path::Path) -> Result<()> {
    use anyhow::Context as _;
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_free_port_names_the_fix() {
        let all: Vec<u16> = PORT_RANGE.collect();
        let err = allocate_port(&State::default(), &all, &PORT_RANGE)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no free port") && err.contains("delete branches"),
            "{err}"
        );
    }

    #[test]
    fn a_port_range_is_two_ports_from_1024() {
        assert_eq!(parse_ports("20000-20999"), Some(20000..=20999));
        assert_eq!(parse_ports(" 65535 - 65535 "), Some(65535..=65535));
        for bad in [
            "",
            "20000",
            "20999-20000",
            "80-90",
            "1024-65536",
            "a-b",
            "1024-",
        ] {
            assert_eq!(parse_ports(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ports_come_from_the_range_given_and_are_free() {
        let held = TcpListener::bind((server::HOST_IP, 0)).unwrap();
        let busy = held.local_addr().unwrap().port();
        let only = busy..=busy;
        let err = allocate_port(&State::default(), &[], &only).unwrap_err();
        assert!(err.to_string().contains("VELO_PORTS"), "{err}");
        drop(held);
        assert_eq!(allocate_port(&State::default(), &[], &only).unwrap(), busy);
    }
}
