//! What `velo gc` finds due, decided from the state (and, for idleness, from what the servers
//! said) alone, so that every rule is unit-tested without a server.
//!
//! The rules: `main` is never touched. An expired branch is deleted, children before parents;
//! one with branches made from it that are not deleted in the same run is left alone (and
//! said so) unless `--include-parents`, which deletes it with them. A running branch of a
//! project with an idle stop is stopped once no client has been seen on it for that long;
//! one with children only with `--include-parents`. A busy branch is left to its command.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::super::lifetime::{Use, judge, rounded};
use crate::names::{BranchName, BranchRef, ProjectName};
use crate::state::{Project, RunState, State};

/// What gc would do to one branch, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub r: BranchRef,
    pub action: Action,
    /// Why it is due (expired when, idle since when).
    pub why: String,
    /// Why it is left alone this time, if it is.
    pub blocked: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Delete the branch, and with it `with`: branches made from it that are not due
    /// themselves, deleted only because `--include-parents` was given.
    Delete { with: Vec<BranchName> },
    /// Stop its server: no client since `last_used`.
    Stop { last_used: DateTime<Utc> },
}

impl Action {
    /// The word reports use.
    pub fn word(&self) -> &'static str {
        match self {
            Action::Delete { .. } => "delete",
            Action::Stop { .. } => "stop",
        }
    }
}

impl Due {
    /// The branches this deletes if it goes ahead.
    fn deletes(&self) -> Vec<BranchRef> {
        match (&self.action, &self.blocked) {
            (Action::Delete { with }, None) => with
                .iter()
                .map(|b| BranchRef::new(self.r.project.clone(), b.clone()))
                .chain([self.r.clone()])
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Every branch that will be deleted if `dues` go ahead.
pub fn deleted(dues: &[Due]) -> BTreeSet<BranchRef> {
    dues.iter().flat_map(Due::deletes).collect()
}

/// Expired branches, each project's children before their parents.
pub fn expired(state: &State, now: DateTime<Utc>, include_parents: bool) -> Vec<Due> {
    let mut dues = Vec::new();
    for (name, p) in &state.projects {
        let mut gone: BTreeSet<BranchName> = BTreeSet::new();
        for b in post_order(p) {
            let record = &p.branches[&b];
            let Some(at) = record.expires_at.filter(|t| *t <= now && !b.is_main()) else {
                continue;
            };
            let mut due = Due {
                r: BranchRef::new(name.clone(), b.clone()),
                action: Action::Delete { with: Vec::new() },
                why: format!("expired at {}", at.format("%Y-%m-%d %H:%M:%S UTC")),
                blocked: None,
            };
            let left: Vec<BranchName> = p
                .subtree_post_order(&b)
                .into_iter()
                .filter(|x| *x != b && !gone.contains(x))
                .collect();
            if let Some(busy) = &record.busy {
                due.blocked = Some(format!(
                    "busy: `velo {}` (pid {}) is working on it",
                    busy.operation, busy.pid
                ));
            } else if left.is_empty() || include_parents {
                gone.extend(left.iter().cloned().chain([b.clone()]));
                due.action = Action::Delete { with: left };
            } else {
                due.blocked = Some(format!(
                    "branches were made from it: {}; `velo gc --include-parents` deletes it with them",
                    list(name, &left)
                ));
            }
            dues.push(due);
        }
    }
    dues
}

/// Every branch of a project, children before parents (branches whose parent is missing
/// count as roots, so none is left out).
fn post_order(p: &Project) -> Vec<BranchName> {
    p.branches
        .iter()
        .filter(|(_, b)| {
            b.parent
                .as_ref()
                .is_none_or(|x| !p.branches.contains_key(x))
        })
        .flat_map(|(name, _)| p.subtree_post_order(name))
        .collect()
}

fn list(project: &ProjectName, names: &[BranchName]) -> String {
    names
        .iter()
        .map(|b| format!("{project}/{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A running branch whose use gc asks about, with its project's idle limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub r: BranchRef,
    pub limit: Duration,
}

/// The branches to ask about: meant to run, in a project with an idle stop, neither main nor
/// busy nor about to be deleted.
pub fn idle_candidates(state: &State, deleted: &BTreeSet<BranchRef>) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (name, p) in &state.projects {
        let Some(limit) = p.idle_stop_seconds.map(Duration::from_secs) else {
            continue;
        };
        for (bn, b) in &p.branches {
            let r = BranchRef::new(name.clone(), bn.clone());
            if bn.is_main()
                || b.desired != RunState::Running
                || b.busy.is_some()
                || deleted.contains(&r)
            {
                continue;
            }
            out.push(Candidate { r, limit });
        }
    }
    out
}

/// What a branch's server said: how many clients it has now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub candidate: Candidate,
    pub clients: u64,
}

/// Judges what the servers said: the branches due to be stopped, and those gc records as
/// used now (a client is connected, or gc sees the branch for the first time).
pub fn idle(
    state: &State,
    seen: &[Seen],
    now: DateTime<Utc>,
    include_parents: bool,
) -> (Vec<Due>, Vec<BranchRef>) {
    let (mut dues, mut used) = (Vec::new(), Vec::new());
    for s in seen {
        let r = &s.candidate.r;
        let Some(p) = state.projects.get(&r.project) else {
            continue;
        };
        let Some(b) = p.branch(&r.branch) else {
            continue;
        };
        let since = match judge(b.last_used_at, s.clients, now, s.candidate.limit) {
            Use::Connected | Use::FirstSeen => {
                used.push(r.clone());
                continue;
            }
            Use::Quiet { .. } => continue,
            Use::Idle { since } => since,
        };
        let children = p.children_of(&r.branch);
        let blocked = (!children.is_empty() && !include_parents).then(|| {
            format!(
                "branches were made from it: {}; `velo gc --include-parents` stops it too",
                list(&r.project, &children)
            )
        });
        dues.push(Due {
            r: r.clone(),
            action: Action::Stop { last_used: since },
            why: format!(
                "no client since {} ({}; idle stop {})",
                since.format("%Y-%m-%d %H:%M:%S UTC"),
                rounded(now - since),
                humantime::format_duration(s.candidate.limit)
            ),
            blocked,
        });
    }
    (dues, used)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
