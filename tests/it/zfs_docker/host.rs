//! `velo doctor` and `velo setup` on the rig (root, zfs-fuse).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::Value;

use crate::util::rig::user_database;
use crate::util::{Backend, Sandbox};

/// `velo doctor --json`: (exit status success, checks).
fn doctor(sb: &Sandbox) -> (bool, Vec<Value>) {
    let out = sb.run(&["doctor", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("doctor prints JSON");
    assert_eq!(v["ok"].as_bool(), Some(out.status.success()), "{v:#}");
    (
        out.status.success(),
        v["checks"].as_array().unwrap().clone(),
    )
}

fn find<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks:#?}"))
}

fn failed(checks: &[Value]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["check"].as_str().unwrap().to_string())
        .collect()
}

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").args(["-c", cmd]).output().unwrap()
}

#[test]
fn doctor_sees_a_healthy_rig_and_each_breakage() {
    let mut sb = Sandbox::only(Backend::ZfsDocker);
    let p = sb.create_project("doc");
    sb.ok(&["branch", "create", &format!("{p}/dev")]);

    let (ok, checks) = doctor(&sb);
    assert!(ok, "{checks:#?}");
    // All ✓ but one: as root (no native runtime), a new project without --image would need
    // Docker's default image, which this rig (no registry) does not have.
    let not_ok: Vec<_> = checks.iter().filter(|c| c["status"] != "ok").collect();
    assert!(
        not_ok.len() == 1
            && not_ok[0]["check"] == "project create"
            && not_ok[0]["detail"]
                .as_str()
                .unwrap()
                .contains("docker pull"),
        "all ✓ on a healthy rig: {checks:#?}"
    );
    for name in ["data", "server", "server answers"] {
        find(&checks, &format!("{p}/dev {name}"));
    }
    let text = sb.ok(&["doctor"]);
    assert!(
        text.contains(&format!("  ok {p}/main server answers: PostgreSQL answers")),
        "{text}"
    );
    assert!(!text.contains("FAIL"), "{text}");

    // A branch's container removed behind velo's back.
    let gone = sh(&format!("docker rm -f velo-{p}.dev"));
    assert!(gone.status.success());
    let (ok, checks) = doctor(&sb);
    assert!(!ok);
    assert_eq!(
        failed(&checks),
        vec![format!("{p}/dev server"), format!("{p}/dev server answers")]
    );
    assert!(
        find(&checks, &format!("{p}/dev server"))["fix"]
            .as_str()
            .unwrap()
            .contains("velo branch start")
    );
    let out = sb.run(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("FAIL {p}/dev server: velo-{p}.dev is missing")),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("velo doctor found 2 problem(s)"));
    sb.ok(&["branch", "start", &format!("{p}/dev")]);
    assert!(doctor(&sb).0);

    // The state file readable by others.
    let state = sb.home().join("state.json");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, checks) = doctor(&sb);
    assert!(!ok);
    assert_eq!(failed(&checks), vec!["permissions"]);
    assert!(
        find(&checks, "permissions")["fix"]
            .as_str()
            .unwrap()
            .starts_with("chmod 600 ")
    );
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Docker unreachable: to the client a stopped daemon is a socket nobody answers on, so a
    // DOCKER_HOST with no daemon behind it tests the same without stopping the shared dockerd.
    let dead = sb.home().join("no-docker.sock");
    sb.set_env("DOCKER_HOST", &format!("unix://{}", dead.display()));
    let (ok, checks) = doctor(&sb);
    assert!(!ok);
    let daemon = find(&checks, "daemon");
    assert_eq!(daemon["group"], "docker");
    assert_eq!(daemon["status"], "fail");
    assert!(daemon["fix"].as_str().unwrap().contains("start Docker"));
    assert!(failed(&checks).contains(&format!("{p}/main server")));
    sb.clear_env();
    assert!(doctor(&sb).0);
}

/// Destroys the test's own pool even when the test fails, and puts the rig back in case
/// the export disturbed zfs-fuse.
struct PoolGuard<'a> {
    sb: &'a Sandbox,
    pool: String,
    file: std::path::PathBuf,
}

impl Drop for PoolGuard<'_> {
    fn drop(&mut self) {
        let _ = sh(&format!(
            // zfs-fuse finishes unmounts asynchronously: a destroy right after may be "busy".
            "zpool list {pool} >/dev/null 2>&1 || zpool import -d {dir} {pool}; for i in $(seq 20); do zpool destroy -f {pool} && break; sleep 0.5; done",
            dir = self.file.parent().unwrap().display(),
            pool = self.pool
        ));
        let _ = std::fs::remove_file(&self.file);
        self.sb.rig_up();
    }
}

#[test]
fn doctor_sees_an_exported_pool() {
    // Exclusive: while a second pool exists, "the only pool" is ambiguous for other tests.
    let sb = Sandbox::exclusive();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pool.img");
    let pool = format!("velodoc{}", std::process::id());
    let _guard = PoolGuard {
        sb: &sb,
        pool: pool.clone(),
        file: file.clone(),
    };
    assert!(
        sh(&format!("truncate -s 128M {}", file.display()))
            .status
            .success()
    );
    let made = sh(&format!("zpool create {pool} {}", file.display()));
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let p = sb.project("exp");
    sb.ok(&[
        "project",
        "create",
        &p,
        "--pool",
        &pool,
        "--image",
        &sb.rig.image,
    ]);
    sb.ok(&["branch", "stop", &format!("{p}/main")]);
    assert!(doctor(&sb).0);

    let exported = sh(&format!("zpool export {pool}"));
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let (ok, checks) = doctor(&sb);
    assert!(!ok);
    let c = find(&checks, &format!("pool {pool}"));
    assert_eq!(c["status"], "fail");
    assert_eq!(c["detail"], format!("pool {pool} is not imported"));
    assert_eq!(c["fix"], format!("import it: `zpool import {pool}`"));
    assert_eq!(find(&checks, &format!("{p}/main data"))["status"], "fail");

    let imported = sh(&format!("zpool import -d {} {pool}", dir.path().display()));
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    assert!(doctor(&sb).0);
    sb.ok(&["project", "delete", &p]);
}

/// A throw-away user, and whatever setup left for it, removed even when the test fails.
struct UserGuard(String);

impl Drop for UserGuard {
    fn drop(&mut self) {
        let uid = String::from_utf8_lossy(&sh(&format!("id -u {}", self.0)).stdout)
            .trim()
            .to_string();
        let _ = std::fs::remove_file(format!("/etc/sudoers.d/velo-uid{uid}"));
        let _users = user_database();
        let _ = sh(&format!("userdel {}", self.0));
    }
}

fn allowed(user: &str, command: &str) -> bool {
    sh(&format!("sudo -n -l -U {user} {command} >/dev/null 2>&1"))
        .status
        .success()
}

#[test]
fn setup_dry_run_twice_and_undo() {
    let sb = Sandbox::only(Backend::ZfsDocker);
    let user = format!("velot{:06}", std::process::id() % 1_000_000);
    let added = {
        let _users = user_database();
        sh(&format!("useradd --no-create-home {user}"))
    };
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let _guard = UserGuard(user.clone());
    let pool = sb.rig.pool.clone();
    let uid = String::from_utf8_lossy(&sh(&format!("id -u {user}")).stdout)
        .trim()
        .to_string();
    let sudoers = std::path::PathBuf::from(format!("/etc/sudoers.d/velo-uid{uid}"));
    let base = format!("{pool}/velo/user.{user}");
    let config = sb.home().join("config.json");
    let in_docker = |u: &str| {
        String::from_utf8_lossy(&sh("getent group docker").stdout)
            .trim()
            .rsplit(':')
            .next()
            .unwrap()
            .split(',')
            .any(|m| m == u)
    };
    let setup = |extra: &[&str]| {
        let mut args = vec!["setup", "--user", &user, "--pool", &pool];
        args.extend_from_slice(extra);
        let out = {
            let _users = user_database();
            sb.run(&args)
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let dry = setup(&["--dry-run"]);
    for change in [
        format!("would: create dataset {base}"),
        format!("would: install {}", sudoers.display()),
        format!("would: add {user} to the docker group"),
        format!("would: record pool {pool} in {}", config.display()),
    ] {
        assert!(dry.contains(&change), "{change} in\n{dry}");
    }
    assert!(dry.contains("zfs-fuse, which has no `zfs allow`"), "{dry}");
    assert!(dry.contains("root-equivalent"), "{dry}");
    let would = dry.matches("would: ").count();
    assert!(
        dry.contains(&format!("Dry run: {would} change(s) would be made")),
        "{dry}"
    );
    assert!(!sudoers.exists() && !config.exists() && !in_docker(&user));

    let first = setup(&[]);
    assert!(
        first.contains(&format!("Done: {would} change(s)")),
        "{first}"
    );
    let meta = std::fs::metadata(&sudoers).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o440);
    assert!(
        std::fs::read_to_string(&sudoers)
            .unwrap()
            .contains(&format!("\n#{uid} ALL=(root) NOPASSWD: "))
    );
    assert!(in_docker(&user));
    let recorded: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(recorded["pool"], pool.as_str());
    assert_eq!(recorded["users"][&user]["base"], base.as_str());
    let zfs = recorded["zfs"].as_str().unwrap().to_string();
    assert!(zfs == "/usr/sbin/zfs" || zfs == "/sbin/zfs", "{zfs}");
    // The base is root's, entered only by the user; setuid, devices and exec are off.
    let mountpoint = format!("/{base}");
    let meta = std::fs::metadata(&mountpoint).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o750));
    let props = sh(&format!("zfs get -H -o value setuid,devices,exec {base}"));
    assert_eq!(String::from_utf8_lossy(&props.stdout), "off\noff\noff\n");

    // Exactly velo's mounts and unmounts, of the user's own datasets, and nothing else.
    for ok in [
        format!("{zfs} mount {base}"),
        format!("{zfs} mount {base}/demo.dev.0"),
        format!("{zfs} unmount {base}/demo.main-2.17"),
    ] {
        assert!(allowed(&user, &ok), "should be allowed: {ok}");
    }
    for denied in [
        format!("{zfs} mount -a"),
        format!("{zfs} mount {pool}/velo"),
        format!("{zfs} unmount {base}"),
        format!("{zfs} mount {pool}/other"),
        format!("{zfs} mount {pool}/velo/user.root/demo.dev.0"),
        format!("{zfs} mount {base}/demo.dev.0/x.y.1"),
        format!("{zfs} mount {base}/demo"),
        format!("{zfs} mount {base}/demo.dev.0 -a"),
        format!("{zfs} mount {base}/demo.dev.0 {pool}/other"),
        format!("{zfs} mount -o remount {base}/demo.dev.0"),
        format!("{zfs} mount {base}/demo.dev.0@snap"),
        format!("{zfs} mount {base}/../../other.a.1"),
        format!("{zfs} destroy {base}/demo.dev.0"),
        format!("{zfs} mount {pool}x/velo/user.{user}/demo.dev.0"),
        format!("/bin/sh -c {zfs}"),
        format!("/usr/bin/env {zfs} mount {base}/demo.dev.0"),
    ] {
        assert!(!allowed(&user, &denied), "should be denied: {denied}");
    }

    let second = setup(&[]);
    assert!(
        second.contains(&format!("Nothing to change: {user} is already set up.")),
        "{second}"
    );
    assert!(
        !second.contains("would:") && !second.lines().any(|l| l.starts_with("- ")),
        "{second}"
    );

    let undone = setup(&["--undo"]);
    assert!(undone.contains("Undone: "), "{undone}");
    assert!(!sudoers.exists() && !config.exists() && !in_docker(&user));
    assert!(!allowed(&user, &format!("{zfs} mount {base}/demo.dev.0")));
    let gone = sh(&format!("zfs list {base}"));
    assert!(!gone.status.success(), "the empty base is destroyed");
    let again = setup(&["--undo"]);
    assert!(
        again.contains(&format!("Nothing to undo for {user}.")),
        "{again}"
    );
}

/// Root (the only user this suite runs as) with an environment a user chose: `sudo -E`.
#[test]
fn root_writes_connection_files_nowhere_the_environment_chooses() {
    let mut sb = Sandbox::new();
    let p = sb.create_project("connfiles");
    // `sudo -E` with PGPASSFILE naming a root-owned file: root rewrote it (mode 0600, velo's
    // lines appended); it must be refused and left as it was.
    let victim = crate::every::attacks::Victim::new(&sb);
    sb.set_env("PGPASSFILE", victim.0.to_str().unwrap());
    let err = sb.fails(&["connection-files", "on"]);
    assert!(err.contains("PGPASSFILE"), "{err}");
    victim.assert_untouched();
    // A HOME another user owns: root writes nothing there.
    sb.clear_env();
    let theirs = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(theirs.path(), Some(65534), Some(65534)).unwrap();
    sb.set_env("HOME", theirs.path().to_str().unwrap());
    let err = sb.fails(&["connection-files", "on"]);
    assert!(err.contains("uid 65534"), "{err}");
    assert!(!theirs.path().join(".pgpass").exists());
    // Root's own kind of home works.
    sb.clear_env();
    let mine = tempfile::tempdir().unwrap();
    sb.set_env("HOME", mine.path().to_str().unwrap());
    sb.ok(&["connection-files", "on"]);
    let written = std::fs::read_to_string(mine.path().join(".pg_service.conf")).unwrap();
    assert!(written.contains(&format!("[{p}-main]")), "{written}");
    sb.ok(&["connection-files", "off"]);
}
