//! `velo snapshot …`

use anyhow::Result;
use clap::Subcommand;

use super::target::BranchArg;
use crate::names::Label;
use crate::ops::{self, Ctx};

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Take a consistent snapshot of a branch (CHECKPOINT first if it runs); prints its id.
    Create {
        /// The branch, as <project>/<branch>, or <branch> of the default project (`velo use`).
        branch: BranchArg,
        /// A name to refer to it by, unique within the project.
        #[arg(long)]
        label: Option<Label>,
        /// How long to wait while another command changes the branch (e.g. a reset): a number
        /// and a unit, such as 30s, 10m or 1h, at most 1w; 0 fails at once.
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = super::parse::duration)]
        wait: std::time::Duration,
    },
    /// List snapshots: id, label, branch, time, size.
    #[command(visible_alias = "ls")]
    List {
        /// A project or <project>/<branch> (default: all).
        #[arg(value_name = "PROJECT[/BRANCH]", value_parser = super::parse::scope)]
        scope: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot by id, unique id prefix or label.
    #[command(visible_alias = "rm")]
    Delete {
        /// Snapshot id, unique id prefix (4 characters or more) or label.
        snapshot: String,
    },
    /// Delete snapshots older than --days (for cron): never a branch's base snapshot nor one a
    /// branch was cloned from.
    Cleanup {
        /// The branch whose snapshots to clean up, as <project>/<branch> or <branch> of the
        /// default project; or --all.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        branch: Option<BranchArg>,
        /// Clean up the snapshots of every branch of every project.
        #[arg(long)]
        all: bool,
        /// Delete snapshots older than this many days: a whole number, 0 to 36500.
        #[arg(long, allow_hyphen_values = true, value_parser = super::parse::days)]
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
            } => snapshot::create(ctx, &branch.resolve(ctx)?, label, wait).await,
            SnapshotCmd::List { scope, json } => snapshot::list(ctx, scope.as_deref(), json).await,
            SnapshotCmd::Delete { snapshot } => snapshot::delete(ctx, &snapshot).await,
            SnapshotCmd::Cleanup {
                branch,
                all: _,
                days,
                dry_run,
            } => {
                let scope = match branch {
                    Some(b) => snapshot::Scope::Branch(b.resolve(ctx)?),
                    None => snapshot::Scope::All,
                };
                snapshot::cleanup(ctx, scope, days, dry_run).await
            }
        }
    }
}
