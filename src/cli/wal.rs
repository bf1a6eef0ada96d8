//! `velo wal …`

use anyhow::Result;
use clap::Subcommand;

use crate::names::BranchRef;
use crate::ops::{self, Ctx};

#[derive(Debug, Subcommand)]
pub enum WalCmd {
    /// Archived WAL per branch: segments, size, oldest/newest, gaps, recoverable window.
    Info {
        /// A project or <project>/<branch> (default: all).
        scope: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete archived WAL older than --days that no snapshot still needs for PITR.
    Cleanup {
        branch: BranchRef,
        #[arg(long)]
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
            } => ops::wal::cleanup(ctx, &branch, days, dry_run).await,
        }
    }
}
