//! WAL archives: the recoverable window of each branch, point-in-time bases, `wal info` and
//! `wal cleanup`.
//!
//! A branch can be recovered to any moment between its oldest usable snapshot and its newest
//! archived WAL segment. Usable snapshots are those of the branch's current generation: its
//! users' snapshots, the base snapshots of branches made from it, and its own base (the state it
//! started from at its last create, reset or restore).

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::json;

use super::{Ctx, get_branch, get_project, server};
use crate::archive::{self, ArchivedFile, Segment};
use crate::names::{self, BranchRef, ProjectName};
use crate::runtime::ServerStatus;
use crate::state::{Origin, Project};
use crate::ui::human_bytes;

/// Parses a recovery target: RFC 3339 (`2025-10-07T14:30:00Z`), a UTC date and time
/// (`2025-10-07 14:30:00`), or a time ago (`2 hours ago`, `-90m`, `30m`).
pub fn parse_target(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let text = text.trim();
    if let Some(t) = parse_moment(text) {
        return Ok(t);
    }
    let ago = text
        .strip_suffix("ago")
        .map(str::trim)
        .or_else(|| text.strip_prefix('-'))
        .unwrap_or(text);
    let d = humantime::parse_duration(ago).map_err(|_| {
        anyhow!(
            "cannot read `{text}` as a time: give RFC 3339 (2025-10-07T14:30:00Z), a UTC date and time (\"2025-10-07 14:30:00\"), or a time ago (\"2 hours ago\", \"-90m\", \"30m\")"
        )
    })?;
    ChronoDuration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .with_context(|| format!("`{text}` is too long ago: velo cannot represent that moment"))
}

/// Reads a moment written out: RFC 3339 (`2025-10-07T14:30:00Z`, any offset) or a UTC date
/// and time (`2025-10-07 14:30:00`); `None` for anything else (a time ago, say).
pub fn parse_moment(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| humantime::parse_rfc3339_weak(text).ok().map(Into::into))
}

/// The snapshots a branch can be recovered from (its current generation's), oldest first, as
/// origins a new clone would not own.
pub fn pitr_bases(p: &Project, r: &BranchRef) -> Vec<Origin> {
    let Some(source) = p.branch(&r.branch) else {
        return Vec::new();
    };
    let generation = source.generation;
    let mut bases: Vec<Origin> = p
        .snapshots
        .iter()
        .filter(|s| s.branch == r.branch && s.generation == generation)
        .map(|s| s.as_origin())
        .collect();
    for b in p.branches.values() {
        for o in b
            .origin
            .iter()
            .chain(b.retired.iter().filter_map(|g| g.origin.as_ref()))
        {
            if o.branch == r.branch && o.generation == generation {
                bases.push(Origin {
                    owned: false,
                    ..o.clone()
                });
            }
        }
    }
    bases.extend(
        source
            .origin
            .clone()
            .filter(|o| !o.recovered)
            .map(|o| Origin { owned: false, ..o }),
    );
    bases.sort_by_key(|o| o.created_at);
    bases
}

/// What a branch's archive holds and the window it can be recovered to.
struct Window {
    /// The oldest snapshot PITR can start from.
    from: Option<DateTime<Utc>>,
    /// When the newest WAL segment was archived.
    to: Option<DateTime<Utc>>,
    files: Vec<ArchivedFile>,
}

fn window(ctx: &Ctx, p: &Project, r: &BranchRef) -> Result<Window> {
    let b = get_branch(p, r)?;
    let files = ctx
        .archives()
        .list(&r.project, &r.branch, b.generation)
        .with_context(|| format!("reading the WAL archive of `{r}`"))?;
    let from = pitr_bases(p, r).first().map(|o| o.created_at);
    let to = files
        .iter()
        .filter(|f| f.segment().is_some())
        .map(|f| f.modified)
        .max();
    Ok(Window { from, to, files })
}

fn describe(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> String {
    match (from, to) {
        (Some(f), Some(t)) if f <= t => format!("{} to {}", f.to_rfc3339(), t.to_rfc3339()),
        (None, _) => "nothing yet: take a snapshot first (`velo snapshot create`)".into(),
        _ => "nothing yet: no WAL has been archived since the oldest snapshot".into(),
    }
}

/// Picks the newest snapshot of `r` taken at or before `target`, after checking the target is
/// inside the recoverable window.
pub fn pitr_base(ctx: &Ctx, p: &Project, r: &BranchRef, target: DateTime<Utc>) -> Result<Origin> {
    let Window { from, to, .. } = window(ctx, p, r)?;
    let range = describe(from, to);
    if target > Utc::now() {
        bail!(
            "{} is in the future; `{r}` can be recovered to {range}",
            target.to_rfc3339()
        );
    }
    let Some(base) = pitr_bases(p, r)
        .into_iter()
        .rev()
        .find(|o| o.created_at <= target)
    else {
        bail!(
            "{} is before the oldest snapshot of `{r}`; it can be recovered to {range}",
            target.to_rfc3339()
        );
    };
    match to {
        Some(to) if target <= to => Ok(base),
        _ => bail!(
            "{} is beyond the archived WAL of `{r}`; it can be recovered to {range}",
            target.to_rfc3339()
        ),
    }
}

/// If the branch runs, switches it to a new WAL segment and waits until that is archived, so
/// that its archive reaches the present moment.
pub async fn flush_archive(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let state = ctx.store.read()?;
    let p = get_project(&state, &r.project)?;
    let b = get_branch(p, r)?;
    if ctx.runtime(p)?.status(&names::server_name(r)).await? != ServerStatus::Running {
        return Ok(());
    }
    let done = ctx
        .shell
        .step(
            "Archive WAL",
            server::sql(ctx, p, b).flush_wal_archive(Duration::from_secs(15)),
        )
        .await?;
    if !done {
        ctx.shell.warn(&format!(
            "`{r}` has not archived its latest WAL yet; the newest moments may be out of reach"
        ));
    }
    Ok(())
}

/// The branches a `wal` command applies to.
fn scope(
    state_projects: &std::collections::BTreeMap<ProjectName, Project>,
    only: Option<&str>,
) -> Result<Vec<BranchRef>> {
    let all = |name: &ProjectName, p: &Project| {
        p.branches
            .keys()
            .map(|b| BranchRef::new(name.clone(), b.clone()))
            .collect::<Vec<_>>()
    };
    match only {
        None => Ok(state_projects.iter().flat_map(|(n, p)| all(n, p)).collect()),
        Some(s) if s.contains('/') => {
            let r: BranchRef = s.parse()?;
            let p = state_projects.get(&r.project).ok_or_else(|| {
                anyhow!(
                    "project `{}` does not exist (see `velo project list`)",
                    r.project
                )
            })?;
            get_branch(p, &r)?;
            Ok(vec![r])
        }
        Some(s) => {
            let name: ProjectName = s.parse()?;
            let p = state_projects.get(&name).ok_or_else(|| {
                anyhow!("project `{name}` does not exist (see `velo project list`)")
            })?;
            Ok(all(&name, p))
        }
    }
}

pub async fn info(ctx: &Ctx, only: Option<&str>, as_json: bool) -> Result<()> {
    let state = ctx.store.read()?;
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for r in scope(&state.projects, only)? {
        let p = &state.projects[&r.project];
        let b = get_branch(p, &r)?;
        let Window { from, to, files } = window(ctx, p, &r)?;
        let segments: Vec<&ArchivedFile> = files.iter().filter(|f| f.segment().is_some()).collect();
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        let gaps = archive::gaps(&files);
        let recoverable = matches!((from, to), (Some(f), Some(t)) if f <= t);
        json_rows.push(json!({
            "project": r.project.as_str(),
            "branch": r.branch.as_str(),
            "generation": b.generation,
            "archive_dir": ctx.archives().generation_dir(&r.project, &r.branch, b.generation),
            "segments": segments.len(),
            "bytes": bytes,
            "oldest_segment": segments.first().map(|f| f.name.clone()),
            "newest_segment": segments.last().map(|f| f.name.clone()),
            "oldest_archived_at": segments.iter().map(|f| f.modified).min(),
            "newest_archived_at": to,
            "gaps": gaps.iter().map(|(a, b)| json!({"after": a, "before": b})).collect::<Vec<_>>(),
            "recoverable_from": if recoverable { from } else { None },
            "recoverable_to": if recoverable { to } else { None },
        }));
        rows.push(vec![
            r.to_string(),
            segments.len().to_string(),
            human_bytes(bytes),
            segments
                .first()
                .map(|f| f.name.clone())
                .unwrap_or_else(|| "-".into()),
            segments
                .last()
                .map(|f| f.name.clone())
                .unwrap_or_else(|| "-".into()),
            if gaps.is_empty() {
                "none".into()
            } else {
                gaps.len().to_string()
            },
            describe(from, to),
        ]);
    }
    if as_json {
        ctx.shell.json(&json!(json_rows));
    } else {
        ctx.shell.table(
            &[
                "BRANCH",
                "SEGMENTS",
                "SIZE",
                "OLDEST",
                "NEWEST",
                "GAPS",
                "RECOVERABLE (UTC)",
            ],
            rows,
        );
    }
    Ok(())
}

/// Deletes archived WAL older than `days` that no retained snapshot needs for PITR.
pub async fn cleanup(ctx: &Ctx, r: &BranchRef, days: u32, dry_run: bool) -> Result<()> {
    let state = ctx.store.read()?;
    let p = get_project(&state, &r.project)?;
    let b = get_branch(p, r)?;
    let cutoff = super::snapshot::days_ago(days)?;
    let needed_from = pitr_bases(p, r)
        .iter()
        .map(|o| {
            o.wal_from
                .as_deref()
                .and_then(Segment::parse)
                .map(|s| s.place())
                .unwrap_or((0, 0))
        })
        .min();
    let files = ctx.archives().list(&r.project, &r.branch, b.generation)?;
    let dir = ctx
        .archives()
        .generation_dir(&r.project, &r.branch, b.generation);
    let doomed: Vec<&ArchivedFile> = files
        .iter()
        .filter(|f| f.modified < cutoff)
        .filter(|f| match (f.segment(), needed_from) {
            (Some(seg), Some(needed)) => seg.place() < needed,
            (Some(_), None) => true,
            (None, _) => false,
        })
        .collect();
    let freed: u64 = doomed.iter().map(|f| f.size).sum();
    for f in &doomed {
        if dry_run {
            ctx.shell
                .out(&format!("would delete {}", dir.join(&f.name).display()));
        } else {
            std::fs::remove_file(dir.join(&f.name))
                .with_context(|| format!("deleting {}", dir.join(&f.name).display()))?;
            ctx.shell
                .out(&format!("deleted {}", dir.join(&f.name).display()));
        }
    }
    let verb = if dry_run { "would free" } else { "freed" };
    ctx.shell.note(&format!(
        "{} WAL file(s) older than {days} days and not needed by a snapshot: {verb} {}.",
        doomed.len(),
        human_bytes(freed)
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_absolute_and_relative() {
        let now: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
        let at = |s: &str| parse_target(s, now).unwrap().to_rfc3339();
        assert_eq!(at("2025-10-07T14:30:00Z"), "2025-10-07T14:30:00+00:00");
        assert_eq!(at("2025-10-07T16:30:00+02:00"), "2025-10-07T14:30:00+00:00");
        assert_eq!(at("2025-10-07 14:30:00"), "2025-10-07T14:30:00+00:00");
        assert_eq!(at("2 hours ago"), "2026-11-23T10:00:00+00:00");
        assert_eq!(at("-90m"), "2026-11-23T10:30:00+00:00");
        assert_eq!(at("30m"), "2026-11-23T11:30:00+00:00");
        assert_eq!(at("1h 30m ago"), "2026-11-23T10:30:00+00:00");
        assert!(parse_target("yesterday-ish", now).is_err());
        let err = parse_target("99999999 years ago", now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("too long ago"), "{err}");
        assert!(parse_target("", now).is_err());
    }
}
