//! `velo status`: pool usage and every project and branch at a glance.

use std::collections::BTreeSet;

use anyhow::Result;
use futures_util::future::try_join_all;
use serde_json::json;

use super::Ctx;
use super::branch::{branch_json, observe};
use crate::ui::human_bytes;

pub async fn status(ctx: &Ctx, as_json: bool) -> Result<()> {
    let state = ctx.store.read()?;
    let pools: BTreeSet<&str> = state.projects.values().map(|p| p.pool.as_str()).collect();
    // Every pool and every project is asked at once: each is a `zpool`/`zfs` or Docker call.
    let (pools, projects) = tokio::join!(
        try_join_all(pools.into_iter().map(|pool| async move {
            let (space, health) =
                tokio::try_join!(ctx.zfs.pool_space(pool), ctx.zfs.pool_health(pool))?;
            Ok::<_, anyhow::Error>((pool, space, health))
        })),
        try_join_all(
            state
                .projects
                .iter()
                .map(|(name, p)| async move { observe(ctx, name, p).await.map(|o| (p, o)) })
        ),
    );
    let mut pool_rows = Vec::new();
    let mut pool_json = Vec::new();
    for (pool, space, health) in pools? {
        pool_json.push(json!({
            "pool": pool, "health": health,
            "used_bytes": space.used, "available_bytes": space.available,
        }));
        pool_rows.push(vec![
            pool.to_string(),
            health,
            human_bytes(space.used),
            human_bytes(space.available),
        ]);
    }
    let mut rows = Vec::new();
    let mut branch_rows = Vec::new();
    for (p, observed) in projects? {
        for (r, live, used) in observed {
            let b = p.branch(&r.branch).expect("observed from the project");
            branch_rows.push(branch_json(p, &r, b, Some(&live), used));
            rows.push(vec![
                r.to_string(),
                live,
                b.port.to_string(),
                used.map(human_bytes).unwrap_or_else(|| "?".into()),
            ]);
        }
    }
    if as_json {
        ctx.shell
            .json(&json!({ "pools": pool_json, "branches": branch_rows }));
        return Ok(());
    }
    if rows.is_empty() {
        ctx.shell
            .note("No projects yet: create one with `velo project create <name>`.");
        return Ok(());
    }
    ctx.shell
        .table(&["POOL", "HEALTH", "USED", "AVAILABLE"], pool_rows);
    ctx.shell.table(&["BRANCH", "STATUS", "PORT", "USED"], rows);
    Ok(())
}
