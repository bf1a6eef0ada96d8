//! `velo doctor`: is this host ready for velo, and is everything velo made as the state says?
//!
//! Checks come in groups (system, what `project create` would choose, zfs, sudo, docker,
//! native, prepared clusters, state, branches); each is ✓, ! (works, but look) or ✗ (broken),
//! with a one-line fix for anything not ✓. A part of the host that no project uses is at worst
//! a warning: a user of the native runtime needs no Docker. The groups run concurrently, and so
//! do the branches, so a host with a few projects is checked in well under a second.

mod branches;
mod host;
mod runtimes;
mod zfs;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::json;

use super::Ctx;
use crate::state::{RuntimeRecord, State, StorageRecord};

pub use branches::branch_checks;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Ok,
    Warn,
    Fail,
}

impl Mark {
    fn shown(self) -> crate::ui::Mark {
        match self {
            Mark::Ok => crate::ui::Mark::Ok,
            Mark::Warn => crate::ui::Mark::Warn,
            Mark::Fail => crate::ui::Mark::Fail,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Mark::Ok => "ok",
            Mark::Warn => "warning",
            Mark::Fail => "fail",
        }
    }
}

/// One finding.
#[derive(Debug, Clone)]
pub struct Check {
    pub group: &'static str,
    pub name: String,
    pub mark: Mark,
    pub detail: String,
    /// What to do, for anything not ✓.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(group: &'static str, name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            group,
            name: name.into(),
            mark: Mark::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(
        group: &'static str,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::ok(group, name, detail).needs(Mark::Warn, fix)
    }

    pub fn fail(
        group: &'static str,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::ok(group, name, detail).needs(Mark::Fail, fix)
    }

    fn needs(self, mark: Mark, fix: impl Into<String>) -> Check {
        Check {
            mark,
            fix: Some(fix.into()),
            ..self
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "group": self.group, "check": self.name, "status": self.mark.word(),
            "detail": self.detail, "fix": self.fix,
        })
    }
}

/// What the state's projects use: a part of the host nothing uses is at worst a warning.
#[derive(Debug, Default)]
pub struct Uses {
    pub zfs_pools: BTreeSet<String>,
    pub images: BTreeSet<String>,
    pub bindirs: BTreeSet<std::path::PathBuf>,
}

impl Uses {
    fn of(ctx: &Ctx, state: Option<&State>) -> Uses {
        let mut uses = Uses::default();
        uses.zfs_pools.extend(ctx.config.pool.iter().cloned());
        for p in state.iter().flat_map(|s| s.projects.values()) {
            match &p.storage {
                StorageRecord::Zfs { pool, .. } => {
                    uses.zfs_pools.insert(pool.clone());
                }
                StorageRecord::Btrfs { .. }
                | StorageRecord::Reflink { .. }
                | StorageRecord::Copy { .. } => {}
            }
            match &p.runtime {
                RuntimeRecord::Docker { image } => {
                    uses.images.insert(image.clone());
                }
                RuntimeRecord::Native { bindir } => {
                    uses.bindirs.insert(bindir.clone());
                }
            }
        }
        uses
    }
}

pub async fn doctor(ctx: &Ctx, as_json: bool, probe_timeout: Duration) -> Result<()> {
    let state = ctx.store.read();
    let known = state.as_ref().ok();
    let uses = Uses::of(ctx, known);
    let (system, defaults, zfs, sudo, docker, native, branches) = tokio::join!(
        host::system_checks(),
        host::default_checks(ctx),
        zfs::zfs_checks(ctx, &uses),
        zfs::sudo_checks(ctx, &uses),
        runtimes::docker_checks(ctx, &uses),
        runtimes::native_checks(&uses),
        async {
            match known {
                Some(s) => branch_checks(ctx, s, probe_timeout).await,
                None => Vec::new(),
            }
        },
    );
    let prepared = known.map(host::prepared_checks).unwrap_or_default();
    let checks: Vec<Check> = [
        system,
        defaults,
        zfs,
        sudo,
        docker,
        native,
        prepared,
        state_checks(ctx, &state),
        branches,
    ]
    .into_iter()
    .flatten()
    .collect();
    let failed = checks.iter().filter(|c| c.mark == Mark::Fail).count();
    if as_json {
        ctx.shell.json(&json!({
            "ok": failed == 0,
            "checks": checks.iter().map(Check::to_json).collect::<Vec<_>>(),
        }));
    } else {
        print(ctx, &checks);
    }
    if failed > 0 {
        bail!("velo doctor found {failed} problem(s); each one marked above says how to fix it");
    }
    Ok(())
}

fn print(ctx: &Ctx, checks: &[Check]) {
    let mut group = "";
    for c in checks {
        if c.group != group {
            group = c.group;
            ctx.shell.out(group);
        }
        ctx.shell.out(&format!(
            "  {} {}: {}",
            ctx.shell.out_glyph(c.mark.shown()),
            c.name,
            c.detail
        ));
        if let Some(fix) = &c.fix {
            ctx.shell.out(&format!("      fix: {fix}"));
        }
    }
}

/// The name of the user velo runs as.
pub fn current_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| rustix::process::geteuid().as_raw().to_string())
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

fn state_checks(ctx: &Ctx, state: &Result<State, crate::state::StoreError>) -> Vec<Check> {
    const G: &str = "state";
    let path = ctx.store.state_path();
    let shown = path.display().to_string();
    let mut checks = vec![match state {
        Ok(s) => Check::ok(
            G,
            "readable",
            format!("{shown}, {} project(s)", s.projects.len()),
        ),
        Err(e) => Check::fail(
            G,
            "readable",
            format!("{e}"),
            "fix the file, or move it aside (it holds passwords: keep a backup)",
        ),
    }];
    if let Ok(s) = state {
        checks.push(Check::ok(G, "schema", format!("version {}", s.version)));
    }
    match std::fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            checks.push(if mode == 0o600 {
                Check::ok(G, "permissions", "0600")
            } else {
                Check::fail(
                    G,
                    "permissions",
                    format!("{mode:04o}: it holds passwords"),
                    format!("chmod 600 {shown}"),
                )
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            checks.push(Check::ok(G, "permissions", "no state file yet"));
        }
        Err(e) => checks.push(Check::fail(
            G,
            "permissions",
            e.to_string(),
            format!("check {shown}"),
        )),
    }
    checks
}
