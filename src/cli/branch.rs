//! `velo branch …`

use anyhow::Result;
use clap::Subcommand;

use crate::names::{BranchName, BranchRef, ProjectName};
use crate::ops::{self, Ctx};

#[derive(Debug, Subcommand)]
pub enum BranchCmd {
    /// Create a branch: from its parent's current state, from a snapshot, or from a moment in
    /// its parent's history (a ZFS clone: instant, whatever the size).
    Create {
        /// The new branch, as <project>/<branch>.
        branch: BranchRef,
        /// The branch to copy, or to recover with --pitr (default: <project>/main).
        #[arg(long, value_name = "PROJECT/BRANCH")]
        parent: Option<BranchRef>,
        /// Start from this snapshot (id, unique id prefix or label) instead.
        #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["parent", "pitr"])]
        from_snapshot: Option<String>,
        /// Recover the parent as it was at this time: RFC 3339 ("2025-10-07T14:30:00Z") or a
        /// time ago ("2 hours ago", "-90m", "30m"). UTC inside.
        #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
        pitr: Option<String>,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// List branches, of one project or of all.
    #[command(visible_alias = "ls")]
    List {
        project: Option<ProjectName>,
        #[arg(long)]
        json: bool,
        /// Show children under their parents (with --json: nested under `children`).
        #[arg(long)]
        tree: bool,
    },
    /// Change when a branch expires: `velo gc` deletes it then.
    Set {
        branch: BranchRef,
        #[command(flatten)]
        expiry: SetExpiryArgs,
    },
    /// Rename a branch: its data, snapshots, WAL archive and server; its children follow.
    #[command(visible_alias = "mv")]
    Rename {
        branch: BranchRef,
        /// The new name (or <project>/<new name>, in the same project).
        new_name: String,
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
    /// Rewind a branch in place to one of its snapshots (same port and password).
    Restore {
        branch: BranchRef,
        /// Snapshot id, unique id prefix or label.
        snapshot: String,
    },
    /// Start a branch's PostgreSQL.
    Start { branch: BranchRef },
    /// Stop a branch's PostgreSQL (its data stays).
    Stop { branch: BranchRef },
    /// Restart a branch's PostgreSQL.
    Restart { branch: BranchRef },
    /// Show how to connect: host, port, user, password, database and URL.
    #[command(visible_alias = "pass")]
    Password {
        /// The branch, as <project>/<branch>.
        branch: BranchRef,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the branch's connection URL (without the password unless asked).
    #[command(visible_alias = "connection-string")]
    Url {
        /// The branch, as <project>/<branch>.
        branch: BranchRef,
        /// Put the password in the URL (for scripts and .env files).
        #[arg(long)]
        with_password: bool,
    },
    /// Print `export` lines of PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE and DATABASE_URL,
    /// for `eval "$(velo branch env P/B)"`.
    Env {
        /// The branch, as <project>/<branch>.
        branch: BranchRef,
    },
    /// Run psql on the branch (over its private socket: no password asked or shown).
    Psql {
        /// The branch, as <project>/<branch>.
        branch: BranchRef,
        /// Arguments for psql, after `--`.
        #[arg(last = true, value_name = "PSQL ARGS")]
        args: Vec<String>,
    },
}

/// When a new branch expires.
#[derive(Debug, clap::Args)]
pub struct ExpiryArgs {
    /// Delete the branch (at the next `velo gc`) this long after it is made: 30m, 8h, 7d.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "expires_at")]
    ttl: Option<std::time::Duration>,
    /// Delete the branch (at the next `velo gc`) after this moment: RFC 3339
    /// ("2025-10-07T14:30:00Z") or a UTC date and time ("2025-10-07 14:30:00").
    #[arg(long, value_name = "TIME")]
    expires_at: Option<String>,
}

impl ExpiryArgs {
    fn expiry(self) -> ops::lifetime::Expiry {
        use ops::lifetime::Expiry;
        match (self.ttl, self.expires_at) {
            (Some(ttl), _) => Expiry::Ttl(ttl),
            (None, Some(at)) => Expiry::At(at),
            (None, None) => Expiry::Never,
        }
    }
}

/// A branch's new expiry: exactly one of these.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct SetExpiryArgs {
    /// Expire this long from now: 30m, 8h, 7d.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    ttl: Option<std::time::Duration>,
    /// Expire at this moment: RFC 3339 or a UTC date and time.
    #[arg(long, value_name = "TIME")]
    expires_at: Option<String>,
    /// Never expire.
    #[arg(long)]
    no_expiry: bool,
}

impl SetExpiryArgs {
    fn expiry(self) -> ops::lifetime::Expiry {
        ExpiryArgs {
            ttl: self.ttl,
            expires_at: self.expires_at,
        }
        .expiry()
    }
}

/// The new name of `branch`: a bare name, or `<project>/<name>` in the same project.
fn new_name(branch: &BranchRef, text: &str) -> Result<BranchName> {
    if !text.contains('/') {
        return Ok(text.parse()?);
    }
    let r: BranchRef = text.parse()?;
    if r.project != branch.project {
        anyhow::bail!(
            "`{text}` is in another project than `{branch}`; a branch is renamed within its project"
        );
    }
    Ok(r.branch)
}

impl BranchCmd {
    pub async fn run(self, ctx: &Ctx) -> Result<()> {
        use ops::branch;
        match self {
            BranchCmd::Create {
                branch,
                parent,
                from_snapshot,
                pitr,
                expiry,
            } => {
                let expires_at = expiry.expiry().resolve(chrono::Utc::now())?;
                if let Some(p) = &parent
                    && p.project != branch.project
                {
                    anyhow::bail!(
                        "--parent `{p}` is in another project than `{branch}`; branches are made within one project"
                    );
                }
                let parent = parent.map(|p| p.branch);
                let source = match (from_snapshot, pitr) {
                    (Some(key), _) => branch::Source::Snapshot(key),
                    (None, Some(time)) => branch::Source::Pitr {
                        target: ops::wal::parse_target(&time, chrono::Utc::now())?,
                        parent,
                    },
                    (None, None) => branch::Source::Parent(parent),
                };
                branch::create_expiring(ctx, &branch, source, expires_at).await
            }
            BranchCmd::Set { branch, expiry } => {
                ops::lifetime::set_expiry(ctx, &branch, &expiry.expiry()).await
            }
            BranchCmd::Rename {
                branch,
                new_name: to,
            } => {
                let to = new_name(&branch, &to)?;
                branch::rename(ctx, &branch, &to).await
            }
            BranchCmd::Restore { branch, snapshot } => {
                branch::restore(ctx, &branch, &snapshot).await
            }
            BranchCmd::List {
                project,
                json,
                tree,
            } => {
                let opts = branch::ListOptions { json, tree };
                branch::list(ctx, project.as_ref(), opts).await
            }
            BranchCmd::Get { branch, json } => branch::get(ctx, &branch, json).await,
            BranchCmd::Delete { branch, force } => branch::delete(ctx, &branch, force).await,
            BranchCmd::Reset { branch } => branch::reset(ctx, &branch).await,
            BranchCmd::Start { branch } => branch::start(ctx, &branch).await,
            BranchCmd::Stop { branch } => branch::stop(ctx, &branch).await,
            BranchCmd::Restart { branch } => branch::restart(ctx, &branch).await,
            BranchCmd::Password { branch, json } => branch::password(ctx, &branch, json).await,
            BranchCmd::Url {
                branch,
                with_password,
            } => branch::connect::print_url(ctx, &branch, with_password),
            BranchCmd::Env { branch } => branch::connect::env(ctx, &branch),
            BranchCmd::Psql { branch, args } => {
                let code = branch::connect::psql(ctx, &branch, &args).await?;
                if code != 0 {
                    return Err(crate::cli::ChildExit(code).into());
                }
                Ok(())
            }
        }
    }
}
