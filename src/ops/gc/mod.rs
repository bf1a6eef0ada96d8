//! `velo gc`, for cron or a systemd timer: deletes expired branches and stops idle ones.
//!
//! What is due is decided from the state and one look at each candidate server ([`plan`]);
//! each deletion or stop then runs as its own command would (`branch delete`, `branch stop`),
//! with the same claims and journal, after checking in the claiming transaction that it is
//! still due. A branch another command holds is skipped and named; gc fails (non-zero exit)
//! only when something it tried failed.
//!
//! Idleness is measured by asking each running candidate over its socket how many clients
//! other than velo are connected (`pg_stat_activity`); a branch with one is recorded as used
//! now (`last_used_at`), one without is idle since its last recorded use (or start).

mod plan;

use std::time::Duration;

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::lifetime::NoLongerDue;
use super::{BranchBusy, Ctx, branch, server};
use crate::names::{BranchName, BranchRef};
use crate::runtime::ServerStatus;
use crate::state::{Branch, Project, State};
use plan::{Action, Candidate, Due, Seen};

/// How `velo gc` was asked to run.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Say what would be done, change nothing.
    pub dry_run: bool,
    pub json: bool,
    /// Also delete expired branches with children (with them), and stop idle ones.
    pub include_parents: bool,
}

/// What became of one due branch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Done,
    DryRun,
    Skipped(String),
    Failed(String),
}

impl Outcome {
    fn word(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::DryRun => "dry-run",
            Outcome::Skipped(_) => "skipped",
            Outcome::Failed(_) => "failed",
        }
    }

    fn detail(&self) -> Option<&str> {
        match self {
            Outcome::Skipped(d) | Outcome::Failed(d) => Some(d),
            Outcome::Done | Outcome::DryRun => None,
        }
    }
}

pub async fn gc(ctx: &Ctx, opts: GcOptions) -> Result<()> {
    let now = Utc::now();
    let state = ctx.store.read()?;
    let mut dues = plan::expired(&state, now, opts.include_parents);
    let candidates = plan::idle_candidates(&state, &plan::deleted(&dues));
    let seen = look(ctx, &state, candidates).await;
    let (idle, used) = plan::idle(&state, &seen, now, opts.include_parents);
    if !opts.dry_run {
        record_use(ctx, &used, now)?;
    }
    dues.extend(idle);
    let mut results = Vec::new();
    for due in dues {
        let outcome = match (&due.blocked, opts.dry_run) {
            (Some(why), _) => Outcome::Skipped(why.clone()),
            (None, true) => Outcome::DryRun,
            (None, false) => act(ctx, &due, now).await,
        };
        results.push((due, outcome));
    }
    report(ctx, &results, opts)
}

/// How long gc waits for a server to say how many clients it has. Its database superuser
/// controls what it answers and when (a lock on `pg_stat_activity`, a login trigger, a
/// stopped server): without a limit one branch could keep gc from every other.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks each candidate's server how many clients it has; one that is not running or does not
/// answer (within [`ASK_TIMEOUT`]) is left out (and said so): whether it is in use cannot be
/// told.
async fn look(ctx: &Ctx, state: &State, candidates: Vec<Candidate>) -> Vec<Seen> {
    let asks = candidates.into_iter().map(|candidate| async move {
        let asked = async {
            let p = &state.projects[&candidate.r.project];
            let b = super::get_branch(p, &candidate.r)?;
            let runtime = ctx.runtime(p)?;
            let status = runtime
                .status(&crate::names::server_name(&candidate.r))
                .await?;
            if status != ServerStatus::Running {
                return Ok(None);
            }
            let sql = server::sql(ctx, p, b);
            let clients = tokio::time::timeout(ASK_TIMEOUT, sql.client_connections())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no answer within {}",
                        humantime::format_duration(ASK_TIMEOUT)
                    )
                })??;
            Ok::<_, anyhow::Error>(Some(clients))
        };
        match asked.await {
            Ok(Some(clients)) => Some(Seen { candidate, clients }),
            Ok(None) => None,
            Err(e) => {
                ctx.shell.warn(&format!(
                    "could not ask `{}` whether it is in use ({e:#}); left as it is",
                    candidate.r
                ));
                None
            }
        }
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Records that the branches `used` were in use at `now`.
fn record_use(ctx: &Ctx, used: &[BranchRef], now: DateTime<Utc>) -> Result<()> {
    if used.is_empty() {
        return Ok(());
    }
    ctx.store.update(|s| {
        for r in used {
            if let Some(b) = s
                .projects
                .get_mut(&r.project)
                .and_then(|p| p.branches.get_mut(&r.branch))
            {
                b.last_used_at = Some(now);
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// Deletes or stops a due branch through the command that would, if it is still due.
async fn act(ctx: &Ctx, due: &Due, now: DateTime<Utc>) -> Outcome {
    let done = match &due.action {
        Action::Delete { with } => {
            let still_due = |p: &Project, b: &Branch| still_expired(&due.r, with, now, p, b);
            branch::delete_if(ctx, &due.r, !with.is_empty(), &still_due).await
        }
        Action::Stop { last_used } => branch::stop_idle(ctx, &due.r, *last_used).await,
    };
    match done {
        Ok(()) => Outcome::Done,
        Err(e) if e.is::<NoLongerDue>() || e.is::<BranchBusy>() => Outcome::Skipped(e.to_string()),
        Err(_) if gone(ctx, &due.r) => {
            Outcome::Skipped("it was deleted or renamed meanwhile".into())
        }
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

/// Whether a branch is no longer in the state (another command deleted or renamed it).
fn gone(ctx: &Ctx, r: &BranchRef) -> bool {
    ctx.store.read().is_ok_and(|s| {
        s.projects
            .get(&r.project)
            .is_none_or(|p| p.branch(&r.branch).is_none())
    })
}

/// Whether an expired branch is still due to be deleted with `with` as gc planned, when its
/// delete claims it: still expired at `now`, with the same branches made from it.
fn still_expired(
    r: &BranchRef,
    with: &[BranchName],
    now: DateTime<Utc>,
    p: &Project,
    b: &Branch,
) -> Result<()> {
    if b.expires_at.is_none_or(|t| t > now) {
        bail!(NoLongerDue("its expiry was changed meanwhile".into()));
    }
    let mut below = p.subtree_post_order(&r.branch);
    below.pop();
    if below != with {
        let names: Vec<String> = below.iter().map(|x| format!("{}/{x}", r.project)).collect();
        bail!(NoLongerDue(format!(
            "the branches made from it changed meanwhile (now: {})",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        )));
    }
    Ok(())
}

/// Prints what gc did (or would do); fails if anything it tried failed.
fn report(ctx: &Ctx, results: &[(Due, Outcome)], opts: GcOptions) -> Result<()> {
    let count = |word: &str| results.iter().filter(|(_, o)| o.word() == word).count();
    let failed = count("failed");
    if opts.json {
        let rows: Vec<_> = results
            .iter()
            .map(|(d, o)| {
                let with = match &d.action {
                    Action::Delete { with } => with.iter().map(|b| b.to_string()).collect(),
                    Action::Stop { .. } => Vec::new(),
                };
                json!({
                    "project": d.r.project.as_str(),
                    "branch": d.r.branch.as_str(),
                    "action": d.action.word(),
                    "with": with,
                    "why": d.why,
                    "outcome": o.word(),
                    "detail": o.detail(),
                })
            })
            .collect();
        ctx.shell
            .json(&json!({ "dry_run": opts.dry_run, "results": rows }));
    } else if results.is_empty() {
        ctx.shell
            .note("Nothing to do: no branch has expired or sat idle long enough.");
    } else {
        let rows = results
            .iter()
            .map(|(d, o)| {
                let what = match &d.action {
                    Action::Delete { with } if !with.is_empty() => format!(
                        "{} (with {})",
                        d.r,
                        with.iter()
                            .map(|b| format!("{}/{b}", d.r.project))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    _ => d.r.to_string(),
                };
                let outcome = match o.detail() {
                    Some(detail) => format!("{}: {detail}", o.word()),
                    None => o.word().to_string(),
                };
                vec![d.action.word().to_string(), what, d.why.clone(), outcome]
            })
            .collect();
        ctx.shell
            .table(&["ACTION", "BRANCH", "WHY", "RESULT"], rows);
        ctx.shell.note(&if opts.dry_run {
            format!(
                "Dry run: {} due, {} to skip; nothing was changed.",
                count("dry-run"),
                count("skipped")
            )
        } else {
            format!(
                "{} done, {} skipped, {failed} failed.",
                count("done"),
                count("skipped")
            )
        });
    }
    if failed > 0 {
        bail!(
            "{failed} of gc's deletions or stops failed; see above, fix the cause and run `velo gc` again"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::Duration as ChronoDuration;

    use super::super::fakes::{World, r, tokio};
    use super::*;

    #[test]
    fn a_branch_renamed_after_gc_looked_is_skipped_not_failed() {
        tokio().block_on(async {
            let w = World::with_project().await;
            let now = Utc::now();
            w.ctx
                .store
                .update(|s| {
                    super::super::branch_mut(s, &r("demo/dev"))?.expires_at =
                        Some(now - ChronoDuration::seconds(1));
                    Ok::<_, anyhow::Error>(())
                })
                .unwrap();
            let dues = plan::expired(&w.ctx.store.read().unwrap(), now, false);
            let to = "kept".parse().unwrap();
            branch::rename(&w.ctx, &r("demo/dev"), &to).await.unwrap();
            let outcome = act(&w.ctx, &dues[0], now).await;
            let why = "it was deleted or renamed meanwhile".to_string();
            assert_eq!(outcome, Outcome::Skipped(why));
            let s = w.ctx.store.read().unwrap();
            assert!(s.projects[&r("demo/kept").project].branch(&to).is_some());
        });
    }
}
