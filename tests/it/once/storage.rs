//! The storage backends on real file systems, through velo's library: Btrfs (as root and as
//! the user `velo-ci`), XFS with reflinks, and ext4 with plain copies. The directories are
//! the rig's mounts, named by `VELO_TEST_BTRFS_DIR`, `VELO_TEST_XFS_DIR` and
//! `VELO_TEST_EXT4_DIR` (`scripts/test.sh` sets them).

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use velo::storage::btrfs::{BtrfsStorage, ioctl, is_btrfs};
use velo::storage::tree::{Mode, TreeStorage, reflink_works};
use velo::storage::{Availability, SnapshotRef, Storage, StorageError, VolumeId};

/// The user the non-root checks run as (`scripts/rig-up.sh` creates it).
const CI_USER: &str = "velo-ci";

/// A directory of the rig's, from `var`. Missing is a failure, not a skip.
fn rig_dir(var: &str) -> PathBuf {
    let dir = std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the integration tests through scripts/test.sh, which mounts the test file systems")
    });
    assert!(
        Path::new(&dir).is_dir(),
        "{var}={dir} is not a directory: run scripts/rig-up.sh"
    );
    PathBuf::from(dir)
}

/// A fresh directory for one test on the file system of `var`, removed when dropped.
fn scratch(var: &str) -> Scratch {
    Scratch(
        tempfile::Builder::new()
            .prefix("velo-it-")
            .tempdir_in(rig_dir(var))
            .unwrap(),
    )
}

struct Scratch(tempfile::TempDir);

impl Scratch {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    /// A test that failed half-way may leave read-only Btrfs snapshots, which nothing can
    /// empty: make every subvolume (inode 256) writable so the directory can be removed.
    fn drop(&mut self) {
        if is_btrfs(self.path()) {
            let _ = Command::new("find")
                .arg(self.path())
                .args([
                    "-type", "d", "-inum", "256", "-exec", "btrfs", "property", "set", "-ts", "{}",
                    "ro", "false", ";",
                ])
                .output();
        }
    }
}

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

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Everything the `Storage` trait promises, on one backend whose data directory is `data`.
/// `other_home` is the same backend for another velo home, on the same directory.
async fn keeps_the_whole_contract(storage: &dyn Storage, other_home: &dyn Storage, data: &Path) {
    storage.prepare().await.unwrap();
    storage.prepare().await.unwrap();
    let main = vol("it/main.0");
    let path = storage.create_volume(&main).await.unwrap();
    assert_eq!(path, data.join("it/main.0"));
    std::fs::create_dir_all(path.join("pgdata/base/1")).unwrap();
    std::fs::write(path.join("pgdata/PG_VERSION"), "16\n").unwrap();
    std::fs::write(path.join("pgdata/base/1/1259"), vec![1u8; 4 << 20]).unwrap();
    std::os::unix::fs::symlink("base", path.join("pgdata/link")).unwrap();

    let s = snap(&main, "00000000000a");
    storage.snapshot(&s).await.unwrap();
    let dev = vol("it/dev.0");
    let dev_path = storage.clone_snapshot(&s, &dev).await.unwrap();
    assert_eq!(dev_path, data.join("it/dev.0"));
    assert_eq!(
        std::fs::read(dev_path.join("pgdata/base/1/1259")).unwrap(),
        vec![1u8; 4 << 20]
    );
    assert_eq!(
        std::fs::read_link(dev_path.join("pgdata/link")).unwrap(),
        Path::new("base")
    );

    // The clone and its source are independent, both ways.
    std::fs::write(dev_path.join("pgdata/PG_VERSION"), "dev\n").unwrap();
    std::fs::write(path.join("pgdata/base/1/1259"), "main").unwrap();
    assert_eq!(read(&path.join("pgdata/PG_VERSION")), "16\n");
    assert_eq!(
        std::fs::read(dev_path.join("pgdata/base/1/1259"))
            .unwrap()
            .len(),
        4 << 20
    );
    let snapshot = PathBuf::from(storage.snapshot_name_of(&s));
    assert_eq!(snapshot, data.join("it/.snapshots/main.0@00000000000a"));
    assert_eq!(read(&snapshot.join("pgdata/PG_VERSION")), "16\n");
    renames_with_snapshots(storage, &dev, data).await;

    let inventory = storage.inventory().await.unwrap();
    assert!(inventory.present);
    let volumes: Vec<_> = inventory
        .entries
        .iter()
        .filter_map(|e| e.volume.clone())
        .collect();
    assert_eq!(volumes, [dev.clone(), main.clone()]);
    let snapshots: Vec<_> = inventory
        .entries
        .iter()
        .filter_map(|e| e.snapshot.clone())
        .collect();
    assert_eq!(snapshots, std::slice::from_ref(&s));
    for e in &inventory.entries {
        assert_eq!(e.home.as_deref(), Some("it-home"), "{e:?}");
        if e.volume.is_some() {
            assert_eq!(
                e.available,
                Availability::Available {
                    path: PathBuf::from(&e.name)
                }
            );
        }
    }
    let space = storage.space().await.unwrap();
    assert!(space.available > 0 && space.used > 0, "{space:?}");
    assert_eq!(space.health, "ok");

    // A volume goes with its snapshots; its clone stays.
    storage.destroy_volume(&main).await.unwrap();
    assert!(!path.exists() && !snapshot.exists());
    assert_eq!(read(&dev_path.join("pgdata/PG_VERSION")), "dev\n");
    storage.destroy_volume(&main).await.unwrap();
    storage.destroy_snapshot(&s).await.unwrap();
    assert_eq!(storage.path(&dev).await.unwrap(), Some(dev_path.clone()));

    storage.destroy_project(&main.project).await.unwrap();
    assert!(!data.join("it").exists());
    assert!(
        std::fs::read_dir(data.join(".trash"))
            .unwrap()
            .next()
            .is_none(),
        "trash emptied"
    );
    assert!(storage.inventory().await.unwrap().entries.is_empty());
    storage.destroy_project(&main.project).await.unwrap();

    let err = other_home.prepare().await.unwrap_err();
    assert!(matches!(err, StorageError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("it-home"), "{err}");
}

/// A volume renamed takes its snapshots along, replaying a rename is success, a rename onto
/// another volume is refused, and renaming back restores the names.
async fn renames_with_snapshots(storage: &dyn Storage, dev: &VolumeId, data: &Path) {
    let s = snap(dev, "00000000000f");
    storage.snapshot(&s).await.unwrap();
    let moved = vol("it/moved.0");
    storage.rename_volume(dev, &moved).await.unwrap();
    assert!(!data.join("it/dev.0").exists());
    assert_eq!(read(&data.join("it/moved.0/pgdata/PG_VERSION")), "dev\n");
    let moved_snap = snap(&moved, "00000000000f");
    let taken = PathBuf::from(storage.snapshot_name_of(&moved_snap));
    assert_eq!(taken, data.join("it/.snapshots/moved.0@00000000000f"));
    assert_eq!(read(&taken.join("pgdata/PG_VERSION")), "dev\n");
    assert!(!PathBuf::from(storage.snapshot_name_of(&s)).exists());
    storage.rename_volume(dev, &moved).await.unwrap();
    let err = storage
        .rename_volume(&moved, &vol("it/main.0"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("main.0"), "{err}");
    storage.rename_volume(&moved, dev).await.unwrap();
    assert_eq!(read(&data.join("it/dev.0/pgdata/PG_VERSION")), "dev\n");
    storage.destroy_snapshot(&s).await.unwrap();
}

#[tokio::test]
async fn btrfs_keeps_the_whole_contract() {
    let t = scratch("VELO_TEST_BTRFS_DIR");
    let data = t.path().join("data");
    let storage = BtrfsStorage::new(&data, "it-home");
    keeps_the_whole_contract(&storage, &BtrfsStorage::new(&data, "other"), &data).await;
    assert!(storage.capabilities().atomic_snapshot);
    assert_eq!(storage.describe(), format!("btrfs at {}", data.display()));
}

#[tokio::test]
async fn btrfs_snapshots_are_read_only_and_need_no_completing() {
    let t = scratch("VELO_TEST_BTRFS_DIR");
    let storage = BtrfsStorage::new(t.path().join("data"), "it-home");
    storage.prepare().await.unwrap();
    let main = vol("it/main.0");
    let path = storage.create_volume(&main).await.unwrap();
    std::fs::write(path.join("f"), "x").unwrap();
    let s = snap(&main, "00000000000b");
    storage.snapshot(&s).await.unwrap();
    let taken = PathBuf::from(storage.snapshot_name_of(&s));
    let err = std::fs::write(taken.join("f"), "y").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS: {err}");
    let err = storage.complete_snapshot(&s, &[], &[]).await.unwrap_err();
    assert!(matches!(err, StorageError::Unsupported { .. }), "{err:?}");
    storage.destroy_project(&main.project).await.unwrap();
}

#[tokio::test]
async fn btrfs_destroys_subvolumes_a_user_made_inside_a_volume() {
    let t = scratch("VELO_TEST_BTRFS_DIR");
    let data = t.path().join("data");
    let storage = BtrfsStorage::new(&data, "it-home");
    storage.prepare().await.unwrap();
    let main = vol("it/main.0");
    let path = storage.create_volume(&main).await.unwrap();
    std::fs::create_dir(path.join("pgdata")).unwrap();
    {
        let pgdata = velo::fsx::open_dir(&path.join("pgdata")).unwrap();
        ioctl::create_subvolume(pgdata.as_fd(), OsStr::new("nested")).unwrap();
        std::fs::write(path.join("pgdata/nested/f"), "x").unwrap();
        let nested = velo::fsx::open_dir(&path.join("pgdata/nested")).unwrap();
        ioctl::snapshot(nested.as_fd(), pgdata.as_fd(), OsStr::new("frozen"), true).unwrap();
    }
    storage
        .snapshot(&snap(&main, "00000000000e"))
        .await
        .unwrap();
    storage.destroy_volume(&main).await.unwrap();
    assert!(!path.exists());
    storage.destroy_project(&main.project).await.unwrap();
    let left: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        std::fs::read_dir(data.join(".trash"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[tokio::test]
async fn btrfs_refuses_a_directory_elsewhere() {
    let t = scratch("VELO_TEST_EXT4_DIR");
    assert!(!is_btrfs(t.path()));
    assert!(is_btrfs(&rig_dir("VELO_TEST_BTRFS_DIR")));
    let err = BtrfsStorage::new(t.path().join("data"), "it-home")
        .prepare()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not on Btrfs"), "{err}");
}

#[tokio::test]
async fn reflink_keeps_the_whole_contract_on_xfs_and_shares_the_data() {
    let t = scratch("VELO_TEST_XFS_DIR");
    assert!(reflink_works(t.path()));
    let data = t.path().join("data");
    let storage = TreeStorage::new(&data, Mode::Reflink, "it-home");
    keeps_the_whole_contract(
        &storage,
        &TreeStorage::new(&data, Mode::Reflink, "other"),
        &data,
    )
    .await;

    storage.prepare().await.unwrap();
    let main = vol("it/main.0");
    let path = storage.create_volume(&main).await.unwrap();
    std::fs::write(path.join("big"), vec![3u8; 64 << 20]).unwrap();
    let s = snap(&main, "00000000000c");
    storage.snapshot(&s).await.unwrap();
    let before = storage.space().await.unwrap().used;
    storage.clone_snapshot(&s, &vol("it/dev.0")).await.unwrap();
    storage
        .snapshot(&snap(&vol("it/dev.0"), "00000000000d"))
        .await
        .unwrap();
    let grown = storage.space().await.unwrap().used.saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "a clone and a snapshot of 64 MiB took {grown} bytes"
    );
    storage.destroy_project(&main.project).await.unwrap();
}

#[tokio::test]
async fn copy_keeps_the_whole_contract_on_ext4() {
    let t = scratch("VELO_TEST_EXT4_DIR");
    let data = t.path().join("data");
    let storage = TreeStorage::new(&data, Mode::Copy, "it-home");
    keeps_the_whole_contract(
        &storage,
        &TreeStorage::new(&data, Mode::Copy, "other"),
        &data,
    )
    .await;
    assert!(storage.capabilities().copies_data);
}

/// Runs the Btrfs contract as `velo-ci` (this binary runs as root): the test below, in a
/// copy of this binary, in a directory that user owns.
#[test]
fn btrfs_works_for_a_user_who_is_not_root() {
    let t = scratch("VELO_TEST_BTRFS_DIR");
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, CI_USER]).output().unwrap();
        assert!(
            out.status.success(),
            "no user {CI_USER}: run scripts/rig-up.sh"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    std::os::unix::fs::chown(t.path(), Some(id("-u")), Some(id("-g"))).unwrap();
    let exe = t.path().join("it");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", CI_USER, "--regid", CI_USER, "--clear-groups"])
        .arg(&exe)
        .args([
            "--exact",
            "once::storage::btrfs_as_velo_ci",
            "--ignored",
            "--nocapture",
        ])
        .env("VELO_TEST_AS_USER_DIR", t.path().join("data"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "as {CI_USER}:\n{text}"
    );
}

#[tokio::test]
#[ignore = "run as velo-ci by btrfs_works_for_a_user_who_is_not_root"]
async fn btrfs_as_velo_ci() {
    let data =
        PathBuf::from(std::env::var("VELO_TEST_AS_USER_DIR").expect("VELO_TEST_AS_USER_DIR"));
    assert!(
        !rustix::process::geteuid().is_root(),
        "this part must not run as root"
    );
    let storage = BtrfsStorage::new(&data, "it-home");
    keeps_the_whole_contract(&storage, &BtrfsStorage::new(&data, "other"), &data).await;
}
