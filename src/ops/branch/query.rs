//! Listing branches, one branch, and how to connect to one.

use anyhow::Result;
use serde_json::json;

use super::super::server::{self, HOST_IP};
use super::super::{Ctx, get_branch, get_project};
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
    })
}

pub async fn list(ctx: &Ctx, project: Option<&ProjectName>, as_json: bool) -> Result<()> {
    let state = ctx.store.read()?;
    let projects: Vec<(&ProjectName, &Project)> = match project {
        Some(n) => vec![(n, get_project(&state, n)?)],
        None => state.projects.iter().collect(),
    };
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for (name, p) in projects {
        for o in observe(ctx, name, p).await? {
            let b = p.branch(&o.r.branch).expect("observed from the project");
            json_rows.push(branch_json(p, b, &o));
            rows.push(vec![
                o.r.to_string(),
                b.parent
                    .as_ref()
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "-".into()),
                o.live,
                b.port.to_string(),
                o.used.map(human_bytes).unwrap_or_else(|| "?".into()),
                b.created_at.format("%Y-%m-%d %H:%M").to_string(),
            ]);
        }
    }
    if as_json {
        ctx.shell.json(&json!(json_rows));
    } else if rows.is_empty() {
        ctx.shell
            .note("No branches: create a project with `velo project create <name>`.");
    } else {
        ctx.shell.table(
            &[
                "BRANCH",
                "PARENT",
                "STATUS",
                "PORT",
                "USED",
                "CREATED (UTC)",
            ],
            rows,
        );
    }
    Ok(())
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
    if as_json {
        ctx.shell.json(&branch_json(p, b, &o));
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
    ];
    ctx.shell.table(&["FIELD", "VALUE"], rows);
    Ok(())
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
