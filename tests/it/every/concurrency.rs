//! Many velo processes at once, and branches made while the parent is under load.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::util::Sandbox;

fn succeeded(out: Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn eight_parallel_creates_in_one_project_all_succeed_with_unique_ports() {
    let sb = Sandbox::new();
    let p = sb.create_project("par");
    let one = Instant::now();
    sb.ok(&["branch", "create", &format!("{p}/solo")]);
    let one = one.elapsed();

    let all = Instant::now();
    let children: Vec<_> = (0..8)
        .map(|i| sb.spawn(&["branch", "create", &format!("{p}/b{i}")]))
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        succeeded(child.wait_with_output().unwrap(), &format!("create b{i}"));
    }
    let all = all.elapsed();
    eprintln!("one create: {one:.1?}; eight in parallel: {all:.1?}");

    let branches = sb.state()["projects"][&p]["branches"].clone();
    let branches = branches.as_object().unwrap();
    assert_eq!(branches.len(), 10, "main, solo and b0..b7");
    let mut ports: Vec<u64> = branches
        .values()
        .map(|b| b["port"].as_u64().unwrap())
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 10, "ports are unique");
    let range = sb.ports();
    assert!(
        ports.iter().all(|p| range.contains(&(*p as u16))),
        "ports {ports:?} not all from VELO_PORTS {range:?}"
    );
    for i in 0..8 {
        assert_eq!(sb.sql(&format!("{p}/b{i}"), "SELECT 1"), "1");
    }
    sb.assert_consistent(&p);
    // A generous sanity bound only: the creates overlap their waiting for PostgreSQL.
    assert!(
        all < one * 8,
        "eight creates took {all:?}, one took {one:?}"
    );
}

#[test]
fn branches_made_under_load_cost_the_parent_nothing() {
    let sb = Sandbox::new();
    let p = sb.create_project("load");
    let main = format!("{p}/main");
    let init = sb
        .client("pgbench", &main, &["-i", "-s", "2", "-q"])
        .output();
    succeeded(init.unwrap(), "pgbench -i");
    sb.ok(&["branch", "create", &format!("{p}/first")]);
    let started = sb.sql(&main, "SELECT pg_postmaster_start_time()");

    let bench = sb
        .client("pgbench", &main, &["-c", "4", "-j", "2", "-T", "25", "-n"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    let creates: Vec<_> = (0..5)
        .map(|i| sb.spawn(&["branch", "create", &format!("{p}/l{i}")]))
        .collect();
    let reset = sb.spawn(&["branch", "reset", &format!("{p}/first")]);
    for (i, child) in creates.into_iter().enumerate() {
        succeeded(child.wait_with_output().unwrap(), &format!("create l{i}"));
    }
    succeeded(reset.wait_with_output().unwrap(), "reset first");

    let out = bench.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{report}");
    succeeded(out, "pgbench");
    assert!(
        report.contains("number of failed transactions: 0"),
        "pgbench saw failures:\n{report}"
    );
    assert_eq!(
        sb.sql(&main, "SELECT pg_postmaster_start_time()"),
        started,
        "the parent restarted"
    );

    let amcheck = Command::new("sh")
        .args(["-c", "command -v pg_amcheck"])
        .output()
        .is_ok_and(|o| o.status.success());
    for b in ["first", "l0", "l1", "l2", "l3", "l4"] {
        let b = format!("{p}/{b}");
        // pgbench's own check: every transaction moved a balance and wrote its history row.
        let sums = sb.sql(
            &b,
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history) \
             AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history) \
             AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
        );
        assert_eq!(sums, "t", "{b}: balances and history disagree");
        if amcheck {
            let check = sb.client("pg_amcheck", &b, &["--heapallindexed"]).output();
            succeeded(check.unwrap(), &format!("pg_amcheck on {b}"));
        }
    }
    sb.assert_consistent(&p);
}

#[test]
fn resets_of_a_parent_and_its_child_and_snapshots_at_once_end_consistent() {
    let sb = Sandbox::new();
    let p = sb.create_project("pcr");
    let (mid, leaf) = (format!("{p}/mid"), format!("{p}/leaf"));
    sb.ok(&["branch", "create", &mid]);
    sb.ok(&["branch", "create", &leaf, "--parent", &mid]);
    for round in 0..3 {
        let children = [
            sb.spawn(&["branch", "reset", &mid]),
            sb.spawn(&["branch", "reset", &leaf]),
            sb.spawn(&["snapshot", "create", &mid]),
            sb.spawn(&[
                "branch",
                "create",
                &format!("{p}/c{round}"),
                "--parent",
                &mid,
            ]),
        ];
        for (i, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            // The snapshot waits for whatever holds `mid`; the others either work or are
            // refused at once because another command held the branch.
            if i == 2 {
                assert!(out.status.success(), "round {round}: snapshot: {err}");
            } else {
                assert!(out.status.success() || err.contains("busy"), "{err}");
            }
        }
        sb.assert_consistent(&p);
    }
    assert_eq!(sb.sql(&leaf, "SELECT 1"), "1");
}

/// A reset's old generation and a deleted branch's data are destroyed by a background velo
/// once velo is idle: not while another command is under way, until velo's patience
/// (`VELO_IDLE_WAIT`) runs out; `velo status` shows them waiting meanwhile. A create of the
/// deleted name does not wait for that: it destroys the old data itself.
#[test]
fn destroys_wait_for_commands_to_pause_unless_a_command_needs_them() {
    let mut sb = Sandbox::new();
    let p = sb.create_project("defer");
    let (dev, gone) = (format!("{p}/dev"), format!("{p}/gone"));
    sb.ok(&["branch", "create", &dev]);
    sb.ok(&["branch", "create", &gone]);
    sb.sql(&gone, "CREATE TABLE old AS SELECT 1 AS x");
    // Patience longer than the test: only a command can destroy what these background velos
    // wait to destroy, so nothing below depends on how fast the host is.
    sb.set_env("VELO_IDLE_WAIT", "1h");
    let mut under_way = sb.paused("ready", &["branch", "create", &format!("{p}/other")]);
    succeeded(sb.run_unsettled(&["branch", "reset", &dev]), "reset");
    succeeded(sb.run_unsettled(&["branch", "delete", &gone]), "delete");

    std::thread::sleep(Duration::from_secs(2));
    let (old, old_gone) = ("dev.0".to_string(), "gone.0".to_string());
    let volumes = sb.volumes(&p);
    assert!(
        volumes.contains(&old) && volumes.contains(&old_gone),
        "{volumes:?}"
    );
    let waiting = sb.pending_now();
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    for w in &waiting {
        assert_eq!(w["waiting"], true, "not destroyed yet: {waiting:?}");
        let (branch, pid) = (&w["branches"][0], &w["pid"]);
        assert!(
            (branch == "dev" && pid.is_null()) || (branch == "gone" && pid.is_u64()),
            "{waiting:?}"
        );
    }

    // The delete's background velo waits for an hour: the create destroyed the data itself
    // (without that, it fails after its own 10 minutes).
    let create = sb.run_unsettled(&["branch", "create", &gone]);
    let said = String::from_utf8_lossy(&create.stderr).into_owned();
    succeeded(create, "create of the deleted name");
    assert!(
        said.contains("waiting for velo to finish deleting"),
        "{said}"
    );
    assert!(sb.volumes(&p).contains(&old), "{:?}", sb.volumes(&p));

    // With a command still under way, a background velo destroys once its patience runs out.
    sb.clear_env();
    sb.set_env("VELO_IDLE_WAIT", "4s");
    let reset = Instant::now();
    succeeded(sb.run_unsettled(&["branch", "reset", &dev]), "second reset");
    let retired = [old, "dev.1".to_string()];
    crate::util::world::wait_until("the old generations go", Duration::from_secs(60), || {
        let now = sb.volumes(&p);
        retired.iter().all(|v| !now.contains(v))
    });
    assert!(
        reset.elapsed() >= Duration::from_secs(4),
        "destroyed after {:?}, before its patience ran out",
        reset.elapsed()
    );
    let still = under_way.child.try_wait().expect("the paused velo");
    assert!(still.is_none(), "the command was under way throughout");
    under_way.kill9();
    // (Settled: `sb.sql` waits for the background velos, idle now.)
    let fresh = "SELECT count(*) FROM pg_tables WHERE tablename = 'old'";
    assert_eq!(sb.sql(&gone, fresh), "0");
    sb.ok(&["branch", "list", &p]);
    sb.assert_consistent(&p);
}
