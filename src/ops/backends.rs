//! Turns a project's records ([`StorageRecord`], [`RuntimeRecord`]) into the backends that
//! serve it, made once per command and shared: the ZFS tools and the Docker connection are
//! set up once whatever the number of projects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;

use crate::config::Config;
use crate::docker::Engine;
use crate::pg::{Endpoint, Sql};
use crate::runtime::Runtime;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::native::NativeRuntime;
use crate::state::{RuntimeRecord, StorageRecord};
use crate::storage::Storage;
use crate::storage::btrfs::BtrfsStorage;
use crate::storage::tree::TreeStorage;
use crate::storage::treecopy::Mode;
use crate::storage::zfs::ZfsStorage;
use crate::ui::Shell;
use crate::zfs::Zfs;

/// Backends that serve every project (see [`Backends::fixed`]).
pub struct Fixed {
    pub storage: Arc<dyn Storage>,
    pub runtime: Arc<dyn Runtime>,
    /// What talks to the server at an endpoint.
    pub sql: Arc<dyn Fn(Endpoint) -> Arc<dyn Sql> + Send + Sync>,
}

/// The backends of one velo command.
pub struct Backends {
    home: PathBuf,
    /// Where backends show long work (an image pull).
    shell: Shell,
    zfs: Arc<Zfs>,
    docker: Arc<Engine>,
    storages: Mutex<HashMap<StorageRecord, Arc<dyn Storage>>>,
    runtimes: Mutex<HashMap<RuntimeRecord, Arc<dyn Runtime>>>,
    /// Set by [`Backends::fixed`]: these serve every project, whatever its records say.
    fixed: Option<Fixed>,
}

impl Backends {
    pub fn new(config: &Config, home: &Path, shell: Shell) -> Self {
        Self {
            home: home.to_path_buf(),
            shell,
            zfs: Arc::new(Zfs::new(config.zfs.clone(), config.zpool.clone())),
            docker: Arc::new(Engine::default()),
            storages: Mutex::new(HashMap::new()),
            runtimes: Mutex::new(HashMap::new()),
            fixed: None,
        }
    }

    /// Backends that serve every project whatever its records say: for tests of the
    /// operations' logic on fakes.
    pub fn fixed(home: &Path, fixed: Fixed) -> Self {
        Self {
            fixed: Some(fixed),
            ..Self::new(&Config::default(), home, Shell::captured())
        }
    }

    /// How velo talks to a server at `endpoint`.
    pub fn sql(&self, endpoint: Endpoint) -> Arc<dyn Sql> {
        match &self.fixed {
            Some(f) => (f.sql)(endpoint),
            None => Arc::new(endpoint),
        }
    }

    /// The ZFS tools (for set-up, health checks and the default choice).
    pub fn zfs(&self) -> &Arc<Zfs> {
        &self.zfs
    }

    /// The Docker engine (for health checks and the default choice).
    pub fn docker(&self) -> &Arc<Engine> {
        &self.docker
    }

    fn label(&self) -> String {
        self.home.display().to_string()
    }

    pub fn storage(&self, record: &StorageRecord) -> Result<Arc<dyn Storage>> {
        if let Some(f) = &self.fixed {
            return Ok(f.storage.clone());
        }
        let mut made = self.storages.lock().expect("no panic while held");
        if let Some(s) = made.get(record) {
            return Ok(s.clone());
        }
        let storage: Arc<dyn Storage> = match record {
            StorageRecord::Zfs { pool, base, layout } => Arc::new(ZfsStorage::new(
                self.zfs.clone(),
                pool.clone(),
                base.clone(),
                *layout,
                self.label(),
            )),
            StorageRecord::Btrfs { dir } => Arc::new(BtrfsStorage::new(dir, self.label())),
            StorageRecord::Reflink { dir } => {
                Arc::new(TreeStorage::new(dir, Mode::Reflink, self.label()))
            }
            StorageRecord::Copy { dir } => {
                Arc::new(TreeStorage::new(dir, Mode::Copy, self.label()))
            }
        };
        made.insert(record.clone(), storage.clone());
        Ok(storage)
    }

    pub fn runtime(&self, record: &RuntimeRecord) -> Result<Arc<dyn Runtime>> {
        if let Some(f) = &self.fixed {
            return Ok(f.runtime.clone());
        }
        let mut made = self.runtimes.lock().expect("no panic while held");
        if let Some(r) = made.get(record) {
            return Ok(r.clone());
        }
        let runtime: Arc<dyn Runtime> = match record {
            RuntimeRecord::Docker { image } => Arc::new(DockerRuntime::new(
                self.docker.clone(),
                image.clone(),
                self.label(),
                self.shell.clone(),
            )),
            RuntimeRecord::Native { bindir } => Arc::new(NativeRuntime::new(
                bindir.clone(),
                self.home.clone(),
                self.label(),
            )),
        };
        made.insert(record.clone(), runtime.clone());
        Ok(runtime)
    }
}
