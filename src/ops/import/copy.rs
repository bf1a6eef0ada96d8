//! The import itself: each database dumped from the source (`pg_dump -Fd -j N`) into the new
//! volume and restored from there (`pg_restore -j N`), or restored from the user's dump, the
//! source's roles first if asked; or the whole cluster copied physically ([`physical`]). Then
//! the `--after-import` SQL; the project's password set; the import server checkpointed and
//! stopped, and everything the import kept beside the data removed.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context as _, Result};
use chrono::Utc;

use super::super::{Ctx, Undo, remove_dir};
use super::jobs::{Jobs, Reach, at};
use super::{Checked, physical, server, server_check, space};
use crate::names::BranchRef;
use crate::pg::quote_ident;
use crate::source::SourceUrl;
use crate::source::messages::TableCount;
use crate::state::{Branch, ImportFrom, Imported, Project, UndoStep};
use crate::ui::Progress;

/// The dump's directory name inside the work directory.
const DUMP: &str = "dump";
/// The roles' SQL inside the work directory.
const ROLES: &str = "roles.sql";

/// Imports into the volume at `root`, which becomes `branch` of `r`, using what [`super::check`]
/// found; leaves it checkpointed, its import server stopped and removed. Returns the import's
/// record.
pub async fn load(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    branch: &Branch,
    root: &Path,
    checked: &Checked,
    undo: &mut Undo,
) -> Result<Imported> {
    let rec = &checked.plan.record;
    let imported_at = Utc::now();
    // Recorded again, now after the volume's own undo: a roll-back removes the import server
    // before it destroys the volume the server has open.
    undo.intend(
        ctx,
        "import-server",
        UndoStep::StopImport {
            branch: r.branch.clone(),
        },
    )
    .await?;
    if rec.follow {
        // A standby cannot be written: no import server, no masking, no password to set.
        if let (Some(slot), Some(url)) = (&rec.slot, checked.plan.url()) {
            let step = UndoStep::DropSlot {
                slot: slot.clone(),
                url: url.clone(),
            };
            undo.intend(ctx, "slot", step).await?;
        }
        undo.step(ctx, "copy").await?;
        physical::copy(ctx, project, r, branch, root, checked).await?;
        physical::make_standby(ctx, project, r, branch, root, checked).await?;
        space::clear(ctx, r, branch.port)?;
        return Ok(Imported {
            imported_at,
            source_version: checked.source_version.clone(),
            ..rec.clone()
        });
    }
    if rec.physical {
        undo.step(ctx, "copy").await?;
        physical::copy(ctx, project, r, branch, root, checked).await?;
        server::start(ctx, project, r, branch, root).await?;
    } else {
        let work = space::make_work_dir(root)?;
        server::start(ctx, project, r, branch, root).await?;
        server_check(ctx, project, branch.port, checked).await?;
        logical(ctx, project, r, branch.port, &work, checked, undo).await?;
        remove_dir(&work)?;
    }
    if let Some(after) = &rec.after_import {
        let db = &checked.databases[0];
        ctx.shell
            .step(
                "After import",
                server::sql(ctx, project, branch.port, db).batch(&after.sql),
            )
            .await
            .with_context(|| {
                format!(
                    "running the --after-import SQL of {} on database `{db}`",
                    after.path.display()
                )
            })?;
    }
    // The prepared cluster's superuser has no password, and the source's roles may have given
    // it one: it gets the project's before anyone can log in over TCP.
    ctx.shell
        .step(
            "Set password",
            server::sql(ctx, project, branch.port, "postgres")
                .set_password(&project.user, &project.password),
        )
        .await?;
    undo.step(ctx, "import-stop").await?;
    server::stop(ctx, project, r, branch.port).await?;
    space::clear(ctx, r, branch.port)?;
    Ok(Imported {
        imported_at,
        source_version: checked.source_version.clone(),
        ..rec.clone()
    })
}

/// The logical copy: the source's roles if asked, then each database dumped and restored
/// through the work directory `work`, into the import server on `port`.
async fn logical(
    ctx: &Ctx,
    project: &Project,
    r: &BranchRef,
    port: u16,
    work: &Path,
    checked: &Checked,
    undo: &mut Undo,
) -> Result<()> {
    let mut jobs = Jobs::new(ctx, project, r, port)?;
    jobs.dirs.work = Some(work.to_path_buf());
    jobs.dirs.socket = Some(space::socket_dir(ctx, port));
    jobs.dirs.secrets = checked.secrets.clone();
    let rec = &checked.plan.record;
    if let ImportFrom::Dump { path } = &rec.from {
        jobs.dirs.input = Some(path.clone());
    }
    if let (ImportFrom::Server { url }, true) = (&rec.from, rec.with_roles) {
        undo.step(ctx, "roles").await?;
        copy_roles(ctx, &jobs, url, rec.role_passwords).await?;
    }
    for (i, db) in checked.databases.iter().enumerate() {
        undo.step(ctx, "copy").await?;
        create_database(ctx, project, port, db).await?;
        let tables = if i == 0 { checked.tables } else { None };
        let restored = match &rec.from {
            ImportFrom::Server { url } => {
                let dumped = dump(ctx, &jobs, url, db, rec.jobs, tables).await?;
                undo.step(ctx, "restore").await?;
                let from = jobs.in_work(DUMP);
                restore(ctx, &jobs, db, &from, rec, Some(dumped)).await
            }
            ImportFrom::Dump { .. } => restore(ctx, &jobs, db, &jobs.input(), rec, tables).await,
        };
        restored?;
        remove_dir(&work.join(DUMP))?;
    }
    Ok(())
}

/// Creates database `db` in the import server (the cluster has `postgres` already).
async fn create_database(ctx: &Ctx, project: &Project, port: u16, db: &str) -> Result<()> {
    if db == "postgres" {
        return Ok(());
    }
    let sql = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(db));
    ctx.shell
        .step(
            &format!("Create database {db}"),
            server::sql(ctx, project, port, "postgres").batch(&sql),
        )
        .await
        .with_context(|| format!("creating database `{db}` for the import"))?;
    Ok(())
}

/// Dumps database `db` of the source into the work directory; returns how many tables it
/// dumped.
async fn dump(
    ctx: &Ctx,
    jobs: &Jobs<'_>,
    url: &SourceUrl,
    db: &str,
    parallel: u32,
    tables: Option<u64>,
) -> Result<u64> {
    let args = vec![
        "--format=directory".into(),
        format!("--jobs={parallel}"),
        "--compress=1".into(),
        "--verbose".into(),
        format!("--file={}", jobs.in_work(DUMP)),
        format!("--dbname={}", url.conninfo(db)),
    ];
    let place = url.place();
    let source = at("pg_dump", url, &place, db, true);
    let progress = ctx.shell.progress(&format!("Dump {db}"), "tables", tables);
    let count = Mutex::new(TableCount::default());
    let out = jobs
        .run("pg_dump", args, Reach::Source, Some(source), &|l| {
            counted(&count, &progress, l)
        })
        .await;
    progress.finish(out.is_ok());
    out?;
    let dumped = count.lock().expect("no panic while held").all();
    Ok(dumped)
}

/// Restores `from` (a dump, as the programs see it) into database `db` of the import server.
async fn restore(
    ctx: &Ctx,
    jobs: &Jobs<'_>,
    db: &str,
    from: &str,
    rec: &Imported,
    tables: Option<u64>,
) -> Result<()> {
    let mut args = vec![
        format!("--jobs={}", rec.jobs),
        "--verbose".into(),
        "--exit-on-error".into(),
        "--no-tablespaces".into(),
        "--no-subscriptions".into(),
    ];
    if !rec.with_roles {
        // Without the source's roles, everything belongs to the project's superuser.
        args.extend(["--no-owner".into(), "--no-privileges".into()]);
    }
    args.extend([format!("--dbname={}", jobs.target(db)), from.to_string()]);
    let progress = ctx
        .shell
        .progress(&format!("Restore {db}"), "tables", tables);
    let count = Mutex::new(TableCount::default());
    let out = jobs
        .run("pg_restore", args, Reach::Target, None, &|l| {
            counted(&count, &progress, l)
        })
        .await;
    progress.finish(out.is_ok());
    out.map(drop)
        .with_context(|| format!("restoring database `{db}`"))
}

fn counted(count: &Mutex<TableCount>, progress: &Progress, line: &str) {
    let mut count = count.lock().expect("no panic while held");
    if count.line(line) {
        progress.set(count.done());
    }
}

/// Copies the source's roles (`pg_dumpall --roles-only`), their password hashes only if asked.
/// A role that exists already (the superuser) is left as it is.
async fn copy_roles(ctx: &Ctx, jobs: &Jobs<'_>, url: &SourceUrl, passwords: bool) -> Result<()> {
    let mut args = vec!["--roles-only".to_string()];
    if !passwords {
        args.push("--no-role-passwords".into());
    }
    args.extend([
        format!("--file={}", jobs.in_work(ROLES)),
        format!("--database={}", url.database),
        format!("--dbname={}", url.conninfo(&url.database)),
    ]);
    let place = url.place();
    let source = at("pg_dumpall", url, &place, &url.database, false);
    ctx.shell
        .step(
            "Dump roles",
            jobs.run("pg_dumpall", args, Reach::Source, Some(source), &|_| {}),
        )
        .await?;
    let args = vec![
        "-X".into(),
        "-q".into(),
        format!("--file={}", jobs.in_work(ROLES)),
        format!("--dbname={}", jobs.target("postgres")),
    ];
    let out = ctx
        .shell
        .step(
            "Restore roles",
            jobs.run("psql", args, Reach::Target, None, &|_| {}),
        )
        .await?;
    for line in out
        .stderr
        .lines()
        .filter(|l| l.contains("ERROR:") && !l.contains("already exists"))
    {
        ctx.shell.warn(&format!("restoring roles: {}", line.trim()));
    }
    Ok(())
}
