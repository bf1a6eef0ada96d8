//! Native servers as processes: found again after they die with the host, outliving the velo
//! that started them, running as velo's user with nothing more, and refused to root.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::util::world::{self, alive, found, processes_in, repair};
use crate::util::{Sandbox, sh};

/// The pid of a branch's postmaster, from the native runtime's registry.
fn postmaster(sb: &Sandbox, project: &str, branch: &str) -> u32 {
    let path = sb
        .home()
        .join("servers")
        .join(format!("velo-{project}.{branch}"))
        .join("process.json");
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    record["pid"].as_u64().unwrap() as u32
}

/// A field of `/proc/<pid>/status` (`Uid`, `CapEff`, …).
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// A host going down takes every server with it, leaving their lock files (postmaster.pid,
/// the socket's lock) behind. Nothing of velo runs to notice: `velo repair` finds the
/// branches stopped, `velo branch start` starts one, and `repair --fix` the others.
#[test]
fn branches_are_found_again_after_their_servers_die_with_the_host() {
    let sb = Sandbox::native();
    let p = sb.create_project("reboot");
    let (main, dev, idle) = (format!("{p}/main"), format!("{p}/dev"), format!("{p}/idle"));
    sb.sql(
        &main,
        "CREATE TABLE users (id serial, name text); INSERT INTO users (name) VALUES ('Alice')",
    );
    sb.ok(&["branch", "create", &dev]);
    sb.ok(&["branch", "create", &idle]);
    let data = sb.data_dir();
    let running = processes_in(&data);
    assert!(running.len() >= 3, "three servers run: {running:?}");
    for pid in &running {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    world::wait_until("every server dies", Duration::from_secs(20), || {
        processes_in(&data).is_empty()
    });
    let lock = sb.volume_path(&p, "dev", 0).join("pgdata/postmaster.pid");
    assert!(lock.exists(), "a killed server leaves its lock file");

    let (ok, findings) = repair(&sb, &[]);
    assert!(!ok);
    let want: BTreeSet<_> = [&main, &dev, &idle]
        .into_iter()
        .map(|b| found(b, "stopped", "found"))
        .collect();
    assert_eq!(findings, want);
    let text = String::from_utf8_lossy(&sb.run(&["repair"]).stdout).into_owned();
    assert!(
        text.contains("the runtime or the host was restarted"),
        "{text}"
    );
    assert_eq!(sb.json(&["branch", "get", &dev])["container"], "stopped");

    sb.ok(&["branch", "start", &dev]);
    assert_eq!(sb.users(&dev), "Alice");
    let (ok, findings) = repair(&sb, &["--fix"]);
    assert!(ok, "{findings:?}");
    assert_eq!(repair(&sb, &[]), (true, BTreeSet::new()));
    for b in [&main, &dev, &idle] {
        assert_eq!(sb.users(b), "Alice", "{b}");
    }
    sb.assert_consistent(&p);
}

/// A server lives in a session of its own: velo exits after starting it, and killing a velo
/// command with its whole process group (a closed terminal) leaves the servers it did not
/// make running.
#[test]
fn servers_outlive_the_velo_that_started_them() {
    let sb = Sandbox::native();
    let p = sb.create_project("outlive");
    let main = format!("{p}/main");
    sb.sql(&main, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    let pid = postmaster(&sb, &p, "main");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let (ppid, session) = (fields[1], fields[3]);
    assert_eq!(
        session,
        pid.to_string(),
        "the postmaster leads its own session"
    );
    assert!(
        !std::fs::read_to_string(format!("/proc/{ppid}/comm"))
            .unwrap_or_default()
            .starts_with("velo"),
        "velo is gone, the server is not its child"
    );

    let paused = sb.paused("ready", &["branch", "create", &format!("{p}/dev")]);
    let group = paused.child.id();
    sh("kill", &["-KILL", "--", &format!("-{group}")]);
    paused.kill9();
    assert!(alive(pid), "main's server died with velo");
    assert_eq!(sb.sql(&main, "SELECT x FROM t"), "1");
    // The next command rolls the interrupted create back, main untouched.
    sb.ok(&["branch", "list"]);
    assert!(alive(pid));
    sb.assert_consistent(&p);
}

/// A native server runs as velo's user with no capability, and neither its environment nor
/// its arguments hold the password.
#[test]
fn servers_run_as_velos_user_without_privileges_or_the_password() {
    let sb = Sandbox::native();
    let p = sb.create_project("priv");
    sb.ok(&["branch", "create", &format!("{p}/dev")]);
    let password = sb.json(&["branch", "password", &format!("{p}/main")])["password"]
        .as_str()
        .unwrap()
        .to_string();
    let uid = sb.user().expect("native runs as a user").uid;
    let servers = processes_in(&sb.data_dir());
    assert!(servers.len() >= 2, "{servers:?}");
    for pid in servers {
        let uids = status_field(pid, "Uid");
        assert!(
            uids.split_whitespace().all(|u| u == uid.to_string()),
            "{pid} runs as {uids}"
        );
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000", "{pid}");
        assert_eq!(status_field(pid, "CapPrm"), "0000000000000000", "{pid}");
        for file in ["environ", "cmdline"] {
            let text = std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&text).contains(&password),
                "{pid}'s {file} holds the password"
            );
        }
    }
}

/// A major the host has no binaries for is a clear error that makes nothing; root is refused.
#[test]
fn missing_binaries_and_root_are_clear_errors_that_leave_nothing() {
    let sb = Sandbox::native();
    let name = sb.project("nobin");
    let mut args = sb.create_args(&name);
    let major = args.iter().position(|a| a == "--pg-version").unwrap() + 1;
    args[major] = "19".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = sb.fails(&args);
    assert!(err.contains("PostgreSQL 19"), "{err}");
    assert!(err.contains("VELO_PG_ROOT"), "names where it looked: {err}");
    assert!(sb.state()["projects"].get(&name).is_none());
    assert!(sb.volumes(&name).is_empty());
    assert!(sb.servers(&name).is_empty());

    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::util::velo_exe())
        .args(["project", "create", &name, "--storage", "copy", "--runtime"])
        .args(["native", "--data-dir"])
        .arg(home.path().join("data"))
        .env("VELO_HOME", home.path())
        .env("VELO_CONFIG", home.path().join("config.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "root ran a native server");
    assert!(err.contains("root"), "{err}");
    // The storage is prepared (the directory claimed for the home, `.velo-home`) while the
    // runtime is asked, so only that claim may stay.
    let left: Vec<String> = std::fs::read_dir(home.path().join("data"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".velo-home")
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a refused create left data behind: {left:?}"
    );
}
