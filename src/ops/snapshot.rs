//! Labelled snapshots: create, list, delete, and retention cleanup for cron.
//!
//! A snapshot is consistent: CHECKPOINT then an atomic snapshot, or a copy under PostgreSQL's
//! backup API where the storage has no atomic snapshots ([`super::generation::take_snapshot`]).
//! Storage and state change together: a snapshot leaves the state only once it is destroyed.

use anyhow::{Result, anyhow, bail};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::json;

use std::time::Duration;

use super::background::{self, tidy};
use super::generation::take_snapshot;
use super::journal::Intent;
use super::project::DELETE_WAIT;
use super::{Ctx, Undo, claim_waiting, get_branch, get_project, get_project_mut};
use crate::names::{BranchName, BranchRef, Label, ProjectName, SnapshotId, SnapshotRef, VolumeId};
use crate::state::{Finish, Forget, Project, Recovery, Snapshot, State};
use crate::ui::human_bytes;

/// The shortest id prefix accepted, so a short label is never mistaken for an id.
const MIN_PREFIX: usize = 4;

/// Finds a snapshot of a project by label, full id or unique id prefix.
pub fn resolve<'a>(p: &'a Project, project: &ProjectName, key: &str) -> Result<&'a Snapshot> {
    let matches: Vec<&Snapshot> = p
        .snapshots
        .iter()
        .filter(|s| {
            s.id.as_str() == key
                || s.label.as_ref().is_some_and(|l| l.as_str() == key)
                || (key.len() >= MIN_PREFIX && s.id.as_str().starts_with(key))
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => {
            if p.branches.values().any(|b| {
                b.origin
                    .as_ref()
                    .is_some_and(|o| o.snapshot.as_str() == key)
            }) {
                bail!(
                    "`{key}` is a branch's base snapshot, which velo manages itself; take a snapshot with `velo snapshot create`"
                );
            }
            bail!("project `{project}` has no snapshot `{key}` (see `velo snapshot list`)")
        }
        many => bail!(
            "`{key}` matches several snapshots of `{project}`: {}; give more of the id",
            many.iter()
                .map(|s| format!("{} ({}/{})", s.id, project, s.branch))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Finds a snapshot in any project (for commands that name no project).
fn resolve_anywhere(state: &State, key: &str) -> Result<(ProjectName, Snapshot)> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for (name, p) in &state.projects {
        match resolve(p, name, key) {
            Ok(s) => found.push((name.clone(), s.clone())),
            Err(e) if e.to_string().contains("matches several") => errors.push(e),
            Err(_) => {}
        }
    }
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no snapshot `{key}` (see `velo snapshot list`)"),
        _ => bail!(
            "`{key}` matches snapshots in several projects ({}); give the id",
            found
                .iter()
                .map(|(p, s)| format!("{} in {p}", s.id))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Takes a snapshot; waits up to `wait` while another command changes the branch (a cron job
/// that fires during a reset waits for it rather than failing).
pub async fn create(ctx: &Ctx, r: &BranchRef, label: Option<Label>, wait: Duration) -> Result<()> {
    let id = SnapshotId::random();
    let (project, branch, mut undo) = claim_waiting(ctx, wait, |s| {
        let p = get_project_mut(s, &r.project)?;
        if let Some(l) = &label
            && let Some(other) = p.snapshots.iter().find(|x| x.label.as_ref() == Some(l))
        {
            bail!(
                "project `{}` already has a snapshot labelled `{l}` ({}, of {}/{}); pick another label or delete that one",
                r.project, other.id, r.project, other.branch
            );
        }
        let b = p.branches.get_mut(&r.branch).ok_or_else(|| {
            anyhow!("branch `{r}` does not exist (see `velo branch list {}`)", r.project)
        })?;
        super::claim(b, r, "snapshot create")?;
        let b = b.clone();
        let p = p.clone();
        let undo = Undo::begin(
            s,
            Intent {
                command: "snapshot create",
                project: &r.project,
                branches: vec![r.branch.clone()],
                pins: Vec::new(),
                recovery: Recovery::RollBack {
                    forget: Forget::Nothing,
                },
            },
        );
        Ok((p, b, undo))
    })
    .await?;
    let taken = take_snapshot(ctx, &project, r, &branch, &id, &mut undo).await;
    let recorded = match taken {
        Ok(origin) => ctx.store.update(|s| {
            let p = get_project_mut(s, &r.project)?;
            p.snapshots.push(Snapshot {
                id: id.clone(),
                label: label.clone(),
                branch: r.branch.clone(),
                generation: origin.generation,
                created_at: origin.created_at,
                wal_from: origin.wal_from,
            });
            undo.commit(s);
            Ok::<_, anyhow::Error>(())
        }),
        Err(e) => Err(e),
    };
    if let Err(e) = recorded {
        let how = super::rolled_back(undo.roll_back(ctx).await);
        return Err(e.context(format!("snapshotting `{r}` ({how})")));
    }
    let shown = label
        .map(|l| format!("{id} ({l})"))
        .unwrap_or_else(|| id.to_string());
    ctx.shell.note(&format!("Snapshot {shown} of `{r}` taken."));
    ctx.shell.out(id.as_str());
    Ok(())
}

pub async fn list(ctx: &Ctx, scope: Option<&str>, as_json: bool) -> Result<()> {
    let state = ctx.store.read()?;
    let (projects, only): (Vec<&ProjectName>, Option<BranchRef>) = match scope {
        None => (state.projects.keys().collect(), None),
        Some(s) if s.contains('/') => {
            let r: BranchRef = s.parse()?;
            get_branch(get_project(&state, &r.project)?, &r)?;
            let key = state
                .projects
                .keys()
                .find(|k| **k == r.project)
                .expect("checked");
            (vec![key], Some(r))
        }
        Some(s) => {
            let name: ProjectName = s.parse()?;
            get_project(&state, &name)?;
            (
                vec![
                    state
                        .projects
                        .keys()
                        .find(|k| **k == name)
                        .expect("checked"),
                ],
                None,
            )
        }
    };
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for name in projects {
        let p = &state.projects[name];
        let storage = ctx.storage(p)?;
        let sizes = storage.usage(name).await?;
        for s in &p.snapshots {
            if only.as_ref().is_some_and(|r| r.branch != s.branch) {
                continue;
            }
            let used = sizes
                .get(&storage.snapshot_name_of(&snapshot_ref(name, s)))
                .copied();
            json_rows.push(json!({
                "id": s.id,
                "label": s.label.as_ref().map(Label::as_str),
                "project": name.as_str(),
                "branch": s.branch.as_str(),
                "generation": s.generation,
                "created_at": s.created_at,
                "used_bytes": used,
                "wal_from": s.wal_from,
                "dependents": p.cloned_from(&s.branch, s.generation, &s.id).iter().map(BranchName::as_str).collect::<Vec<_>>(),
            }));
            rows.push(vec![
                s.id.to_string(),
                s.label.as_ref().map(|l| l.to_string()).unwrap_or_default(),
                format!("{name}/{}", s.branch),
                s.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                used.map(human_bytes).unwrap_or_else(|| "?".into()),
            ]);
        }
    }
    if as_json {
        ctx.shell.json(&json!(json_rows));
    } else if rows.is_empty() {
        ctx.shell
            .note("No snapshots: take one with `velo snapshot create <project>/<branch>`.");
    } else {
        ctx.shell
            .table(&["ID", "LABEL", "BRANCH", "TAKEN (UTC)", "SIZE"], rows);
    }
    Ok(())
}

pub async fn delete(ctx: &Ctx, key: &str) -> Result<()> {
    let state = ctx.store.read()?;
    let (project_name, snapshot) = resolve_anywhere(&state, key)?;
    destroy(ctx, &project_name, &snapshot).await?;
    ctx.shell
        .note(&format!("Snapshot {} deleted.", snapshot.id));
    Ok(())
}

/// Destroys one snapshot in ZFS, then forgets it; refuses if a branch was cloned from it.
async fn destroy(ctx: &Ctx, project_name: &ProjectName, snapshot: &Snapshot) -> Result<()> {
    // A deleted branch's volume may still be a clone of it.
    let what = format!("the deleted branches of `{project_name}`");
    background::wait_for(ctx, project_name, &what, DELETE_WAIT, |s| {
        s.journal.deleting(project_name, None)
    })
    .await?;
    let undo = ctx.store.update(|s| {
        let p = get_project(s, project_name)?;
        if let Some(busy) = p.branch(&snapshot.branch).and_then(|b| b.busy.as_ref()) {
            bail!(
                "`{project_name}/{}` is busy with `velo {}`; snapshot {} was left alone, try again when it is done",
                snapshot.branch,
                busy.operation,
                snapshot.id
            );
        }
        let deps = p.cloned_from(&snapshot.branch, snapshot.generation, &snapshot.id);
        if deps.contains(&snapshot.branch) {
            bail!(
                "snapshot {} is in use: `{project_name}/{}` was restored from it and runs on it; restore or reset that branch to another point first",
                snapshot.id,
                snapshot.branch
            );
        }
        if !deps.is_empty() {
            bail!(
                "snapshot {} has branches cloned from it: {}; delete those branches first",
                snapshot.id,
                deps.iter()
                    .map(|b| format!("{project_name}/{b}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(Undo::begin(
            s,
            Intent {
                command: "snapshot delete",
                project: project_name,
                branches: Vec::new(),
                pins: Vec::new(),
                recovery: Recovery::RollForward {
                    finish: Finish::DeleteSnapshot {
                        id: snapshot.id.clone(),
                    },
                },
            },
        ))
    })?;
    if let Err(e) = destroy_held(ctx, project_name, &snapshot.id, &undo).await {
        ctx.store.update(|s| {
            undo.abandon(s);
            Ok::<_, anyhow::Error>(())
        })?;
        return Err(e);
    }
    drop(undo);
    tidy(ctx, project_name).await;
    Ok(())
}

/// Destroys the snapshot `id` that an open delete operation holds, then forgets it and closes
/// the operation in one transaction. Either part may already be done.
pub async fn destroy_held(
    ctx: &Ctx,
    project_name: &ProjectName,
    id: &SnapshotId,
    undo: &Undo,
) -> Result<()> {
    let state = ctx.store.read()?;
    let found = state
        .projects
        .get(project_name)
        .and_then(|p| Some((p, p.snapshots.iter().find(|s| s.id == *id)?)));
    if let Some((project, snapshot)) = found {
        undo.step(ctx, "delete-snapshot").await?;
        ctx.storage(project)?
            .destroy_snapshot(&snapshot_ref(project_name, snapshot))
            .await?;
    }
    ctx.store.update(|s| {
        if let Some(p) = s.projects.get_mut(project_name) {
            p.snapshots.retain(|x| x.id != *id);
        }
        undo.commit(s);
        Ok::<_, anyhow::Error>(())
    })
}

/// Where a user's snapshot is, for the project's storage.
fn snapshot_ref(project: &ProjectName, s: &Snapshot) -> SnapshotRef {
    SnapshotRef {
        volume: VolumeId::new(
            &BranchRef::new(project.clone(), s.branch.clone()),
            s.generation,
        ),
        id: s.id.clone(),
    }
}

/// The moment `days` days ago; an error, not a panic, for a number of days too large.
pub fn days_ago(days: u32) -> Result<DateTime<Utc>> {
    ChronoDuration::try_days(i64::from(days))
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .ok_or_else(|| anyhow!("{days} days ago is before the earliest time velo can represent; give a smaller --days"))
}

/// What `cleanup` applies to.
pub enum Scope {
    Branch(BranchRef),
    All,
}

/// Deletes snapshots older than `days` (never a branch's base snapshot, never one a branch was
/// cloned from). With `dry_run`, lists exactly what would go.
pub async fn cleanup(ctx: &Ctx, scope: Scope, days: u32, dry_run: bool) -> Result<()> {
    let cutoff = days_ago(days)?;
    let state = ctx.store.read()?;
    if let Scope::Branch(r) = &scope {
        get_branch(get_project(&state, &r.project)?, r)?;
    }
    let mut doomed = Vec::new();
    let mut kept = Vec::new();
    for (name, p) in &state.projects {
        for s in &p.snapshots {
            let in_scope = match &scope {
                Scope::All => true,
                Scope::Branch(r) => r.project == *name && r.branch == s.branch,
            };
            if !in_scope || s.created_at >= cutoff {
                continue;
            }
            let deps = p.cloned_from(&s.branch, s.generation, &s.id);
            if deps.is_empty() {
                doomed.push((name.clone(), s.clone()));
            } else {
                kept.push((name.clone(), s.clone(), deps));
            }
        }
    }
    for (name, s, deps) in &kept {
        ctx.shell.note(&format!(
            "keeping {} ({name}/{}): branches were cloned from it: {}",
            s.id,
            s.branch,
            deps.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if dry_run {
        for (name, s) in &doomed {
            ctx.shell.out(&format!(
                "would delete {} {name}/{} {}",
                s.id,
                s.branch,
                s.created_at.to_rfc3339()
            ));
        }
        ctx.shell.note(&format!(
            "{} snapshot(s) older than {days} days would be deleted.",
            doomed.len()
        ));
        return Ok(());
    }
    let mut failed = 0;
    for (name, s) in &doomed {
        match destroy(ctx, name, s).await {
            Ok(()) => ctx
                .shell
                .out(&format!("deleted {} {name}/{}", s.id, s.branch)),
            Err(e) => {
                failed += 1;
                ctx.shell.warn(&format!("could not delete {}: {e:#}", s.id));
            }
        }
    }
    ctx.shell.note(&format!(
        "{} snapshot(s) deleted, {failed} failed.",
        doomed.len() - failed
    ));
    if failed > 0 {
        bail!("{failed} snapshot(s) could not be deleted; see the warnings above");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use std::collections::BTreeMap;

    fn project_with(ids: &[(&str, Option<&str>)]) -> Project {
        Project {
            storage: crate::state::StorageRecord::Copy { dir: "/d".into() },
            runtime: crate::state::RuntimeRecord::Docker { image: "i".into() },
            chosen: None,
            prepared_from: None,
            pg_version: None,
            user: "postgres".into(),
            password: "x".into(),
            database: "postgres".into(),
            pg_uid: 70,
            pg_gid: 70,
            created_at: Utc::now(),
            branches: BTreeMap::new(),
            imported: None,
            snapshots: ids
                .iter()
                .map(|(id, label)| Snapshot {
                    id: id.parse().unwrap(),
                    label: label.map(|l| l.parse().unwrap()),
                    branch: BranchName::main(),
                    generation: 0,
                    created_at: Utc::now(),
                    wal_from: None,
                })
                .collect(),
            idle_stop_seconds: None,
        }
    }

    #[test]
    fn a_huge_number_of_days_is_an_error_not_a_panic() {
        assert!(days_ago(u32::MAX).is_err());
        assert!(days_ago(99_999_999).is_err());
        assert!(days_ago(7).is_ok());
    }

    #[test]
    fn resolves_ids_prefixes_and_labels() {
        let name: ProjectName = "demo".parse().unwrap();
        let p = project_with(&[("abcd11112222", Some("before")), ("abcd33334444", None)]);
        let id = |key: &str| resolve(&p, &name, key).unwrap().id.to_string();
        assert_eq!(id("before"), "abcd11112222");
        assert_eq!(id("abcd3"), "abcd33334444");
        assert_eq!(id("abcd33334444"), "abcd33334444");
        let err = resolve(&p, &name, "abcd").unwrap_err().to_string();
        assert!(
            err.contains("several") && err.contains("abcd11112222"),
            "{err}"
        );
        assert!(
            resolve(&p, &name, "abc").is_err(),
            "3 characters is too short for a prefix"
        );
        assert!(resolve(&p, &name, "ffff").is_err());
    }
}
