//! `velo branch …`

use anyhow::Result;
use clap::Subcommand;

use super::target::BranchArg;
use crate::names::{BranchName, BranchRef, ProjectName};
use crate::ops::{self, Ctx, UsageError};

/// The help line of every branch argument.
const BRANCH_HELP: &str =
    "The branch, as <project>/<branch>, or <branch> of the default project (`velo use`)";

#[derive(Debug, Subcommand)]
pub enum BranchCmd {
    /// Create a branch: from its parent's current state, from a snapshot, or from a moment in
    /// its parent's history (a copy-on-write clone: instant, whatever the size).
    Create {
        #[arg(
            help = "The new branch, as <project>/<branch>, or <branch> of the default project (`velo use`)"
        )]
        branch: BranchArg,
        /// The branch to copy, or to recover with --pitr (default: main); a bare name is a
        /// branch of the new branch's project.
        #[arg(long, value_name = "BRANCH")]
        parent: Option<BranchArg>,
        /// Start from this snapshot (id, unique id prefix or label) instead.
        #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["parent", "pitr"])]
        from_snapshot: Option<String>,
        /// Recover the parent as it was at this time: RFC 3339 ("2025-10-07T14:30:00Z"), a UTC
        /// date and time ("2025-10-07 14:30:00"), or a time ago ("2 hours ago", "-90m", "30m").
        #[arg(long, value_name = "TIME", allow_hyphen_values = true, value_parser = super::parse::point_in_time)]
        pitr: Option<chrono::DateTime<chrono::Utc>>,
        #[command(flatten)]
        expiry: ExpiryArgs,
        /// For a project that follows a server: refuse if main is further behind its source
        /// than this (2s, 1m).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        max_lag: Option<std::time::Duration>,
        /// Print the new branch's record as JSON (as `branch get --json`) instead of its URL.
        #[arg(long)]
        json: bool,
    },
    /// List branches, of one project or of all.
    #[command(visible_alias = "ls")]
    List {
        /// Only this project's branches (default: every project's).
        project: Option<ProjectName>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Show children under their parents (with --json: nested under `children`).
        #[arg(long)]
        tree: bool,
    },
    /// Change when a branch expires: `velo gc` deletes it then.
    Set {
        #[arg(help = BRANCH_HELP)]
        branch: BranchArg,
        #[command(flatten)]
        expiry: SetExpiryArgs,
    },
    /// Rename a branch: its data, snapshots, WAL archive and server; its children follow.
    #[command(visible_alias = "mv")]
    Rename {
        #[arg(help = BRANCH_HELP)]
        branch: BranchArg,
        /// The new name (or <project>/<new name>, in the same project).
        new_name: String,
    },
    /// Show one branch.
    Get {
        #[arg(help = BRANCH_HELP)]
        branch: BranchArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a branch and its data.
    #[command(visible_alias = "rm")]
    Delete {
        #[arg(help = BRANCH_HELP)]
        branch: BranchArg,
        /// Also delete the branches made from it.
        #[arg(long)]
        force: bool,
    },
    /// Throw away a branch's changes: back to its parent's current state (same port and password).
    Reset {
        #[arg(help = BRANCH_HELP)]
        branch: BranchArg,
        /// Print the branch's record as JSON (as `branch get --json`).
        #[arg(long)]
        json: bool,
    },
    /// Rewind a branch in place to one of its snapshots (same port and password).
    Restore {
        #[arg(help = BRANCH_HELP)]
        branch: BranchArg,
        /// Snapshot id, unique id prefix or label.
        snapshot: String,
        /// Print the branch's record as JSON (as `branch get --json`).
        #[arg(long)]
        json: bool,
    },
    /// Start a branch's PostgreSQL.
    Start {
        #[arg(help = BRANCH_HELP)]
        branch: BranchArg,
        /// Print the branch's record as JSON (as `branch get --json`) instead of its URL.
        #[arg(long)]
        json: bool,
    },
    /// Stop a branch's PostgreSQL (its data stays).
    Stop {
        #[arg(help = BRANCH_HELP)]
        branch: BranchArg,
    },
    /// Restart a branch's PostgreSQL.
    Restart {
        #[arg(help = BRANCH_HELP)]
        branch: BranchArg,
    },
    /// Show how to connect: host, port, user, password, database and URL.
    #[command(visible_alias = "pass")]
    Password {
        #[arg(help = BRANCH_HELP)]
        branch: BranchArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the branch's connection URL (without the password unless asked).
    #[command(visible_alias = "connection-string")]
    Url {
        #[arg(help = BRANCH_HELP)]
        branch: BranchArg,
        /// Put the password in the URL (for scripts and .env files).
        #[arg(long)]
        with_password: bool,
    },
    /// Print `export` lines of PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE and DATABASE_URL,
    /// for `eval "$(velo branch env P/B)"`.
    Env {
        #[arg(help = BRANCH_HELP)]
        branch: BranchArg,
    },
    /// Run psql on the branch (over its private socket: no password asked or shown).
    Psql {
        #[arg(help = BRANCH_HELP)]
        branch: BranchArg,
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
        return Err(UsageError(format!(
            "`{text}` is in another project than `{branch}`; a branch is renamed within its project"
        ))
        .into());
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
                max_lag,
                json,
            } => {
                let expires_at = expiry.expiry().resolve(chrono::Utc::now())?;
                let r = branch.resolve(ctx)?;
                let parent = match parent.map(|p| p.within(&r.project)) {
                    Some(p) if p.project != r.project => {
                        return Err(UsageError(format!(
                            "--parent `{p}` is in another project than `{r}`; branches are made within one project"
                        ))
                        .into());
                    }
                    p => p.map(|p| p.branch),
                };
                let source = match (from_snapshot, pitr) {
                    (Some(key), _) => branch::Source::Snapshot(key),
                    (None, Some(target)) => branch::Source::Pitr { target, parent },
                    (None, None) => branch::Source::Parent(parent),
                };
                branch::create_expiring(ctx, &r, source, expires_at, max_lag).await?;
                branch::show(ctx, &r, json).await
            }
            BranchCmd::Set { branch, expiry } => {
                ops::lifetime::set_expiry(ctx, &branch.resolve(ctx)?, &expiry.expiry()).await
            }
            BranchCmd::Rename {
                branch,
                new_name: to,
            } => {
                let r = branch.resolve(ctx)?;
                let to = new_name(&r, &to)?;
                branch::rename(ctx, &r, &to).await
            }
            BranchCmd::Restore {
                branch,
                snapshot,
                json,
            } => {
                let r = branch.resolve(ctx)?;
                branch::restore(ctx, &r, &snapshot).await?;
                shown_as_json(ctx, &r, json).await
            }
            BranchCmd::List {
                project,
                json,
                tree,
            } => {
                let opts = branch::ListOptions { json, tree };
                branch::list(ctx, project.as_ref(), opts).await
            }
            BranchCmd::Get { branch, json } => branch::get(ctx, &branch.resolve(ctx)?, json).await,
            BranchCmd::Delete { branch, force } => {
                branch::delete(ctx, &branch.resolve(ctx)?, force).await
            }
            BranchCmd::Reset { branch, json } => {
                let r = branch.resolve(ctx)?;
                branch::reset(ctx, &r).await?;
                shown_as_json(ctx, &r, json).await
            }
            BranchCmd::Start { branch, json } => {
                let r = branch.resolve(ctx)?;
                branch::start(ctx, &r).await?;
                branch::show(ctx, &r, json).await
            }
            BranchCmd::Stop { branch } => branch::stop(ctx, &branch.resolve(ctx)?).await,
            BranchCmd::Restart { branch } => {
                let r = branch.resolve(ctx)?;
                branch::restart(ctx, &r).await?;
                branch::show(ctx, &r, false).await
            }
            BranchCmd::Password { branch, json } => {
                branch::password(ctx, &branch.resolve(ctx)?, json).await
            }
            BranchCmd::Url {
                branch,
                with_password,
            } => branch::connect::print_url(ctx, &branch.resolve(ctx)?, with_password),
            BranchCmd::Env { branch } => branch::connect::env(ctx, &branch.resolve(ctx)?),
            BranchCmd::Psql { branch, args } => {
                let code = branch::connect::psql(ctx, &branch.resolve(ctx)?, &args).await?;
                if code != 0 {
                    return Err(crate::cli::ChildExit(code).into());
                }
                Ok(())
            }
        }
    }
}

/// Reset and restore print nothing on stdout unless asked for the branch's record.
async fn shown_as_json(ctx: &Ctx, r: &crate::names::BranchRef, json: bool) -> Result<()> {
    if json {
        ops::branch::show(ctx, r, true).await?;
    }
    Ok(())
}
