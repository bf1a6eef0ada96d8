//! Stale PostgreSQL lock files: `postmaster.pid` in a data directory and `.s.PGSQL.<port>.lock`
//! beside a Unix socket.
//!
//! PostgreSQL refuses to start while either names a pid that exists, whoever holds it now. A
//! branch's data is a copy of a running server's, so its `postmaster.pid` names the source's
//! postmaster; after a reboot any process may hold that pid. velo removes such a file before a
//! start, but only when no PostgreSQL process works in the directory the file is about: every
//! process of a server (the postmaster and each child it forks) has its data directory as its
//! working directory, because PostgreSQL `chdir`s into it. This is stricter than asking whether
//! the pid in the file is that directory's postmaster: backends left running by a postmaster
//! that was killed still write the data, and PostgreSQL's own guard against starting beside
//! them (the shared memory key in `postmaster.pid`) goes with the file.
//!
//! The decision is pure ([`judge`]) over the PostgreSQL processes [`proc::postgres_processes`]
//! lists.

use std::path::Path;

use super::proc::Postgres;

/// Whether a lock file may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Stale,
    /// PostgreSQL process `pid` works in the directory.
    Live {
        pid: u32,
    },
}

/// The data directory a lock file names (its second line).
pub fn data_dir_in(content: &str) -> Option<&Path> {
    content
        .lines()
        .nth(1)
        .map(str::trim)
        .filter(|line| line.starts_with('/'))
        .map(Path::new)
}

/// Decides whether a lock file about `served` (a data directory, as `/proc/<pid>/cwd` shows
/// paths: canonical) may go, given the PostgreSQL processes that run now.
pub fn judge(served: &Path, processes: &[Postgres]) -> Verdict {
    processes
        .iter()
        .find(|p| p.cwd.as_deref() == Some(served))
        .map_or(Verdict::Stale, |p| Verdict::Live { pid: p.pid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const DATA: &str = "/velo/demo/dev.1/pgdata";

    fn postgres(pid: u32, cwd: Option<&str>) -> Postgres {
        Postgres {
            pid,
            start_ticks: 1,
            cwd: cwd.map(PathBuf::from),
        }
    }

    #[test]
    fn a_live_postmaster_or_a_backend_it_left_keeps_the_lock() {
        let running = [postgres(10, Some("/elsewhere")), postgres(4242, Some(DATA))];
        assert_eq!(
            judge(Path::new(DATA), &running),
            Verdict::Live { pid: 4242 }
        );
    }

    #[test]
    fn the_source_servers_lock_in_a_copy_is_stale_for_the_copy() {
        let source = [postgres(4242, Some("/velo/demo/main.1/pgdata"))];
        assert_eq!(judge(Path::new(DATA), &source), Verdict::Stale);
    }

    #[test]
    fn after_a_reboot_or_with_only_other_users_servers_the_lock_is_stale() {
        assert_eq!(judge(Path::new(DATA), &[]), Verdict::Stale);
        let someone_elses = [postgres(4242, None)];
        assert_eq!(judge(Path::new(DATA), &someone_elses), Verdict::Stale);
    }

    #[test]
    fn reads_the_data_directory_line() {
        let lock = "4242\n/velo/demo/main.1/pgdata\n1718000000\n54321\n";
        assert_eq!(
            data_dir_in(lock),
            Some(Path::new("/velo/demo/main.1/pgdata"))
        );
        assert_eq!(data_dir_in("1\n"), None);
        assert_eq!(data_dir_in("1\nrelative\n"), None);
        assert_eq!(data_dir_in(""), None);
    }
}
