//! The threat model of docs/security.md, attack by attack, on every backend: a database
//! superuser of a branch (who runs programs as the server's uid, `COPY … TO PROGRAM`) and
//! another local user. Each test performs the attack and checks that it fails. A home or
//! state someone else prepared: `once::cli`; the Docker runtime's confinement:
//! `zfs_docker::docker`; the non-root attacks on ZFS (delegation, sudo) run in the OpenZFS VM
//! (scripts/openzfs-vm-test.sh).

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::util::{Backend, Sandbox};

/// Runs a shell command inside a branch's server as its database superuser would.
fn as_superuser(sb: &Sandbox, branch: &str, script: &str) {
    let script = script.replace('\'', "''");
    sb.sql(branch, &format!("COPY (SELECT 1) TO PROGRAM '{script}'"));
}

/// A root-owned file on the host that an attack tries to reach.
pub struct Victim(pub std::path::PathBuf);

impl Victim {
    pub fn new(sb: &Sandbox) -> Victim {
        let path = std::env::temp_dir().join(format!("velo-victim-{}", sb.project("v")));
        std::fs::write(&path, "precious").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Victim(path)
    }

    pub fn assert_untouched(&self) {
        let meta = std::fs::metadata(&self.0).unwrap();
        assert_eq!(std::fs::read_to_string(&self.0).unwrap(), "precious");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (0, 0, 0o644)
        );
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn links_a_superuser_plants_in_a_data_directory_are_never_followed() {
    let sb = Sandbox::new();
    let p = sb.create_project("links");
    let main = format!("{p}/main");
    let victim = Victim::new(&sb);
    let target = victim.0.display().to_string();
    // Links where velo once wrote as root: recovery.signal and postgresql.auto.conf.
    as_superuser(
        &sb,
        &main,
        &format!("ln -s {target} recovery.signal && ln -s {target} standby.signal.x"),
    );
    sb.sql(&main, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    sb.ok(&["snapshot", "create", &main]);
    sb.sql(&main, "INSERT INTO t VALUES (2)");
    std::thread::sleep(Duration::from_millis(1100));
    let when = chrono::Utc::now().to_rfc3339();
    sb.sql(&main, "INSERT INTO t VALUES (3)");
    sb.ok(&["branch", "create", &format!("{p}/pitr"), "--pitr", &when]);
    assert_eq!(sb.sql(&format!("{p}/pitr"), "SELECT count(*) FROM t"), "2");
    victim.assert_untouched();
}

#[test]
fn no_command_sends_anything_to_a_program_squatting_a_branch_port() {
    let sb = Sandbox::new();
    let p = sb.create_project("squat");
    let dev = format!("{p}/dev");
    sb.ok(&["branch", "create", &dev]);
    let port = sb.port(&dev) as u16;
    sb.kill_server(&p, "dev");
    // Another local program takes the port and waits for a password.
    let squatter = TcpListener::bind(("127.0.0.1", port)).unwrap();
    squatter.set_nonblocking(true).unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let seen = reached.clone();
    let stop = Arc::new(AtomicUsize::new(0));
    let done = stop.clone();
    let watcher = std::thread::spawn(move || {
        while done.load(Ordering::SeqCst) == 0 {
            if let Ok((mut conn, _)) = squatter.accept() {
                seen.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 256];
                let _ = conn.read(&mut buf);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let _ = sb.run(&["doctor", "--timeout", "1s"]);
    let _ = sb.run(&["snapshot", "create", &dev]);
    let _ = sb.run(&["branch", "list"]);
    let _ = sb.run(&["status"]);
    let _ = sb.run(&["repair"]);
    let started = sb.run(&["branch", "start", &dev]);
    assert!(!started.status.success(), "the port is taken");
    let err = String::from_utf8_lossy(&started.stderr).into_owned();
    assert!(err.contains(&format!("port {port}")), "{err}");
    stop.store(1, Ordering::SeqCst);
    watcher.join().unwrap();
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "velo connected to the squatter"
    );
}

#[test]
fn a_setuid_program_a_superuser_leaves_cannot_be_run_by_other_users() {
    let sb = Sandbox::new();
    let p = sb.create_project("suid");
    let main = format!("{p}/main");
    as_superuser(&sb, &main, "cp /bin/sh ./velo-sh && chmod 4755 ./velo-sh");
    let root = sb.volume_path(&p, "main", 0);
    let program = root.join("pgdata/velo-sh");
    // Root sees it (root reaches everything)...
    let meta = std::fs::metadata(&program).unwrap();
    assert_eq!(meta.mode() & 0o4000, 0o4000, "the superuser made it setuid");
    // ...no other user of the host does: the volume's root is velo's own, mode 0700.
    assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&program)
        .args(["-c", "id -u"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "nobody ran it: {out:?}");
}

#[test]
fn a_state_file_naming_things_that_are_not_velos_is_refused() {
    let sb = Sandbox::new();
    let p = sb.create_project("crafted");
    let path = sb.home().join("state.json");
    let original = std::fs::read_to_string(&path).unwrap();
    let mut state: Value = serde_json::from_str(&original).unwrap();
    // An operation whose owner is gone and whose undo step names the pool's root.
    state["journal"] = serde_json::json!([{
        "id": "000000000001", "command": "branch create",
        "owner": { "pid": 4_000_000_000u32, "started": null },
        "started_at": "2026-01-01T00:00:00Z", "project": p,
        "recovery": { "way": "roll_back", "forget": { "kind": "nothing" } },
        "undo": [{ "kind": "destroy_dataset", "name": sb.rig.pool }]
    }]);
    std::fs::write(&path, state.to_string()).unwrap();
    let err = sb.fails(&["branch", "list"]);
    assert_eq!(err.matches("is not valid velo state").count(), 1, "{err}");
    if sb.backend() == Backend::ZfsDocker {
        let pool = Command::new("zfs")
            .args(["list", "-H", "-o", "name", &sb.rig.pool])
            .output()
            .unwrap();
        assert!(pool.status.success(), "the pool is still there");
    }
    std::fs::write(&path, original).unwrap();
    sb.ok(&["branch", "list"]);
    assert_eq!(sb.volumes(&p), ["main.0"], "nothing was destroyed");
}

/// A psql session on `branch` that takes an exclusive lock on `pg_stat_activity` (and so on
/// the catalogs behind it) and keeps it; returns once the lock is held.
fn lock_pg_stat_activity(sb: &Sandbox, branch: &str) -> std::process::Child {
    let creds = sb.json(&["branch", "password", branch]);
    let held = sb.home().join("locked");
    let script = format!(
        "BEGIN;\nLOCK TABLE pg_catalog.pg_stat_activity IN ACCESS EXCLUSIVE MODE;\n\\! touch {}\nSELECT pg_sleep(120);\n",
        held.display()
    );
    let mut child = Command::new("psql")
        .args(["-X", "-q", "-f", "-"])
        .env("PGHOST", creds["host"].as_str().unwrap())
        .env("PGPORT", creds["port"].to_string())
        .env("PGUSER", creds["user"].as_str().unwrap())
        .env("PGPASSWORD", creds["password"].as_str().unwrap())
        .env("PGDATABASE", creds["database"].as_str().unwrap())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql starts");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let start = std::time::Instant::now();
    while !held.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no lock taken");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

#[test]
fn a_superuser_can_neither_stall_nor_crash_gc() {
    let sb = Sandbox::new();
    let p = sb.create_project("gc");
    let (shadow, locked) = (format!("{p}/shadow"), format!("{p}/locked"));
    sb.ok(&["branch", "create", &shadow]);
    sb.ok(&["branch", "create", &locked]);
    sb.ok(&["project", "set", &p, "--idle-stop", "1h"]);
    // Its own `count(*)`, of another type, found first: velo panicked reading it.
    sb.sql(
        &shadow,
        "ALTER ROLE CURRENT_USER SET search_path = public, pg_catalog; \
         CREATE FUNCTION public.keep(text) RETURNS text LANGUAGE sql AS $$SELECT $1$$; \
         CREATE AGGREGATE public.count(*) (SFUNC = public.keep, STYPE = text, INITCOND = 'x')",
    );
    // A lock that keeps velo's question (and connection) waiting: gc waited forever.
    let mut lock = lock_pg_stat_activity(&sb, &locked);
    let start = std::time::Instant::now();
    let out = sb.run(&["gc", "--json"]);
    let took = start.elapsed();
    let _ = lock.kill();
    let _ = lock.wait();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(took < Duration::from_secs(60), "gc took {took:?}");
    assert!(err.contains(&format!("could not ask `{locked}`")), "{err}");
    // The shadowed branch was asked, and answered with the catalog's count.
    let got = sb.json(&["branch", "get", &shadow]);
    assert!(got["last_used_at"].is_string(), "{got}");
}

#[test]
fn a_state_file_cannot_add_lines_to_the_connection_files() {
    let mut sb = Sandbox::new();
    let p = sb.create_project("lines");
    let path = sb.home().join("state.json");
    let mut state: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    state["projects"][&p]["password"] = "x\n*:*:*:*:planted".into();
    state["projects"][&p]["database"] = "postgres\n[planted]\nhost=elsewhere".into();
    std::fs::write(&path, state.to_string()).unwrap();
    let home = tempfile::tempdir().unwrap();
    sb.set_env("HOME", home.path().to_str().unwrap());
    let out = sb.run(&["connection-files", "on"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{p}-main")) && err.contains("edited"),
        "{err}"
    );
    for file in [".pgpass", ".pg_service.conf"] {
        let text = std::fs::read_to_string(home.path().join(file)).unwrap_or_default();
        assert!(!text.contains("planted"), "{file}: {text}");
    }
    sb.ok(&["connection-files", "off"]);
}
