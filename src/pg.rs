//! Talking to PostgreSQL itself, with tokio-postgres: readiness, CHECKPOINT, version.
//!
//! "Ready" means a real connection that answers `SELECT 1`, never a pid file or an open port.
//! Credentials travel in a [`tokio_postgres::Config`], never in a process argument.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, Config, NoTls};

/// How long one readiness attempt may take, connection and query.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach one server.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL on {host}:{port} was not ready after {waited:?}: {last}")]
    NotReady {
        host: String,
        port: u16,
        waited: Duration,
        last: String,
    },
    #[error("PostgreSQL on {host}:{port}: {action}")]
    Query {
        host: String,
        port: u16,
        action: &'static str,
        source: tokio_postgres::Error,
    },
}

impl Endpoint {
    fn config(&self, connect_timeout: Duration) -> Config {
        let mut c = Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.database)
            .application_name("velo")
            .connect_timeout(connect_timeout);
        c
    }

    async fn connect(&self, timeout: Duration) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config(timeout).connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    fn query_err(&self, action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        let (host, port) = (self.host.clone(), self.port);
        move |source| PgError::Query {
            host,
            port,
            action,
            source,
        }
    }

    /// Polls until a connection answers `SELECT 1` and the server is out of recovery, or the
    /// deadline passes. `alive` is asked between attempts so a container that died is reported
    /// at once instead of after the whole deadline.
    pub async fn wait_ready<F, Fut>(&self, deadline: Duration, mut alive: F) -> Result<(), PgError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let start = Instant::now();
        // A refused connection costs nothing and a starting server answers "starting up" from
        // a short-lived backend, so the first seconds are polled tightly: a branch's server is
        // ready 60-150 ms after its container starts here, and every pause is time lost.
        let mut pause = Duration::from_millis(5);
        let mut last = String::from("no attempt made");
        let mut asked_alive = Instant::now();
        while start.elapsed() < deadline {
            // The connect timeout covers only the TCP connect: something that accepts and
            // never answers must not hold the wait past its deadline.
            match tokio::time::timeout(PROBE_TIMEOUT, self.probe()).await {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => last = "still in recovery".into(),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("no answer within {PROBE_TIMEOUT:?}"),
            }
            if asked_alive.elapsed() > Duration::from_millis(200) {
                asked_alive = Instant::now();
                if let Err(why) = alive().await {
                    last = why;
                    break;
                }
            }
            tokio::time::sleep(pause).await;
            if start.elapsed() > Duration::from_secs(2) {
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
        Err(PgError::NotReady {
            host: self.host.clone(),
            port: self.port,
            waited: start.elapsed(),
            last,
        })
    }

    /// One attempt to reach the server: `Ok` when it answers `SELECT 1` (in recovery or not).
    pub async fn ping(&self) -> Result<(), PgError> {
        self.probe()
            .await
            .map(drop)
            .map_err(self.query_err("connecting"))
    }

    /// One readiness attempt: `Ok(true)` when `SELECT 1` answers and recovery is over.
    async fn probe(&self) -> Result<bool, tokio_postgres::Error> {
        let client = self.connect(Duration::from_secs(1)).await?;
        let row = client
            .query_one("SELECT 1, pg_is_in_recovery()", &[])
            .await?;
        let one: i32 = row.get(0);
        let in_recovery: bool = row.get(1);
        Ok(one == 1 && !in_recovery)
    }

    /// Writes all dirty buffers so a snapshot taken next needs little WAL replay.
    pub async fn checkpoint(&self) -> Result<(), PgError> {
        let client = self
            .connect(Duration::from_secs(5))
            .await
            .map_err(self.query_err("connecting for CHECKPOINT"))?;
        client
            .batch_execute("CHECKPOINT")
            .await
            .map_err(self.query_err("CHECKPOINT"))
    }

    /// `ALTER SYSTEM RESET` each setting and reload, keeping every other line of
    /// `postgresql.auto.conf`.
    pub async fn alter_system_reset(&self, settings: &[&str]) -> Result<(), PgError> {
        let client = self
            .connect(Duration::from_secs(5))
            .await
            .map_err(self.query_err("connecting"))?;
        // One statement per call: a multi-statement batch is an implicit transaction, and
        // ALTER SYSTEM refuses to run inside one.
        for setting in settings {
            client
                .batch_execute(&format!("ALTER SYSTEM RESET {setting}"))
                .await
                .map_err(self.query_err("ALTER SYSTEM RESET"))?;
        }
        client
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .map_err(self.query_err("pg_reload_conf()"))
    }

    /// Commits a transaction (so the WAL holds a commit record stamped now), switches to a new
    /// WAL segment, and waits (up to `deadline`) until the archiver has archived it. Recovery to
    /// a target time stops only at a commit record after the target, so without the commit the
    /// moments since the last real transaction could not be recovered to.
    pub async fn flush_wal_archive(&self, deadline: Duration) -> Result<bool, PgError> {
        let client = self
            .connect(Duration::from_secs(5))
            .await
            .map_err(self.query_err("connecting"))?;
        client
            .batch_execute("SELECT pg_current_xact_id()")
            .await
            .map_err(self.query_err("committing a marker transaction"))?;
        let row = client
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await
            .map_err(self.query_err("pg_switch_wal()"))?;
        let wanted: String = row.get(0);
        let start = Instant::now();
        while start.elapsed() < deadline {
            let row = client
                .query_one(
                    "SELECT coalesce(last_archived_wal, '') >= $1 FROM pg_stat_archiver",
                    &[&wanted],
                )
                .await
                .map_err(self.query_err("reading pg_stat_archiver"))?;
            if row.get::<_, bool>(0) {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(false)
    }

    /// `SHOW server_version`.
    pub async fn server_version(&self) -> Result<String, PgError> {
        let client = self
            .connect(Duration::from_secs(5))
            .await
            .map_err(self.query_err("connecting"))?;
        let row = client
            .query_one("SHOW server_version", &[])
            .await
            .map_err(self.query_err("SHOW server_version"))?;
        Ok(row.get(0))
    }
}
