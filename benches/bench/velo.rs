//! Running velo: as root (ZFS + Docker) or as the non-root user of the native runtime, with
//! its stderr read line by line so that each step's timing is known.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use crate::pg::Conn;
use crate::steps::{self, Step};

/// velo with one home, run by one user.
#[derive(Clone)]
pub struct Velo {
    bin: PathBuf,
    home: PathBuf,
    /// The user it runs as, with that user's home directory; root if none.
    user: Option<(String, String)>,
    /// Variables set in its environment besides VELO_HOME (PGPASSWORD for an import).
    env: Vec<(String, String)>,
}

/// What a velo command printed, and when.
pub struct Captured {
    pub stdout: String,
    pub steps: Vec<Step>,
    /// When it was spawned.
    pub start: Instant,
    /// Seconds until it exited.
    pub velo: f64,
}

impl Velo {
    pub fn root(bin: &Path, home: &Path) -> Velo {
        Velo {
            bin: bin.into(),
            home: home.into(),
            user: None,
            env: Vec::new(),
        }
    }

    /// velo run as `user` through `setpriv`, with an environment of nothing but PATH, HOME
    /// and VELO_HOME: what that user would have in a login shell, not root's.
    pub fn as_user(bin: &Path, home: &Path, user: &str) -> Result<Velo> {
        let out = Command::new("getent").args(["passwd", user]).output()?;
        let entry = String::from_utf8_lossy(&out.stdout);
        let user_home = entry
            .trim()
            .split(':')
            .nth(5)
            .filter(|h| out.status.success() && !h.is_empty())
            .ok_or_else(|| anyhow!("no user `{user}` (scripts/rig-up.sh makes velo-ci)"))?;
        Ok(Velo {
            bin: bin.into(),
            home: home.into(),
            user: Some((user.into(), user_home.into())),
            env: Vec::new(),
        })
    }

    /// The same velo with `name=value` in its environment.
    pub fn with_env(&self, name: &str, value: &str) -> Velo {
        let mut v = self.clone();
        v.env.push((name.into(), value.into()));
        v
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.user {
            None => {
                let mut cmd = Command::new(&self.bin);
                cmd.env("VELO_HOME", &self.home).envs(self.env.clone());
                cmd
            }
            Some((user, user_home)) => {
                let mut cmd = as_user(user);
                cmd.args(["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin"])
                    .arg(format!("HOME={user_home}"))
                    .arg(format!("VELO_HOME={}", self.home.display()))
                    .args(self.env.iter().map(|(k, v)| format!("{k}={v}")))
                    .arg(&self.bin);
                cmd
            }
        };
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    /// Runs velo, failing with its stderr if it fails; returns its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self
            .cmd(args)
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "velo {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let text = self.run(args)?;
        serde_json::from_str(&text).with_context(|| format!("velo {}: not JSON", args.join(" ")))
    }

    /// Runs velo and notes the steps it printed, each with the time its line arrived.
    pub fn captured(&self, args: &[&str]) -> Result<Captured> {
        let start = Instant::now();
        let mut child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.bin.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let reader = std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .map(|line| (start.elapsed().as_secs_f64(), line))
                .collect::<Vec<_>>()
        });
        let out = child.wait_with_output()?;
        let velo = start.elapsed().as_secs_f64();
        let lines = reader
            .join()
            .map_err(|_| anyhow!("reading velo's stderr failed"))?;
        if !out.status.success() {
            let text: Vec<_> = lines.into_iter().map(|(_, l)| l).collect();
            bail!("velo {} failed: {}", args.join(" "), text.join("\n"));
        }
        let steps = lines
            .into_iter()
            .filter_map(|(end, line)| {
                steps::parse(&line).map(|(label, secs)| Step { label, end, secs })
            })
            .collect();
        Ok(Captured {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            steps,
            start,
            velo,
        })
    }

    /// How to reach a branch, from `velo branch password --json`.
    pub fn conn(&self, branch: &str) -> Result<Conn> {
        let v = self.json(&["branch", "password", branch, "--json"])?;
        let s = |k: &str| v[k].as_str().map(String::from).unwrap_or_default();
        Ok(Conn {
            host: s("host"),
            port: v["port"].as_u64().unwrap_or_default() as u16,
            user: s("user"),
            password: s("password"),
            database: s("database"),
        })
    }

    pub fn project_exists(&self, project: &str) -> Result<bool> {
        let list = self.json(&["project", "list", "--json"])?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == project))
    }

    /// Deletes a project if it exists (what an interrupted earlier run left).
    pub fn drop_project(&self, project: &str) -> Result<()> {
        if self.project_exists(project)? {
            self.run(&["project", "delete", project, "--force"])?;
        }
        Ok(())
    }

    /// The main branch of a project an earlier run kept (`--keep-data`, or a run that was
    /// stopped), if `check` answers `expected` on it. Otherwise the project is deleted, as is
    /// one that cannot be used (a crash of its file system may have damaged it).
    pub fn reusable(&self, project: &str, check: &str, expected: &str) -> Result<Option<Conn>> {
        if !self.project_exists(project)? {
            return Ok(None);
        }
        let main = format!("{project}/main");
        let reused = (|| -> Result<Option<Conn>> {
            self.prune_branches(project)?;
            self.run(&["branch", "start", &main])?;
            let conn = self.conn(&main)?;
            Ok((crate::pg::psql(&conn, check)? == expected).then_some(conn))
        })();
        match reused {
            Ok(Some(conn)) => return Ok(Some(conn)),
            Ok(None) => {
                eprintln!("[bench] {project}: its data is not what this run needs; making it anew")
            }
            Err(e) => eprintln!("[bench] {project}: cannot be reused ({e:#}); making it anew"),
        }
        self.run(&["project", "delete", project, "--force"])?;
        Ok(None)
    }

    /// Removes every branch but main of a project.
    fn prune_branches(&self, project: &str) -> Result<()> {
        let list = self.json(&["branch", "list", project, "--json"])?;
        for b in list.as_array().into_iter().flatten() {
            let name = b["branch"].as_str().unwrap_or("main");
            if name != "main" {
                self.run(&["branch", "delete", &format!("{project}/{name}"), "--force"])?;
            }
        }
        Ok(())
    }

    /// The storage's name for a branch's volume: a dataset, or a directory.
    pub fn volume_of(&self, branch: &str) -> Result<String> {
        let v = self.json(&["branch", "get", branch, "--json"])?;
        v["volume"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow!("`velo branch get {branch} --json` names no volume"))
    }

    /// Waits until the background velo has destroyed what deletes left and the old
    /// generations of resets (`velo status` shows both as pending), so that the space it frees
    /// is not counted against the next measurement, nor its work against the next series. A failing `velo status` is asked again: on copy storage it can fail
    /// while a volume it measures is being destroyed.
    pub fn settle(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let pending = self
                .json(&["status", "--json"])
                .map(|s| s["pending"].as_array().map_or(0, Vec::len));
            match pending {
                Ok(0) => return Ok(()),
                Ok(n) if Instant::now() > deadline => {
                    bail!("velo still finishes {n} delete(s) after 10 minutes")
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// `setpriv` to `user`, its groups included.
pub fn as_user(user: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", user, "--regid", user, "--init-groups"]);
    cmd
}

/// How to reach a branch that `velo branch create` just made, from the URL it printed (`out`)
/// and its project's credentials (every branch has main's).
pub fn branch_conn(project: &Conn, branch: &str, out: &str) -> Result<Conn> {
    let port = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("postgresql://"))
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| authority.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .ok_or_else(|| anyhow!("`velo branch create {branch}` printed no URL: {out}"))?;
    Ok(Conn {
        port,
        ..project.clone()
    })
}
