//! velo's host configuration: `/etc/velo/config.json` (`VELO_CONFIG` overrides the path).
//!
//! Written only by `velo setup` (as root) and read by every command: which pool velo uses (so
//! no command needs `--pool`), the absolute paths of `zfs` and `zpool` (the ones the sudoers
//! entry names; a user's PATH often lacks /usr/sbin), and what setup changed, so that
//! `velo setup --undo` takes back exactly that. It is host-wide because the base dataset, the
//! pool's delegation and the sudoers files are; it lives under /etc and belongs to root so a
//! user cannot point velo's sudo calls at another program. This module knows nothing of ZFS,
//! Docker or velo's state.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/etc/velo/config.json";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read velo's config {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid velo config: fix it, or remove it and run `sudo velo setup`")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write velo's config {path} (run `velo setup` as root)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The pool velo keeps its datasets in.
    pub pool: Option<String>,
    /// Absolute paths of the ZFS programs.
    pub zfs: Option<String>,
    pub zpool: Option<String>,
    /// Setup created `<pool>/velo` (undo destroys it if it is empty).
    #[serde(default)]
    pub created_base: bool,
    /// Setup turned the pool's `delegation` property on (undo turns it off again).
    #[serde(default)]
    pub enabled_delegation: bool,
    /// The users setup prepared.
    #[serde(default)]
    pub users: BTreeMap<String, UserSetup>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSetup {
    /// Setup added the user to the docker group (undo removes them again).
    #[serde(default)]
    pub added_to_docker_group: bool,
    /// The user's uid, which names their sudoers file and rule.
    #[serde(default)]
    pub uid: Option<u32>,
    /// The user's base dataset, where all their datasets are.
    #[serde(default)]
    pub base: Option<String>,
}

impl Config {
    /// `$VELO_CONFIG`, else `/etc/velo/config.json`.
    pub fn path() -> PathBuf {
        std::env::var_os("VELO_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    /// The config at `path`; the default (empty) config if there is none.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the config atomically (a new temporary file, then a rename; no link followed),
    /// readable by everyone (it holds no secret), mode 0644.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |source| ConfigError::Write {
            path: path.to_path_buf(),
            source,
        };
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(err(std::io::Error::other("not a file path")));
        };
        fs::create_dir_all(dir).map_err(err)?;
        let mut text = serde_json::to_vec_pretty(self).expect("config serializes");
        text.push(b'\n');
        let dir = crate::fsx::open_dir(dir).map_err(err)?;
        crate::fsx::replace_at(&dir, &name.to_string_lossy(), &text, 0o644, None).map_err(err)
    }

    /// Removes the config file (and its directory if that is left empty).
    pub fn remove(path: &Path) -> Result<(), ConfigError> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ConfigError::Write {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
            _ => {}
        }
        if let Some(dir) = path.parent() {
            let _ = fs::remove_dir(dir);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_empty_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("velo/config.json");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
        let mut c = Config {
            pool: Some("tank".into()),
            created_base: true,
            ..Config::default()
        };
        c.users.insert(
            "ann".into(),
            UserSetup {
                added_to_docker_group: true,
                ..UserSetup::default()
            },
        );
        c.save(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap(), c);
        Config::remove(&path).unwrap();
        assert!(!path.exists());
        assert!(!path.parent().unwrap().exists());
    }
}
