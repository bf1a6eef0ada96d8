//! The default project: what a branch written without `<project>/` belongs to. `VELO_PROJECT`
//! wins over the one `velo use` records in the state.

use anyhow::Result;

use super::{Ctx, UsageError, get_project};
use crate::names::{BranchName, BranchRef, ProjectName};

/// The environment variable that names the default project for one shell or script.
pub const ENV: &str = "VELO_PROJECT";

/// The default project and where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultProject {
    pub project: ProjectName,
    pub from: &'static str,
}

/// The default project, if any: `VELO_PROJECT`, else the one `velo use` recorded.
pub fn default_project(ctx: &Ctx) -> Result<Option<DefaultProject>> {
    if let Some(value) = std::env::var_os(ENV).filter(|v| !v.is_empty()) {
        let text = value.to_string_lossy();
        let project = text.parse::<ProjectName>().map_err(|e| {
            UsageError(format!(
                "{ENV}=`{text}` is not a project: {e}; unset it or give a project name"
            ))
        })?;
        return Ok(Some(DefaultProject { project, from: ENV }));
    }
    Ok(ctx
        .store
        .read()?
        .default_project
        .map(|project| DefaultProject {
            project,
            from: "`velo use`",
        }))
}

/// A branch of the default project; a usage error that says how to set one when there is none.
pub fn in_default_project(ctx: &Ctx, branch: &BranchName) -> Result<BranchRef> {
    match default_project(ctx)? {
        Some(d) => Ok(BranchRef::new(d.project, branch.clone())),
        None => Err(UsageError(format!(
            "`{branch}` names no project and there is no default project: write <project>/{branch}, or choose a default with `velo use <project>` (or {ENV}=<project>)"
        ))
        .into()),
    }
}

/// `velo use [PROJECT] [--clear]`: records the default project, clears it, or says which it is.
pub fn use_project(ctx: &Ctx, project: Option<&ProjectName>, clear: bool) -> Result<()> {
    if clear {
        ctx.store.update(|s| {
            s.default_project = None;
            Ok::<_, anyhow::Error>(())
        })?;
        ctx.shell
            .note("No default project: write branches as <project>/<branch>.");
        return Ok(());
    }
    let Some(name) = project else {
        return show(ctx);
    };
    ctx.store.update(|s| {
        get_project(s, name)?;
        s.default_project = Some(name.clone());
        Ok::<_, anyhow::Error>(())
    })?;
    ctx.shell.note(&format!(
        "Default project: `{name}`; `velo branch create dev` now means `{name}/dev`."
    ));
    if let Some(env) = std::env::var_os(ENV).filter(|v| !v.is_empty()) {
        ctx.shell.warn(&format!(
            "{ENV}={} is set in this shell and wins over `velo use`",
            env.to_string_lossy()
        ));
    }
    Ok(())
}

fn show(ctx: &Ctx) -> Result<()> {
    match default_project(ctx)? {
        Some(d) => {
            ctx.shell.out(d.project.as_str());
            ctx.shell.note(&format!("(set by {})", d.from));
        }
        None => ctx.shell.note(&format!(
            "No default project: choose one with `velo use <project>` (or {ENV}=<project>)."
        )),
    }
    Ok(())
}
