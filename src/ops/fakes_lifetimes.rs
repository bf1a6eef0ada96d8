//! Rename, gc and idle stops on the fake storage, runtime and PostgreSQL (see [`super::fakes`]):
//! what a rename moves, that a rename failing at any step (or killed) leaves everything as it
//! was, and what `velo gc` deletes, stops, skips and records.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};

use super::branch::{self, Source};
use super::fakes::{Fault, World, r, tokio};
use super::gc::{self, GcOptions};
use super::lifetime::NoLongerDue;
use crate::names::{BranchName, BranchRef, ProjectName, VolumeId};
use crate::runtime::Runtime;
use crate::state::{Owner, RunState, State, UndoStep};
use crate::storage::Storage;

fn demo() -> ProjectName {
    "demo".parse().unwrap()
}

/// demo/main, demo/dev (with a user's snapshot) and demo/sub made from dev, all running.
async fn family() -> World {
    let w = World::with_project().await;
    super::snapshot::create(&w.ctx, &r("demo/dev"), None, Duration::ZERO)
        .await
        .unwrap();
    let sub = Source::Parent(Some("dev".parse().unwrap()));
    branch::create(&w.ctx, &r("demo/sub"), sub).await.unwrap();
    w
}

fn state(w: &World) -> State {
    w.ctx.store.read().unwrap()
}

fn archive_of(w: &World, b: &str) -> std::path::PathBuf {
    w.ctx.archives().branch_dir(&demo(), &b.parse().unwrap())
}

#[test]
fn a_rename_moves_everything_that_names_the_branch() {
    tokio().block_on(async {
        let w = family().await;
        w.storage.clones_block_renames();
        let to: BranchName = "renamed".parse().unwrap();
        branch::rename(&w.ctx, &r("demo/dev"), &to).await.unwrap();

        let s = state(&w);
        assert!(s.journal.is_empty());
        let p = &s.projects[&demo()];
        assert!(p.branch(&"dev".parse().unwrap()).is_none());
        let sub = p.branch(&"sub".parse().unwrap()).unwrap();
        assert_eq!(sub.parent.as_ref(), Some(&to));
        assert_eq!(sub.origin.as_ref().unwrap().branch, to);
        assert_eq!(p.snapshots[0].branch, to);
        assert!(p.branches.values().all(|b| b.busy.is_none()));

        let (_, contents, servers) = w.snapshot();
        assert!(contents.iter().all(|c| !c.contains("dev")), "{contents:?}");
        assert!(contents.contains("demo/renamed.0"), "{contents:?}");
        let running = |name: &str| servers.iter().any(|(n, up)| n == name && *up);
        assert!(
            running("velo-demo.renamed") && running("velo-demo.sub"),
            "{servers:?}"
        );
        assert!(!servers.iter().any(|(n, _)| n == "velo-demo.dev"));
        assert!(archive_of(&w, "renamed").is_dir() && !archive_of(&w, "dev").exists());
        let out = w.ctx.shell.output();
        assert!(
            out.contains("Stop demo/sub"),
            "the blocking child stopped: {out}"
        );
    });
}

#[test]
fn a_rename_that_fails_at_any_step_leaves_everything_as_it_was() {
    tokio().block_on(async {
        for fault in [
            Fault::Runtime("stop"),
            Fault::Runtime("remove"),
            Fault::Storage("rename_volume"),
            Fault::Runtime("create"),
            Fault::Runtime("start"),
            Fault::Dies,
        ] {
            let w = family().await;
            w.storage.clones_block_renames();
            let before = w.snapshot();
            fault.inject(&w);
            let err = branch::rename(&w.ctx, &r("demo/dev"), &"renamed".parse().unwrap())
                .await
                .unwrap_err();
            assert!(
                format!("{err:#}").contains("the branch is as it was"),
                "{fault:?}: {err:#}"
            );
            assert_eq!(w.snapshot(), before, "{fault:?}");
            assert!(archive_of(&w, "dev").is_dir(), "{fault:?}");
            assert!(!archive_of(&w, "renamed").exists(), "{fault:?}");
        }
    });
}

#[test]
fn a_rename_is_refused_for_main_a_taken_name_or_a_busy_branch() {
    tokio().block_on(async {
        let w = family().await;
        let err = |from: &'static str, to: &'static str| {
            let ctx = &w.ctx;
            async move {
                branch::rename(ctx, &r(from), &to.parse().unwrap())
                    .await
                    .unwrap_err()
                    .to_string()
            }
        };
        assert!(err("demo/main", "trunk").await.contains("main branch"));
        assert!(err("demo/dev", "sub").await.contains("already exists"));
        assert!(
            err("demo/dev", "dev")
                .await
                .contains("already has that name")
        );
        w.ctx
            .store
            .update(|s| {
                super::branch_mut(s, &r("demo/sub"))?.busy =
                    Some(super::busy_marker("branch reset"));
                Ok::<_, anyhow::Error>(())
            })
            .unwrap();
        let busy = err("demo/dev", "renamed").await;
        assert!(
            busy.contains("busy") && busy.contains("branch reset"),
            "{busy}"
        );
        assert!(state(&w).journal.is_empty());
    });
}

#[test]
fn a_killed_rename_is_rolled_back_by_the_next_command() {
    tokio().block_on(async {
        let w = family().await;
        let before = w.snapshot();
        let (dev, new) = (r("demo/dev"), r("demo/renamed"));
        // What a rename killed after moving the volume and the archive leaves: its old server
        // gone, the volume and the archive under the new name, each step in the journal.
        let mut undo = w
            .ctx
            .store
            .update(|s| super::branch::rename::reserve(s, &dev, &new))
            .map(|(_, _, _, undo)| undo)
            .unwrap();
        let restore = UndoStep::RestoreServer {
            branch: dev.branch.clone(),
            start: true,
        };
        undo.intend(&w.ctx, "stop", restore).await.unwrap();
        w.runtime.remove("velo-demo.dev").await.unwrap();
        let step = UndoStep::RenameVolume {
            from: dev.branch.clone(),
            to: new.branch.clone(),
            generation: 0,
        };
        undo.intend(&w.ctx, "rename-volume", step).await.unwrap();
        w.storage
            .rename_volume(&VolumeId::new(&dev, 0), &VolumeId::new(&new, 0))
            .await
            .unwrap();
        let step = UndoStep::RenameArchive {
            from: dev.branch.clone(),
            to: new.branch.clone(),
        };
        undo.intend(&w.ctx, "rename-archive", step).await.unwrap();
        w.ctx
            .archives()
            .rename_branch(&demo(), &dev.branch, &new.branch, true)
            .unwrap();
        // Until it is recovered, nothing else may take the new name.
        let taken = branch::create(&w.ctx, &new, Source::Parent(None))
            .await
            .unwrap_err();
        assert!(
            taken
                .to_string()
                .contains("reserved by `velo branch rename`"),
            "{taken}"
        );
        drop(undo);
        w.ctx
            .store
            .update(|s| {
                for op in s.journal.0.iter_mut() {
                    op.owner = Owner {
                        pid: u32::MAX - 1,
                        started: None,
                    };
                }
                Ok::<_, anyhow::Error>(())
            })
            .unwrap();
        super::recover::recover(&w.ctx).await;
        let out = w.ctx.shell.output();
        assert!(out.contains("Recovered `velo branch rename`"), "{out}");
        assert_eq!(w.snapshot(), before);
        assert!(archive_of(&w, "dev").is_dir() && !archive_of(&w, "renamed").exists());
        let s = state(&w);
        assert!(
            s.projects[&demo()]
                .branches
                .values()
                .all(|b| b.busy.is_none())
        );
    });
}

fn set(w: &World, b: &str, change: impl Fn(&mut crate::state::Branch)) {
    w.ctx
        .store
        .update(|s| {
            change(super::branch_mut(s, &r(b))?);
            Ok::<_, anyhow::Error>(())
        })
        .unwrap();
}

fn opts(dry_run: bool, include_parents: bool) -> GcOptions {
    GcOptions {
        dry_run,
        json: false,
        include_parents,
    }
}

#[test]
fn gc_deletes_expired_branches_and_a_dry_run_changes_nothing() {
    tokio().block_on(async {
        let w = family().await;
        let past = Utc::now() - ChronoDuration::minutes(1);
        set(&w, "demo/sub", |b| b.expires_at = Some(past));
        set(&w, "demo/dev", |b| b.expires_at = Some(past));
        set(&w, "demo/main", |b| b.expires_at = Some(past));
        let before = w.snapshot();
        gc::gc(&w.ctx, opts(true, false)).await.unwrap();
        assert_eq!(w.snapshot(), before, "a dry run changes nothing");
        assert!(w.ctx.shell.output().contains("nothing was changed"));

        gc::gc(&w.ctx, opts(false, false)).await.unwrap();
        let names: Vec<String> = state(&w).projects[&demo()]
            .branches
            .keys()
            .map(|b| b.to_string())
            .collect();
        assert_eq!(names, ["main"], "children first, main never");
    });
}

#[test]
fn gc_leaves_an_expired_parent_unless_told_and_never_a_busy_branch() {
    tokio().block_on(async {
        let w = family().await;
        let past = Utc::now() - ChronoDuration::minutes(1);
        set(&w, "demo/dev", |b| b.expires_at = Some(past));
        gc::gc(&w.ctx, opts(false, false)).await.unwrap();
        let out = w.ctx.shell.output();
        assert!(
            out.contains("--include-parents` deletes it with them"),
            "{out}"
        );
        assert_eq!(state(&w).projects[&demo()].branches.len(), 3);

        set(&w, "demo/dev", |b| {
            b.busy = Some(super::busy_marker("branch reset"))
        });
        gc::gc(&w.ctx, opts(false, true)).await.unwrap();
        assert!(w.ctx.shell.output().contains("busy: `velo branch reset`"));
        assert_eq!(state(&w).projects[&demo()].branches.len(), 3);

        set(&w, "demo/dev", |b| b.busy = None);
        gc::gc(&w.ctx, opts(false, true)).await.unwrap();
        assert_eq!(state(&w).projects[&demo()].branches.len(), 1);
    });
}

#[test]
fn gc_fails_when_a_deletion_fails() {
    tokio().block_on(async {
        let w = World::with_project().await;
        set(&w, "demo/dev", |b| {
            b.expires_at = Some(Utc::now() - ChronoDuration::seconds(1))
        });
        // A failure before the branch is forgotten fails gc and keeps the branch.
        w.runtime.fail_next("remove");
        let err = gc::gc(&w.ctx, opts(false, false)).await.unwrap_err();
        assert!(err.to_string().contains("failed"), "{err:#}");
        assert!(
            state(&w).projects[&demo()]
                .branch(&"dev".parse().unwrap())
                .is_some()
        );
        gc::gc(&w.ctx, opts(false, false)).await.unwrap();
        assert!(
            state(&w).projects[&demo()]
                .branch(&"dev".parse().unwrap())
                .is_none()
        );
    });
}

#[test]
fn gc_stops_idle_branches_and_records_used_ones() {
    tokio().block_on(async {
        let w = family().await;
        w.ctx
            .store
            .update(|s| {
                super::get_project_mut(s, &demo())?.idle_stop_seconds = Some(60);
                Ok::<_, anyhow::Error>(())
            })
            .unwrap();
        let long_ago = Utc::now() - ChronoDuration::hours(2);
        for b in ["demo/main", "demo/dev", "demo/sub"] {
            set(&w, b, |x| x.last_used_at = Some(long_ago));
        }
        // A client on every server: all in use, nothing stopped, use recorded.
        w.clients.store(1, Ordering::SeqCst);
        gc::gc(&w.ctx, opts(false, false)).await.unwrap();
        let sub = |w: &World| {
            state(w).projects[&demo()].branches[&"sub".parse::<BranchName>().unwrap()].clone()
        };
        assert!(sub(&w).last_used_at.unwrap() > long_ago);
        assert_eq!(sub(&w).desired, RunState::Running);

        for b in ["demo/main", "demo/dev", "demo/sub"] {
            set(&w, b, |x| x.last_used_at = Some(long_ago));
        }
        w.clients.store(0, Ordering::SeqCst);
        gc::gc(&w.ctx, opts(false, false)).await.unwrap();
        let s = state(&w);
        let p = &s.projects[&demo()];
        let sub = &p.branches[&"sub".parse::<BranchName>().unwrap()];
        assert_eq!(sub.desired, RunState::Stopped);
        assert!(sub.idle_stopped_at.is_some());
        // main never, dev (a parent) only when told.
        assert_eq!(p.branches[&BranchName::main()].desired, RunState::Running);
        assert_eq!(
            p.branches[&"dev".parse::<BranchName>().unwrap()].desired,
            RunState::Running
        );
        let out = w.ctx.shell.output();
        assert!(out.contains("--include-parents` stops it too"), "{out}");
        let servers = w.runtime.servers();
        assert!(!servers["velo-demo.sub"].1 && servers["velo-demo.main"].1);

        // Started again by hand, it is no longer marked as stopped by gc.
        branch::start(&w.ctx, &r("demo/sub")).await.unwrap();
        let started =
            state(&w).projects[&demo()].branches[&"sub".parse::<BranchName>().unwrap()].clone();
        assert_eq!(started.idle_stopped_at, None);
        assert!(started.last_used_at.unwrap() > long_ago);
    });
}

#[test]
fn an_idle_stop_is_dropped_when_the_branch_was_used_meanwhile() {
    tokio().block_on(async {
        let w = World::with_project().await;
        let seen_then = Utc::now() - ChronoDuration::hours(1);
        let err = branch::stop_idle(&w.ctx, &r("demo/dev"), seen_then)
            .await
            .unwrap_err();
        assert!(err.is::<NoLongerDue>(), "{err:#}");
        let b: BranchRef = r("demo/dev");
        let s = state(&w);
        assert_eq!(
            s.projects[&demo()].branches[&b.branch].desired,
            RunState::Running
        );
        assert!(s.journal.is_empty());
    });
}

/// A rename that fails, and whose old servers then cannot start again either (their port taken
/// meanwhile): the roll-back says so at once, naming the fix, instead of waiting out the
/// readiness deadline (60 s), and leaves the operation for the next command.
#[test]
fn a_roll_back_whose_old_server_cannot_start_says_why_at_once() {
    tokio().block_on(async {
        let w = family().await;
        w.runtime.fail_next("start");
        w.runtime.next_start_dies(
            "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use",
        );
        let (dev, to) = (r("demo/dev"), "renamed".parse().unwrap());
        let rename = branch::rename(&w.ctx, &dev, &to);
        let err = tokio::time::timeout(Duration::from_secs(20), rename)
            .await
            .expect("the roll-back does not wait out the deadline")
            .unwrap_err();
        let said = format!("{err:#}\n{}", w.ctx.shell.output());
        assert!(
            said.contains("already in use") && said.contains("velo repair --fix"),
            "{said}"
        );
        assert_eq!(state(&w).journal.iter().count(), 1, "{said}");
    });
}
