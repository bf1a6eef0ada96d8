//! `velo wal …`

use anyhow::Result;
use clap::Subcommand;

use super::target::BranchArg;
use crate::ops::{self, Ctx};

#[derive(Debug, Subcommand)]
pub enum WalCmd {
    /// Archived WAL per branch: segments, size, oldest/newest, gaps, recoverable window.
    Info {
        /// A project or <project>/<branch> (default: all).
        #[arg(value_name = "PROJECT[/BRANCH]", value_parser = super::parse::scope)]
        scope: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete archived WAL older than --days that no snapshot still needs for PITR.
    Cleanup {
        /// The branch, as <project>/<branch>, or <branch> of the default project (`velo use`).
        branch: BranchArg,
        /// Delete WAL archived more than this many days ago: a whole number, 0 to 36500.
        #[arg(long, allow_hyphen_values = true, value_parser = super::parse::days)]
        days: u32,
        /// List the files that would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

impl WalCmd {
    pub async fn run(self, ctx: &Ctx) -> Result<()> {
        match self {
            WalCmd::Info { scope, json } => ops::wal::info(ctx, scope.as_deref(), json).await,
            WalCmd::Cleanup {
                branch,
                days,
                dry_run,
            } => ops::wal::cleanup(ctx, &branch.resolve(ctx)?, days, dry_run).await,
        }
    }
}
