//! `velo status`: storage usage and every project and branch at a glance.

use std::collections::BTreeSet;

use anyhow::Result;
use futures_util::future::try_join_all;
use serde_json::json;

use super::branch::{branch_json, observe};
use super::{Ctx, background, follow};
use crate::state::StorageRecord;
use crate::ui::human_bytes;

pub async fn status(ctx: &Ctx, as_json: bool) -> Result<()> {
    let state = ctx.store.read()?;
    let records: BTreeSet<&StorageRecord> = state.projects.values().map(|p| &p.storage).collect();
    // Every storage and every project is asked at once: each is a `zpool`/`zfs`, file system
    // or runtime call.
    let (spaces, projects) = tokio::join!(
        try_join_all(records.into_iter().map(|record| async move {
            Ok::<_, anyhow::Error>(ctx.backends.storage(record)?.space().await?)
        })),
        try_join_all(
            state
                .projects
                .iter()
                .map(|(name, p)| async move { observe(ctx, name, p).await.map(|o| (p, o)) })
        ),
    );
    let mut spaces = spaces?;
    spaces.sort_by(|a, b| a.name.cmp(&b.name));
    spaces.dedup_by(|a, b| a.name == b.name);
    let space_json: Vec<_> = spaces
        .iter()
        .map(|s| {
            json!({
                "pool": s.name, "storage": s.name, "health": s.health,
                "used_bytes": s.used, "available_bytes": s.available,
            })
        })
        .collect();
    let space_rows = spaces
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.health.clone(),
                human_bytes(s.used),
                human_bytes(s.available),
            ]
        })
        .collect();
    let mut rows = Vec::new();
    let mut branch_rows = Vec::new();
    let mut following = Vec::new();
    for (p, observed) in projects? {
        for o in observed {
            let b = p.branch(&o.r.branch).expect("observed from the project");
            let mut record = branch_json(p, b, &o);
            if let Some((json, words)) = follow::observed(ctx, p, &o.r).await {
                record["replication"] = json;
                following.push(format!("`{}` {words}", o.r));
            }
            branch_rows.push(record);
            rows.push(vec![
                o.r.to_string(),
                o.live.clone(),
                b.port.to_string(),
                o.used.map(human_bytes).unwrap_or_else(|| "?".into()),
            ]);
        }
    }
    let pending = background::pending(&state);
    if as_json {
        ctx.shell.json(&json!({
            "pools": space_json, "branches": branch_rows, "pending": pending,
        }));
        return Ok(());
    }
    for p in &pending {
        ctx.shell.note(&format!("Being finished: {p}"));
    }
    if rows.is_empty() {
        ctx.shell
            .note("No projects yet: create one with `velo project create <name>`.");
        return Ok(());
    }
    ctx.shell
        .table(&["STORAGE", "HEALTH", "USED", "AVAILABLE"], space_rows);
    ctx.shell.table(&["BRANCH", "STATUS", "PORT", "USED"], rows);
    for line in following {
        ctx.shell.note(&line);
    }
    Ok(())
}
