//! The state store: `$VELO_HOME/state.json` behind an exclusive `flock` on `state.lock`.
//!
//! Every change is one transaction: take the lock, read, change, write atomically (temp file,
//! fsync, rename, fsync the directory), release. Transactions are short on purpose: commands do
//! their slow work (starting PostgreSQL) between transactions, guarded by a per-branch
//! [`Busy`](super::Busy) marker, so parallel commands overlap their waiting.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fs4::FileExt;

use super::model::{SCHEMA_VERSION, State};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create velo's directory {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
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
    #[error(
        "{path} has schema version {found}, but this velo reads version {SCHEMA_VERSION}; upgrade velo"
    )]
    Version { path: PathBuf, found: u32 },
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

    /// `$VELO_HOME`, else `~/.velo`.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("VELO_HOME") {
            return PathBuf::from(dir);
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".velo")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Reads the state under the lock, without changing it.
    pub fn read(&self) -> Result<State, StoreError> {
        let _lock = self.lock()?;
        self.load()
    }

    /// Runs `change` on the state under the lock and persists the result if it returns `Ok`.
    /// An `Err` from `change` leaves the file untouched.
    pub fn update<T, E>(&self, change: impl FnOnce(&mut State) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let _lock = self.lock()?;
        let mut state = self.load()?;
        let out = change(&mut state)?;
        self.persist(&state)?;
        Ok(out)
    }

    fn ensure_dir(&self) -> Result<(), StoreError> {
        let err = |source| StoreError::CreateDir {
            path: self.dir.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(err)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(err)
    }

    fn lock(&self) -> Result<File, StoreError> {
        self.ensure_dir()?;
        let path = self.dir.join("state.lock");
        let err = |source| StoreError::Lock {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        FileExt::lock(&file).map_err(err)?;
        Ok(file)
    }

    fn load(&self) -> Result<State, StoreError> {
        let path = self.state_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let probe: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| StoreError::Parse {
                path: path.clone(),
                source,
            })?;
        let found = probe.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if found != SCHEMA_VERSION {
            return Err(StoreError::Version { path, found });
        }
        serde_json::from_value(probe).map_err(|source| StoreError::Parse { path, source })
    }

    fn persist(&self, state: &State) -> Result<(), StoreError> {
        let path = self.state_path();
        let tmp = self
            .dir
            .join(format!("state.json.tmp.{}", std::process::id()));
        let err = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let mut text = serde_json::to_vec_pretty(state).expect("state serializes");
        text.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.write_all(&text).map_err(err)?;
        file.sync_all().map_err(err)?;
        drop(file);
        fs::rename(&tmp, &path).map_err(err)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)
    }
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
        store
            .update(|s| {
                s.version = SCHEMA_VERSION;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let meta = fs::metadata(store.state_path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(store.dir()).unwrap().mode() & 0o777, 0o700);
        let leftovers: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
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
    fn refuses_other_schema_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        fs::write(store.state_path(), r#"{"version": 7, "projects": {}}"#).unwrap();
        let err = store.read().unwrap_err();
        assert!(matches!(err, StoreError::Version { found: 7, .. }), "{err}");
    }
}
