//! An in-memory storage for unit tests of the operations: it records what exists, and fails
//! the next call of an operation on request.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    Availability, Capabilities, Entry, Inventory, Note, Result, SnapshotRef, Space, Storage,
    StorageError, VolumeId,
};
use crate::names::ProjectName;

#[derive(Debug, Default)]
pub struct FakeStorage {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    volumes: BTreeMap<VolumeId, Option<SnapshotRef>>,
    snapshots: BTreeSet<SnapshotRef>,
    fail: BTreeSet<&'static str>,
    /// Clones keep their origin from being renamed while in use, as on zfs-fuse.
    clones_block_renames: bool,
}

impl FakeStorage {
    /// The next call of `op` (`create_volume`, `snapshot`, `clone`, `destroy_volume`,
    /// `rename_volume`, `destroy_snapshot`, `destroy_project`) fails.
    pub fn fail_next(&self, op: &'static str) {
        self.inner.lock().unwrap().fail.insert(op);
    }

    /// From now on, clones keep their origin's volume from being renamed while they are in
    /// use, as on zfs-fuse ([`Storage::clones_blocking_rename`]).
    pub fn clones_block_renames(&self) {
        self.inner.lock().unwrap().clones_block_renames = true;
    }

    /// The volumes and snapshots that exist, as names.
    pub fn contents(&self) -> BTreeSet<String> {
        let inner = self.inner.lock().unwrap();
        inner
            .volumes
            .keys()
            .map(|v| v.to_string())
            .chain(inner.snapshots.iter().map(|s| s.to_string()))
            .collect()
    }

    fn run(&self, op: &'static str) -> Result<std::sync::MutexGuard<'_, Inner>> {
        let mut inner = self.inner.lock().unwrap();
        if inner.fail.remove(op) {
            return Err(StorageError::Refused(format!("{op}: injected failure")));
        }
        Ok(inner)
    }

    fn path(v: &VolumeId) -> PathBuf {
        PathBuf::from("/fake").join(v.leaf())
    }
}

#[async_trait]
impl Storage for FakeStorage {
    fn describe(&self) -> String {
        "fake".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_snapshot: true,
            clone_pins_source: true,
            copies_data: false,
        }
    }

    async fn prepare(&self) -> Result<()> {
        self.run("prepare").map(drop)
    }

    async fn create_volume(&self, v: &VolumeId) -> Result<PathBuf> {
        let mut inner = self.run("create_volume")?;
        if inner.volumes.insert(v.clone(), None).is_some() {
            return Err(StorageError::Refused(format!("{v} exists")));
        }
        Ok(Self::path(v))
    }

    async fn snapshot(&self, s: &SnapshotRef) -> Result<()> {
        let mut inner = self.run("snapshot")?;
        if !inner.volumes.contains_key(&s.volume) || !inner.snapshots.insert(s.clone()) {
            return Err(StorageError::Refused(format!("cannot snapshot {s}")));
        }
        Ok(())
    }

    async fn complete_snapshot(
        &self,
        _: &SnapshotRef,
        _: &[&str],
        _: &[(&str, &[u8])],
    ) -> Result<()> {
        self.run("complete_snapshot").map(drop)
    }

    async fn clone_snapshot(&self, from: &SnapshotRef, into: &VolumeId) -> Result<PathBuf> {
        let mut inner = self.run("clone")?;
        if !inner.snapshots.contains(from) || inner.volumes.contains_key(into) {
            return Err(StorageError::Refused(format!(
                "cannot clone {from} into {into}"
            )));
        }
        inner.volumes.insert(into.clone(), Some(from.clone()));
        Ok(Self::path(into))
    }

    async fn destroy_volume(&self, v: &VolumeId) -> Result<()> {
        let mut inner = self.run("destroy_volume")?;
        let pinned = inner
            .volumes
            .values()
            .flatten()
            .any(|origin| origin.volume == *v);
        if pinned {
            return Err(StorageError::Refused(format!("{v} has clones")));
        }
        inner.volumes.remove(v);
        inner.snapshots.retain(|s| s.volume != *v);
        Ok(())
    }

    async fn rename_volume(&self, from: &VolumeId, to: &VolumeId) -> Result<()> {
        let mut inner = self.run("rename_volume")?;
        match (
            inner.volumes.contains_key(from),
            inner.volumes.contains_key(to),
        ) {
            (false, true) => return Ok(()),
            (true, false) => {}
            (true, true) => return Err(StorageError::Refused(format!("{to} exists"))),
            (false, false) => return Err(StorageError::Refused(format!("{from} is gone"))),
        }
        let moved = |s: &SnapshotRef| match s.volume == *from {
            true => SnapshotRef {
                volume: to.clone(),
                id: s.id.clone(),
            },
            false => s.clone(),
        };
        inner.snapshots = inner.snapshots.iter().map(moved).collect();
        let origin = inner.volumes.remove(from).expect("checked above");
        inner.volumes.insert(to.clone(), origin);
        for o in inner.volumes.values_mut().flatten() {
            *o = moved(o);
        }
        Ok(())
    }

    async fn clones_blocking_rename(&self, v: &VolumeId) -> Result<Vec<VolumeId>> {
        let inner = self.inner.lock().unwrap();
        if !inner.clones_block_renames {
            return Ok(Vec::new());
        }
        Ok(inner
            .volumes
            .iter()
            .filter(|(_, origin)| origin.as_ref().is_some_and(|o| o.volume == *v))
            .map(|(clone, _)| clone.clone())
            .collect())
    }

    async fn destroy_snapshot(&self, s: &SnapshotRef) -> Result<()> {
        let mut inner = self.run("destroy_snapshot")?;
        if inner.volumes.values().flatten().any(|o| o == s) {
            return Err(StorageError::Refused(format!("{s} has clones")));
        }
        inner.snapshots.remove(s);
        Ok(())
    }

    async fn destroy_project(&self, project: &ProjectName) -> Result<()> {
        let mut inner = self.run("destroy_project")?;
        inner.volumes.retain(|v, _| v.project != *project);
        inner.snapshots.retain(|s| s.volume.project != *project);
        Ok(())
    }

    async fn path(&self, v: &VolumeId) -> Result<Option<PathBuf>> {
        let inner = self.run("path")?;
        Ok(inner.volumes.contains_key(v).then(|| Self::path(v)))
    }

    async fn ensure_available(&self, v: &VolumeId, _: &Note<'_>) -> Result<PathBuf> {
        let inner = self.run("ensure_available")?;
        match inner.volumes.contains_key(v) {
            true => Ok(Self::path(v)),
            false => Err(StorageError::Refused(format!("{v} is gone"))),
        }
    }

    async fn usage(&self, _: &ProjectName) -> Result<BTreeMap<String, u64>> {
        Ok(BTreeMap::new())
    }

    fn name_of(&self, v: &VolumeId) -> String {
        v.to_string()
    }

    fn snapshot_name_of(&self, s: &SnapshotRef) -> String {
        s.to_string()
    }

    async fn space(&self) -> Result<Space> {
        Ok(Space {
            name: "fake".into(),
            health: "ok".into(),
            used: 0,
            available: 1 << 30,
        })
    }

    async fn inventory(&self) -> Result<Inventory> {
        let inner = self.inner.lock().unwrap();
        let volumes = inner.volumes.keys().map(|v| Entry {
            name: v.to_string(),
            volume: Some(v.clone()),
            snapshot: None,
            available: Availability::Available {
                path: Self::path(v),
            },
            origin: None,
            home: None,
        });
        let snapshots = inner.snapshots.iter().map(|s| Entry {
            name: s.to_string(),
            volume: None,
            snapshot: Some(s.clone()),
            available: Availability::NotApplicable,
            origin: None,
            home: None,
        });
        Ok(Inventory {
            present: true,
            entries: volumes.chain(snapshots).collect(),
        })
    }
}
