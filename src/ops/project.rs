//! Projects: create (with its main branch), list, get, delete.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use chrono::Utc;
use serde_json::json;

use super::journal::Intent;
use super::{Ctx, Undo, allocate_port, busy_marker, get_project, mounted_at, url};
use crate::names::{self, BranchName, BranchRef, ProjectName};
use crate::state::{Branch, Finish, Forget, Project, Recovery, RunState, UndoStep};
use crate::zfs::BASE_PROPERTIES;

/// The image used when neither `--image` nor `--pg-version` says otherwise.
pub const DEFAULT_PG_VERSION: &str = "17";

/// The oldest PostgreSQL velo's branch settings work with.
pub const MIN_PG_VERSION: u32 = 14;

pub struct CreateProject {
    pub name: ProjectName,
    pub pool: Option<String>,
    pub pg_version: Option<String>,
    pub image: Option<String>,
}

/// The official image for a PostgreSQL major version.
pub fn image_for(pg_version: &str) -> String {
    format!("postgres:{pg_version}-alpine")
}

/// The pool to use: the one asked for, else the one `velo setup` recorded, else the only
/// imported pool.
pub async fn choose_pool(ctx: &Ctx, asked: Option<String>) -> Result<String> {
    let pools = ctx.zfs.pools().await.context("listing ZFS pools")?;
    let asked = asked.or_else(|| ctx.config.pool.clone());
    match asked {
        Some(p) if pools.contains(&p) => Ok(p),
        Some(p) => bail!(
            "ZFS pool `{p}` is not imported (pools here: {}); import it or pass another --pool",
            list_or_none(&pools)
        ),
        None => match pools.as_slice() {
            [only] => Ok(only.clone()),
            [] => bail!(
                "no ZFS pool is imported: create one (`zpool create tank /dev/…`) or import it"
            ),
            many => bail!(
                "several ZFS pools are imported ({}): choose one with --pool",
                many.join(", ")
            ),
        },
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

pub async fn create(ctx: &Ctx, req: CreateProject) -> Result<()> {
    if let (Some(_), Some(_)) = (&req.image, &req.pg_version) {
        bail!("give either --image or --pg-version, not both (the image decides the version)");
    }
    if let Some(v) = &req.pg_version {
        match v.parse::<u32>() {
            Err(_) => bail!("--pg-version must be a major version number such as 17, not `{v}`"),
            // Branch servers run with settings PostgreSQL 14 introduced
            // (`recovery_init_sync_method`); 13 and older are past their end of life.
            Ok(n) if n < MIN_PG_VERSION => bail!(
                "velo needs PostgreSQL {MIN_PG_VERSION} or newer (older versions are past their end of life); pass --pg-version {DEFAULT_PG_VERSION}"
            ),
            Ok(_) => {}
        }
    }
    let image = req
        .image
        .clone()
        .unwrap_or_else(|| image_for(req.pg_version.as_deref().unwrap_or(DEFAULT_PG_VERSION)));
    let name = req.name.clone();
    let main_ref = BranchRef::new(name.clone(), BranchName::main());

    // The image's postgres uid (read from a created, never started, container) is asked while
    // the pool is chosen; a bad pool is reported first, whichever answer comes first.
    let (pool, pg_user) = tokio::join!(
        choose_pool(ctx, req.pool),
        ctx.shell
            .step("Check image", ctx.runtime.postgres_user(&image))
    );
    let (pool, pg_user) = (pool?, pg_user?);

    let (project, main, mut undo) = ctx.store.update(|s| {
        if s.projects.contains_key(&name) {
            bail!("project `{name}` already exists (see `velo project get {name}`)");
        }
        let port = allocate_port(s, &[])?;
        let main = Branch {
            parent: None,
            port,
            generation: 0,
            origin: None,
            retired: Vec::new(),
            desired: RunState::Running,
            created_at: Utc::now(),
            busy: Some(busy_marker("project create")),
        };
        let project = Project {
            pool: pool.clone(),
            image: image.clone(),
            pg_version: None,
            user: "postgres".into(),
            password: super::new_password(),
            database: "postgres".into(),
            pg_uid: pg_user.uid,
            pg_gid: pg_user.gid,
            created_at: Utc::now(),
            branches: BTreeMap::from([(BranchName::main(), main.clone())]),
            snapshots: Vec::new(),
        };
        s.projects.insert(name.clone(), project.clone());
        let undo = Undo::begin(
            s,
            Intent {
                command: "project create",
                project: &name,
                branches: vec![BranchName::main()],
                pins: Vec::new(),
                recovery: Recovery::RollBack {
                    forget: Forget::NewProject,
                },
            },
        );
        Ok((project, main, undo))
    })?;

    let result: Result<Branch> = async {
        let base = names::base_dataset(&pool);
        let compression = ctx.zfs.best_compression(&pool).await;
        let mut props = BASE_PROPERTIES.to_vec();
        props.push(("compression", compression));
        let project_ds = names::project_dataset(&pool, &name);
        let main_ds = main.dataset(&pool, &main_ref);
        undo.intend(
            ctx,
            "dataset",
            UndoStep::DestroyDataset {
                name: project_ds.clone(),
            },
        )
        .await?;
        let home = ctx.home_label();
        let mark = [(super::HOME_PROPERTY, home.as_str())];
        ctx.shell
            .step("Create dataset", async {
                ctx.zfs.ensure(&base, &props).await?;
                ctx.zfs.create(&project_ds, &mark).await?;
                ctx.zfs.create(&main_ds, &mark).await?;
                Ok::<_, anyhow::Error>(())
            })
            .await?;
        let mountpoint = mounted_at(ctx, &main_ds).await?;
        let path = ctx.archives().project_dir(&name);
        undo.intend(ctx, "archive", UndoStep::RemoveDir { path })
            .await?;
        super::create_archive(ctx, &project, &main_ref, main.generation)?;
        super::owner::prepare_data_dir(ctx, &image, &mountpoint, pg_user).await?;
        super::launch_new(
            ctx,
            &project,
            &main_ref,
            &main,
            &mountpoint,
            Duration::from_secs(120),
            &mut undo,
        )
        .await
    }
    .await;

    let main = match result {
        Ok(main) => main,
        Err(e) => {
            let how = super::branch::rolled_back(undo.roll_back(ctx).await);
            return Err(e.context(format!("creating project `{name}` ({how})")));
        }
    };
    let version = super::endpoint(&project, &main).server_version().await.ok();
    ctx.store.update(|s| {
        let p = super::get_project_mut(s, &name)?;
        p.pg_version = version;
        undo.commit(s);
        Ok::<_, anyhow::Error>(())
    })?;
    ctx.shell.note(&format!(
        "Project `{name}` is ready; its main branch is `{main_ref}`."
    ));
    ctx.shell.out(&url(&project, &main));
    ctx.shell.note(&format!(
        "The password is shown by `velo branch password {main_ref}`."
    ));
    Ok(())
}

/// A project as list/get show it (never the password).
fn project_json(name: &ProjectName, p: &Project) -> serde_json::Value {
    json!({
        "name": name.as_str(),
        "pool": p.pool,
        "image": p.image,
        "pg_version": p.pg_version,
        "branches": p.branches.keys().map(BranchName::as_str).collect::<Vec<_>>(),
        "created_at": p.created_at,
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
                p.pool.clone(),
                p.image.clone(),
                p.created_at.format("%Y-%m-%d %H:%M").to_string(),
            ]
        })
        .collect();
    ctx.shell.table(
        &["PROJECT", "BRANCHES", "POOL", "IMAGE", "CREATED (UTC)"],
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
    let rows = vec![
        vec!["project".into(), name.to_string()],
        vec!["pool".into(), p.pool.clone()],
        vec!["dataset".into(), names::project_dataset(&p.pool, name)],
        vec!["image".into(), p.image.clone()],
        vec![
            "postgres".into(),
            p.pg_version.clone().unwrap_or_else(|| "?".into()),
        ],
        vec!["main URL".into(), url(p, main)],
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
    ];
    ctx.shell.table(&["FIELD", "VALUE"], rows);
    Ok(())
}

pub async fn delete(ctx: &Ctx, name: &ProjectName, force: bool) -> Result<()> {
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
                    finish: Finish::DeleteProject,
                },
            },
        ))
    })?;
    if let Err(e) = delete_held(ctx, name, &undo).await {
        ctx.store.update(|s| {
            undo.abandon(s);
            Ok::<_, anyhow::Error>(())
        })?;
        return Err(e.context(format!(
            "fix the cause and run `velo project delete {name} --force` again"
        )));
    }
    ctx.shell.note(&format!("Project `{name}` deleted."));
    Ok(())
}

/// Deletes a project that an open delete operation holds: containers, datasets, archives,
/// then the record and the operation together. Each part may already be done.
pub async fn delete_held(ctx: &Ctx, name: &ProjectName, undo: &Undo) -> Result<()> {
    let state = ctx.store.read()?;
    if let Some(project) = state.projects.get(name) {
        undo.step(ctx, "delete-containers").await?;
        ctx.shell
            .step("Remove containers", async {
                for b in project.branches.keys() {
                    let r = BranchRef::new(name.clone(), b.clone());
                    ctx.runtime.remove(&names::container_name(&r)).await?;
                }
                Ok::<_, anyhow::Error>(())
            })
            .await?;
        undo.step(ctx, "delete-data").await?;
        let dataset = names::project_dataset(&project.pool, name);
        ctx.shell
            .step("Destroy datasets", ctx.zfs.destroy_dataset(&dataset))
            .await
            .with_context(|| format!("destroying {dataset}"))?;
        let wal = ctx.archives().project_dir(name);
        match std::fs::remove_dir_all(&wal) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", wal.display()));
            }
            _ => {}
        }
    }
    ctx.store.update(|s| {
        s.projects.remove(name);
        undo.commit(s);
        Ok::<_, anyhow::Error>(())
    })
}
