//! Running an import's client programs: each sees only the directories its work needs (a
//! program that reads the source gets the password file and the network, one that writes
//! into the import server gets its socket, never both), and a failure becomes an error that
//! names the fix ([`crate::source::messages`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};

use super::super::Ctx;
use super::super::signal::{self, Interrupted};
use super::space::PASSFILE;
use crate::names::{self, BranchRef};
use crate::runtime::{ClientDirs, ClientJob, ClientOutput, Labels, LineSink, Runtime, ServerUser};
use crate::source::SourceUrl;
use crate::source::messages::{self, Context};
use crate::state::Project;

/// What a client program reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The source, over the network, with the password file.
    Source,
    /// The import server, through its socket; and the user's dump, if there is one.
    Target,
}

/// The client programs of one import.
pub struct Jobs<'a> {
    ctx: &'a Ctx,
    runtime: Arc<dyn Runtime>,
    r: &'a BranchRef,
    project: &'a Project,
    /// The port the import server's socket is named by.
    port: u16,
    /// Host directories, as far as the import has them.
    pub dirs: ClientDirs,
    /// Who the programs run as: velo's user, or the server's for one that writes its files.
    pub user: ServerUser,
    /// What a program is called while it runs (a Docker helper's name): one at a time.
    pub name: String,
    /// How long a program may run before it is stopped and its run fails; none: no limit.
    pub limit: Option<Duration>,
}

impl<'a> Jobs<'a> {
    pub fn new(
        ctx: &'a Ctx,
        project: &'a Project,
        r: &'a BranchRef,
        port: u16,
    ) -> Result<Jobs<'a>> {
        Ok(Jobs {
            ctx,
            runtime: ctx.runtime(project)?,
            r,
            project,
            port,
            dirs: ClientDirs::default(),
            user: client_user(),
            name: names::import_client_name(r),
            limit: None,
        })
    }

    /// Where the programs see the import's directories.
    pub fn view(&self) -> ClientDirs {
        self.runtime.client_view(&self.dirs)
    }

    /// A path inside the work directory, as the programs see it.
    pub fn in_work(&self, name: &str) -> String {
        let work = self.view().work.unwrap_or_default();
        work.join(name).display().to_string()
    }

    /// The user's dump, as the programs see it.
    pub fn input(&self) -> String {
        self.view()
            .input
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// The connection string of database `db` of the import server.
    pub fn target(&self, db: &str) -> String {
        let socket = self.view().socket.unwrap_or_default();
        format!(
            "host='{}' port='{}' user='{}' dbname='{}'",
            socket.display(),
            self.port,
            self.project.user.replace('\'', "\\'"),
            db.replace('\'', "\\'")
        )
    }

    /// Runs `tool` to its end; Ctrl-C stops it. `source` says where a program that reads the
    /// source was connecting, for the message if it fails.
    pub async fn run(
        &self,
        tool: &str,
        args: Vec<String>,
        reach: Reach,
        source: Option<Context<'_>>,
        line: &LineSink<'_>,
    ) -> Result<ClientOutput> {
        let job = self.job(tool, args, reach);
        let limit = async {
            match self.limit {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        // A Docker helper outlives the future dropped here; a process dies with it.
        let out = tokio::select! {
            out = self.runtime.run_client(&job, line) => out?,
            () = signal::until_interrupted() => {
                let _ = self.runtime.remove(&job.name).await;
                return Err(Interrupted.into());
            }
            () = limit => {
                let _ = self.runtime.remove(&job.name).await;
                bail!("{tool} did not finish within {}", humantime::format_duration(self.limit.unwrap_or_default()));
            }
        };
        if out.code == 0 {
            return Ok(out);
        }
        let error = match source {
            Some(at) => messages::classify(&out.stderr, &at),
            None => {
                // The import server may have died of what the program only saw as a lost
                // connection (a full disk under its WAL): its log says.
                let server = names::import_server_name(self.r);
                let log = self.runtime.logs_tail(&server, 20).await;
                messages::classify_target(&format!("{}\n{log}", out.stderr), tool)
            }
        };
        Err(error.into())
    }

    fn job(&self, tool: &str, args: Vec<String>, reach: Reach) -> ClientJob {
        let mut dirs = self.dirs.clone();
        let mut env = vec![("LC_MESSAGES".to_string(), "C".to_string())];
        match reach {
            Reach::Source => {
                (dirs.socket, dirs.input) = (None, None);
                if let Some(secrets) = self.view().secrets {
                    env.push((
                        "PGPASSFILE".into(),
                        secrets.join(PASSFILE).display().to_string(),
                    ));
                }
            }
            Reach::Target => dirs.secrets = None,
        }
        ClientJob {
            name: self.name.clone(),
            labels: Labels {
                project: self.r.project.to_string(),
                branch: self.r.branch.to_string(),
                home: self.ctx.home_label(),
            },
            tool: tool.to_string(),
            args,
            env,
            dirs,
            user: self.user,
            network: reach == Reach::Source,
        }
    }
}

/// Who client programs run as: velo's own user, who owns the password file and the dump's
/// directory and reaches the servers' sockets as velo does.
pub fn client_user() -> ServerUser {
    ServerUser {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
    }
}

/// Where a program that reads `url`'s database `db` connects, for its messages.
pub fn at<'u>(
    tool: &'u str,
    url: &'u SourceUrl,
    place: &'u str,
    db: &'u str,
    started: bool,
) -> Context<'u> {
    Context {
        tool,
        place,
        user: &url.user,
        database: db,
        started,
    }
}
