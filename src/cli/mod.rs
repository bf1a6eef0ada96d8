//! The command line: clap-derive types and a dispatcher that calls one operation per command.
//! Parsing validates names (through their `FromStr`), so operations only see valid input.

mod argv;
mod branch;
mod docs;
pub mod parse;
mod project;
mod snapshot;
mod target;
mod wal;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub use argv::hide_passwords;

use crate::names::ProjectName;
use crate::ops::{self, Ctx};
use crate::ui::Shell;

/// Git-style branches for PostgreSQL, on copy-on-write clones.
#[derive(Debug, Parser)]
#[command(name = "velo", version, about)]
pub struct Cli {
    /// Print only results, warnings and errors: no progress, no notes.
    #[arg(long, short, global = true)]
    pub quiet: bool,
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
    /// Choose the default project, for branches written without `<project>/`.
    Use {
        /// The project that `velo branch create dev` and the like mean (default: show the
        /// current one; VELO_PROJECT wins over it).
        project: Option<ProjectName>,
        /// Forget the default project.
        #[arg(long, conflicts_with = "project")]
        clear: bool,
    },
    /// Keep every branch in ~/.pgpass and ~/.pg_service.conf (service <project>-<branch>).
    ConnectionFiles {
        /// `on` writes velo's entries and keeps them up to date, `off` removes them (default:
        /// say which it is).
        #[arg(value_enum)]
        switch: Option<Switch>,
    },
    /// Print a shell completion script (see the README for where to put it).
    Completion {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print velo's man page, or write one page per command into a directory.
    Man {
        /// Write velo.1, velo-branch.1, velo-branch-create.1, … into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
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
    /// Delete expired branches and stop idle ones (for cron or a systemd timer).
    Gc {
        /// Print what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete an expired branch that has children (with them), and stop an idle one.
        #[arg(long)]
        include_parents: bool,
        /// Print JSON instead of a table.
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
        /// How long each branch may take to answer before it is called dead: a number and a
        /// unit, such as 2s or 500ms.
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse::duration)]
        timeout: std::time::Duration,
    },
    /// Work velo does after a command has answered (started by velo itself).
    #[command(name = "__background", hide = true, subcommand)]
    Background(Background),
}

#[derive(Debug, Subcommand)]
pub enum Background {
    /// Finish the journal operation `id` that the velo process `parent` handed over.
    Finish {
        /// The journal operation.
        id: String,
        /// The velo process that handed it over.
        parent: u32,
    },
    /// Remove what `project` no longer needs (old generations, stale prepared clusters).
    Tidy {
        /// The project to tidy.
        project: ProjectName,
    },
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// A child program velo ran for the user (psql) exited with this code: velo exits with it too.
#[derive(Debug, thiserror::Error)]
#[error("exited with status {0}")]
pub struct ChildExit(pub i32);

impl Cli {
    /// Runs the commands that need no velo home (completions, man pages); `None` for others.
    pub fn run_offline(&self, shell: &Shell) -> Option<Result<()>> {
        match &self.command {
            Command::Completion { shell: kind } => Some(docs::print_completion(shell, *kind)),
            Command::Man { dir } => Some(docs::print_man(shell, dir.as_deref())),
            _ => None,
        }
    }

    /// Runs the command; then, if it may have changed branches (or the recovery before it
    /// did), brings the connection files in line ([`ops::connfiles::sync`]).
    pub async fn run(self, ctx: &Ctx) -> Result<()> {
        let sync = !matches!(
            self.command,
            Command::Setup { .. }
                | Command::Doctor { .. }
                | Command::ConnectionFiles { .. }
                | Command::Completion { .. }
                | Command::Man { .. }
                | Command::Background(_)
        );
        let result = self.dispatch(ctx).await;
        if sync {
            ops::connfiles::sync(ctx);
        }
        result
    }

    async fn dispatch(self, ctx: &Ctx) -> Result<()> {
        match self.command {
            Command::Project(cmd) => cmd.run(ctx).await,
            Command::Branch(cmd) => cmd.run(ctx).await,
            Command::Snapshot(cmd) => cmd.run(ctx).await,
            Command::Wal(cmd) => cmd.run(ctx).await,
            Command::Status { json } => ops::status::status(ctx, json).await,
            Command::Gc {
                dry_run,
                include_parents,
                json,
            } => {
                let opts = ops::gc::GcOptions {
                    dry_run,
                    json,
                    include_parents,
                };
                ops::gc::gc(ctx, opts).await
            }
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
                ops::background::run_tidy(ctx, &project).await;
                Ok(())
            }
            Command::Use { project, clear } => {
                ops::current::use_project(ctx, project.as_ref(), clear)
            }
            Command::ConnectionFiles { switch } => {
                ops::connfiles::set(ctx, switch.map(|s| s == Switch::On))
            }
            Command::Completion { shell } => docs::print_completion(&ctx.shell, shell),
            Command::Man { dir } => docs::print_man(&ctx.shell, dir.as_deref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every command's path and its arguments that have no help line.
    fn without_help(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        if cmd.get_about().is_none() {
            missing.push(format!("{path} (the command)"));
        }
        for arg in cmd.get_arguments() {
            let generated = matches!(arg.get_id().as_str(), "help" | "version");
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            if !generated && help.trim().is_empty() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            without_help(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }

    #[test]
    fn every_command_and_argument_has_help() {
        let mut missing = Vec::new();
        without_help(&Cli::command(), "velo", &mut missing);
        assert!(missing.is_empty(), "no help line: {missing:#?}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_numbers_are_usage_errors_that_name_the_forms() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["snapshot", "create", "a/b", "--wait", "forever"],
                "30s, 10m",
            ),
            (&["doctor", "--timeout", "abc"], "30s, 10m"),
            (
                &["snapshot", "cleanup", "--all", "--days", "7d"],
                "such as 7",
            ),
            (
                &["snapshot", "cleanup", "--all", "--days", "-1"],
                "0 or more",
            ),
            (
                &["wal", "cleanup", "a/b", "--days", "99999999"],
                "at most 36500",
            ),
            (&["branch", "create", "a/b", "--pitr", "x"], "2 hours ago"),
            (&["snapshot", "list", "Bad/x"], "give a project (demo)"),
        ];
        for (args, says) in cases {
            let err = Cli::try_parse_from(std::iter::once(&"velo").chain(args.iter())).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            let text = err.to_string();
            assert!(text.contains(says), "{args:?}: {text}");
        }
        let err = Cli::try_parse_from(["velo", "status", "--verbose"]).unwrap_err();
        assert!(!err.to_string().contains("--version"), "{err}");
    }

    proptest::proptest! {
        /// No value of any numeric or time option panics the parser.
        #[test]
        fn no_option_value_panics(value in "\\PC{0,30}", which in 0usize..6) {
            let args: Vec<&str> = match which {
                0 => vec!["snapshot", "create", "a/b", "--wait", &value],
                1 => vec!["doctor", "--timeout", &value],
                2 => vec!["snapshot", "cleanup", "--all", "--days", &value],
                3 => vec!["wal", "cleanup", "a/b", "--days", &value],
                4 => vec!["branch", "create", "a/b", "--pitr", &value],
                _ => vec!["project", "create", "p", "--pg-version", &value],
            };
            let _ = Cli::try_parse_from(std::iter::once("velo").chain(args));
        }
    }
}
