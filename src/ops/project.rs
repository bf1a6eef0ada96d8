//! Projects: create (with its main branch), list, get, delete.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use chrono::Utc;
use serde_json::json;

use super::choose::{self, Choice, Wanted};
use super::generation::create_archive;
use super::import;
use super::journal::Intent;
use super::launch::{Launch, launch_new};
use super::prepared;
use super::server;
use super::{
    Ctx, Undo, UsageError, allocate_port, background, busy_marker, get_project, remove_dir,
    rolled_back,
};
use crate::names::{self, BranchName, BranchRef, ProjectName, VolumeId};
use crate::runtime::ServerUser;
use crate::state::{
    Branch, Finish, Forget, ImportFrom, Imported, Project, Recovery, RuntimeRecord, StorageRecord,
    UndoStep,
};

/// How long a new project's first start (initdb done) may take.
const PROJECT_READY: Duration = Duration::from_secs(120);

pub struct CreateProject {
    pub name: ProjectName,
    pub wanted: Wanted,
    /// Where main's data comes from (`--from`, `--from-dump`); none: an empty cluster.
    pub import: Option<import::Request>,
}

pub async fn create(ctx: &Ctx, req: CreateProject) -> Result<()> {
    // What the command line asked for is checked first: a mistake there is a usage error.
    let plan = req
        .import
        .map(|r| import::Plan::new(ctx, r))
        .transpose()
        .map_err(|e| UsageError(format!("{e:#}")))?;
    let choice = choose::choose(ctx, &req.wanted).await?;
    create_with(ctx, &req.name, choice, plan.as_ref()).await
}

/// Creates a project on the storage and runtime chosen, its main branch imported by `plan`.
pub async fn create_with(
    ctx: &Ctx,
    name: &ProjectName,
    choice: Choice,
    plan: Option<&import::Plan>,
) -> Result<()> {
    let name = name.clone();
    background::wait_for(
        ctx,
        &name,
        &format!("the old project `{name}`"),
        DELETE_WAIT,
        |s| !s.projects.contains_key(&name) && s.journal.deleting(&name, None),
    )
    .await?;
    let (storage, runtime) = (
        ctx.backends.storage(&choice.storage)?,
        ctx.backends.runtime(&choice.runtime)?,
    );
    // The storage's root and the server software are checked at once; a bad storage is
    // reported first, whichever answer comes first.
    let (ready, software) = tokio::join!(
        ctx.shell.step("Prepare storage", storage.prepare()),
        ctx.shell.step("Check server software", runtime.software())
    );
    ready?;
    let software = software?;
    let cluster = prepared::name_for(
        &ctx.home_label(),
        &choice.storage,
        &choice.runtime,
        &software,
    );
    let existing = prepared::find(&ctx.store.read()?, &cluster).cloned();
    let user = match &existing {
        Some(p) => ServerUser {
            uid: p.pg_uid,
            gid: p.pg_gid,
        },
        None => {
            ctx.shell
                .step("Check who servers run as", runtime.prepare())
                .await?
        }
    };
    // A physical import copies the source's own cluster: no prepared one is cloned.
    let physical = plan.is_some_and(|p| p.record.physical);
    let prepared_from = (!physical).then_some(&cluster);
    let (mut project, main, mut undo) = ctx
        .store
        .update(|s| reserve(s, &name, &choice, prepared_from, user, &ctx.ports))?;
    let main_ref = BranchRef::new(name.clone(), BranchName::main());

    let result: Result<(Branch, Option<Imported>)> = async {
        undo.intend(ctx, "dataset", UndoStep::DestroyProject)
            .await?;
        let checked = match plan {
            Some(plan) => {
                Some(import::check(ctx, &project, &main_ref, main.port, plan, &mut undo).await?)
            }
            None => None,
        };
        let root = match (physical, existing) {
            (true, _) => import::empty_volume(ctx, &project, &main.volume(&main_ref)).await?,
            (false, existing) => {
                let cluster = match existing {
                    Some(p) => p,
                    None => {
                        prepared::make(ctx, &project, &cluster, &software, user, &mut undo).await?
                    }
                };
                let volume = main.volume(&main_ref);
                ctx.shell
                    .step(
                        "Clone",
                        storage.clone_snapshot(&cluster.snapshot_ref(), &volume),
                    )
                    .await?
            }
        };
        undo.intend(
            ctx,
            "archive",
            UndoStep::RemoveArchive {
                branch: None,
                generation: None,
            },
        )
        .await?;
        create_archive(ctx, &project, &main_ref, main.generation)?;
        let imported = match checked {
            Some(checked) => {
                let imported =
                    import::load(ctx, &project, &main_ref, &main, &root, &checked, &mut undo)
                        .await?;
                project.database = checked.databases[0].clone();
                ctx.store.update(|s| {
                    super::get_project_mut(s, &name)?.database = project.database.clone();
                    Ok::<_, anyhow::Error>(())
                })?;
                Some(imported)
            }
            None => None,
        };
        let how = Launch {
            root: &root,
            deadline: PROJECT_READY,
            recovery: None,
        };
        if imported.as_ref().is_some_and(|i| i.follow) {
            // A standby cannot be written: main keeps the source's roles and passwords.
            project.imported.clone_from(&imported);
        }
        let main = launch_new(ctx, &project, &main_ref, &main, how, &mut undo).await?;
        if project.followed().is_none() {
            // Until now the superuser has no password, so no one could log in over TCP.
            ctx.shell
                .step(
                    "Set password",
                    server::sql(ctx, &project, &main)
                        .set_password(&project.user, &project.password),
                )
                .await?;
        }
        Ok((main, imported))
    }
    .await;

    let (main, imported) = match result {
        Ok(made) => made,
        Err(e) => {
            let how = rolled_back(undo.roll_back(ctx).await);
            return Err(e.context(format!("creating project `{name}` ({how})")));
        }
    };
    let version = server::sql(ctx, &project, &main)
        .server_version()
        .await
        .ok();
    ctx.store.update(|s| {
        let p = super::get_project_mut(s, &name)?;
        p.pg_version = version;
        p.imported = imported.clone();
        undo.commit(s);
        Ok::<_, anyhow::Error>(())
    })?;
    prepared::tidy(ctx).await;
    ctx.shell.note(&format!(
        "Project `{name}` is ready ({}); its main branch is `{main_ref}`.",
        choice.why
    ));
    match (plan, &imported) {
        (Some(plan), Some(imported)) if imported.follow => ctx.shell.note(&format!(
            "Main follows {}: `velo status` shows how far behind it is.",
            plan.describe()
        )),
        (Some(plan), Some(imported)) => ctx.shell.note(&format!(
            "Imported {} as of {} UTC; `velo project refresh {name}` imports it again.",
            plan.describe(),
            imported.imported_at.format("%Y-%m-%d %H:%M:%S")
        )),
        _ => {}
    }
    let password = match imported.as_ref().is_some_and(|i| i.follow) {
        true => format!(
            "Main follows its source: its roles and passwords are the source's (`velo branch psql {main_ref}` needs none). Each branch gets the project's: `velo branch password {name}/BRANCH`."
        ),
        false => format!("The password is shown by `velo branch password {main_ref}`."),
    };
    ctx.shell.note(&password);
    Ok(())
}

/// The first transaction of `create`: the project's record and its main branch, busy.
fn reserve(
    s: &mut crate::state::State,
    name: &ProjectName,
    choice: &Choice,
    cluster: Option<&BranchName>,
    user: ServerUser,
    ports: &std::ops::RangeInclusive<u16>,
) -> Result<(Project, Branch, Undo)> {
    if s.projects.contains_key(name) {
        bail!("project `{name}` already exists (see `velo project get {name}`)");
    }
    let port = allocate_port(s, &[], ports)?;
    let main = Branch::new(None, port, None, busy_marker("project create"));
    let project = Project {
        storage: choice.storage.clone(),
        runtime: choice.runtime.clone(),
        chosen: Some(choice.why.clone()),
        prepared_from: cluster.cloned(),
        pg_version: None,
        user: "postgres".into(),
        password: super::new_password(),
        database: "postgres".into(),
        pg_uid: user.uid,
        pg_gid: user.gid,
        created_at: Utc::now(),
        branches: BTreeMap::from([(BranchName::main(), main.clone())]),
        snapshots: Vec::new(),
        imported: None,
        idle_stop_seconds: None,
    };
    s.projects.insert(name.clone(), project.clone());
    let undo = Undo::begin(
        s,
        Intent {
            command: "project create",
            project: name,
            branches: vec![BranchName::main()],
            pins: Vec::new(),
            recovery: Recovery::RollBack {
                forget: Forget::NewProject,
            },
        },
    );
    Ok((project, main, undo))
}

/// A project as list/get show it (never the password).
fn project_json(name: &ProjectName, p: &Project) -> serde_json::Value {
    let pool = match &p.storage {
        StorageRecord::Zfs { pool, .. } => Some(pool.clone()),
        _ => None,
    };
    let image = match &p.runtime {
        RuntimeRecord::Docker { image } => Some(image.clone()),
        RuntimeRecord::Native { .. } => None,
    };
    json!({
        "name": name.as_str(),
        "storage": p.storage,
        "runtime": p.runtime,
        "chosen": p.chosen,
        "pool": pool,
        "image": image,
        "pg_version": p.pg_version,
        "branches": p.branches.keys().map(BranchName::as_str).collect::<Vec<_>>(),
        "created_at": p.created_at,
        "idle_stop_seconds": p.idle_stop_seconds,
        "imported": p.imported.as_ref().map(imported_json),
    })
}

/// Where a project was imported from, as `project get` shows it: the source without its
/// password (velo never had it kept), the `--after-import` file by name.
fn imported_json(i: &Imported) -> serde_json::Value {
    let (url, dump) = match &i.from {
        ImportFrom::Server { url } => (Some(url.redacted()), None),
        ImportFrom::Dump { path } => (None, Some(path)),
    };
    json!({
        "url": url,
        "dump": dump,
        "all_databases": i.all_databases,
        "physical": i.physical,
        "follow": i.follow,
        "source_wal": i.source_wal,
        "slot": i.slot,
        "with_roles": i.with_roles,
        "role_passwords": i.role_passwords,
        "jobs": i.jobs,
        "after_import": i.after_import.as_ref().map(|a| &a.path),
        "imported_at": i.imported_at,
        "source_version": i.source_version,
    })
}

pub async fn list(ctx: &Ctx, as_json: bool) -> Result<()> {
    let state = ctx.store.read()?;
    if as_json {
        let all: Vec<_> = state
            .projects
            .iter()
            .map(|(n, p)| project_json(n, p))
            .collect();
        ctx.shell.json(&json!(all));
        return Ok(());
    }
    if state.projects.is_empty() {
        ctx.shell
            .note("No projects yet: create one with `velo project create <name>`.");
        return Ok(());
    }
    let rows = state
        .projects
        .iter()
        .map(|(n, p)| {
            vec![
                n.to_string(),
                p.branches.len().to_string(),
                p.storage.to_string(),
                p.runtime.to_string(),
                p.created_at.format("%Y-%m-%d %H:%M").to_string(),
            ]
        })
        .collect();
    ctx.shell.table(
        &["PROJECT", "BRANCHES", "STORAGE", "RUNTIME", "CREATED (UTC)"],
        rows,
    );
    Ok(())
}

pub async fn get(ctx: &Ctx, name: &ProjectName, as_json: bool) -> Result<()> {
    let state = ctx.store.read()?;
    let p = get_project(&state, name)?;
    if as_json {
        ctx.shell.json(&project_json(name, p));
        return Ok(());
    }
    let main = p
        .branch(&BranchName::main())
        .ok_or_else(|| anyhow!("project `{name}` has no main branch in state"))?;
    let mut rows = vec![
        vec!["project".into(), name.to_string()],
        vec!["storage".into(), ctx.storage(p)?.describe()],
        vec!["runtime".into(), ctx.runtime(p)?.describe()],
        vec![
            "chosen because".into(),
            p.chosen.clone().unwrap_or_else(|| "-".into()),
        ],
        vec![
            "postgres".into(),
            p.pg_version.clone().unwrap_or_else(|| "?".into()),
        ],
        vec!["main URL".into(), server::url(p, main)],
        vec![
            "branches".into(),
            p.branches
                .keys()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ],
        vec![
            "created (UTC)".into(),
            p.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        ],
        vec![
            "idle stop".into(),
            p.idle_stop_seconds
                .map(|s| humantime::format_duration(Duration::from_secs(s)).to_string())
                .unwrap_or_else(|| "off".into()),
        ],
    ];
    if let Some(i) = &p.imported {
        let from = match &i.from {
            ImportFrom::Server { url } => url.redacted(),
            ImportFrom::Dump { path } => path.display().to_string(),
        };
        rows.push(vec!["imported from".into(), from]);
        rows.push(vec![
            "imported (UTC)".into(),
            i.imported_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        ]);
        if let Some(a) = &i.after_import {
            rows.push(vec!["after import".into(), a.path.display().to_string()]);
        }
    }
    ctx.shell.table(&["FIELD", "VALUE"], rows);
    Ok(())
}

pub async fn delete(ctx: &Ctx, name: &ProjectName, force: bool) -> Result<()> {
    // A branch of it still being destroyed finishes first: the project's volumes go at once.
    let what = format!("branches of `{name}`");
    background::wait_for(ctx, name, &what, DELETE_WAIT, |s| {
        s.projects.contains_key(name) && s.journal.deleting(name, None)
    })
    .await?;
    let undo = ctx.store.update(|s| {
        let p = super::get_project_mut(s, name)?;
        let others: Vec<String> = p
            .branches
            .keys()
            .filter(|b| !b.is_main())
            .map(|b| format!("{name}/{b}"))
            .collect();
        if !others.is_empty() && !force {
            bail!(
                "project `{name}` still has branches: {}; delete them first, or pass --force to delete them too",
                others.join(", ")
            );
        }
        for (bname, b) in p.branches.iter_mut() {
            let r = BranchRef::new(name.clone(), bname.clone());
            super::claim_taking_over(b, &r, "project delete")?;
        }
        let branches = p.branches.keys().cloned().collect();
        Ok(Undo::begin(
            s,
            Intent {
                command: "project delete",
                project: name,
                branches,
                pins: Vec::new(),
                recovery: Recovery::RollForward {
                    finish: Finish::DeleteProject { storage: None },
                },
            },
        ))
    })?;
    if let Err(e) = forget_held(ctx, name, &undo).await {
        ctx.store.update(|s| {
            undo.abandon(s);
            Ok::<_, anyhow::Error>(())
        })?;
        return Err(e.context(format!(
            "fix the cause and run `velo project delete {name} --force` again"
        )));
    }
    ctx.shell.note(&format!("Project `{name}` deleted."));
    background::finish(ctx, undo).await
}

/// How long a command waits for the destruction of a same-named project or branch.
pub const DELETE_WAIT: Duration = Duration::from_secs(600);

/// The part of a project delete the user waits for: removes its servers and sockets, then
/// forgets the record, keeping its storage in the operation for [`destroy_held`].
pub async fn forget_held(ctx: &Ctx, name: &ProjectName, undo: &Undo) -> Result<()> {
    let state = ctx.store.read()?;
    let Some(project) = state.projects.get(name) else {
        return Ok(());
    };
    let runtime = ctx.runtime(project)?;
    undo.step(ctx, "delete-containers").await?;
    ctx.shell
        .step("Remove servers", async {
            for b in project.branches.keys() {
                let r = BranchRef::new(name.clone(), b.clone());
                runtime.remove(&names::retired_server_name(&r)).await?;
                runtime.remove(&names::server_name(&r)).await?;
            }
            Ok::<_, anyhow::Error>(())
        })
        .await?;
    for b in project.branches.values() {
        remove_dir(&server::socket_dir(ctx, b.port))?;
    }
    if let (Some(url), Some(slot)) = (
        project.followed(),
        project.imported.as_ref().and_then(|i| i.slot.as_ref()),
    ) {
        let main = BranchRef::new(name.clone(), BranchName::main());
        let secrets = super::follow::secrets_dir(ctx, name);
        import::drop_slot(ctx, project, &main, url, slot, secrets).await;
    }
    undo.step(ctx, "delete-forget").await?;
    ctx.store.update(|s| {
        if let Some(p) = s.projects.remove(name)
            && let Some(Finish::DeleteProject { storage }) = undo.finish_mut(s)
        {
            *storage = Some(p.storage);
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// The part of a project delete that grows with the data, run after the command has answered:
/// destroys its volumes and archives and closes the operation.
pub async fn destroy_held(ctx: &Ctx, name: &ProjectName, undo: &Undo) -> Result<()> {
    let state = ctx.store.read()?;
    let record = match undo.record(&state).map(|op| op.recovery) {
        Some(Recovery::RollForward {
            finish: Finish::DeleteProject {
                storage: Some(record),
            },
        }) => record,
        _ => return Ok(()),
    };
    let storage = ctx.backends.storage(&record)?;
    undo.step(ctx, "delete-data").await?;
    ctx.shell
        .step("Destroy volumes", storage.destroy_project(name))
        .await
        .with_context(|| {
            format!(
                "destroying the volumes of the deleted project `{name}` ({})",
                storage.name_of(&VolumeId::new(
                    &BranchRef::new(name.clone(), BranchName::main()),
                    0
                ))
            )
        })?;
    remove_dir(&ctx.archives().project_dir(name))?;
    super::follow::remove_secrets(ctx, name)?;
    ctx.store.update(|s| {
        undo.commit(s);
        Ok::<_, anyhow::Error>(())
    })
}
