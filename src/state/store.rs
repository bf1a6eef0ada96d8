//! The state store: `$VELO_HOME/state.json` behind an exclusive `flock` on `state.lock`.
//!
//! Every change is one transaction: take the lock, read, change, write atomically (temp file,
//! fsync, rename, fsync the directory), release. Transactions are short on purpose: commands do
//! their slow work (starting PostgreSQL) between transactions, guarded by a per-branch
//! [`Busy`](super::Busy) marker, so parallel commands overlap their waiting.
//!
//! The home is trusted only if the user running velo controls it: it must be a real directory
//! (not a link) owned by that user, and when root runs velo, every directory above it must be
//! root's and writable by no one else (or sticky, like /tmp), so no other user can swap it.
//! Every file in it is opened relative to a handle on it, never following a link.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use fs4::FileExt;
use rustix::fs::{Mode, OFlags};

use super::migrate;
use super::model::{SCHEMA_VERSION, State};
use crate::fsx;

/// The largest state file velo reads (a guard against a FIFO or a huge file planted there).
const MAX_STATE_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use velo's directory {path}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("velo's directory {path} is not safe to use: {why}")]
    Unsafe { path: PathBuf, why: String },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid velo state; fix or move it aside (a backup is safest)")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} was written by an older velo and cannot be upgraded")]
    Migrate {
        path: PathBuf,
        source: migrate::MigrateError,
    },
    #[error(
        "{path} has schema version {found}, but this velo reads version {SCHEMA_VERSION}; upgrade velo"
    )]
    Version { path: PathBuf, found: u64 },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where velo keeps its files, and the transactions over them.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$VELO_HOME`, else `$HOME/.velo`, else the home directory of the user in the password
    /// database. An empty variable counts as unset.
    pub fn default_dir() -> PathBuf {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = var("VELO_HOME") {
            return PathBuf::from(dir);
        }
        let home = var("HOME")
            .map(PathBuf::from)
            .or_else(passwd_home)
            .unwrap_or_else(|| PathBuf::from("/"));
        home.join(".velo")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// When the state last changed: its file's modification time (`None` before the first
    /// change, or if it cannot be read).
    pub fn changed_at(&self) -> Option<std::time::SystemTime> {
        std::fs::symlink_metadata(self.state_path())
            .and_then(|m| m.modified())
            .ok()
    }

    /// Reads the state under the lock, without changing it.
    pub fn read(&self) -> Result<State, StoreError> {
        let (dir, _lock) = self.lock()?;
        self.load(&dir)
    }

    /// Runs `change` on the state under the lock and persists the result if it returns `Ok`.
    /// An `Err` from `change` leaves the file untouched.
    pub fn update<T, E>(&self, change: impl FnOnce(&mut State) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let (dir, _lock) = self.lock()?;
        let mut state = self.load(&dir)?;
        let out = change(&mut state)?;
        self.persist(&dir, &state)?;
        Ok(out)
    }

    /// Opens the home (creating it, mode 0700, if missing) after checking that it is safe.
    pub fn open_home(&self) -> Result<OwnedFd, StoreError> {
        let err = |source| StoreError::Dir {
            path: self.dir.clone(),
            source,
        };
        if rustix::process::geteuid().is_root() {
            check_ancestors(&self.dir).map_err(|why| StoreError::Unsafe {
                path: self.dir.clone(),
                why,
            })?;
        }
        match std::fs::create_dir(&self.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.dir).map_err(err)?
            }
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(err(e)),
            _ => {}
        }
        let fd = fsx::open_dir(&self.dir).map_err(|e| self.unsafe_or(e))?;
        self.check_home(&fd)?;
        Ok(fd)
    }

    fn unsafe_or(&self, e: std::io::Error) -> StoreError {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
            || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
        {
            return StoreError::Unsafe {
                path: self.dir.clone(),
                why:
                    "it is a symbolic link or not a directory; point VELO_HOME at a real directory"
                        .into(),
            };
        }
        StoreError::Dir {
            path: self.dir.clone(),
            source: e,
        }
    }

    fn check_home(&self, fd: &OwnedFd) -> Result<(), StoreError> {
        let me = rustix::process::geteuid();
        let st = rustix::fs::fstat(fd).map_err(|e| StoreError::Dir {
            path: self.dir.clone(),
            source: e.into(),
        })?;
        if st.st_uid != me.as_raw() {
            return Err(StoreError::Unsafe {
                path: self.dir.clone(),
                why: format!(
                    "it belongs to uid {}, not to you (uid {}); use your own directory (VELO_HOME)",
                    st.st_uid,
                    me.as_raw()
                ),
            });
        }
        if st.st_mode & 0o077 != 0 {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(0o700)).map_err(|e| StoreError::Dir {
                path: self.dir.clone(),
                source: e.into(),
            })?;
        }
        Ok(())
    }

    fn lock(&self) -> Result<(OwnedFd, File), StoreError> {
        let dir = self.open_home()?;
        let path = self.dir.join("state.lock");
        let err = |source: std::io::Error| StoreError::Lock {
            path: path.clone(),
            source,
        };
        let fd = rustix::fs::openat(
            &dir,
            "state.lock",
            OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::WRONLY,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| err(e.into()))?;
        if !fsx::is_regular(fd.as_fd()).map_err(err)? {
            return Err(err(std::io::Error::other("not a regular file")));
        }
        let file = File::from(fd);
        FileExt::lock(&file).map_err(err)?;
        Ok((dir, file))
    }

    fn load(&self, dir: &OwnedFd) -> Result<State, StoreError> {
        let path = self.state_path();
        let bytes = match fsx::read_regular_at(dir.as_fd(), "state.json", MAX_STATE_BYTES) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(State::default()),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let mut value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Parse {
                path: path.clone(),
                source,
            })?;
        migrate::upgrade(&mut value).map_err(|source| StoreError::Migrate {
            path: path.clone(),
            source,
        })?;
        let found = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if found != u64::from(SCHEMA_VERSION) {
            return Err(StoreError::Version { path, found });
        }
        serde_json::from_value(value).map_err(|source| StoreError::Parse { path, source })
    }

    fn persist(&self, dir: &OwnedFd, state: &State) -> Result<(), StoreError> {
        let mut text = serde_json::to_vec_pretty(state).expect("state serializes");
        text.push(b'\n');
        fsx::replace_at(dir.as_fd(), "state.json", &text, 0o600, None).map_err(|source| {
            StoreError::Write {
                path: self.state_path(),
                source,
            }
        })
    }
}

/// As root: every directory above the home must be root's and writable by no one else, unless
/// it is sticky (like /tmp), where no one else can rename or remove what root made.
fn check_ancestors(home: &Path) -> Result<(), String> {
    only_root_controls(home).map_err(|dir| {
        format!(
            "velo runs as root, but {dir}, so another user could replace velo's directory; set VELO_HOME to a directory only root controls, or run velo as that user"
        )
    })
}

/// Whether only root can change what `path` names: every directory that holds it (links
/// resolved) is root's and writable by no one else, or sticky (like /tmp), where no one else
/// can rename or remove what root made. `path` itself need not exist. The error says which
/// directory fails (`<dir> belongs to uid <n> or others may write it`).
pub fn only_root_controls(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let path = std::path::absolute(path).map_err(|e| e.to_string())?;
    // The nearest ancestor that exists, with every link in it resolved: the directories that
    // really hold the path. (Missing ones root creates itself.)
    let Some(existing) = path
        .ancestors()
        .skip(1)
        .find_map(|dir| std::fs::canonicalize(dir).ok())
    else {
        return Ok(());
    };
    for dir in existing.ancestors() {
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let others_write = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.uid() != 0 || (others_write && !sticky) {
            return Err(format!(
                "{} belongs to uid {} or others may write it",
                dir.display(),
                meta.uid()
            ));
        }
    }
    Ok(())
}

/// The home directory of the current user, from the password database.
fn passwd_home() -> Option<PathBuf> {
    let uid = rustix::process::getuid().as_raw().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 6 && fields[2] == uid).then(|| PathBuf::from(fields[5]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn round_trip_is_private_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("home"));
        assert_eq!(store.read().unwrap(), State::default());
        store.update(|_| Ok::<_, StoreError>(())).unwrap();
        let meta = std::fs::metadata(store.state_path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(store.dir()).unwrap().mode() & 0o777,
            0o700
        );
        let leftovers: Vec<_> = std::fs::read_dir(store.dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".velo-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn failed_change_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let r: Result<(), StoreError> = store.update(|s| {
            s.version = 99;
            Err(StoreError::Version {
                path: PathBuf::new(),
                found: 99,
            })
        });
        assert!(r.is_err());
        assert!(!store.state_path().exists());
    }

    #[test]
    fn refuses_newer_schema_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        std::fs::write(store.state_path(), r#"{"version": 7, "projects": {}}"#).unwrap();
        let err = store.read().unwrap_err();
        assert!(matches!(err, StoreError::Version { found: 7, .. }), "{err}");
    }

    #[test]
    fn a_linked_home_or_state_file_is_refused_and_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = Store::new(&link).read().unwrap_err();
        assert!(matches!(err, StoreError::Unsafe { .. }), "{err}");

        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, real.join("state.json")).unwrap();
        let store = Store::new(&real);
        assert!(store.read().is_err(), "a linked state file is not read");
        store.update(|_| Ok::<_, StoreError>(())).unwrap_err();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn as_root_a_home_under_a_directory_others_control_is_refused() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(1234), Some(1234)).unwrap();
        let err = Store::new(theirs.join("velo")).read().unwrap_err();
        assert!(
            err.to_string().contains("not safe") && format!("{err:?}").contains("uid 1234"),
            "{err:?}"
        );
    }
}
