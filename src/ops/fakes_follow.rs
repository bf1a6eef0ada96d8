//! Snapshots of a follower's main on the fake storage, runtime and PostgreSQL (see
//! [`super::fakes`]): when main has replayed much WAL since its last restartpoint, the source
//! is asked for a CHECKPOINT and main waits to replay it; near its restartpoint it is not; and a
//! source that refuses costs a warning, never the branch.

use std::sync::atomic::Ordering;

use chrono::Utc;

use super::branch::{self, Source};
use super::fakes::{World, r, tokio};
use crate::runtime::ClientOutput;
use crate::source::SourceUrl;
use crate::state::{ImportFrom, Imported};

/// Makes `demo` a follower of a source reached as user `rep`.
fn follow(w: &World) {
    let url = SourceUrl::parse("postgres://rep@db.example:5433/app", "me")
        .unwrap()
        .url;
    w.ctx
        .store
        .update(|s| {
            let p = s.projects.get_mut(&"demo".parse().unwrap()).unwrap();
            p.imported = Some(Imported {
                from: ImportFrom::Server { url },
                all_databases: false,
                with_roles: false,
                role_passwords: false,
                physical: true,
                follow: true,
                source_wal: None,
                slot: None,
                standby_limits: Default::default(),
                jobs: 1,
                after_import: None,
                imported_at: Utc::now(),
                source_version: None,
            });
            Ok::<_, anyhow::Error>(())
        })
        .unwrap();
}

fn answer(w: &World, code: i64, stdout: &str, stderr: &str) {
    w.runtime.next_client_output(ClientOutput {
        code,
        stdout: stdout.into(),
        stderr: stderr.into(),
    });
}

#[test]
fn a_branch_of_a_follower_far_from_its_restartpoint_has_the_source_checkpoint_first() {
    tokio().block_on(async {
        let w = World::with_project().await;
        follow(&w);
        let pg_uid = w.ctx.store.read().unwrap().projects[&"demo".parse().unwrap()].pg_uid;

        w.standby
            .since_restartpoint
            .store(64 << 20, Ordering::SeqCst);
        answer(&w, 0, "0/5A000028\n", "");
        branch::create(&w.ctx, &r("demo/fresh"), Source::Parent(None))
            .await
            .unwrap();
        let jobs = w.runtime.client_jobs();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        let job = &jobs[0];
        assert_eq!(job.tool, "psql");
        assert!(job.args.iter().any(|a| a == "CHECKPOINT"), "{job:?}");
        assert!(job.network && job.dirs.secrets.is_some(), "{job:?}");
        assert!(job.dirs.socket.is_none(), "{job:?}");
        assert_eq!(job.user.uid, pg_uid, "the password file's owner runs it");
        assert!(job.name.contains(".checkpoint-"), "{}", job.name);
        assert_eq!(*w.standby.replayed_to.lock().unwrap(), ["0/5A000028"]);

        // Near its restartpoint, the source is left alone.
        w.standby.since_restartpoint.store(1 << 20, Ordering::SeqCst);
        branch::create(&w.ctx, &r("demo/near"), Source::Parent(None))
            .await
            .unwrap();
        assert_eq!(w.runtime.client_jobs().len(), 1);

        // A source that does not allow it, or answers nonsense: the branch is made all the
        // same, and the warning says what to grant.
        w.standby
            .since_restartpoint
            .store(64 << 20, Ordering::SeqCst);
        answer(
            &w,
            3,
            "",
            "psql:<stdin>:1: ERROR:  permission denied to execute CHECKPOINT command\nDETAIL:  Only roles with privileges of the \"pg_checkpoint\" role may execute this command.",
        );
        branch::create(&w.ctx, &r("demo/slow"), Source::Parent(None))
            .await
            .unwrap();
        answer(&w, 0, "not a position\n", "");
        branch::create(&w.ctx, &r("demo/odd"), Source::Parent(None))
            .await
            .unwrap();
        let out = w.ctx.shell.output();
        assert!(out.contains("GRANT pg_checkpoint TO rep"), "{out}");
        assert!(out.contains("replays the 64 MB of WAL"), "{out}");
        assert!(out.contains("\"not a position\""), "{out}");
        assert_eq!(w.standby.replayed_to.lock().unwrap().len(), 1);
    })
}

#[test]
fn a_source_that_never_answers_costs_a_warning_and_its_helper_not_the_branch() {
    // Paused time: the wait for the helper's limit passes at once.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let w = World::with_project().await;
        follow(&w);
        w.standby
            .since_restartpoint
            .store(64 << 20, Ordering::SeqCst);
        w.runtime.next_client_hangs();
        branch::create(&w.ctx, &r("demo/late"), Source::Parent(None))
            .await
            .unwrap();
        let out = w.ctx.shell.output();
        assert!(out.contains("psql did not finish within 45s"), "{out}");
        assert!(w.standby.replayed_to.lock().unwrap().is_empty());
        assert_eq!(w.runtime.client_jobs().len(), 1);
    })
}
