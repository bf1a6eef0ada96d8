//! Renaming a branch: everything that carries its name moves to the new one, or nothing does.
//!
//! The name is in the state (the branch's record, its children's `parent`, the origins cloned
//! from its snapshots, its users' snapshots), in the storage (every generation's volume and
//! its snapshots), in the WAL archive directory, and in the server (its name, labels, data
//! and archive paths: a server is re-created rather than renamed, because its spec names
//! those paths). The state changes last, in the transaction that closes the operation; before
//! that, each step is recorded in the journal with its undo (rename back, put the old server
//! back), so a failure or a kill at any point leaves, after the undo, the branch as it was.
//!
//! The operation holds the branch and its children (whose records change) and reserves the
//! new name, so no other command uses either meanwhile.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, anyhow, bail};

use super::super::background;
use super::super::journal::Intent;
use super::super::launch::create_server;
use super::super::project::DELETE_WAIT;
use super::super::server::{self, BRANCH_READY, STOP_TIMEOUT};
use super::super::{Ctx, Undo, claim, get_branch, get_project, get_project_mut, rolled_back};
use crate::names::{self, BranchName, BranchRef, VolumeId};
use crate::runtime::ServerStatus;
use crate::state::{Branch, Finish, Forget, Project, Recovery, State, UndoStep};

/// Renames branch `r` to `to` in its project.
pub async fn rename(ctx: &Ctx, r: &BranchRef, to: &BranchName) -> Result<()> {
    if r.branch.is_main() {
        bail!("`{r}` is the project's main branch: it keeps its name");
    }
    if *to == r.branch {
        bail!("`{r}` already has that name");
    }
    let new = BranchRef::new(r.project.clone(), to.clone());
    // What a reset, restore or delete left to a background velo (destroying old data that
    // carries the name) is waited for, not refused: the user did nothing wrong.
    let tidying = |s: &State| {
        s.journal.iter().any(|op| {
            op.project == r.project
                && matches!(op.recovery, Recovery::RollForward { .. })
                && (op.mentions(&r.branch) || op.branches.contains(&new.branch))
        })
    };
    let what = format!("the old data of `{r}`");
    background::wait_for(ctx, &r.project, &what, DELETE_WAIT, tidying).await?;
    let (project, branch, children, mut undo) = ctx.store.update(|s| reserve(s, r, &new))?;
    let moved = Move {
        project: &project,
        old: r,
        new: &new,
        branch: &branch,
        children: &children,
    };
    if let Err(e) = moved.run(ctx, &mut undo).await {
        let how = if undo.roll_back(ctx).await {
            "the branch is as it was"
        } else {
            rolled_back(false)
        };
        return Err(e.context(format!("renaming `{r}` to `{new}` ({how})")));
    }
    ctx.store.update(|s| {
        if !get_project_mut(s, &r.project)?.rename_branch(&r.branch, to) {
            bail!("branch `{r}` vanished from the state, or `{new}` appeared");
        }
        undo.commit(s);
        Ok::<_, anyhow::Error>(())
    })?;
    ctx.shell.note(&format!(
        "Branch `{r}` is now `{new}` (same port, same password)."
    ));
    Ok(())
}

/// The first transaction: checks the request, claims the branch and its children, reserves
/// the new name and opens the operation.
pub(in crate::ops) fn reserve(
    s: &mut State,
    r: &BranchRef,
    new: &BranchRef,
) -> Result<(Project, Branch, Vec<BranchRef>, Undo)> {
    let p = get_project(s, &r.project)?;
    get_branch(p, r)?;
    if p.branch(&new.branch).is_some() {
        bail!("branch `{new}` already exists: pick another name, or delete it first");
    }
    let others = s.journal.iter().filter(|op| op.project == r.project);
    for op in others {
        let deletes_its_snapshot = matches!(
            &op.recovery,
            Recovery::RollForward { finish: Finish::DeleteSnapshot { id } }
                if p.snapshots.iter().any(|x| x.id == *id && x.branch == r.branch)
        );
        if op.mentions(&r.branch) || op.branches.contains(&new.branch) || deletes_its_snapshot {
            bail!(
                "`velo {}` (pid {}) is working with `{r}` or the name `{new}`; try again when it is done",
                op.command,
                op.owner.pid
            );
        }
    }
    let children: Vec<BranchRef> = p
        .children_of(&r.branch)
        .into_iter()
        .map(|c| BranchRef::new(r.project.clone(), c))
        .collect();
    let p = get_project_mut(s, &r.project)?;
    for held in [r].into_iter().chain(&children) {
        let b = p.branches.get_mut(&held.branch).expect("listed above");
        claim(b, held, "branch rename")?;
    }
    let (project, branch) = (p.clone(), p.branches[&r.branch].clone());
    let mut held: Vec<BranchName> = vec![r.branch.clone(), new.branch.clone()];
    held.extend(children.iter().map(|c| c.branch.clone()));
    let undo = Undo::begin(
        s,
        Intent {
            command: "branch rename",
            project: &r.project,
            branches: held,
            pins: Vec::new(),
            recovery: Recovery::RollBack {
                forget: Forget::Nothing,
            },
        },
    );
    Ok((project, branch, children, undo))
}

/// What a rename moves.
struct Move<'a> {
    project: &'a Project,
    old: &'a BranchRef,
    new: &'a BranchRef,
    branch: &'a Branch,
    children: &'a [BranchRef],
}

impl Move<'_> {
    /// Every step, in order; the state is changed by the caller once this succeeds.
    async fn run(&self, ctx: &Ctx, undo: &mut Undo) -> Result<()> {
        self.refuse_leftovers(ctx).await?;
        let blocking = self.blocking_children(ctx).await?;
        let running = self.stop_servers(ctx, &blocking, undo).await?;
        self.rename_volumes(ctx, undo).await?;
        let step = UndoStep::RenameArchive {
            from: self.old.branch.clone(),
            to: self.new.branch.clone(),
        };
        undo.intend(ctx, "rename-archive", step).await?;
        ctx.archives()
            .rename_branch(&self.old.project, &self.old.branch, &self.new.branch, true)
            .with_context(|| format!("moving the WAL archive of `{}`", self.old))?;
        self.serve_new(ctx, running, undo).await?;
        for (child, _) in blocking.iter().filter(|(_, was)| *was) {
            let b = &self.project.branches[&child.branch];
            server::start_and_wait(ctx, self.project, child, b, BRANCH_READY).await?;
        }
        undo.step(ctx, "commit").await
    }

    /// Stops and removes the branch's server, and stops the children's in `blocking`, each
    /// recorded to be put back; returns whether the branch's server was running.
    async fn stop_servers(
        &self,
        ctx: &Ctx,
        blocking: &[(BranchRef, bool)],
        undo: &mut Undo,
    ) -> Result<bool> {
        let runtime = ctx.runtime(self.project)?;
        let old_server = names::server_name(self.old);
        let running = runtime.status(&old_server).await? == ServerStatus::Running;
        undo.intend(ctx, "stop", self.restore(self.old, running))
            .await?;
        ctx.shell
            .step("Stop", async {
                runtime.stop(&old_server, STOP_TIMEOUT).await?;
                runtime.remove(&old_server).await
            })
            .await?;
        for (child, child_running) in blocking {
            undo.intend(ctx, "stop", self.restore(child, *child_running))
                .await?;
            let name = names::server_name(child);
            ctx.shell
                .step(&format!("Stop {child}"), runtime.stop(&name, STOP_TIMEOUT))
                .await?;
        }
        Ok(running)
    }

    /// Renames every generation's volume, with its snapshots.
    async fn rename_volumes(&self, ctx: &Ctx, undo: &mut Undo) -> Result<()> {
        let storage = ctx.storage(self.project)?;
        for generation in self.branch.generations() {
            let step = UndoStep::RenameVolume {
                from: self.old.branch.clone(),
                to: self.new.branch.clone(),
                generation,
            };
            undo.intend(ctx, "rename-volume", step).await?;
            let (from, to) = (
                VolumeId::new(self.old, generation),
                VolumeId::new(self.new, generation),
            );
            ctx.shell
                .step(
                    &format!("Rename {}", storage.name_of(&from)),
                    storage.rename_volume(&from, &to),
                )
                .await?;
        }
        Ok(())
    }

    /// Creates the server under the new name, on the renamed volume, started if the old one
    /// was running.
    async fn serve_new(&self, ctx: &Ctx, running: bool, undo: &mut Undo) -> Result<()> {
        let (storage, runtime) = (ctx.storage(self.project)?, ctx.runtime(self.project)?);
        let note = |what: &str| ctx.shell.note(&format!("▸ {what}"));
        let root = storage
            .ensure_available(&self.branch.volume(self.new), &note)
            .await?;
        let (p, b) = (self.project, self.branch);
        let spec = server::spec(ctx, p, self.new, b, &root, runtime.as_ref(), None)?;
        create_server(ctx, runtime.as_ref(), &spec, self.new, undo).await?;
        undo.step(ctx, "start").await?;
        if running {
            server::start_and_wait(ctx, p, self.new, b, BRANCH_READY).await?;
        }
        Ok(())
    }

    fn restore(&self, r: &BranchRef, start: bool) -> UndoStep {
        UndoStep::RestoreServer {
            branch: r.branch.clone(),
            start,
        }
    }

    /// Refuses when the storage already holds something under the new name (left by a
    /// command that was cut short, or made by hand): a rename never replaces data.
    async fn refuse_leftovers(&self, ctx: &Ctx) -> Result<()> {
        let storage = ctx.storage(self.project)?;
        let inventory = storage.inventory().await?;
        let taken = |v: &VolumeId| v.project == self.new.project && v.branch == self.new.branch;
        let found = inventory.entries.iter().find(|e| {
            e.volume.as_ref().is_some_and(taken)
                || e.snapshot.as_ref().is_some_and(|s| taken(&s.volume))
        });
        if let Some(e) = found {
            bail!(
                "{} already exists, though no branch `{}` does: `velo repair` shows what it is, and `velo repair --fix --force` removes it",
                e.name,
                self.new
            );
        }
        Ok(())
    }

    /// The children whose servers must stop while the branch's volumes are renamed (see
    /// [`crate::storage::Storage::clones_blocking_rename`]), and whether each runs now.
    async fn blocking_children(&self, ctx: &Ctx) -> Result<Vec<(BranchRef, bool)>> {
        let (storage, runtime) = (ctx.storage(self.project)?, ctx.runtime(self.project)?);
        let mut blocking = BTreeSet::new();
        for generation in self.branch.generations() {
            let v = VolumeId::new(self.old, generation);
            blocking.extend(storage.clones_blocking_rename(&v).await?);
        }
        let mut out = Vec::new();
        for child in self.children {
            let b = self
                .project
                .branch(&child.branch)
                .ok_or_else(|| anyhow!("branch `{child}` vanished"))?;
            if blocking.contains(&b.volume(child)) {
                let status = runtime.status(&names::server_name(child)).await?;
                out.push((child.clone(), status == ServerStatus::Running));
            }
        }
        Ok(out)
    }
}
