//! `velo project …`

use anyhow::Result;
use clap::Subcommand;

use crate::names::ProjectName;
use crate::ops::{self, Ctx};

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Create a project and its main branch, and print main's URL.
    Create {
        name: ProjectName,
        /// ZFS pool to keep the project in (default: the only imported pool).
        #[arg(long)]
        pool: Option<String>,
        /// PostgreSQL major version; picks the image postgres:<VERSION>-alpine.
        #[arg(long, value_name = "VERSION")]
        pg_version: Option<String>,
        /// Docker image honouring the official postgres image's contract.
        #[arg(long)]
        image: Option<String>,
    },
    /// List projects.
    #[command(visible_alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one project.
    Get {
        name: ProjectName,
        #[arg(long)]
        json: bool,
    },
    /// Delete a project with all its data.
    #[command(visible_alias = "rm")]
    Delete {
        name: ProjectName,
        /// Delete even if it has branches besides main.
        #[arg(long)]
        force: bool,
    },
}

impl ProjectCmd {
    pub async fn run(self, ctx: &Ctx) -> Result<()> {
        match self {
            ProjectCmd::Create {
                name,
                pool,
                pg_version,
                image,
            } => {
                let req = ops::project::CreateProject {
                    name,
                    pool,
                    pg_version,
                    image,
                };
                ops::project::create(ctx, req).await
            }
            ProjectCmd::List { json } => ops::project::list(ctx, json).await,
            ProjectCmd::Get { name, json } => ops::project::get(ctx, &name, json).await,
            ProjectCmd::Delete { name, force } => ops::project::delete(ctx, &name, force).await,
        }
    }
}
