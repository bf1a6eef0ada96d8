//! Every branch against what is really there.

use std::time::Duration;

use futures_util::future::join_all;

use super::{Check, Ctx, first_line};
use crate::names::{self, BranchRef};
use crate::runtime::ServerStatus;
use crate::state::{RunState, State};

/// Every branch in the state against what is really there: its volume available, its server
/// present and in the recorded state, and PostgreSQL answering when it should run.
pub async fn branch_checks(ctx: &Ctx, state: &State, probe_timeout: Duration) -> Vec<Check> {
    let per_branch = state.projects.iter().flat_map(|(pname, p)| {
        p.branches.iter().map(move |(bname, b)| async move {
            let r = BranchRef::new(pname.clone(), bname.clone());
            match (ctx.storage(p), ctx.runtime(p)) {
                (Ok(storage), Ok(runtime)) => {
                    one_branch(
                        ctx,
                        p,
                        &r,
                        b,
                        storage.as_ref(),
                        runtime.as_ref(),
                        probe_timeout,
                    )
                    .await
                }
                (Err(e), _) | (_, Err(e)) => vec![Check::fail(
                    "branches",
                    r.to_string(),
                    first_line(&format!("{e:#}")),
                    "see the checks above",
                )],
            }
        })
    });
    join_all(per_branch).await.into_iter().flatten().collect()
}

async fn one_branch(
    ctx: &Ctx,
    p: &crate::state::Project,
    r: &BranchRef,
    b: &crate::state::Branch,
    storage: &dyn crate::storage::Storage,
    runtime: &dyn crate::runtime::Runtime,
    probe_timeout: Duration,
) -> Vec<Check> {
    const G: &str = "branches";
    let volume = storage.name_of(&b.volume(r));
    let server = names::server_name(r);
    let v = b.volume(r);
    let (path, status) = tokio::join!(storage.path(&v), runtime.status(&server));
    let mut checks = vec![match path {
        Ok(Some(at)) => Check::ok(
            G,
            format!("{r} data"),
            format!("{volume} at {}", at.display()),
        ),
        Ok(None) => Check::fail(
            G,
            format!("{r} data"),
            format!("{volume} is not available (not mounted, or gone)"),
            format!("`velo repair` says which; `velo branch start {r}` mounts it"),
        ),
        Err(e) => Check::fail(
            G,
            format!("{r} data"),
            first_line(&format!("{e:#}")),
            "see `velo repair`",
        ),
    }];
    let want = match b.desired {
        RunState::Running => "running",
        RunState::Stopped => "stopped",
    };
    checks.push(match (&status, b.desired) {
        (Ok(ServerStatus::Running), RunState::Running)
        | (Ok(ServerStatus::Stopped { .. }), RunState::Stopped) => {
            Check::ok(G, format!("{r} server"), format!("{server} {want}"))
        }
        (Ok(ServerStatus::Missing), _) => Check::fail(
            G,
            format!("{r} server"),
            format!("{server} is missing"),
            format!("`velo branch start {r}` re-creates it"),
        ),
        (Ok(other), _) => Check::fail(
            G,
            format!("{r} server"),
            format!("{server} is {}, but should be {want}", other.word()),
            format!("`velo branch start {r}` or `velo branch stop {r}`"),
        ),
        (Err(e), _) => Check::fail(
            G,
            format!("{r} server"),
            first_line(&e.to_string()),
            "see the runtime checks above",
        ),
    });
    if b.desired == RunState::Running {
        // Over the branch's private socket: nothing is sent that another program could take.
        let sql = crate::ops::server::sql(ctx, p, b);
        let answered = tokio::time::timeout(probe_timeout, sql.probe()).await;
        if let (Ok(Ok(false)), Some((_, words))) =
            (&answered, crate::ops::follow::observed(ctx, p, r).await)
        {
            // A follower's main stays in recovery: what matters is whether it streams.
            let streams = !words.contains("not streaming");
            checks.push(match streams {
                true => Check::ok(G, format!("{r} server answers"), words),
                false => Check::warn(
                    G,
                    format!("{r} server answers"),
                    words,
                    "check that the source runs and lets main replicate; its log says why not",
                ),
            });
            return checks;
        }
        checks.push(match answered {
            Ok(Ok(true)) => Check::ok(G, format!("{r} server answers"), "PostgreSQL answers"),
            Ok(Ok(false)) => Check::warn(
                G,
                format!("{r} server answers"),
                "PostgreSQL answers, but is still in recovery",
                "wait: a point-in-time branch replays WAL until it reaches its target",
            ),
            Ok(Err(e)) => Check::fail(
                G,
                format!("{r} server answers"),
                format!("no answer: {}", first_line(&format!("{e:#}"))),
                format!("`velo branch restart {r}`; its log says why"),
            ),
            Err(_) => Check::fail(
                G,
                format!("{r} server answers"),
                format!(
                    "no answer within {}",
                    humantime::format_duration(probe_timeout)
                ),
                format!(
                    "a slow host needs `velo doctor --timeout 30s`; else `velo branch restart {r}`"
                ),
            ),
        });
    }
    checks
}
