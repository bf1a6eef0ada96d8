//! `velo project …`

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::names::{BranchName, BranchRef, ProjectName};
use crate::ops::choose::{RuntimeKind, StorageKind, Wanted};
use crate::ops::{self, Ctx};

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Create a project and its main branch, and print main's URL.
    Create {
        /// The new project's name: lowercase letters, digits and `-`, starting with a letter.
        name: ProjectName,
        /// Where branches keep their data (default: the best this machine offers; see
        /// `velo doctor`).
        #[arg(long, value_enum)]
        storage: Option<StorageKind>,
        /// What runs their servers (default: Docker if it answers and has the image, else the
        /// host's PostgreSQL).
        #[arg(long, value_enum)]
        runtime: Option<RuntimeKind>,
        /// ZFS pool for `--storage zfs` (default: the pool `velo setup` recorded, else the only
        /// imported pool).
        #[arg(long)]
        pool: Option<String>,
        /// Directory for btrfs, reflink and copy storage (default: $VELO_HOME/data).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<std::path::PathBuf>,
        /// PostgreSQL major version, 14 or newer: the image postgres:<MAJOR>-alpine on Docker
        /// (default 17), the host's binaries of that major on the native runtime (default: the
        /// newest installed).
        #[arg(long, value_name = "MAJOR", conflicts_with = "image", value_parser = super::parse::pg_major)]
        pg_version: Option<u32>,
        /// Docker image honouring the official postgres image's contract (PostgreSQL 14+);
        /// pulled if it is not on this host.
        #[arg(long)]
        image: Option<String>,
        /// Print main's record as JSON (as `branch get --json`) instead of its URL.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        import: ImportArgs,
    },
    /// Import a project's source again as a new generation of main; branches keep their data.
    Refresh {
        /// The project (one made with --from or --from-dump).
        name: ProjectName,
        /// SQL to run on main after the import instead of the one recorded (masking).
        #[arg(long, value_name = "FILE.sql")]
        after_import: Option<PathBuf>,
        /// Print main's record as JSON (as `branch get --json`) instead of its URL.
        #[arg(long)]
        json: bool,
    },
    /// List projects.
    #[command(visible_alias = "ls")]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one project.
    Get {
        /// The project.
        name: ProjectName,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change a project's settings.
    Set {
        /// The project.
        name: ProjectName,
        /// Stop (at the next `velo gc`) a branch no client has used for this long: 30m, 2h;
        /// `off` to never (the default). Never main, nor a branch with children unless
        /// `velo gc --include-parents`.
        #[arg(long, value_name = "DURATION|off", value_parser = ops::lifetime::parse_idle_stop)]
        idle_stop: ops::lifetime::IdleStop,
    },
    /// Delete a project with all its data.
    #[command(visible_alias = "rm")]
    Delete {
        /// The project.
        name: ProjectName,
        /// Delete even if it has branches besides main.
        #[arg(long)]
        force: bool,
    },
}

/// Where main's data comes from (`project create`).
#[derive(Debug, clap::Args)]
#[group(skip)]
pub struct ImportArgs {
    /// Import a running PostgreSQL server: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (the
    /// password in the URL, PGPASSWORD or ~/.pgpass; velo never keeps it).
    #[arg(long, value_name = "URL", group = "source")]
    from: Option<String>,
    /// Import a dump made by pg_dump -Fc (a file) or -Fd (a directory).
    #[arg(long, value_name = "FILE", group = "source")]
    from_dump: Option<PathBuf>,
    /// Import every database of the source, not only the URL's.
    #[arg(long, requires = "from")]
    all_databases: bool,
    /// Import the source's roles too (without their passwords).
    #[arg(long, requires = "from")]
    with_roles: bool,
    /// With --with-roles, import the roles' password hashes too.
    #[arg(long, requires = "with_roles")]
    with_role_passwords: bool,
    /// Copy the source physically with pg_basebackup: every database and role, exactly. The
    /// source must be of the project's major and let the URL's user replicate.
    #[arg(
        long,
        requires = "from",
        conflicts_with_all = ["from_dump", "all_databases", "with_roles", "jobs"]
    )]
    physical: bool,
    /// Keep main a hot standby of the source, streaming its changes (a physical copy first);
    /// each branch is a snapshot of it, promoted. `velo status` shows how far behind it is.
    #[arg(
        long,
        requires = "from",
        conflicts_with_all = ["from_dump", "all_databases", "with_roles", "jobs"]
    )]
    follow: bool,
    /// With --follow: a directory the source archives its WAL into (its `archive_command`'s
    /// target, readable here by the server's user), which main replays from whenever it cannot
    /// stream.
    #[arg(long, value_name = "DIR", requires = "follow")]
    source_wal: Option<PathBuf>,
    /// With --follow: stream through a replication slot on the source, which keeps its WAL
    /// until main has it (a main that is stopped or behind makes the source keep WAL: watch
    /// its disk); velo drops the slot when the project is deleted.
    #[arg(long, requires = "follow")]
    slot: bool,
    /// Parallel jobs of pg_dump and pg_restore (default: the cores, at most 4).
    #[arg(long, value_name = "N", requires = "source")]
    jobs: Option<u32>,
    /// SQL run on main after the import and after every refresh, before any branch can see
    /// the data (for masking).
    #[arg(long, value_name = "FILE.sql", requires = "source")]
    after_import: Option<PathBuf>,
}

impl ImportArgs {
    fn request(self) -> Option<ops::import::Request> {
        (self.from.is_some() || self.from_dump.is_some()).then_some(ops::import::Request {
            url: self.from,
            dump: self.from_dump,
            all_databases: self.all_databases,
            with_roles: self.with_roles,
            role_passwords: self.with_role_passwords,
            physical: self.physical || self.follow,
            follow: self.follow,
            source_wal: self.source_wal,
            slot: self.slot,
            jobs: self.jobs,
            after_import: self.after_import,
        })
    }
}

impl ProjectCmd {
    pub async fn run(self, ctx: &Ctx) -> Result<()> {
        match self {
            ProjectCmd::Create {
                name,
                storage,
                runtime,
                pool,
                data_dir,
                pg_version,
                image,
                import,
                json,
            } => {
                let wanted = Wanted {
                    storage,
                    runtime,
                    pool,
                    data_dir,
                    pg_version,
                    image,
                };
                let import = import.request();
                let main = BranchRef::new(name.clone(), BranchName::main());
                ops::project::create(
                    ctx,
                    ops::project::CreateProject {
                        name,
                        wanted,
                        import,
                    },
                )
                .await?;
                ops::branch::show(ctx, &main, json).await
            }
            ProjectCmd::Refresh {
                name,
                after_import,
                json,
            } => {
                let main = BranchRef::new(name.clone(), BranchName::main());
                ops::import::refresh::refresh(ctx, &name, after_import.as_deref()).await?;
                ops::branch::show(ctx, &main, json).await
            }
            ProjectCmd::List { json } => ops::project::list(ctx, json).await,
            ProjectCmd::Get { name, json } => ops::project::get(ctx, &name, json).await,
            ProjectCmd::Delete { name, force } => ops::project::delete(ctx, &name, force).await,
            ProjectCmd::Set { name, idle_stop } => {
                ops::lifetime::set_idle_stop(ctx, &name, idle_stop).await
            }
        }
    }
}
