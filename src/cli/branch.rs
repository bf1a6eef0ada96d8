//! `velo branch …`

use anyhow::Result;
use clap::Subcommand;

use crate::names::{BranchRef, ProjectName};
use crate::ops::{self, Ctx};

#[derive(Debug, Subcommand)]
pub enum BranchCmd {
    /// Create a branch from its parent's current state (a ZFS clone: instant, whatever the size).
    Create {
        /// The new branch, as <project>/<branch>.
        branch: BranchRef,
        /// The branch to copy (default: <project>/main).
        #[arg(long, value_name = "PROJECT/BRANCH")]
        parent: Option<BranchRef>,
    },
    /// List branches, of one project or of all.
    #[command(visible_alias = "ls")]
    List {
        project: Option<ProjectName>,
        #[arg(long)]
        json: bool,
    },
    /// Show one branch.
    Get {
        branch: BranchRef,
        #[arg(long)]
        json: bool,
    },
    /// Delete a branch and its data.
    #[command(visible_alias = "rm")]
    Delete {
        branch: BranchRef,
        /// Also delete the branches made from it.
        #[arg(long)]
        force: bool,
    },
    /// Throw away a branch's changes: back to its parent's current state (same port and password).
    Reset { branch: BranchRef },
    /// Start a branch's PostgreSQL.
    Start { branch: BranchRef },
    /// Stop a branch's PostgreSQL (its data stays).
    Stop { branch: BranchRef },
    /// Restart a branch's PostgreSQL.
    Restart { branch: BranchRef },
    /// Show how to connect: host, port, user, password, database and URL.
    #[command(visible_alias = "pass")]
    Password {
        branch: BranchRef,
        #[arg(long)]
        json: bool,
    },
}

impl BranchCmd {
    pub async fn run(self, ctx: &Ctx) -> Result<()> {
        use ops::branch;
        match self {
            BranchCmd::Create { branch, parent } => {
                if let Some(p) = &parent
                    && p.project != branch.project
                {
                    anyhow::bail!(
                        "--parent `{p}` is in another project than `{branch}`; branches are made within one project"
                    );
                }
                branch::create(ctx, &branch, parent.map(|p| p.branch)).await
            }
            BranchCmd::List { project, json } => branch::list(ctx, project.as_ref(), json).await,
            BranchCmd::Get { branch, json } => branch::get(ctx, &branch, json).await,
            BranchCmd::Delete { branch, force } => branch::delete(ctx, &branch, force).await,
            BranchCmd::Reset { branch } => branch::reset(ctx, &branch).await,
            BranchCmd::Start { branch } => branch::start(ctx, &branch).await,
            BranchCmd::Stop { branch } => branch::stop(ctx, &branch).await,
            BranchCmd::Restart { branch } => branch::restart(ctx, &branch).await,
            BranchCmd::Password { branch, json } => branch::password(ctx, &branch, json).await,
        }
    }
}
