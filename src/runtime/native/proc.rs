//! Processes, as `/proc` shows them and signals reach them.
//!
//! A pid alone names a process only until it exits: the kernel hands the number out again, and
//! after a reboot any process may hold it. So velo records a server as an [`Identity`]: its pid,
//! its start time (field 22 of `/proc/<pid>/stat`, clock ticks after boot) and the boot id. A
//! process is the recorded one only while all three match, and a zombie (exited, not yet reaped)
//! is not running. Signals go only to a process that matches, or to its process group, whose id
//! the kernel cannot reuse while the matching leader (even a zombie) holds it.
//!
//! This module reads `/proc` and sends signals; it writes no file.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions};
use serde::{Deserialize, Serialize};

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The fields of `/proc/<pid>/stat` velo uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The command name (field 2), at most 15 bytes: `postgres` for a server.
    pub comm: String,
    /// Field 3: `R`, `S`, `D`, … ; `Z` for a zombie, `X` for a dead process.
    pub state: char,
    /// Field 22: when the process started, in clock ticks after boot.
    pub start_ticks: u64,
}

impl Stat {
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parses the text of `/proc/<pid>/stat`. The command name sits in parentheses and may hold
/// spaces and parentheses of its own, so the fields after it are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // `rest[0]` is field 3, so field n is `rest[n - 3]`.
    let mut state = rest.first()?.chars();
    let (Some(state), None) = (state.next(), state.next()) else {
        return None;
    };
    Some(Stat {
        comm,
        state,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

/// What `/proc` says of `pid` now; `None` if there is no such process (or it cannot be read).
pub fn stat(pid: u32) -> Option<Stat> {
    let bytes = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&String::from_utf8_lossy(&bytes))
}

/// The working directory of `pid`; `None` if it is gone or belongs to someone else.
pub fn cwd(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// This boot's id; empty if the kernel does not say.
pub fn boot_id() -> String {
    std::fs::read_to_string(BOOT_ID)
        .map(|id| id.trim().to_string())
        .unwrap_or_default()
}

/// One process, told apart from any other that ever holds its pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub pid: u32,
    pub start_ticks: u64,
    pub boot_id: String,
}

/// Whether the process an [`Identity`] names is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Running,
    /// Exited, not yet reaped by its parent: its pid is still taken.
    Zombie,
    /// Exited and reaped, or the pid now belongs to another process (or another boot).
    Gone,
}

impl Identity {
    /// The process `pid` as it is now.
    pub fn of(pid: u32) -> io::Result<Identity> {
        let stat = stat(pid).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("process {pid} is not in /proc"),
            )
        })?;
        Ok(Identity {
            pid,
            start_ticks: stat.start_ticks,
            boot_id: boot_id(),
        })
    }

    pub fn presence(&self) -> Presence {
        self.presence_in(stat(self.pid).as_ref(), &boot_id())
    }

    /// [`Identity::presence`], given what `/proc` says of its pid and the boot id now.
    pub fn presence_in(&self, now: Option<&Stat>, boot_id: &str) -> Presence {
        match now {
            Some(stat) if stat.start_ticks == self.start_ticks && boot_id == self.boot_id => {
                if stat.is_zombie() {
                    Presence::Zombie
                } else {
                    Presence::Running
                }
            }
            _ => Presence::Gone,
        }
    }

    /// Reaps the process if it is a zombie child of this process (`waitpid` with `WNOHANG`);
    /// a zombie whose parent is another process is left to that parent.
    pub fn reap(&self) {
        if self.presence() == Presence::Zombie
            && let Some(pid) = self.pid()
        {
            // ECHILD (not our child) is the expected answer for another parent's zombie.
            let _ = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG);
        }
    }

    /// Sends `signal` to the process if it is still this one (running or a zombie). Returns
    /// whether it was sent.
    pub fn signal(&self, signal: Signal) -> io::Result<bool> {
        self.send(|pid| rustix::process::kill_process(pid, signal))
    }

    /// SIGKILLs the process, and the process group it leads (a PostgreSQL child's
    /// `archive_command`, say), if it is still this one: a group's id cannot belong to anyone
    /// else while its leader exists. Returns whether a signal was sent.
    pub fn kill_group(&self) -> io::Result<bool> {
        let group = self.send(|pid| rustix::process::kill_process_group(pid, Signal::KILL))?;
        Ok(group || self.signal(Signal::KILL)?)
    }

    fn send(&self, kill: impl FnOnce(Pid) -> rustix::io::Result<()>) -> io::Result<bool> {
        let Some(pid) = self.pid().filter(|_| self.presence() != Presence::Gone) else {
            return Ok(false);
        };
        match kill(pid) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The pid as the kernel's type: never 0 or 1 (a signal to 0 would reach velo's own
    /// group, and 1 is init), never negative.
    fn pid(&self) -> Option<Pid> {
        i32::try_from(self.pid)
            .ok()
            .filter(|pid| *pid > 1)
            .and_then(Pid::from_raw)
    }

    /// Waits up to `timeout` until the process is no longer running, reaping it if it is this
    /// process's child. Returns whether it stopped.
    pub async fn wait_stopped(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.presence() != Presence::Running {
                // It may have turned into a zombie since it was last looked at.
                self.reap();
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A PostgreSQL process (not a zombie), of any user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postgres {
    pub pid: u32,
    pub start_ticks: u64,
    /// Its working directory, PostgreSQL's data directory; `None` for another user's process.
    pub cwd: Option<PathBuf>,
}

impl Postgres {
    /// The process, to signal it (this boot's).
    pub fn identity(&self) -> Identity {
        Identity {
            pid: self.pid,
            start_ticks: self.start_ticks,
            boot_id: boot_id(),
        }
    }
}

/// Every PostgreSQL process running now: a postmaster, or a child it forked (all are called
/// `postgres`; each child runs in a session of its own, so only this tells them apart).
pub fn postgres_processes() -> Vec<Postgres> {
    pids()
        .filter_map(|pid| {
            let stat = stat(pid)?;
            let postgres = matches!(stat.comm.as_str(), "postgres" | "postmaster");
            (postgres && !stat.is_zombie()).then(|| Postgres {
                pid,
                start_ticks: stat.start_ticks,
                cwd: cwd(pid),
            })
        })
        .collect()
}

/// The pids in `/proc`.
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_whatever_the_command_name_holds() {
        let ticks = "0 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10 100";
        let line = format!("4242 (post gres) (x)) S 1 4242 4242 0 -1 4194560 {ticks} 0\n");
        let stat = parse_stat(&line).unwrap();
        assert_eq!(stat.comm, "post gres) (x)");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.start_ticks, 123456);
        let zombie = line.replace(") S 1", ") Z 1");
        assert!(parse_stat(&zombie).unwrap().is_zombie());
    }

    #[test]
    fn odd_stat_text_is_none_never_a_panic() {
        for text in [
            "",
            "4242",
            "4242 )x( S 1 2",
            "4242 (a) S 1 2 3",
            "4242 (a) SS 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21",
            "4242 (a) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 -1 20 21",
        ] {
            assert_eq!(parse_stat(text), None, "{text:?}");
        }
    }

    #[test]
    fn this_process_runs_and_a_reused_or_rebooted_pid_is_gone() {
        let me = Identity::of(std::process::id()).unwrap();
        assert_eq!(me.presence(), Presence::Running);
        let later = Identity {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert_eq!(later.presence(), Presence::Gone);
        let other_boot = Identity {
            boot_id: "another-boot".into(),
            ..me.clone()
        };
        assert_eq!(other_boot.presence(), Presence::Gone);
        let bogus = Identity {
            pid: 0,
            ..me.clone()
        };
        assert!(!bogus.signal(Signal::KILL).unwrap());
    }

    #[tokio::test]
    async fn a_zombie_is_not_running_and_is_reaped() {
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let id = Identity::of(child.id()).unwrap();
        drop(child);
        let start = Instant::now();
        while id.presence() == Presence::Running && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(id.presence(), Presence::Zombie);
        assert!(id.wait_stopped(Duration::from_secs(5)).await);
        id.reap();
        assert_eq!(id.presence(), Presence::Gone);
    }

    #[tokio::test]
    async fn a_group_kill_reaches_every_process_of_the_group() {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 60 & sleep 60 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let id = Identity::of(child.id()).unwrap();
        drop(child);
        let start = Instant::now();
        while in_group(id.pid) < 3 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(in_group(id.pid), 3, "the sleeps started");
        assert!(id.kill_group().unwrap());
        assert!(id.wait_stopped(Duration::from_secs(5)).await);
        while in_group(id.pid) > 0 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(in_group(id.pid), 0);
        assert_eq!(id.presence(), Presence::Gone);
        assert!(!id.kill_group().unwrap(), "nothing left to signal");
    }

    #[test]
    fn lists_postgres_processes_only() {
        let me = std::process::id();
        assert!(postgres_processes().iter().all(|p| p.pid != me));
    }

    /// Processes of group `pgid` that are not zombies.
    fn in_group(pgid: u32) -> usize {
        pids()
            .filter(|pid| stat(*pid).is_some_and(|s| !s.is_zombie()))
            .filter(|pid| pgrp(*pid) == Some(pgid))
            .count()
    }

    /// Field 5 of `/proc/<pid>/stat`.
    fn pgrp(pid: u32) -> Option<u32> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        text[text.rfind(')')? + 1..]
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    }
}
