//! velo as a user who just arrived: made by the test, not root, no sudo, not in the docker
//! group, with no flag and no setting. velo chooses its own storage and runtime (here: plain
//! copies in `~/.velo/data` on ext4, the host's packaged PostgreSQL), the README's
//! walk-through, snapshots, restore, point-in-time recovery, reset and delete work, and
//! afterwards nothing of the user is left on the host but velo's empty bookkeeping and the
//! prepared cluster new projects are cloned from.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};

use crate::util::rig::user_database;
use crate::util::world::{self, alive};
use crate::util::{Sandbox, User, sh};

/// A user made for one test, with an empty home of its own; every process of it killed (by
/// pid) and the user and its home removed when dropped.
struct ThrowAwayUser(User);

impl ThrowAwayUser {
    fn new() -> ThrowAwayUser {
        let name = format!("velou{:06x}", rand::random::<u32>() & 0xff_ffff);
        let home = format!("/home/{name}");
        let users = user_database();
        sh(
            "useradd",
            &[
                "--no-create-home",
                "--home-dir",
                &home,
                "--shell",
                "/bin/sh",
                &name,
            ],
        );
        drop(users);
        let user = User::named(&name);
        std::fs::create_dir(&home).expect("make the home");
        user.own(Path::new(&home));
        ThrowAwayUser(user)
    }
}

impl Drop for ThrowAwayUser {
    fn drop(&mut self) {
        for pid in pids_of(self.0.uid) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _users = user_database();
        let _ = std::process::Command::new("userdel")
            .args(["--remove", &self.0.name])
            .output();
        let _ = std::fs::remove_dir_all(&self.0.home);
    }
}

/// Live processes of `uid`.
fn pids_of(uid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == uid))
        .filter(|pid| alive(*pid))
        .collect()
}

/// Files of `uid` where programs leave them (temporary directories, POSIX shared memory,
/// runtime directories), and its System V shared memory segments, sorted.
fn left_outside(uid: u32) -> Vec<String> {
    let mut left = Vec::new();
    for root in ["/tmp", "/var/tmp", "/dev/shm", "/run"] {
        let root = Path::new(root);
        if let Ok(meta) = std::fs::symlink_metadata(root) {
            owned_by(uid, root, meta.dev(), &mut left);
        }
    }
    // key shmid perms size cpid lpid nattch uid …
    let segments = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    let uid = uid.to_string();
    left.extend(
        segments
            .lines()
            .filter(|l| l.split_whitespace().nth(7) == Some(uid.as_str()))
            .map(|l| format!("System V segment {}", l.trim())),
    );
    left.sort();
    left
}

/// Adds the paths under `dir` (on device `dev`, not below it) that `uid` owns. Other tests
/// make and remove temporary files all the while: what vanishes while it is read is not there.
fn owned_by(uid: u32, dir: &Path, dev: u64, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.uid() == uid {
            found.push(path.display().to_string());
        }
        if meta.is_dir() {
            owned_by(uid, &path, dev, found);
        }
    }
}

/// Every file and directory under `dir`, relative to it, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let out = sh(
        "find",
        &[dir.to_str().unwrap(), "-mindepth", "1", "-printf", "%P\\n"],
    );
    let mut names: Vec<String> = out.lines().map(str::to_string).collect();
    names.sort();
    names
}

#[test]
fn a_new_user_gets_working_defaults_and_nothing_is_left_behind() {
    let user = ThrowAwayUser::new();
    let groups = sh("id", &["-nG", &user.0.name]);
    assert_eq!(
        groups, user.0.name,
        "no sudo, no docker: only its own group"
    );
    let sb = Sandbox::default_for(user.0.clone());
    // A uid a deleted user had comes with what that user may have left: only what this test
    // leaves counts.
    let uid = user.0.uid;
    let before = left_outside(uid);

    // The walk-through, word for word: no flags.
    let created = sb.run(&["project", "create", "demo"]);
    let said = String::from_utf8_lossy(&created.stderr).into_owned();
    assert!(created.status.success(), "{said}");
    assert!(
        said.contains("full copies"),
        "warns about plain copies: {said}"
    );
    let chosen = sb.ok(&["project", "get", "demo"]);
    assert!(
        chosen.contains("copy: ") && chosen.contains("native: Docker"),
        "velo chose copies and the host's PostgreSQL: {chosen}"
    );
    sb.sql(
        "demo/main",
        "CREATE TABLE users (id serial PRIMARY KEY, name text); \
         INSERT INTO users (name) VALUES ('Alice'), ('Bob'), ('Charlie')",
    );
    sb.ok(&["branch", "create", "demo/dev"]);
    sb.sql(
        "demo/dev",
        "INSERT INTO users (name) VALUES ('Dave'), ('Eve'); DELETE FROM users WHERE name = 'Bob'",
    );
    assert_eq!(sb.users("demo/main"), "Alice,Bob,Charlie");
    assert_eq!(sb.users("demo/dev"), "Alice,Charlie,Dave,Eve");
    sb.ok(&["branch", "reset", "demo/dev"]);
    assert_eq!(sb.users("demo/dev"), "Alice,Bob,Charlie");

    // Snapshots, restore and point-in-time recovery.
    sb.ok(&[
        "snapshot",
        "create",
        "demo/main",
        "--label",
        "before-migration",
    ]);
    sleep(Duration::from_millis(1100));
    sb.sql("demo/main", "INSERT INTO users (name) VALUES ('Frank')");
    sleep(Duration::from_millis(1100));
    let moment = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    sleep(Duration::from_millis(1100));
    sb.sql("demo/main", "DROP TABLE users");
    sb.ok(&["branch", "create", "demo/incident", "--pitr", &moment]);
    assert_eq!(sb.users("demo/incident"), "Alice,Bob,Charlie,Frank");
    sb.ok(&["branch", "restore", "demo/main", "before-migration"]);
    assert_eq!(sb.users("demo/main"), "Alice,Bob,Charlie");
    assert_eq!(sb.volumes("demo").len(), 6, "{:?}", sb.volumes("demo"));

    sb.ok(&["branch", "delete", "demo/dev"]);
    sb.ok(&["project", "delete", "demo", "--force"]);
    assert_eq!(sb.json(&["project", "list"]), serde_json::json!([]));

    // Nothing of the user runs; nothing of it is anywhere but in velo's own home, which
    // holds no data.
    world::wait_until("the user's processes end", Duration::from_secs(20), || {
        pids_of(uid).is_empty()
    });
    assert_eq!(
        left_outside(uid),
        before,
        "files or shared memory of the user outside its home"
    );
    // Besides the bookkeeping, the prepared cluster new projects are cloned from stays (until
    // `velo setup --undo`): one volume and its snapshot.
    let (prepared, left): (Vec<String>, Vec<String>) = tree(&user.0.home)
        .into_iter()
        .partition(|n| n.starts_with(".velo/data/prepared/"));
    let volumes: Vec<&str> = prepared
        .iter()
        .filter_map(|n| n.strip_prefix(".velo/data/prepared/"))
        .filter(|n| n.ends_with(".0") || (n.starts_with(".snapshots/") && !n.contains("/pgdata")))
        .collect();
    assert!(
        volumes.len() == 2 && volumes.iter().any(|n| n.contains(".0@")),
        "one prepared cluster: {volumes:?}"
    );
    let expected = [
        ".velo",
        ".velo/background.log",
        ".velo/data",
        ".velo/data/.trash",
        ".velo/data/.velo-home",
        ".velo/data/prepared",
        ".velo/pg_hba.conf",
        ".velo/run",
        ".velo/servers",
        ".velo/state.json",
        ".velo/state.lock",
        ".velo/wal",
    ];
    assert_eq!(
        left, expected,
        "the home holds more than velo's empty bookkeeping"
    );
}
