//! `velo snapshot …`

use anyhow::Result;
use clap::Subcommand;

use crate::names::{BranchRef, Label};
use crate::ops::{self, Ctx};

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Take a consistent snapshot of a branch (CHECKPOINT first if it runs); prints its id.
    Create {
        branch: BranchRef,
        /// A name to refer to it by, unique within the project.
        #[arg(long)]
        label: Option<Label>,
        /// How long to wait while another command changes the branch (e.g. a reset), such as
        /// "30s" or "10m"; 0 fails at once.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// List snapshots: id, label, branch, time, size.
    #[command(visible_alias = "ls")]
    List {
        /// A project or <project>/<branch> (default: all).
        scope: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot by id, unique id prefix or label.
    #[command(visible_alias = "rm")]
    Delete { snapshot: String },
    /// Delete snapshots older than --days (for cron): never a branch's base snapshot nor one a
    /// branch was cloned from.
    Cleanup {
        /// A <project>/<branch>, or --all.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        branch: Option<BranchRef>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        days: u32,
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

impl SnapshotCmd {
    pub async fn run(self, ctx: &Ctx) -> Result<()> {
        use ops::snapshot;
        match self {
            SnapshotCmd::Create {
                branch,
                label,
                wait,
            } => snapshot::create(ctx, &branch, label, wait).await,
            SnapshotCmd::List { scope, json } => snapshot::list(ctx, scope.as_deref(), json).await,
            SnapshotCmd::Delete { snapshot } => snapshot::delete(ctx, &snapshot).await,
            SnapshotCmd::Cleanup {
                branch,
                all: _,
                days,
                dry_run,
            } => {
                let scope = match branch {
                    Some(r) => snapshot::Scope::Branch(r),
                    None => snapshot::Scope::All,
                };
                snapshot::cleanup(ctx, scope, days, dry_run).await
            }
        }
    }
}
