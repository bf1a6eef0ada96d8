//! Listing branches, one branch, and how to connect to one.

use std::collections::BTreeMap;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::super::server::{self, HOST_IP};
use super::super::{Ctx, follow, get_branch, get_project};
use super::tree;
use crate::names::{self, BranchName, BranchRef, ProjectName};
use crate::state::{Branch, Project};
use crate::ui::human_bytes;

/// A branch as `list` and `get` see it.
pub struct Observed {
    pub r: BranchRef,
    /// The server's state as a word (`running`, `stopped`, `missing`).
    pub live: String,
    /// The storage's name for its current volume.
    pub volume: String,
    pub used: Option<u64>,
}

/// Live server states and volume sizes of a project's branches: one listing of the runtime
/// and one of the storage, whatever the number of branches.
pub async fn observe(ctx: &Ctx, name: &ProjectName, p: &Project) -> Result<Vec<Observed>> {
    let (storage, runtime) = (ctx.storage(p)?, ctx.runtime(p)?);
    let (servers, sizes) = tokio::try_join!(
        async { Ok::<_, anyhow::Error>(runtime.list_managed().await?) },
        async { Ok(storage.usage(name).await?) },
    )?;
    Ok(p.branches
        .iter()
        .map(|(bn, b)| {
            let r = BranchRef::new(name.clone(), bn.clone());
            let server = names::server_name(&r);
            let live = servers
                .iter()
                .find(|s| s.name == server)
                .map(|s| if s.running { "running" } else { "stopped" })
                .unwrap_or("missing")
                .to_string();
            let volume = storage.name_of(&b.volume(&r));
            let used = sizes.get(&volume).copied();
            Observed {
                r,
                live,
                volume,
                used,
            }
        })
        .collect())
}

/// One branch as list/get show it (never the password).
pub fn branch_json(project: &Project, b: &Branch, o: &Observed) -> serde_json::Value {
    json!({
        "project": o.r.project.as_str(),
        "branch": o.r.branch.as_str(),
        "parent": b.parent.as_ref().map(BranchName::as_str),
        "port": b.port,
        "url": server::url(project, b),
        "desired": b.desired,
        "container": o.live,
        "server": names::server_name(&o.r),
        "dataset": o.volume,
        "volume": o.volume,
        "used_bytes": o.used,
        "busy": b.busy.as_ref().map(|x| x.operation.clone()),
        "created_at": b.created_at,
        "expires_at": b.expires_at,
        "last_used_at": b.last_used_at,
        "idle_stopped_at": b.idle_stopped_at,
    })
}

/// How `branch list` shows branches.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListOptions {
    pub json: bool,
    /// Children under their parents (`--tree`).
    pub tree: bool,
}

/// When a branch expires, for a table: `-`, the time, or the time and `(expired)`.
fn expiry_cell(b: &Branch, now: DateTime<Utc>) -> String {
    match b.expires_at {
        None => "-".into(),
        Some(t) if t <= now => format!("{} (expired)", t.format("%Y-%m-%d %H:%M")),
        Some(t) => t.format("%Y-%m-%d %H:%M").to_string(),
    }
}

pub async fn list(ctx: &Ctx, project: Option<&ProjectName>, opts: ListOptions) -> Result<()> {
    let state = ctx.store.read()?;
    let projects: Vec<(&ProjectName, &Project)> = match project {
        Some(n) => vec![(n, get_project(&state, n)?)],
        None => state.projects.iter().collect(),
    };
    let glyphs = if ctx.shell.stdout_is_terminal() {
        &tree::BOX
    } else {
        &tree::ASCII
    };
    let now = Utc::now();
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for (name, p) in projects {
        let mut seen: BTreeMap<BranchName, Observed> = observe(ctx, name, p)
            .await?
            .into_iter()
            .map(|o| (o.r.branch.clone(), o))
            .collect();
        if opts.tree && opts.json {
            for root in tree::roots(p) {
                json_rows.push(nested(p, &root, &seen));
            }
            continue;
        }
        let order: Vec<(BranchName, String)> = if opts.tree {
            tree::lines(p, glyphs)
        } else {
            p.branches
                .keys()
                .map(|b| (b.clone(), String::new()))
                .collect()
        };
        for (bn, prefix) in order {
            let (Some(b), Some(o)) = (p.branch(&bn), seen.remove(&bn)) else {
                continue;
            };
            json_rows.push(branch_json(p, b, &o));
            let mut row = vec![if opts.tree && !prefix.is_empty() {
                format!("{prefix}{bn}")
            } else {
                o.r.to_string()
            }];
            if !opts.tree {
                row.push(
                    b.parent
                        .as_ref()
                        .map(|x| x.to_string())
                        .unwrap_or_else(|| "-".into()),
                );
            }
            row.extend([
                o.live,
                b.port.to_string(),
                o.used.map(human_bytes).unwrap_or_else(|| "?".into()),
                expiry_cell(b, now),
                b.created_at.format("%Y-%m-%d %H:%M").to_string(),
            ]);
            rows.push(row);
        }
    }
    if opts.json {
        ctx.shell.json(&json!(json_rows));
    } else if rows.is_empty() {
        ctx.shell
            .note("No branches: create a project with `velo project create <name>`.");
    } else {
        let mut headers = vec!["BRANCH"];
        if !opts.tree {
            headers.push("PARENT");
        }
        headers.extend(["STATUS", "PORT", "USED", "EXPIRES (UTC)", "CREATED (UTC)"]);
        ctx.shell.table(&headers, rows);
    }
    Ok(())
}

/// A branch and, under `children`, the branches made from it, as JSON.
fn nested(
    p: &Project,
    name: &BranchName,
    seen: &BTreeMap<BranchName, Observed>,
) -> serde_json::Value {
    let mut value = match (p.branch(name), seen.get(name)) {
        (Some(b), Some(o)) => branch_json(p, b, o),
        _ => json!({ "branch": name.as_str() }),
    };
    value["children"] = p
        .children_of(name)
        .iter()
        .map(|c| nested(p, c, seen))
        .collect();
    value
}

pub async fn get(ctx: &Ctx, r: &BranchRef, as_json: bool) -> Result<()> {
    let state = ctx.store.read()?;
    let p = get_project(&state, &r.project)?;
    let b = get_branch(p, r)?;
    let o = observe(ctx, &r.project, p)
        .await?
        .into_iter()
        .find(|o| o.r == *r)
        .expect("branch is in the project");
    let replication = follow::observed(ctx, p, r).await;
    if as_json {
        let mut record = branch_json(p, b, &o);
        if let Some((json, _)) = replication {
            record["replication"] = json;
        }
        ctx.shell.json(&record);
        return Ok(());
    }
    let rows = vec![
        vec!["branch".into(), r.to_string()],
        vec![
            "parent".into(),
            b.parent
                .as_ref()
                .map(|x| format!("{}/{x}", r.project))
                .unwrap_or_else(|| "-".into()),
        ],
        vec!["status".into(), o.live],
        vec!["url".into(), server::url(p, b)],
        vec!["volume".into(), o.volume],
        vec!["server".into(), names::server_name(r)],
        vec![
            "used".into(),
            o.used.map(human_bytes).unwrap_or_else(|| "?".into()),
        ],
        vec![
            "created (UTC)".into(),
            b.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        ],
        vec!["expires (UTC)".into(), expires_in(b, Utc::now())],
    ];
    let mut rows = rows;
    if let Some((_, words)) = replication {
        rows.push(vec!["replication".into(), words]);
    }
    if let Some(at) = b.idle_stopped_at {
        rows.push(vec![
            "stopped by gc (UTC)".into(),
            format!(
                "{} for idleness; `velo branch start` or `velo branch psql` starts it",
                at.format("%Y-%m-%d %H:%M:%S")
            ),
        ]);
    }
    ctx.shell.table(&["FIELD", "VALUE"], rows);
    Ok(())
}

/// When a branch expires, for `branch get`: the time and how far off it is.
fn expires_in(b: &Branch, now: DateTime<Utc>) -> String {
    match b.expires_at {
        None => "never".into(),
        Some(t) if t <= now => format!(
            "{} (expired; the next `velo gc` deletes it)",
            t.format("%Y-%m-%d %H:%M:%S")
        ),
        Some(t) => format!(
            "{} (in {})",
            t.format("%Y-%m-%d %H:%M:%S"),
            super::super::lifetime::rounded(t - now)
        ),
    }
}

/// Prints what a command that made or changed a branch shows: the branch's record as `get
/// --json` prints it, or its URL.
pub async fn show(ctx: &Ctx, r: &BranchRef, as_json: bool) -> Result<()> {
    if as_json {
        return get(ctx, r, true).await;
    }
    let state = ctx.store.read()?;
    let p = get_project(&state, &r.project)?;
    ctx.shell.out(&server::url(p, get_branch(p, r)?));
    Ok(())
}

pub async fn password(ctx: &Ctx, r: &BranchRef, as_json: bool) -> Result<()> {
    let state = ctx.store.read()?;
    let p = get_project(&state, &r.project)?;
    let b = get_branch(p, r)?;
    follow::password_check(p, r)?;
    let full_url = format!(
        "postgresql://{}:{}@{HOST_IP}:{}/{}",
        p.user, p.password, b.port, p.database
    );
    if as_json {
        ctx.shell.json(&json!({
            "branch": r.to_string(),
            "host": HOST_IP, "port": b.port, "user": p.user,
            "password": p.password, "database": p.database, "url": full_url,
        }));
        return Ok(());
    }
    let rows = vec![
        vec!["host".into(), HOST_IP.to_string()],
        vec!["port".into(), b.port.to_string()],
        vec!["user".into(), p.user.clone()],
        vec!["password".into(), p.password.clone()],
        vec!["database".into(), p.database.clone()],
        vec!["url".into(), full_url],
    ];
    ctx.shell.table(&["FIELD", "VALUE"], rows);
    Ok(())
}
