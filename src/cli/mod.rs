//! The command line: clap-derive types and a dispatcher that calls one operation per command.
//! Parsing validates names (through their `FromStr`), so operations only see valid input.

mod argv;
mod branch;
mod parse;
mod project;
mod snapshot;
mod wal;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub use argv::hide_passwords;

use crate::names::ProjectName;
use crate::ops::{self, Ctx};

/// Git-style branches for PostgreSQL, on ZFS clones and Docker.
#[derive(Debug, Parser)]
#[command(name = "velo", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, inspect and delete projects.
    #[command(visible_alias = "proj", subcommand)]
    Project(project::ProjectCmd),
    /// Create, reset, start, stop and delete branches.
    #[command(visible_alias = "br", subcommand)]
    Branch(branch::BranchCmd),
    /// Take, list, delete and clean up snapshots.
    #[command(visible_alias = "snap", subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// WAL archives: what is kept, and retention.
    #[command(subcommand)]
    Wal(wal::WalCmd),
    /// Compare state, ZFS and Docker and report every mismatch; --fix repairs them.
    Repair {
        /// Repair what can be repaired safely (restart, re-create, mount, forget what is gone).
        #[arg(long)]
        fix: bool,
        /// With --fix, also destroy orphan datasets and snapshots (they hold data).
        #[arg(long, requires = "fix")]
        force: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Pool usage and every project and branch.
    #[command(visible_alias = "ls")]
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// One-time host set-up (as root) so that a user runs velo without root.
    Setup {
        /// The user to prepare (default: the user who ran sudo).
        #[arg(long)]
        user: Option<String>,
        /// ZFS pool for velo (default: the only imported pool).
        #[arg(long)]
        pool: Option<String>,
        /// Print every change without making it.
        #[arg(long)]
        dry_run: bool,
        /// Remove what setup added for the user.
        #[arg(long)]
        undo: bool,
    },
    /// Check that the host and every branch are ready; exit 0 only if nothing is broken.
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// How long each branch's port may take to answer before it is called dead.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Work velo does after a command has answered (started by velo itself).
    #[command(name = "__background", hide = true, subcommand)]
    Background(Background),
}

#[derive(Debug, Subcommand)]
pub enum Background {
    /// Finish the journal operation `id` that the velo process `parent` handed over.
    Finish { id: String, parent: u32 },
    /// Remove what `project` no longer needs (old generations, stale prepared clusters).
    Tidy { project: ProjectName },
}

/// A child program velo ran for the user (psql) exited with this code: velo exits with it too.
#[derive(Debug, thiserror::Error)]
#[error("exited with status {0}")]
pub struct ChildExit(pub i32);

impl Cli {
    pub async fn run(self, ctx: &Ctx) -> Result<()> {
        match self.command {
            Command::Project(cmd) => cmd.run(ctx).await,
            Command::Branch(cmd) => cmd.run(ctx).await,
            Command::Snapshot(cmd) => cmd.run(ctx).await,
            Command::Wal(cmd) => cmd.run(ctx).await,
            Command::Status { json } => ops::status::status(ctx, json).await,
            Command::Repair { fix, force, json } => {
                let opts = ops::drift::RepairOptions { fix, force, json };
                ops::drift::repair(ctx, opts).await
            }
            Command::Setup {
                user,
                pool,
                dry_run,
                undo,
            } => {
                let req = ops::setup::SetupRequest {
                    user,
                    pool,
                    dry_run,
                    undo,
                };
                ops::setup::setup(ctx, req).await
            }
            Command::Doctor { json, timeout } => ops::doctor::doctor(ctx, json, timeout).await,
            Command::Background(Background::Finish { id, parent }) => {
                ops::background::run_finish(ctx, &id, parent).await
            }
            Command::Background(Background::Tidy { project }) => {
                ops::background::tidy_here(ctx, &project).await;
                Ok(())
            }
        }
    }
}
