//! The copier against hostile trees: each test plants what a database superuser could, and
//! checks the copy is safe. They run as root or as any user (what needs root is checked only
//! as root).

use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::fs::{CWD, RenameFlags};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Copies the tree `src` into the new directory `dst`.
fn copy(src: &Path, dst: &Path) -> Result<CopyReport> {
    std::fs::create_dir(dst).unwrap();
    let (s, d) = (fsx::open_dir(src).unwrap(), fsx::open_dir(dst).unwrap());
    copy_tree(s.as_fd(), d.as_fd(), Mode::Copy, src)
}

fn mkfifo(path: &Path) {
    let mode = rustix::fs::Mode::from_raw_mode(0o600);
    rustix::fs::mknodat(CWD, path, FileType::Fifo, mode, 0).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Every name in a tree, without following links.
fn names(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            out.push(entry.file_name().to_string_lossy().into_owned());
            if entry.file_type().unwrap().is_dir() {
                todo.push(entry.path());
            }
        }
    }
    out
}

#[test]
fn copies_files_directories_and_links_with_their_modes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("pgdata/base/1")).unwrap();
    std::fs::create_dir(src.join("pgdata/empty")).unwrap();
    std::fs::write(src.join("pgdata/PG_VERSION"), "16\n").unwrap();
    std::fs::write(src.join("pgdata/base/1/1259"), vec![7u8; 100_000]).unwrap();
    symlink("../PG_VERSION", src.join("pgdata/base/version")).unwrap();
    chmod(&src.join("pgdata/PG_VERSION"), 0o640);
    chmod(&src.join("pgdata/base"), 0o750);
    chmod(&src, 0o700);

    let dst = t.path().join("dst");
    let report = copy(&src, &dst).unwrap();

    assert_eq!(
        (
            report.files,
            report.directories,
            report.links,
            report.skipped,
            report.changed
        ),
        (2, 4, 1, 0, 0)
    );
    assert_eq!(
        std::fs::read(dst.join("pgdata/base/1/1259")).unwrap(),
        vec![7u8; 100_000]
    );
    assert_eq!(
        std::fs::read_link(dst.join("pgdata/base/version")).unwrap(),
        Path::new("../PG_VERSION")
    );
    assert_eq!(mode(&dst.join("pgdata/PG_VERSION")), 0o640);
    assert_eq!(mode(&dst.join("pgdata/base")), 0o750);
    assert_eq!(mode(&dst), 0o700);
    assert!(dst.join("pgdata/empty").is_dir());
}

#[test]
fn a_fifo_is_skipped_and_never_opened() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    mkfifo(&src.join("fifo"));
    std::fs::write(src.join("after"), "x").unwrap();
    let dst = t.path().join("dst");
    let (tx, rx) = std::sync::mpsc::channel();
    let (s, d) = (src.clone(), dst.clone());
    std::thread::spawn(move || tx.send(copy(&s, &d).map_err(|e| e.to_string())));
    let report = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the copy hung on a FIFO")
        .unwrap();
    assert_eq!((report.skipped, report.files), (1, 1));
    assert!(std::fs::symlink_metadata(dst.join("fifo")).is_err());
}

#[test]
fn a_link_to_etc_passwd_or_to_a_directory_stays_a_link() {
    let t = tempfile::tempdir().unwrap();
    let (src, outside) = (t.path().join("src"), t.path().join("outside"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "s").unwrap();
    symlink("/etc/passwd", src.join("passwd")).unwrap();
    symlink(&outside, src.join("dir")).unwrap();
    let dst = t.path().join("dst");
    let report = copy(&src, &dst).unwrap();
    assert_eq!((report.links, report.files), (2, 0));
    assert!(
        std::fs::symlink_metadata(dst.join("passwd"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_link(dst.join("passwd")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert!(
        std::fs::symlink_metadata(dst.join("dir"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!names(&dst).contains(&"secret".to_string()));
}

#[test]
fn no_setuid_setgid_or_sticky_bit_survives() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("sticky")).unwrap();
    for (name, bits) in [("setuid", 0o4755), ("setgid", 0o2750)] {
        std::fs::write(src.join(name), "#!/bin/sh\n").unwrap();
        chmod(&src.join(name), bits);
    }
    chmod(&src.join("sticky"), 0o3777);
    let dst = t.path().join("dst");
    copy(&src, &dst).unwrap();
    assert_eq!(mode(&dst.join("setuid")), 0o755);
    assert_eq!(mode(&dst.join("setgid")), 0o750);
    assert_eq!(mode(&dst.join("sticky")), 0o777);
}

#[test]
fn a_directory_swapped_for_a_link_after_listing_is_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, outside) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("outside"),
    );
    for d in [&src, &dst, &outside] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(outside.join("secret"), "s").unwrap();
    symlink(&outside, src.join("was-a-dir")).unwrap();
    mkfifo(&src.join("was-a-file"));
    let (s, d) = (fsx::open_dir(&src).unwrap(), fsx::open_dir(&dst).unwrap());
    let mut copier = Copier::new(Mode::Copy, &src);
    let at = Here {
        src: s.as_fd(),
        dst: d.as_fd(),
        rel: Path::new(""),
        depth: 1,
    };
    // What the listing said a moment before each was swapped.
    let dir = OsStr::new("was-a-dir");
    assert!(
        copier
            .entry(&at, dir, dir, FileType::Directory)
            .unwrap()
            .is_none()
    );
    let file = OsStr::new("was-a-file");
    assert!(
        copier
            .entry(&at, file, file, FileType::RegularFile)
            .unwrap()
            .is_none()
    );
    assert_eq!(copier.report.changed, 2);
    assert!(names(&dst).is_empty());
}

#[test]
fn a_directory_swapped_for_a_link_while_copying_is_never_followed() {
    let t = tempfile::tempdir().unwrap();
    let (src, outside) = (t.path().join("src"), t.path().join("outside"));
    std::fs::create_dir_all(src.join("flip")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "s").unwrap();
    std::fs::write(src.join("flip/inside"), "i").unwrap();
    symlink(&outside, src.join("spare")).unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, a, b) = (stop.clone(), src.join("flip"), src.join("spare"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                rustix::fs::renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE).unwrap();
            }
        })
    };
    for i in 0..200 {
        let dst = t.path().join(format!("dst{i}"));
        copy(&src, &dst).unwrap();
        assert!(
            !names(&dst).contains(&"secret".to_string()),
            "copy {i} followed the link"
        );
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
}

#[test]
fn sockets_and_devices_are_skipped_and_counted() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(src.join("socket")).unwrap();
    let mut specials = 1;
    if is_root() {
        let mode = rustix::fs::Mode::from_raw_mode(0o666);
        let null = rustix::fs::makedev(1, 3);
        rustix::fs::mknodat(CWD, src.join("null"), FileType::CharacterDevice, mode, null).unwrap();
        specials += 1;
    }
    let dst = t.path().join("dst");
    let report = copy(&src, &dst).unwrap();
    assert_eq!(report.skipped, specials);
    assert!(names(&dst).is_empty());
}

#[test]
fn a_hard_link_is_copied_as_a_file_of_its_own() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), "shared").unwrap();
    std::fs::hard_link(src.join("a"), src.join("b")).unwrap();
    let dst = t.path().join("dst");
    copy(&src, &dst).unwrap();
    std::fs::write(dst.join("a"), "changed").unwrap();
    assert_eq!(std::fs::read_to_string(dst.join("b")).unwrap(), "shared");
    assert_eq!(std::fs::read_to_string(src.join("a")).unwrap(), "shared");
    assert_eq!(std::fs::metadata(dst.join("b")).unwrap().nlink(), 1);
}

#[test]
fn owners_are_kept_as_root_and_are_the_copier_otherwise() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), "x").unwrap();
    symlink("f", src.join("d/l")).unwrap();
    if is_root() {
        std::os::unix::fs::chown(src.join("d"), Some(2001), Some(3001)).unwrap();
        std::os::unix::fs::chown(src.join("d/f"), Some(2002), Some(3002)).unwrap();
        std::os::unix::fs::lchown(src.join("d/l"), Some(2003), Some(3003)).unwrap();
    }
    let dst = t.path().join("dst");
    copy(&src, &dst).unwrap();
    for name in ["d", "d/f", "d/l"] {
        let (s, d) = (
            std::fs::symlink_metadata(src.join(name)).unwrap(),
            std::fs::symlink_metadata(dst.join(name)).unwrap(),
        );
        assert_eq!((d.uid(), d.gid()), (s.uid(), s.gid()), "{name}");
    }
}

#[test]
fn a_tree_too_deep_is_refused_with_an_error() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut deep = src.clone();
    for _ in 0..=MAX_DEPTH {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let err = copy(&src, &t.path().join("dst")).unwrap_err();
    assert!(format!("{:?}", err).contains("deep"), "{err:?}");
}

#[test]
fn names_that_are_not_utf8_are_copied() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let odd = OsStr::from_bytes(b"\xff\xfe name");
    std::fs::write(src.join(odd), "x").unwrap();
    let dst = t.path().join("dst");
    copy(&src, &dst).unwrap();
    assert_eq!(std::fs::read(dst.join(odd)).unwrap(), b"x");
}

#[test]
fn copy_entry_copies_one_file_or_tree_under_a_new_name() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(src.join("pg_wal/archive_status")).unwrap();
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(src.join("pg_wal/000000010000000000000001"), "wal").unwrap();
    std::fs::write(src.join("backup_label"), "label").unwrap();
    let (s, d) = (fsx::open_dir(&src).unwrap(), fsx::open_dir(&dst).unwrap());
    let tree = copy_entry(
        s.as_fd(),
        OsStr::new("pg_wal"),
        d.as_fd(),
        OsStr::new("wal2"),
        Mode::Copy,
        &src,
    )
    .unwrap();
    assert_eq!((tree.directories, tree.files), (2, 1));
    let file = copy_entry(
        s.as_fd(),
        OsStr::new("backup_label"),
        d.as_fd(),
        OsStr::new("b"),
        Mode::Copy,
        &src,
    )
    .unwrap();
    assert_eq!(file.files, 1);
    assert_eq!(
        std::fs::read_to_string(dst.join("wal2/000000010000000000000001")).unwrap(),
        "wal"
    );
    assert!(dst.join("wal2/archive_status").is_dir());
    assert_eq!(std::fs::read_to_string(dst.join("b")).unwrap(), "label");
}

#[test]
fn a_directory_of_many_files_is_copied_whole_by_several_threads() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("base/1")).unwrap();
    let n = PARALLEL_FROM * 5;
    for i in 0..n {
        std::fs::write(src.join(format!("base/1/{i}")), i.to_string()).unwrap();
    }
    mkfifo(&src.join("base/1/fifo"));
    symlink("0", src.join("base/1/link")).unwrap();
    let dst = t.path().join("dst");
    let report = copy(&src, &dst).unwrap();
    assert_eq!(
        (report.files, report.skipped, report.links),
        (n as u64, 1, 1)
    );
    for i in 0..n {
        assert_eq!(
            std::fs::read_to_string(dst.join(format!("base/1/{i}"))).unwrap(),
            i.to_string()
        );
    }
}
