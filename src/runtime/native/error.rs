//! What can go wrong running PostgreSQL natively, with what a user needs to fix it: the path,
//! the command line, PostgreSQL's own words.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error(
        "the native runtime runs PostgreSQL as the user who runs velo, and PostgreSQL refuses to run as root: run velo as a regular user, or use --runtime docker"
    )]
    RunAsRoot,
    #[error(
        "{path} is missing or not a file: install PostgreSQL's server binaries there, or point velo at another bin directory (VELO_PG_BINDIR, VELO_PG_ROOT)"
    )]
    MissingBinary { path: PathBuf },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}){}", stderr_suffix(stderr))]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{name}` is not a server name (one file name, not starting with `.`)")]
    BadName { name: String },
    #[error("server `{name}` already exists")]
    Exists { name: String },
    #[error("{path} is not a server record velo can read")]
    BadRecord {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "a live PostgreSQL server (pid {pid}) holds {lock}, and it is not the one velo started for `{name}`: stop it (`kill -INT {pid}`) and try again"
    )]
    AlreadyServed {
        name: String,
        pid: u32,
        lock: PathBuf,
    },
    #[error("server `{name}` (pid {pid}) is still there {waited:?} after SIGKILL")]
    Unkillable {
        name: String,
        pid: u32,
        waited: Duration,
    },
    #[error("PostgreSQL {major} is too old: velo needs PostgreSQL {min} or newer")]
    TooOld { major: u32, min: u32 },
    #[error("`{tool}` is not a PostgreSQL program name")]
    BadTool { tool: String },
    #[error("no {what} found; searched {searched}{found}. {fix}")]
    NotFound {
        /// What was looked for ("PostgreSQL 17 server binaries").
        what: String,
        /// The places, in the order they were searched.
        searched: String,
        /// What was found instead (", found: …"), or nothing.
        found: String,
        /// How to get it.
        fix: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    match stderr.trim() {
        "" => String::new(),
        text => format!(": {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_command_shows_its_line_status_and_stderr() {
        let e = NativeError::Command {
            command: "/usr/lib/postgresql/15/bin/initdb --pgdata=/x".into(),
            status: "exit status: 1".into(),
            stderr: "initdb: error: directory \"/x\" exists but is not empty\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "`/usr/lib/postgresql/15/bin/initdb --pgdata=/x` failed (exit status: 1): initdb: error: directory \"/x\" exists but is not empty"
        );
        let quiet = NativeError::Command {
            command: "postgres --version".into(),
            status: "signal: 9".into(),
            stderr: " \n".into(),
        };
        assert_eq!(quiet.to_string(), "`postgres --version` failed (signal: 9)");
    }

    #[test]
    fn root_is_told_what_to_do_instead() {
        let text = NativeError::RunAsRoot.to_string();
        assert!(text.contains("run velo as a regular user, or use --runtime docker"));
    }
}
