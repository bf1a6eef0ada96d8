//! Branch lifetimes on every backend: expiry and idle stops through `velo gc` (with a clock of
//! seconds: `--ttl 2s`, `--idle-stop 2s`), `gc --dry-run` changing nothing, `velo branch
//! psql` starting a branch gc stopped, and `velo branch rename` of a branch with children,
//! snapshots and several generations: then a PITR of the renamed branch, and a rename killed
//! at each step, rolled back by the next command.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::Sandbox;

fn branch<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()
        .unwrap()
        .iter()
        .find(|b| b["branch"] == name)
}

fn results(gc: &Value) -> Vec<(String, String, String)> {
    gc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["branch"].as_str().unwrap().to_string(),
                r["action"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn triple(b: &str, action: &str, outcome: &str) -> (String, String, String) {
    (b.into(), action.into(), outcome.into())
}

#[test]
fn expired_branches_go_at_the_next_gc_and_a_dry_run_changes_nothing() {
    let sb = Sandbox::new();
    let p = sb.create_project("ttl");
    let (tmp, later, never) = (
        format!("{p}/tmp"),
        format!("{p}/later"),
        format!("{p}/never"),
    );
    sb.ok(&["branch", "create", &tmp, "--ttl", "2s"]);
    sb.ok(&["branch", "create", &later, "--ttl", "1h"]);
    sb.ok(&["branch", "create", &never, "--ttl", "2s"]);
    sb.ok(&["branch", "set", &never, "--no-expiry"]);
    let list = sb.json(&["branch", "list", &p]);
    let expires = branch(&list, "tmp").unwrap()["expires_at"].clone();
    assert!(branch(&list, "later").unwrap()["expires_at"].is_string());
    assert!(branch(&list, "never").unwrap()["expires_at"].is_null());
    assert!(sb.ok(&["branch", "get", &later]).contains("expires (UTC)"));

    let expires: chrono::DateTime<chrono::Utc> = expires.as_str().unwrap().parse().unwrap();
    let left = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
    std::thread::sleep(left + Duration::from_millis(200));
    let before = (sb.state()["projects"][&p].clone(), sb.volumes(&p));
    let dry = sb.json(&["gc", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(results(&dry), [triple("tmp", "delete", "dry-run")]);
    let after = (sb.state()["projects"][&p].clone(), sb.volumes(&p));
    assert_eq!(after, before, "a dry run changes nothing");
    assert!(sb.ok(&["branch", "list", &p]).contains("(expired)"));

    assert_eq!(
        results(&sb.json(&["gc"])),
        [triple("tmp", "delete", "done")]
    );
    let list = sb.json(&["branch", "list", &p]);
    assert!(branch(&list, "tmp").is_none());
    assert!(branch(&list, "later").is_some() && branch(&list, "never").is_some());
    sb.assert_consistent(&p);
    assert!(sb.ok(&["gc"]).is_empty(), "nothing left to do");
}

#[test]
fn bad_expiries_and_idle_stops_are_refused_with_what_to_do() {
    let sb = Sandbox::new();
    let p = sb.create_project("bad");
    let dev = format!("{p}/dev");
    let refused = |args: &[&str], says: &str| {
        let err = sb.fails(args);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    refused(
        &[
            "branch",
            "create",
            &dev,
            "--expires-at",
            "2001-01-01T00:00:00Z",
        ],
        "in the past",
    );
    refused(&["branch", "create", &dev, "--ttl", "0s"], "at once");
    refused(
        &["branch", "create", &dev, "--ttl", "99999999999years"],
        "latest time velo can represent",
    );
    refused(
        &["branch", "create", &dev, "--expires-at", "2 hours ago"],
        "--ttl",
    );
    refused(
        &["branch", "set", &format!("{p}/main"), "--ttl", "1h"],
        "main",
    );
    refused(&["branch", "set", &format!("{p}/main")], "required");
    refused(&["project", "set", &p, "--idle-stop", "soon"], "30m");
    assert!(sb.state()["projects"][&p]["branches"].get("dev").is_none());
}

/// A psql session on `branch` that sleeps, seen by the server once this returns.
fn hold_a_client(sb: &Sandbox, branch: &str) -> Child {
    let child = sb
        .client("psql", branch, &["-X", "-q", "-c", "SELECT pg_sleep(60)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql starts");
    let start = Instant::now();
    let seen = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'";
    while sb.sql(branch, seen) != "1" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "psql never connected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

#[test]
fn idle_branches_are_stopped_by_gc_and_psql_starts_them_again() {
    let sb = Sandbox::new();
    let p = sb.create_project("idle");
    let (dev, main) = (format!("{p}/dev"), format!("{p}/main"));
    sb.ok(&["branch", "create", &dev]);
    sb.ok(&["project", "set", &p, "--idle-stop", "2s"]);
    assert_eq!(sb.json(&["project", "get", &p])["idle_stop_seconds"], 2);
    std::thread::sleep(Duration::from_millis(2500));

    // A client connected: in use, whatever the time since it was made.
    let mut client = hold_a_client(&sb, &dev);
    assert!(results(&sb.json(&["gc"])).is_empty());
    let used = sb.json(&["branch", "get", &dev])["last_used_at"].clone();
    // The server's session goes with its query, not with the client process.
    sb.sql(
        &dev,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'",
    );
    client.wait().unwrap();

    // No client for longer than the limit: stopped; main never.
    std::thread::sleep(Duration::from_millis(2500));
    let dry = sb.json(&["gc", "--dry-run"]);
    assert_eq!(results(&dry), [triple("dev", "stop", "dry-run")]);
    assert_eq!(sb.json(&["branch", "get", &dev])["container"], "running");
    assert_eq!(results(&sb.json(&["gc"])), [triple("dev", "stop", "done")]);
    let got = sb.json(&["branch", "get", &dev]);
    assert_eq!(got["container"], "stopped");
    assert_eq!(got["desired"], "stopped");
    assert!(got["idle_stopped_at"].is_string() && got["last_used_at"] == used);
    assert_eq!(sb.json(&["branch", "get", &main])["container"], "running");
    sb.assert_consistent(&p);

    // psql brings it back, saying so.
    let out = sb.run(&[
        "branch",
        "psql",
        &dev,
        "--",
        "-X",
        "-A",
        "-t",
        "-c",
        "SELECT 41 + 1",
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    assert!(said.contains("stopped by `velo gc` for idleness"), "{said}");
    let got = sb.json(&["branch", "get", &dev]);
    assert_eq!(got["container"], "running");
    assert!(got["idle_stopped_at"].is_null());

    // Stopped by hand, it stays stopped.
    sb.ok(&["branch", "stop", &dev]);
    let err = sb.fails(&["branch", "psql", &dev, "--", "-c", "SELECT 1"]);
    assert!(err.contains("velo branch start"), "{err}");
    sb.ok(&["project", "set", &p, "--idle-stop", "off"]);
    assert!(sb.json(&["project", "get", &p])["idle_stop_seconds"].is_null());
}

/// main with users; dev made from it, then reset (so it has two generations, the first kept
/// for sub, which was made from it); a labelled snapshot of dev. Returns (main, dev, sub).
fn family(sb: &Sandbox, p: &str) -> (String, String, String) {
    let (main, dev, sub) = (format!("{p}/main"), format!("{p}/dev"), format!("{p}/sub"));
    sb.sql(
        &main,
        "CREATE TABLE users (id int, name text); INSERT INTO users VALUES (1, 'ann')",
    );
    sb.ok(&["branch", "create", &dev]);
    sb.ok(&["branch", "create", &sub, "--parent", &dev]);
    sb.ok(&["branch", "reset", &dev]);
    sb.sql(&dev, "INSERT INTO users VALUES (2, 'dev')");
    sb.ok(&["snapshot", "create", &dev, "--label", "before"]);
    (main, dev, sub)
}

#[test]
fn a_renamed_branch_keeps_its_children_snapshots_and_history() {
    let sb = Sandbox::new();
    let p = sb.create_project("ren");
    let (_, dev, sub) = family(&sb, &p);
    let port = sb.port(&dev);
    sb.sql(&dev, "INSERT INTO users VALUES (3, 'kept')");
    std::thread::sleep(Duration::from_millis(1100));
    let target = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(Duration::from_millis(1100));
    sb.sql(&dev, "INSERT INTO users VALUES (4, 'later')");

    sb.ok(&["branch", "rename", &dev, "renamed"]);
    let renamed = format!("{p}/renamed");
    assert_eq!(sb.users(&renamed), "ann,dev,kept,later");
    assert_eq!(sb.port(&renamed), port, "same port");
    assert_eq!(sb.sql(&sub, "SELECT count(*) FROM users"), "1");
    let list = sb.json(&["branch", "list", &p]);
    assert!(branch(&list, "dev").is_none());
    assert_eq!(branch(&list, "sub").unwrap()["parent"], "renamed");
    assert!(
        sb.volumes(&p).iter().all(|d| !d.starts_with("dev.")),
        "{:?}",
        sb.volumes(&p)
    );
    sb.assert_consistent(&p);
    let snapshots = sb.json(&["snapshot", "list", &p]);
    assert_eq!(snapshots[0]["branch"], "renamed");
    let archive = sb.home().join("wal").join(&p);
    assert!(archive.join("renamed").is_dir() && !archive.join("dev").exists());

    // The tree, in ASCII off a terminal.
    let tree = sb.ok(&["branch", "list", &p, "--tree"]);
    let at = |s: &str| tree.find(s).unwrap_or_else(|| panic!("{s} in\n{tree}"));
    assert!(at(&format!("{p}/main")) < at("`-- renamed") && at("`-- renamed") < at("    `-- sub"));
    let nested = sb.json(&["branch", "list", &p, "--tree"]);
    assert_eq!(nested[0]["children"][0]["children"][0]["branch"], "sub");

    // Its history came along: its WAL archive and snapshots serve a PITR and a restore.
    let back = format!("{p}/back");
    sb.ok(&[
        "branch", "create", &back, "--pitr", &target, "--parent", &renamed,
    ]);
    assert_eq!(sb.users(&back), "ann,dev,kept");
    sb.ok(&["branch", "restore", &renamed, "before"]);
    assert_eq!(sb.users(&renamed), "ann,dev");
    sb.assert_consistent(&p);

    for (args, says) in [
        (vec!["branch", "rename", &renamed, "sub"], "already exists"),
        (
            vec!["branch", "rename", &format!("{p}/main"), "trunk"],
            "main branch",
        ),
        (
            vec!["branch", "rename", &renamed, "other/x"],
            "another project",
        ),
    ] {
        let err = sb.fails(&args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn kill_9_at_each_step_of_a_rename_is_rolled_back_by_the_next_command() {
    let sb = Sandbox::new();
    let p = sb.create_project("crn");
    let (_, dev, sub) = family(&sb, &p);
    let port = sb.port(&dev);
    for step in [
        "stop",
        "rename-volume",
        "rename-archive",
        "container",
        "start",
        "commit",
    ] {
        sb.paused(step, &["branch", "rename", &dev, "renamed"])
            .kill9();
        let out = sb.run(&["branch", "list", &p]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "after a kill at {step}: {said}");
        assert!(
            said.contains("`velo branch rename`") && said.contains("rolling it back"),
            "after a kill at {step}: {said}"
        );
        // Shown only if a check below fails.
        eprintln!("killed at {step}; the next command said: {said}");
        let branches = sb.state()["projects"][&p]["branches"].clone();
        assert!(branches.get("renamed").is_none(), "at {step}");
        sb.assert_consistent(&p);
        assert_eq!(sb.users(&dev), "ann,dev", "at {step}");
        assert_eq!(sb.port(&dev), port, "at {step}");
        assert_eq!(sb.sql(&sub, "SELECT count(*) FROM users"), "1", "at {step}");
    }
    // Nothing is left that would stop the rename now.
    sb.ok(&["branch", "rename", &dev, "renamed"]);
    assert_eq!(sb.users(&format!("{p}/renamed")), "ann,dev");
    sb.assert_consistent(&p);
}

/// A rename straight after a reset (whose old generation, which carries the name, a background
/// velo is still destroying) waits for that velo instead of refusing.
#[test]
fn a_rename_straight_after_a_reset_waits_for_the_old_data_to_go() {
    let sb = Sandbox::new();
    let p = sb.create_project("rent");
    let mut name = format!("{p}/dev");
    sb.ok(&["branch", "create", &name]);
    for n in 1..=3 {
        let out = sb.run_unsettled(&["branch", "reset", &name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = sb.run_unsettled(&["branch", "rename", &name, &format!("r{n}")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        name = format!("{p}/r{n}");
    }
    assert_eq!(sb.sql(&name, "SELECT 1"), "1");
    sb.assert_consistent(&p);
}
