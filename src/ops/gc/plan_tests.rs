use std::collections::BTreeMap;

use chrono::Duration as ChronoDuration;

use super::*;
use crate::state::{Branch, Busy, Project, RuntimeRecord, StorageRecord};

fn now() -> DateTime<Utc> {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

fn ago(minutes: i64) -> DateTime<Utc> {
    now() - ChronoDuration::minutes(minutes)
}

fn name(s: &str) -> BranchName {
    s.parse().unwrap()
}

/// A project `demo` of `(branch, parent, expired)`; main is always there.
fn state(branches: &[(&str, &str, bool)], idle_stop: Option<u64>) -> State {
    let busy = Busy {
        operation: "x".into(),
        pid: 1,
        since: now(),
    };
    let record = |parent: Option<&str>, expired: bool| Branch {
        expires_at: expired.then(|| ago(1)),
        last_used_at: Some(ago(60)),
        busy: None,
        ..Branch::new(parent.map(name), 1, None, busy.clone())
    };
    let mut all = BTreeMap::from([(BranchName::main(), record(None, false))]);
    for (b, parent, expired) in branches {
        all.insert(name(b), record(Some(parent), *expired));
    }
    let project = Project {
        storage: StorageRecord::Copy { dir: "/d".into() },
        runtime: RuntimeRecord::Docker { image: "i".into() },
        chosen: None,
        prepared_from: None,
        pg_version: None,
        user: "postgres".into(),
        password: "x".into(),
        database: "postgres".into(),
        pg_uid: 70,
        pg_gid: 70,
        created_at: ago(600),
        branches: all,
        snapshots: Vec::new(),
        idle_stop_seconds: idle_stop,
        imported: None,
    };
    State {
        projects: BTreeMap::from([("demo".parse().unwrap(), project)]),
        ..State::default()
    }
}

fn summary(dues: &[Due]) -> Vec<String> {
    dues.iter()
        .map(|d| {
            let with = match &d.action {
                Action::Delete { with } if !with.is_empty() => format!(
                    "+{}",
                    with.iter()
                        .map(|b| b.as_str())
                        .collect::<Vec<_>>()
                        .join("+")
                ),
                _ => String::new(),
            };
            let mark = if d.blocked.is_some() { "!" } else { "" };
            format!("{}{} {}{with}", mark, d.action.word(), d.r.branch)
        })
        .collect()
}

#[test]
fn expired_branches_go_children_first_and_main_never() {
    let mut s = state(
        &[("a", "main", true), ("b", "a", true), ("c", "main", false)],
        None,
    );
    let p = s.projects.values_mut().next().unwrap();
    p.branches.get_mut(&BranchName::main()).unwrap().expires_at = Some(ago(5));
    let dues = expired(&s, now(), false);
    assert_eq!(summary(&dues), ["delete b", "delete a"]);
    assert!(dues[0].why.contains("expired at 2026-03-01 11:59:00 UTC"));
    let gone = deleted(&dues);
    assert_eq!(gone.len(), 2);
}

#[test]
fn a_parent_whose_children_stay_is_left_unless_told() {
    let s = state(&[("a", "main", true), ("b", "a", false)], None);
    let dues = expired(&s, now(), false);
    assert_eq!(summary(&dues), ["!delete a"]);
    let why = dues[0].blocked.as_deref().unwrap();
    assert!(
        why.contains("demo/b") && why.contains("--include-parents"),
        "{why}"
    );
    assert!(deleted(&dues).is_empty());

    let dues = expired(&s, now(), true);
    assert_eq!(summary(&dues), ["delete a+b"]);
    assert_eq!(deleted(&dues).len(), 2);
}

#[test]
fn a_busy_branch_is_skipped_and_so_is_its_parent() {
    let mut s = state(&[("a", "main", true), ("b", "a", true)], None);
    let p = s.projects.values_mut().next().unwrap();
    p.branches.get_mut(&name("b")).unwrap().busy = Some(Busy {
        operation: "branch reset".into(),
        pid: 42,
        since: now(),
    });
    let dues = expired(&s, now(), false);
    assert_eq!(summary(&dues), ["!delete b", "!delete a"]);
    assert!(dues[0].blocked.as_deref().unwrap().contains("branch reset"));
}

#[test]
fn nothing_is_due_before_its_time() {
    let s = state(&[("a", "main", false)], Some(1800));
    assert!(expired(&s, now(), true).is_empty());
    let mut s = state(&[("a", "main", true)], None);
    let p = s.projects.values_mut().next().unwrap();
    p.branches.get_mut(&name("a")).unwrap().expires_at = Some(now() + ChronoDuration::seconds(1));
    assert!(expired(&s, now(), false).is_empty());
}

fn seen(s: &State, clients: &[(&str, u64)]) -> Vec<Seen> {
    let candidates = idle_candidates(s, &BTreeSet::new());
    clients
        .iter()
        .map(|(b, n)| Seen {
            candidate: candidates
                .iter()
                .find(|c| c.r.branch.as_str() == *b)
                .unwrap_or_else(|| panic!("{b} is no candidate"))
                .clone(),
            clients: *n,
        })
        .collect()
}

#[test]
fn idle_candidates_are_running_non_main_branches_of_projects_that_ask() {
    let mut s = state(
        &[
            ("a", "main", false),
            ("b", "main", false),
            ("c", "main", true),
        ],
        Some(1800),
    );
    let p = s.projects.values_mut().next().unwrap();
    p.branches.get_mut(&name("b")).unwrap().desired = RunState::Stopped;
    let gone = BTreeSet::from(["demo/c".parse().unwrap()]);
    let names: Vec<String> = idle_candidates(&s, &gone)
        .iter()
        .map(|c| c.r.to_string())
        .collect();
    assert_eq!(names, ["demo/a"]);
    assert!(idle_candidates(&state(&[("a", "main", false)], None), &gone).is_empty());
}

#[test]
fn idle_branches_are_stopped_and_used_ones_recorded() {
    let mut s = state(
        &[
            ("a", "main", false),
            ("b", "main", false),
            ("c", "main", false),
        ],
        Some(1800),
    );
    let p = s.projects.values_mut().next().unwrap();
    p.branches.get_mut(&name("c")).unwrap().last_used_at = Some(ago(10));
    let (dues, used) = idle(&s, &seen(&s, &[("a", 0), ("b", 2), ("c", 0)]), now(), false);
    assert_eq!(summary(&dues), ["stop a"]);
    assert_eq!(dues[0].action, Action::Stop { last_used: ago(60) });
    assert!(dues[0].why.contains("1h"), "{}", dues[0].why);
    assert_eq!(used, ["demo/b".parse::<BranchRef>().unwrap()]);
}

#[test]
fn an_idle_parent_is_stopped_only_when_told() {
    let s = state(&[("a", "main", false), ("b", "a", false)], Some(60));
    let (dues, _) = idle(&s, &seen(&s, &[("a", 0)]), now(), false);
    assert_eq!(summary(&dues), ["!stop a"]);
    let (dues, _) = idle(&s, &seen(&s, &[("a", 0)]), now(), true);
    assert_eq!(summary(&dues), ["stop a"]);
}

#[test]
fn a_branch_never_seen_in_use_starts_its_clock_now() {
    let mut s = state(&[("a", "main", false)], Some(60));
    let p = s.projects.values_mut().next().unwrap();
    p.branches.get_mut(&name("a")).unwrap().last_used_at = None;
    let (dues, used) = idle(&s, &seen(&s, &[("a", 0)]), now(), false);
    assert!(dues.is_empty());
    assert_eq!(used.len(), 1);
}
