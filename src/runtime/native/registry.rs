//! The native runtime's record of its servers: one directory per server in `<home>/servers/`.
//!
//! ```text
//! <home>/servers/<name>/spec.json        the ServerSpec it was made with
//! <home>/servers/<name>/process.json     pid, start time and boot id of its postmaster, while started
//! <home>/servers/<name>/postgres.log     the server's stdout and stderr
//! <home>/servers/<name>/postgres.log.1   the log before the last rotation
//! ```
//!
//! This is what Docker's container list is to the Docker runtime: it outlives velo, so a later
//! command finds, stops and lists the servers an earlier one started. Directories are 0700 and
//! files 0600; every file is reached relative to a directory handle without following links
//! ([`crate::fsx`]), and records are replaced atomically. An entry appears whole (made under a
//! hidden name, then renamed), so a name is taken exactly when its entry exists.
//!
//! This module touches only `<home>/servers`.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::NativeError;
use super::proc::Identity;
use crate::fsx;
use crate::runtime::{Result, RuntimeError, ServerSpec};

const SERVERS: &str = "servers";
const SPEC: &str = "spec.json";
const PROCESS: &str = "process.json";
const LOG: &str = "postgres.log";
const OLD_LOG: &str = "postgres.log.1";
/// A log longer than this is set aside (as `postgres.log.1`) and started afresh.
const LOG_LIMIT: u64 = 4 << 20;
/// The largest record velo reads.
const RECORD_LIMIT: u64 = 1 << 20;
/// How much of the log's end `log_tail` reads.
const TAIL_LIMIT: u64 = 256 << 10;

#[derive(Debug, Clone)]
pub struct Registry {
    home: PathBuf,
}

/// A server's name must be one file name that is not hidden (hidden names are entries being
/// made).
pub fn check_name(name: &str) -> Result<(), NativeError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && !name.contains(['/', '\0']);
    if ok {
        Ok(())
    } else {
        Err(NativeError::BadName {
            name: name.to_string(),
        })
    }
}

fn io_error(action: &'static str, path: PathBuf) -> impl FnOnce(io::Error) -> RuntimeError {
    move |source| RuntimeError::Io {
        action,
        path,
        source,
    }
}

/// `Ok(None)` for a missing file or directory.
fn missing_ok<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        other => other.map(Some),
    }
}

impl Registry {
    pub fn new(home: &Path) -> Self {
        Self {
            home: home.to_path_buf(),
        }
    }

    fn path(&self, name: &str, file: &str) -> PathBuf {
        self.home.join(SERVERS).join(name).join(file)
    }

    /// `<home>/servers`, if it exists.
    fn servers(&self) -> Result<Option<OwnedFd>> {
        let dir = self.home.join(SERVERS);
        let home = fsx::open_dir(&self.home).map_err(io_error("opening", self.home.clone()))?;
        missing_ok(fsx::open_dir_at(home.as_fd(), SERVERS)).map_err(io_error("opening", dir))
    }

    /// The entry of server `name`, if it exists.
    fn entry(&self, name: &str) -> Result<Option<OwnedFd>> {
        check_name(name)?;
        let Some(servers) = self.servers()? else {
            return Ok(None);
        };
        missing_ok(fsx::open_dir_at(servers.as_fd(), name))
            .map_err(io_error("opening", self.path(name, "")))
    }

    fn existing(&self, name: &str) -> Result<OwnedFd> {
        self.entry(name)?.ok_or_else(|| RuntimeError::NoSuchServer {
            name: name.to_string(),
        })
    }

    /// Records a new server; fails if one of that name exists.
    pub fn create(&self, spec: &ServerSpec) -> Result<()> {
        check_name(&spec.name)?;
        let dir = self.home.join(SERVERS);
        let home = fsx::open_dir(&self.home).map_err(io_error("opening", self.home.clone()))?;
        let servers = fsx::ensure_dir_at(home.as_fd(), SERVERS, 0o700)
            .map_err(io_error("creating", dir.clone()))?;
        let making = format!(".new.{}.{}", spec.name, std::process::id());
        let made = (|| {
            fsx::remove_dir_at(servers.as_fd(), &making)?;
            let entry = fsx::create_dir_at(servers.as_fd(), &making, 0o700)?;
            fsx::replace_at(entry.as_fd(), SPEC, &to_json(spec)?, 0o600, None)?;
            fsx::rename_new_at(servers.as_fd(), &making, servers.as_fd(), &spec.name)
        })();
        if made.is_err() {
            let _ = fsx::remove_dir_at(servers.as_fd(), &making);
        }
        match made {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(NativeError::Exists {
                name: spec.name.clone(),
            }
            .into()),
            other => other.map_err(io_error("creating", dir.join(&spec.name))),
        }
    }

    /// The spec of server `name`; `None` if there is no such server. Its name is the entry's,
    /// whatever the file says.
    pub fn spec(&self, name: &str) -> Result<Option<ServerSpec>> {
        let Some(entry) = self.entry(name)? else {
            return Ok(None);
        };
        let spec: Option<ServerSpec> = self.read(&entry, name, SPEC)?;
        Ok(spec.map(|spec| ServerSpec {
            name: name.to_string(),
            user: crate::runtime::ServerUser {
                uid: 1000,
                gid: 1000,
            },
            ..spec
        }))
    }

    /// The postmaster velo last started for `name`, if it recorded one.
    pub fn process(&self, name: &str) -> Result<Option<Identity>> {
        match self.entry(name)? {
            Some(entry) => self.read(&entry, name, PROCESS),
            None => Ok(None),
        }
    }

    /// Records the postmaster of `name` (or that it has none).
    pub fn set_process(&self, name: &str, process: Option<&Identity>) -> Result<()> {
        let entry = self.existing(name)?;
        let path = self.path(name, PROCESS);
        match process {
            Some(id) => to_json(id)
                .and_then(|json| fsx::replace_at(entry.as_fd(), PROCESS, &json, 0o600, None))
                .map_err(io_error("writing", path)),
            None => fsx::remove_at(entry.as_fd(), PROCESS).map_err(io_error("removing", path)),
        }
    }

    fn read<T: DeserializeOwned>(
        &self,
        entry: &OwnedFd,
        name: &str,
        file: &str,
    ) -> Result<Option<T>> {
        let path = self.path(name, file);
        let Some(bytes) = fsx::read_regular_at(entry.as_fd(), file, RECORD_LIMIT)
            .map_err(io_error("reading", path.clone()))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| NativeError::BadRecord { path, source }.into())
    }

    /// Moves the entry of `name` to `to`; `Ok(false)` if there is none called `name`.
    pub fn rename(&self, name: &str, to: &str) -> Result<bool> {
        check_name(name)?;
        check_name(to)?;
        let Some(servers) = self.servers()? else {
            return Ok(false);
        };
        match fsx::rename_new_at(servers.as_fd(), name, servers.as_fd(), to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NativeError::Exists {
                    name: to.to_string(),
                }
                .into());
            }
            Err(e) => return Err(io_error("renaming", self.path(name, ""))(e)),
        }
        // The entry's name is the server's; the file follows for whoever reads it by hand.
        if let Some(spec) = self.spec(to)? {
            let entry = self.existing(to)?;
            to_json(&spec)
                .and_then(|json| fsx::replace_at(entry.as_fd(), SPEC, &json, 0o600, None))
                .map_err(io_error("writing", self.path(to, SPEC)))?;
        }
        Ok(true)
    }

    /// Deletes the entry of `name`, log included. Missing is success.
    pub fn remove(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let Some(servers) = self.servers()? else {
            return Ok(());
        };
        fsx::remove_dir_at(servers.as_fd(), name).map_err(io_error("removing", self.path(name, "")))
    }

    /// The names of all recorded servers.
    pub fn names(&self) -> Result<Vec<String>> {
        let Some(servers) = self.servers()? else {
            return Ok(Vec::new());
        };
        let mut names =
            fsx::list_at(servers.as_fd()).map_err(io_error("listing", self.home.join(SERVERS)))?;
        names.retain(|name| check_name(name).is_ok());
        names.sort();
        Ok(names)
    }

    /// Where the log of `name` is.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.path(name, LOG)
    }

    /// Opens the log of `name` for a server about to start. A log past [`LOG_LIMIT`] becomes
    /// `postgres.log.1` (replacing the one before) and a new log begins.
    pub fn open_log(&self, name: &str) -> Result<File> {
        let entry = self.existing(name)?;
        let path = self.path(name, LOG);
        let log = fsx::open_append_at(entry.as_fd(), LOG, 0o600)
            .map_err(io_error("opening", path.clone()))?;
        if log.metadata().map(|m| m.len()).unwrap_or(0) <= LOG_LIMIT {
            return Ok(log);
        }
        rustix::fs::renameat(&entry, LOG, &entry, OLD_LOG)
            .map_err(|e| io_error("rotating", path.clone())(e.into()))?;
        fsx::open_append_at(entry.as_fd(), LOG, 0o600).map_err(io_error("opening", path))
    }

    /// Bounds the log of a running server, which holds it open: past [`LOG_LIMIT`], its end is
    /// copied to `postgres.log.1` and the log emptied in place (the server appends, so it goes
    /// on writing at the new end). Lines written between the copy and the truncation are lost.
    pub fn trim_log(&self, name: &str) -> Result<()> {
        let entry = self.existing(name)?;
        let path = self.path(name, LOG);
        let trimmed = (|| {
            let Some(log) = missing_ok(fsx::open_append_at(entry.as_fd(), LOG, 0o600))? else {
                return Ok(());
            };
            if log.metadata()?.len() <= LOG_LIMIT {
                return Ok(());
            }
            let end = fsx::read_tail_at(entry.as_fd(), LOG, LOG_LIMIT)?.unwrap_or_default();
            fsx::replace_at(entry.as_fd(), OLD_LOG, &end, 0o600, None)?;
            rustix::fs::ftruncate(&log, 0)?;
            Ok(())
        })();
        trimmed.map_err(io_error("rotating", path))
    }

    /// The last `lines` lines of the log of `name`; empty if there is none.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let Ok(Some(entry)) = self.entry(name) else {
            return String::new();
        };
        let Ok(Some(bytes)) = fsx::read_tail_at(entry.as_fd(), LOG, TAIL_LIMIT) else {
            return String::new();
        };
        last_lines(&String::from_utf8_lossy(&bytes), lines)
    }
}

/// The last `n` lines of `text`, each ending in a newline.
fn last_lines(text: &str, n: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(n)..]
        .iter()
        .map(|line| format!("{line}\n"))
        .collect()
}

fn to_json(value: &impl Serialize) -> io::Result<Vec<u8>> {
    let mut json = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    json.write_all(b"\n")?;
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Labels, ServerPaths};
    use std::os::unix::fs::MetadataExt;

    pub(crate) fn spec(name: &str, home: &str) -> ServerSpec {
        let dir = PathBuf::from("/velo/demo");
        ServerSpec {
            name: name.into(),
            user: crate::runtime::ServerUser {
                uid: 1000,
                gid: 1000,
            },
            labels: Labels {
                project: "demo".into(),
                branch: "dev".into(),
                home: home.into(),
            },
            paths: ServerPaths {
                data_dir: dir.join("pgdata"),
                socket_dir: dir.join("run"),
                archive_dir: dir.join("wal/dev/1"),
                archives_root: dir.join("wal"),
                hba_file: dir.join("pg_hba.conf"),
                secrets_dir: None,
                source_wal: None,
            },
            settings: vec![
                ("port".into(), "54321".into()),
                ("archive_command".into(), "cp %p /x/%f".into()),
            ],
        }
    }

    #[test]
    fn an_entry_round_trips_renames_and_goes() {
        let home = tempfile::tempdir().unwrap();
        let reg = Registry::new(home.path());
        assert_eq!(reg.names().unwrap(), Vec::<String>::new());
        assert_eq!(reg.spec("velo-demo.dev").unwrap(), None);
        let s = spec("velo-demo.dev", "/home/me/.velo");
        reg.create(&s).unwrap();
        assert!(matches!(
            reg.create(&s),
            Err(RuntimeError::Native(NativeError::Exists { .. }))
        ));
        assert_eq!(reg.spec("velo-demo.dev").unwrap(), Some(s.clone()));
        let entry = home.path().join("servers/velo-demo.dev");
        assert_eq!(std::fs::metadata(&entry).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::metadata(entry.join("spec.json")).unwrap().mode() & 0o777,
            0o600
        );

        let id = Identity {
            pid: 42,
            start_ticks: 7,
            boot_id: "b".into(),
        };
        reg.set_process("velo-demo.dev", Some(&id)).unwrap();
        assert_eq!(reg.process("velo-demo.dev").unwrap(), Some(id.clone()));

        assert!(reg.rename("velo-demo.dev", "velo-demo.dev.old").unwrap());
        assert!(!reg.rename("velo-demo.dev", "velo-demo.dev.old").unwrap());
        let moved = reg.spec("velo-demo.dev.old").unwrap().unwrap();
        assert_eq!(moved.name, "velo-demo.dev.old");
        assert_eq!(reg.process("velo-demo.dev.old").unwrap(), Some(id));
        reg.create(&s).unwrap();
        assert!(matches!(
            reg.rename("velo-demo.dev", "velo-demo.dev.old"),
            Err(RuntimeError::Native(NativeError::Exists { .. }))
        ));
        assert_eq!(reg.names().unwrap(), ["velo-demo.dev", "velo-demo.dev.old"]);

        reg.remove("velo-demo.dev.old").unwrap();
        reg.remove("velo-demo.dev.old").unwrap();
        assert_eq!(reg.names().unwrap(), ["velo-demo.dev"]);
    }

    #[test]
    fn names_that_are_not_one_plain_file_name_are_refused() {
        let home = tempfile::tempdir().unwrap();
        let reg = Registry::new(home.path());
        for bad in ["", ".", "..", ".hidden", "a/b", "../x", "a\0b"] {
            assert!(
                matches!(
                    reg.create(&spec(bad, "h")),
                    Err(RuntimeError::Native(NativeError::BadName { .. }))
                ),
                "{bad:?}"
            );
            assert!(reg.remove(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_planted_record_link_is_an_error_not_followed() {
        let home = tempfile::tempdir().unwrap();
        let reg = Registry::new(home.path());
        reg.create(&spec("s", "h")).unwrap();
        let secret = home.path().join("secret.json");
        std::fs::write(&secret, "{}").unwrap();
        let process = home.path().join("servers/s/process.json");
        std::os::unix::fs::symlink(&secret, &process).unwrap();
        assert!(reg.process("s").is_err());
        reg.set_process("s", None).unwrap();
        assert!(!process.exists() && secret.exists());
        std::fs::write(&process, "not json").unwrap();
        assert!(matches!(
            reg.process("s"),
            Err(RuntimeError::Native(NativeError::BadRecord { .. }))
        ));
    }

    #[test]
    fn the_log_is_tailed_and_kept_bounded() {
        let home = tempfile::tempdir().unwrap();
        let reg = Registry::new(home.path());
        reg.create(&spec("s", "h")).unwrap();
        assert_eq!(reg.log_tail("s", 5), "");
        let mut log = reg.open_log("s").unwrap();
        log.write_all(b"one\ntwo\nthree\n").unwrap();
        assert_eq!(reg.log_tail("s", 2), "two\nthree\n");
        assert_eq!(reg.log_tail("s", 9), "one\ntwo\nthree\n");

        let big = vec![b'x'; LOG_LIMIT as usize];
        log.write_all(&big).unwrap();
        log.write_all(b"\nlast words\n").unwrap();
        reg.trim_log("s").unwrap();
        let dir = home.path().join("servers/s");
        assert_eq!(std::fs::metadata(dir.join(LOG)).unwrap().len(), 0);
        log.write_all(b"after\n").unwrap();
        assert_eq!(reg.log_tail("s", 5), "after\n");
        let old = std::fs::read(dir.join(OLD_LOG)).unwrap();
        assert!(old.ends_with(b"last words\n") && old.len() as u64 == LOG_LIMIT);

        log.write_all(&big).unwrap();
        drop(reg.open_log("s").unwrap());
        assert_eq!(std::fs::metadata(dir.join(LOG)).unwrap().len(), 0);
        assert!(std::fs::metadata(dir.join(OLD_LOG)).unwrap().len() > LOG_LIMIT);
    }
}
