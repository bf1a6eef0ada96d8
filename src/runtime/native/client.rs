//! Client programs for an import (psql, pg_dump, pg_restore, pg_dumpall), run as processes of
//! velo's user from the host's binaries of the server's major: the server's own bin directory
//! if it has them, else wherever [`bins::find_client`] finds that major.
//!
//! A program gets the environment of every native program ([`command::quiet`]) plus the job's
//! own, none of which is a secret (the password is in the file `PGPASSFILE` names). It runs in
//! a session of its own, so a Ctrl-C reaches velo alone, and dies with velo: killed when velo
//! drops it, and by the kernel if velo itself dies (`PR_SET_PDEATHSIG`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use super::bins;
use super::command;
use super::error::NativeError;
use crate::lines::Lines;
use crate::runtime::{ClientJob, ClientOutput, Result};

/// The program `tool` of PostgreSQL `major`: in `bindir` (the server's) if it is that major
/// there, else found among the host's binaries.
pub fn program(bindir: &Path, major: u32, tool: &str) -> Result<PathBuf> {
    let own = bindir.join(tool);
    if own.is_file() && version_of(&own).is_some_and(|(_, m)| m == major) {
        return Ok(own);
    }
    bins::find_client(major, tool)
}

/// `<program> --version`: its first line and major.
fn version_of(program: &Path) -> Option<(String, u32)> {
    let out = command::quiet(program)
        .arg("--version")
        .env("LC_ALL", "C")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .to_string();
    let (_, major) = bins::parse_version(&line)?;
    Some((line, major))
}

/// The `--version` line of `program`.
pub fn version(program: &Path) -> Result<String> {
    version_of(program).map(|(line, _)| line).ok_or_else(|| {
        NativeError::MissingBinary {
            path: program.to_path_buf(),
        }
        .into()
    })
}

/// Runs `program` for `job` to its end; each stderr line goes to `line` as it comes.
pub async fn run(
    program: &Path,
    job: &ClientJob,
    line: &(dyn Fn(&str) + Send + Sync),
) -> Result<ClientOutput> {
    let mut cmd = command::quiet(program);
    cmd.args(&job.args)
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: `setsid` and `prctl` are single system calls, async-signal-safe, and allocate
    // nothing.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            Ok(())
        });
    }
    let shown = command::line(&cmd);
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NativeError::Spawn {
            command: shown.clone(),
            source,
        })?;
    let (mut stdout, stderr) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let read_stdout = async {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).await.map(|_| out)
    };
    let read_stderr = async {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut tail = Lines::default();
        while let Some(l) = lines.next_line().await? {
            tail.push(format!("{l}\n").as_bytes(), line);
        }
        Ok::<_, std::io::Error>(tail.finish(line))
    };
    let (out, err) = tokio::join!(read_stdout, read_stderr);
    let io = |source| NativeError::Spawn {
        command: shown.clone(),
        source,
    };
    let status = child.wait().await.map_err(io)?;
    Ok(ClientOutput {
        code: status.code().map_or(-1, i64::from),
        stdout: String::from_utf8_lossy(&out.map_err(io)?).into_owned(),
        stderr: err.map_err(io)?,
    })
}
