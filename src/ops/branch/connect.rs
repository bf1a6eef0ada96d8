//! Connecting to a branch in one step: its URL, its libpq environment, or psql itself.

use anyhow::{Context as _, Result, bail};

use super::super::server::{self, HOST_IP};
use super::super::{Ctx, follow, get_branch, get_project};
use crate::names::BranchRef;
use crate::state::{Branch, Project, RunState};

/// `postgresql://user[:password]@127.0.0.1:port/database`.
pub fn url(project: &Project, branch: &Branch, with_password: bool) -> String {
    let who = if with_password {
        format!("{}:{}", project.user, project.password)
    } else {
        project.user.clone()
    };
    format!(
        "postgresql://{who}@{HOST_IP}:{}/{}",
        branch.port, project.database
    )
}

/// Prints a branch's URL, with its password if asked.
pub fn print_url(ctx: &Ctx, r: &BranchRef, with_password: bool) -> Result<()> {
    let state = ctx.store.read()?;
    let p = get_project(&state, &r.project)?;
    let b = get_branch(p, r)?;
    if with_password {
        follow::password_check(p, r)?;
    }
    ctx.shell.out(&url(p, b, with_password));
    Ok(())
}

/// Prints `export NAME='value'` lines of libpq's variables and `DATABASE_URL`, for `eval`.
pub fn env(ctx: &Ctx, r: &BranchRef) -> Result<()> {
    let state = ctx.store.read()?;
    let p = get_project(&state, &r.project)?;
    let b = get_branch(p, r)?;
    follow::password_check(p, r)?;
    let vars = [
        ("PGHOST", HOST_IP.to_string()),
        ("PGPORT", b.port.to_string()),
        ("PGUSER", p.user.clone()),
        ("PGPASSWORD", p.password.clone()),
        ("PGDATABASE", p.database.clone()),
        ("DATABASE_URL", url(p, b, true)),
    ];
    for (name, value) in vars {
        ctx.shell
            .out(&format!("export {name}='{}'", value.replace('\'', "'\\''")));
    }
    Ok(())
}

/// Runs `psql` on a branch over its private socket (no password needed, none shown), passing
/// `args` on; returns psql's exit code. A branch `velo gc` stopped for idleness is started
/// first; one stopped by hand stays stopped.
pub async fn psql(ctx: &Ctx, r: &BranchRef, args: &[String]) -> Result<i32> {
    let state = ctx.store.read()?;
    let p = get_project(&state, &r.project)?;
    let b = get_branch(p, r)?;
    if b.desired == RunState::Stopped {
        let Some(at) = b.idle_stopped_at else {
            bail!("branch `{r}` is stopped: `velo branch start {r}` first");
        };
        ctx.shell.note(&format!(
            "`{r}` was stopped by `velo gc` for idleness at {}; starting it",
            at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
        super::run::start(ctx, r).await?;
    }
    let status = tokio::process::Command::new("psql")
        .args(args)
        .env("PGHOST", server::socket_dir(ctx, b.port))
        .env("PGPORT", b.port.to_string())
        .env("PGUSER", &p.user)
        .env("PGDATABASE", &p.database)
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .status()
        .await
        .context("running psql (install the PostgreSQL client: `apt install postgresql-client`)")?;
    Ok(status.code().unwrap_or(1))
}
