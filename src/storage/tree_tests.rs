//! The tree backend's whole contract in `copy` mode, on the test's own temporary directory
//! (any file system), as root or as any user.

use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::storage::Availability;

fn vol(s: &str) -> VolumeId {
    let (r, g) = s.split_once('.').unwrap();
    VolumeId::new(&r.parse().unwrap(), g.parse().unwrap())
}

fn snap(v: &VolumeId, id: &str) -> SnapshotRef {
    SnapshotRef {
        volume: v.clone(),
        id: id.parse().unwrap(),
    }
}

fn project(s: &str) -> ProjectName {
    s.parse().unwrap()
}

async fn prepared() -> (tempfile::TempDir, TreeStorage) {
    let t = tempfile::tempdir().unwrap();
    let storage = TreeStorage::new(t.path().join("data"), Mode::Copy, "home-a");
    storage.prepare().await.unwrap();
    (t, storage)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn volumes_snapshots_and_clones_round_trip() {
    let (t, storage) = prepared().await;
    let data = t.path().join("data");
    assert_eq!(std::fs::metadata(&data).unwrap().mode() & 0o777, 0o700);
    let main = vol("demo/main.0");
    let path = storage.create_volume(&main).await.unwrap();
    assert_eq!(path, data.join("demo/main.0"));
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o700);
    assert_eq!(
        std::fs::metadata(data.join("demo")).unwrap().mode() & 0o777,
        0o700
    );
    std::fs::create_dir(path.join("pgdata")).unwrap();
    std::fs::write(path.join("pgdata/PG_VERSION"), "16\n").unwrap();

    let s = snap(&main, "0123456789ab");
    storage.snapshot(&s).await.unwrap();
    assert!(
        storage.snapshot(&s).await.is_err(),
        "a second snapshot of one name"
    );
    let dev = vol("demo/dev.0");
    let dev_path = storage.clone_snapshot(&s, &dev).await.unwrap();
    std::fs::write(dev_path.join("pgdata/PG_VERSION"), "17\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(path.join("pgdata/PG_VERSION")).unwrap(),
        "16\n"
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(&storage.snapshot_name_of(&s)).join("pgdata/PG_VERSION"))
            .unwrap(),
        "16\n"
    );
    assert!(
        storage.clone_snapshot(&s, &dev).await.is_err(),
        "a clone over a volume"
    );

    let usage = storage.usage(&project("demo")).await.unwrap();
    assert_eq!(usage.get(&storage.name_of(&dev)), Some(&3));
    assert_eq!(usage.get(&storage.snapshot_name_of(&s)), Some(&3));

    storage.destroy_volume(&main).await.unwrap();
    assert_eq!(names_in(&data.join("demo")), [".snapshots", "dev.0"]);
    assert!(names_in(&data.join("demo/.snapshots")).is_empty());
    assert!(names_in(&data.join(".trash")).is_empty());
    storage.destroy_volume(&main).await.unwrap();
    storage.destroy_snapshot(&s).await.unwrap();
    storage.destroy_project(&project("demo")).await.unwrap();
    assert_eq!(names_in(&data), [".trash", ".velo-home"]);
    storage.destroy_project(&project("demo")).await.unwrap();
}

#[tokio::test]
async fn the_inventory_lists_velos_names_and_the_others() {
    let (t, storage) = prepared().await;
    let data = t.path().join("data");
    let main = vol("demo/main.0");
    storage.create_volume(&main).await.unwrap();
    let s = snap(&main, "0123456789ab");
    storage.snapshot(&s).await.unwrap();
    std::fs::write(data.join("demo/stray"), "").unwrap();
    std::fs::create_dir(data.join("Not-A-Project")).unwrap();

    let inventory = storage.inventory().await.unwrap();
    assert!(inventory.present);
    let by_name = |n: &str| {
        inventory
            .entries
            .iter()
            .find(|e| e.name.ends_with(n))
            .unwrap()
    };
    assert_eq!(inventory.entries.len(), 4, "{:?}", inventory.entries);
    let volume = by_name("/demo/main.0");
    assert_eq!(volume.volume.as_ref(), Some(&main));
    assert_eq!(
        volume.available,
        Availability::Available {
            path: data.join("demo/main.0")
        }
    );
    assert_eq!(volume.home.as_deref(), Some("home-a"));
    let snapshot = by_name("main.0@0123456789ab");
    assert_eq!(
        (snapshot.snapshot.as_ref(), &snapshot.available),
        (Some(&s), &Availability::NotApplicable)
    );
    for odd in ["/demo/stray", "/Not-A-Project"] {
        let e = by_name(odd);
        assert_eq!(
            (e.volume.as_ref(), e.snapshot.as_ref()),
            (None, None),
            "{odd}"
        );
    }

    let other = TreeStorage::new(&data, Mode::Copy, "home-b");
    assert!(!other.inventory().await.unwrap().present);
    let gone = TreeStorage::new(t.path().join("nothing"), Mode::Copy, "home-a");
    assert!(!gone.inventory().await.unwrap().present);
}

#[tokio::test]
async fn prepare_refuses_another_homes_directory_and_a_link() {
    let (t, _storage) = prepared().await;
    let data = t.path().join("data");
    let err = TreeStorage::new(&data, Mode::Copy, "home-b")
        .prepare()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StorageError::Refused(_)), "{err:?}");
    assert!(text.contains("home-a") && text.contains("home-b"), "{text}");

    std::os::unix::fs::symlink(&data, t.path().join("link")).unwrap();
    let err = TreeStorage::new(t.path().join("link"), Mode::Copy, "home-a")
        .prepare()
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Refused(_)), "{err:?}");
    TreeStorage::new(&data, Mode::Copy, "home-a")
        .prepare()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failed_snapshot_leaves_nothing_under_its_name() {
    let (t, storage) = prepared().await;
    let main = vol("demo/main.0");
    let path = storage.create_volume(&main).await.unwrap();
    let mut deep = path.clone();
    for _ in 0..=treecopy::MAX_DEPTH {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let s = snap(&main, "0123456789ab");
    let err = storage.snapshot(&s).await.unwrap_err();
    assert!(err.to_string().contains("copying"), "{err}");
    assert!(names_in(&t.path().join("data/demo/.snapshots")).is_empty());
}

#[tokio::test]
async fn crash_leftovers_are_swept_by_prepare_and_destroy() {
    let (t, storage) = prepared().await;
    let data = t.path().join("data");
    let main = vol("demo/main.0");
    storage.create_volume(&main).await.unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = data.join(format!(".trash/{dead}-0123"));
    std::fs::create_dir_all(stale.join("pgdata/base")).unwrap();
    let live = data.join(format!(".trash/{}-0123", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();
    let half_clone = data.join("demo").join(layout::temp_name("main.0"));
    std::fs::create_dir_all(half_clone.join("pgdata")).unwrap();
    let half_snapshot = data
        .join("demo/.snapshots")
        .join(layout::temp_name("main.0@0123456789ab"));
    std::fs::create_dir_all(&half_snapshot).unwrap();

    storage.prepare().await.unwrap();
    assert!(!stale.exists(), "a dead process's trash is cleared");
    assert!(live.exists(), "a live process's trash is left to it");
    storage.destroy_volume(&main).await.unwrap();
    assert!(!half_clone.exists() && !half_snapshot.exists());
    assert_eq!(names_in(&data.join("demo")), [".snapshots"]);
}

#[tokio::test]
async fn complete_snapshot_recopies_late_paths_and_adds_files() {
    let (_t, storage) = prepared().await;
    let main = vol("demo/main.0");
    let path = storage.create_volume(&main).await.unwrap();
    std::fs::create_dir_all(path.join("pgdata/pg_wal")).unwrap();
    std::fs::set_permissions(path.join("pgdata"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(path.join("pgdata/pg_wal/1"), "early").unwrap();
    std::fs::write(path.join("pgdata/gone-late"), "x").unwrap();
    let s = snap(&main, "0123456789ab");
    storage.snapshot(&s).await.unwrap();
    std::fs::write(path.join("pgdata/pg_wal/1"), "late").unwrap();
    std::fs::write(path.join("pgdata/pg_wal/2"), "later").unwrap();
    std::fs::remove_file(path.join("pgdata/gone-late")).unwrap();

    let late = ["pgdata/pg_wal", "pgdata/gone-late"];
    let files: [(&str, &[u8]); 1] = [("pgdata/backup_label", b"START WAL LOCATION")];
    storage.complete_snapshot(&s, &late, &files).await.unwrap();

    let taken = PathBuf::from(storage.snapshot_name_of(&s));
    assert_eq!(
        std::fs::read_to_string(taken.join("pgdata/pg_wal/1")).unwrap(),
        "late"
    );
    assert_eq!(
        std::fs::read_to_string(taken.join("pgdata/pg_wal/2")).unwrap(),
        "later"
    );
    assert!(!taken.join("pgdata/gone-late").exists());
    let label = std::fs::metadata(taken.join("pgdata/backup_label")).unwrap();
    let pgdata = std::fs::metadata(taken.join("pgdata")).unwrap();
    assert_eq!(
        (label.mode() & 0o7777, label.uid(), label.gid()),
        (0o600, pgdata.uid(), pgdata.gid())
    );
    assert_eq!(names_in(&taken.join("pgdata")), ["backup_label", "pg_wal"]);

    for bad in [
        "../x",
        "/etc/passwd",
        "pgdata/../x",
        "",
        "pgdata//x",
        "./pgdata",
    ] {
        let err = storage
            .complete_snapshot(&s, &[bad], &[])
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Refused(_)), "{bad}: {err:?}");
    }
}

#[tokio::test]
async fn missing_volumes_are_reported_clearly_and_destroys_of_them_succeed() {
    let (_t, storage) = prepared().await;
    let main = vol("demo/main.0");
    assert_eq!(storage.path(&main).await.unwrap(), None);
    let err = storage.ensure_available(&main, &|_| {}).await.unwrap_err();
    assert!(err.to_string().contains("no volume at"), "{err}");
    let err = storage
        .snapshot(&snap(&main, "0123456789ab"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("main.0"), "{err}");
    storage.destroy_volume(&main).await.unwrap();
    storage
        .destroy_snapshot(&snap(&main, "0123456789ab"))
        .await
        .unwrap();
    storage.destroy_project(&project("demo")).await.unwrap();
    storage.create_volume(&main).await.unwrap();
    assert!(storage.create_volume(&main).await.is_err());
    assert!(storage.ensure_available(&main, &|_| {}).await.is_ok());
}

#[tokio::test]
async fn space_capabilities_and_names_describe_the_backend() {
    let (t, storage) = prepared().await;
    let space = storage.space().await.unwrap();
    assert_eq!(space.health, "ok");
    assert!(space.available > 0 && space.used > 0);
    assert_eq!(
        space.name,
        format!("copy at {}", t.path().join("data").display())
    );
    assert!(storage.capabilities().copies_data);
    let reflink = TreeStorage::new(t.path(), Mode::Reflink, "h");
    assert!(!reflink.capabilities().copies_data && !reflink.capabilities().atomic_snapshot);
    assert!(reflink.describe().starts_with("reflink at "));
    assert_eq!(
        storage.name_of(&vol("demo/main.3")),
        t.path().join("data/demo/main.3").display().to_string()
    );
}

#[tokio::test]
async fn reflink_mode_fails_clearly_where_reflinks_do_not_work() {
    let t = tempfile::tempdir().unwrap();
    let works = reflink_works(t.path());
    assert!(names_in(t.path()).is_empty(), "the probe cleans up");
    if works {
        return;
    }
    let storage = TreeStorage::new(t.path().join("data"), Mode::Reflink, "h");
    storage.prepare().await.unwrap();
    let main = vol("demo/main.0");
    let path = storage.create_volume(&main).await.unwrap();
    std::fs::write(path.join("f"), "x").unwrap();
    let err = storage
        .snapshot(&snap(&main, "0123456789ab"))
        .await
        .unwrap_err();
    assert!(format!("{err}").contains("reflink"), "{err}");
}
