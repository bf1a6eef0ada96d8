//! Volumes as ZFS datasets, snapshots as ZFS snapshots, clones as ZFS clones.
//!
//! A user's datasets are all direct children of their own base, `<pool>/velo/user.<name>`
//! ([`ZfsLayout::Flat`]): `<base>/<project>.<branch>.<generation>`. The base belongs to root
//! (made by `velo setup`, or by velo itself as root), so every mountpoint velo's sudo rule
//! mounts sits in a directory the user cannot change, and the delegation `velo setup` grants
//! lets the user create datasets only there, never inside one of their own (docs/security.md).
//! Projects made by velo 0.1 keep their `<pool>/velo/<project>/<branch>.<generation>` names
//! ([`ZfsLayout::Nested`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::{
    Availability, Capabilities, Entry, Inventory, Note, Result, SnapshotRef, Space, Storage,
    StorageError, VolumeId,
};
use crate::names::ProjectName;
use crate::state::ZfsLayout;
use crate::zfs::{
    BASE_PROPERTIES, Implementation, SECURITY_PROPERTIES, Zfs, ZfsError, ZfsErrorKind, is_root,
};

/// The ZFS user property velo sets on every dataset it creates, naming the velo home that owns
/// it: several velo homes can share one pool, and only a dataset with this home's mark is ever
/// called an orphan.
pub const HOME_PROPERTY: &str = "dev.velo:home";

/// The host-wide lock root's velo holds while it makes the chain of base datasets.
const PREPARE_LOCK: &str = "/run/velo-zfs-prepare.lock";

#[derive(Debug)]
pub struct ZfsStorage {
    zfs: Arc<Zfs>,
    pool: String,
    base: String,
    layout: ZfsLayout,
    home: String,
}

/// The base of a user's flat datasets in `pool`.
pub fn user_base(pool: &str, user: &str) -> String {
    format!("{pool}/velo/user.{user}")
}

impl ZfsStorage {
    pub fn new(zfs: Arc<Zfs>, pool: String, base: String, layout: ZfsLayout, home: String) -> Self {
        Self {
            zfs,
            pool,
            base,
            layout,
            home,
        }
    }

    fn dataset(&self, v: &VolumeId) -> String {
        match self.layout {
            ZfsLayout::Flat => format!("{}/{}", self.base, v.leaf()),
            ZfsLayout::Nested => format!("{}/{}/{}", self.base, v.project, v.in_project()),
        }
    }

    /// Reads a dataset name of this storage back into a volume.
    fn volume_of(&self, dataset: &str) -> Option<VolumeId> {
        let rest = dataset.strip_prefix(&self.base)?.strip_prefix('/')?;
        match self.layout {
            ZfsLayout::Flat => VolumeId::parse_leaf(rest),
            ZfsLayout::Nested => {
                let (project, name) = rest.split_once('/')?;
                VolumeId::parse_in_project(&project.parse().ok()?, name)
            }
        }
    }

    /// Whether a dataset of this storage belongs to `project`.
    fn of_project(&self, dataset: &str, project: &ProjectName) -> bool {
        let name = dataset.split('@').next().unwrap_or(dataset);
        match self.layout {
            ZfsLayout::Flat => name.starts_with(&format!("{}/{project}.", self.base)),
            ZfsLayout::Nested => name.starts_with(&format!("{}/{project}/", self.base)),
        }
    }

    /// Mounts `dataset` if it is not mounted (its parent is).
    async fn ensure_mounted(&self, dataset: &str) -> Result<()> {
        let props = self.zfs.get(&[dataset], &["mounted"]).await?;
        let mounted = props
            .get(dataset)
            .and_then(|p| p.get("mounted"))
            .cloned()
            .flatten();
        if mounted.as_deref() == Some("yes") {
            return Ok(());
        }
        match self.zfs.mount(dataset).await {
            Err(e) if e.kind() != ZfsErrorKind::AlreadyMounted => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// `pool`, `pool/velo`, …, `dataset`: what must be mounted, parents first.
    fn chain(dataset: &str) -> Vec<&str> {
        dataset
            .match_indices('/')
            .map(|(i, _)| &dataset[..i])
            .chain([dataset])
            .collect()
    }

    async fn mountpoint_of(&self, dataset: &str) -> Result<PathBuf> {
        self.zfs
            .mountpoint(dataset)
            .await?
            .map(PathBuf::from)
            .ok_or_else(|| StorageError::Refused(format!("dataset {dataset} is not mounted")))
    }

    /// Makes a new dataset's root private: nobody but velo's user (and, through it, the
    /// server) may enter a volume, so nothing a database superuser leaves in it is reachable
    /// by other users of the host.
    async fn private_root(&self, dataset: &str) -> Result<PathBuf> {
        let path = self.mountpoint_of(dataset).await?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(StorageError::io("making private", &path))?;
        Ok(path)
    }

    fn mark(&self) -> [(&str, &str); 1] {
        [(HOME_PROPERTY, self.home.as_str())]
    }

    /// The velo home that marked a dataset or snapshot (snapshots inherit the mark), `None`
    /// for one that is gone or was made before velo marked datasets.
    async fn marked_by(&self, name: &str) -> Result<Option<String>> {
        match self.zfs.get(&[name], &[HOME_PROPERTY]).await {
            Ok(props) => Ok(props
                .get(name)
                .and_then(|p| p.get(HOME_PROPERTY))
                .cloned()
                .flatten()),
            Err(e) if e.kind() == ZfsErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether this home may destroy `name`: several homes (of one user, or root's) can share
    /// a base, and a name taken by another home's dataset must never be destroyed here, not
    /// even by the undo of a create that failed because the name was taken.
    async fn ours(&self, name: &str) -> Result<bool> {
        Ok(self
            .marked_by(name)
            .await?
            .is_none_or(|home| home == self.home))
    }

    /// A create that failed because the name is taken: says by whom, when it is another home.
    async fn taken(&self, dataset: &str, e: ZfsError) -> StorageError {
        if e.kind() == ZfsErrorKind::AlreadyExists
            && let Ok(Some(home)) = self.marked_by(dataset).await
            && home != self.home
        {
            return StorageError::Refused(format!(
                "{dataset} already exists and belongs to the velo home {home}; use that home (VELO_HOME={home}) or another name"
            ));
        }
        e.into()
    }

    /// The datasets cloned from snapshots of `dataset`, where they keep it from being renamed
    /// (zfs-fuse, which calls the dataset busy while such a clone is mounted); none on OpenZFS.
    async fn blocking_clones(&self, dataset: &str) -> Result<Vec<String>> {
        if self.zfs.implementation().await? != Implementation::ZfsFuse {
            return Ok(Vec::new());
        }
        let prefix = format!("{dataset}@");
        let tree = self.zfs.describe_tree(&self.base, &[]).await?;
        Ok(tree
            .into_iter()
            .filter(|(_, e)| !e.snapshot)
            .filter(|(_, e)| e.origin.as_ref().is_some_and(|o| o.starts_with(&prefix)))
            .map(|(name, _)| name)
            .collect())
    }

    /// Renames `from` to `to`, unmounted (a user cannot unmount, so `zfs rename` could not),
    /// with the clones that would block it unmounted too; mounts everything again after, the
    /// old name if the rename failed.
    async fn rename_unmounted(&self, from: &str, to: &str) -> Result<()> {
        let clones = self.blocking_clones(from).await?;
        for ds in clones.iter().map(String::as_str).chain([from]) {
            self.zfs.unmount(ds).await?;
        }
        let renamed = self.zfs.rename(from, to).await;
        let here = if renamed.is_ok() { to } else { from };
        for ds in [here].into_iter().chain(clones.iter().map(String::as_str)) {
            self.zfs.mount(ds).await?;
        }
        Ok(renamed?)
    }
}

#[async_trait]
impl Storage for ZfsStorage {
    fn describe(&self) -> String {
        format!("zfs, datasets under {}", self.base)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_snapshot: true,
            clone_pins_source: true,
            copies_data: false,
        }
    }

    async fn prepare(&self) -> Result<()> {
        if self.zfs.exists(&self.base).await? {
            return Ok(());
        }
        if !is_root() {
            return Err(StorageError::Refused(format!(
                "{} does not exist: run `sudo velo setup` once to prepare ZFS for your user",
                self.base
            )));
        }
        // One root process at a time, host-wide: zfs-fuse mounts a new dataset only after
        // `zfs create` returns, so a second velo making the same chain at once could create a
        // child before its parent is mounted. The child's mountpoint then fills the parent's,
        // which can never be mounted again ("directory is not empty").
        // (Best effort: a host without a writable /run makes the chain unlocked, as before.)
        let _lock = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PREPARE_LOCK)
        {
            Ok(file) => {
                tokio::task::spawn_blocking(move || fs4::FileExt::lock(&file).map(|()| file))
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        let compression = self.zfs.best_compression(&self.pool).await;
        let mut props = BASE_PROPERTIES.to_vec();
        props.extend_from_slice(SECURITY_PROPERTIES);
        props.push(("compression", compression));
        for dataset in Self::chain(&self.base).into_iter().skip(1) {
            self.zfs.ensure(dataset, &props).await?;
            self.ensure_mounted(dataset).await?;
        }
        Ok(())
    }

    async fn create_volume(&self, v: &VolumeId) -> Result<PathBuf> {
        if self.layout == ZfsLayout::Nested {
            let project = format!("{}/{}", self.base, v.project);
            self.zfs.ensure(&project, &self.mark()).await?;
        }
        let dataset = self.dataset(v);
        if let Err(e) = self.zfs.create(&dataset, &self.mark()).await {
            return Err(self.taken(&dataset, e).await);
        }
        self.private_root(&dataset).await
    }

    async fn snapshot(&self, s: &SnapshotRef) -> Result<()> {
        Ok(self.zfs.snapshot(&self.snapshot_name_of(s)).await?)
    }

    async fn complete_snapshot(
        &self,
        _: &SnapshotRef,
        _: &[&str],
        _: &[(&str, &[u8])],
    ) -> Result<()> {
        Err(StorageError::Unsupported {
            backend: "zfs",
            what: "complete a snapshot (its snapshots are atomic)",
        })
    }

    async fn clone_snapshot(&self, from: &SnapshotRef, into: &VolumeId) -> Result<PathBuf> {
        let dataset = self.dataset(into);
        let cloned = self
            .zfs
            .clone_snapshot(&self.snapshot_name_of(from), &dataset, &self.mark())
            .await;
        if let Err(e) = cloned {
            return Err(self.taken(&dataset, e).await);
        }
        self.mountpoint_of(&dataset).await
    }

    async fn destroy_volume(&self, v: &VolumeId) -> Result<()> {
        let dataset = self.dataset(v);
        if !self.ours(&dataset).await? {
            return Ok(());
        }
        Ok(self.zfs.destroy_dataset(&dataset).await?)
    }

    async fn rename_volume(&self, from: &VolumeId, to: &VolumeId) -> Result<()> {
        let (a, b) = (self.dataset(from), self.dataset(to));
        match (self.zfs.exists(&a).await?, self.zfs.exists(&b).await?) {
            (false, true) => self.zfs.mount(&b).await.map_err(Into::into),
            (true, false) => self.rename_unmounted(&a, &b).await,
            (true, true) => Err(StorageError::Refused(format!(
                "cannot rename {a}: {b} exists (if nothing records it, `velo repair --fix --force` destroys it)"
            ))),
            (false, false) => Err(StorageError::Refused(format!(
                "cannot rename {a}: it does not exist"
            ))),
        }
    }

    async fn clones_blocking_rename(&self, v: &VolumeId) -> Result<Vec<VolumeId>> {
        let clones = self.blocking_clones(&self.dataset(v)).await?;
        Ok(clones.iter().filter_map(|d| self.volume_of(d)).collect())
    }

    async fn destroy_snapshot(&self, s: &SnapshotRef) -> Result<()> {
        let snapshot = self.snapshot_name_of(s);
        if !self.ours(&snapshot).await? {
            return Ok(());
        }
        Ok(self.zfs.destroy_snapshot(&snapshot).await?)
    }

    async fn destroy_project(&self, project: &ProjectName) -> Result<()> {
        if self.layout == ZfsLayout::Nested {
            let dataset = format!("{}/{project}", self.base);
            if !self.ours(&dataset).await? {
                return Ok(());
            }
            return Ok(self.zfs.destroy_dataset(&dataset).await?);
        }
        // Clones before the datasets they were cloned from: ZFS refuses the other order.
        let tree = self.zfs.describe_tree(&self.base, &[HOME_PROPERTY]).await?;
        let mut left: BTreeMap<String, Option<String>> = tree
            .into_iter()
            .filter(|(name, e)| {
                !e.snapshot
                    && self.of_project(name, project)
                    && e.user.get(HOME_PROPERTY).is_none_or(|h| *h == self.home)
            })
            .map(|(name, e)| {
                (
                    name,
                    e.origin
                        .map(|o| o.split('@').next().unwrap_or("").to_string()),
                )
            })
            .collect();
        while !left.is_empty() {
            let free: Vec<String> = left
                .keys()
                .filter(|name| !left.values().any(|o| o.as_deref() == Some(name.as_str())))
                .cloned()
                .collect();
            if free.is_empty() {
                return Err(StorageError::Refused(format!(
                    "the datasets of project `{project}` depend on each other in a circle; destroy them by hand: {}",
                    left.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            for name in free {
                self.zfs.destroy_dataset(&name).await?;
                left.remove(&name);
            }
        }
        Ok(())
    }

    async fn path(&self, v: &VolumeId) -> Result<Option<PathBuf>> {
        Ok(self
            .zfs
            .mountpoint(&self.dataset(v))
            .await?
            .map(PathBuf::from))
    }

    async fn ensure_available(&self, v: &VolumeId, note: &Note<'_>) -> Result<PathBuf> {
        let dataset = self.dataset(v);
        for ds in Self::chain(&dataset) {
            // Asked afresh each time: clearing a dead mount also detaches the dead mounts below it.
            let props = self.zfs.get(&[ds], &["mounted", "mountpoint"]).await?;
            let value = |k: &str| props.get(ds).and_then(|p| p.get(k)).cloned().flatten();
            let Some(mountpoint) = value("mountpoint").filter(|m| m.starts_with('/')) else {
                continue;
            };
            let stale = self.zfs.stale_mounts().contains(&mountpoint);
            if value("mounted").as_deref() == Some("yes") && !stale {
                continue;
            }
            note(&format!("mounting {ds}"));
            if stale {
                self.zfs.clear_stale_mount(&mountpoint).await?;
            }
            match self.zfs.mount(ds).await {
                Err(e) if e.kind() != ZfsErrorKind::AlreadyMounted => return Err(e.into()),
                _ => {}
            }
        }
        self.mountpoint_of(&dataset).await
    }

    async fn usage(&self, project: &ProjectName) -> Result<BTreeMap<String, u64>> {
        let tree = self.zfs.get_tree(&self.base, &["used"]).await?;
        Ok(tree
            .into_iter()
            .filter(|(name, _)| self.of_project(name, project))
            .filter_map(|(name, p)| {
                let used = p.get("used").cloned().flatten()?.parse().ok()?;
                Some((name, used))
            })
            .collect())
    }

    fn name_of(&self, v: &VolumeId) -> String {
        self.dataset(v)
    }

    fn snapshot_name_of(&self, s: &SnapshotRef) -> String {
        format!("{}@{}", self.dataset(&s.volume), s.id)
    }

    async fn space(&self) -> Result<Space> {
        let (space, health) = tokio::try_join!(
            self.zfs.pool_space(&self.pool),
            self.zfs.pool_health(&self.pool)
        )?;
        Ok(Space {
            name: self.pool.clone(),
            health,
            used: space.used,
            available: space.available,
        })
    }

    async fn inventory(&self) -> Result<Inventory> {
        let pools = self.zfs.pools().await?;
        if !pools.contains(&self.pool) {
            return Ok(Inventory::default());
        }
        let stale = self.zfs.stale_mounts();
        let tree = self.zfs.describe_tree(&self.base, &[HOME_PROPERTY]).await?;
        let entries = tree
            .into_iter()
            .filter(|(name, _)| *name != self.base)
            .map(|(name, e)| {
                let (dataset, id) = match name.split_once('@') {
                    Some((d, id)) => (d, id.parse().ok()),
                    None => (name.as_str(), None),
                };
                let volume = self.volume_of(dataset);
                let snapshot = match (&volume, id) {
                    (Some(v), Some(id)) if e.snapshot => Some(SnapshotRef {
                        volume: v.clone(),
                        id,
                    }),
                    _ => None,
                };
                let available = match (&e.mountpoint, e.snapshot) {
                    (_, true) | (None, _) => Availability::NotApplicable,
                    (Some(m), _) if stale.contains(m) => Availability::Dead { path: m.into() },
                    (Some(m), _) if e.mounted => Availability::Available { path: m.into() },
                    (Some(m), _) => Availability::Unmounted { path: m.into() },
                };
                Entry {
                    volume: if e.snapshot { None } else { volume },
                    snapshot,
                    available,
                    origin: e.origin.clone(),
                    home: e.user.get(HOME_PROPERTY).cloned(),
                    name,
                }
            })
            .collect();
        Ok(Inventory {
            present: true,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(layout: ZfsLayout) -> ZfsStorage {
        let base = match layout {
            ZfsLayout::Flat => user_base("tank", "ann"),
            ZfsLayout::Nested => "tank/velo".into(),
        };
        ZfsStorage::new(
            Arc::new(Zfs::default()),
            "tank".into(),
            base,
            layout,
            "/h".into(),
        )
    }

    fn v(s: &str, g: u32) -> VolumeId {
        VolumeId::new(&s.parse().unwrap(), g)
    }

    #[test]
    fn names_map_both_ways_in_both_layouts() {
        let flat = storage(ZfsLayout::Flat);
        assert_eq!(
            flat.dataset(&v("demo/dev", 3)),
            "tank/velo/user.ann/demo.dev.3"
        );
        let nested = storage(ZfsLayout::Nested);
        assert_eq!(nested.dataset(&v("demo/dev", 3)), "tank/velo/demo/dev.3");
        for s in [&flat, &nested] {
            let vol = v("a-b/c", 12);
            assert_eq!(s.volume_of(&s.dataset(&vol)), Some(vol));
        }
        assert_eq!(flat.volume_of("tank/velo/user.ann/x.y"), None);
        assert_eq!(flat.volume_of("tank/velo/user.ann/a.b.01"), None);
        assert_eq!(flat.volume_of("tank/velo/user.bob/a.b.1"), None);
        assert_eq!(nested.volume_of("tank/velo/user.ann/a.b.1"), None);
        let p: ProjectName = "demo".parse().unwrap();
        assert!(flat.of_project("tank/velo/user.ann/demo.main.0@0123456789ab", &p));
        assert!(!flat.of_project("tank/velo/user.ann/demo-2.main.0", &p));
    }
}
