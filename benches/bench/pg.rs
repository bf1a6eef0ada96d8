//! Talking to a branch's PostgreSQL as a user would: over TCP with the password.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

/// How to reach one branch (from `velo branch password --json`).
#[derive(Clone)]
pub struct Conn {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl Conn {
    pub fn with_db(&self, db: &str) -> Conn {
        Conn {
            database: db.into(),
            ..self.clone()
        }
    }

    /// Sets the libpq variables of psql, pgbench and pg_dump.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password)
            .env("PGDATABASE", &self.database);
    }
}

/// Polls until a new connection answers `SELECT 1` (velo waited already, so normally the
/// first attempt answers).
pub fn select1(rt: &tokio::runtime::Runtime, c: &Conn) -> Result<()> {
    select1_while(rt, c, &mut || true)
}

/// [`select1`] for a server that may die: gives up as soon as `alive` says it has.
pub fn select1_while(
    rt: &tokio::runtime::Runtime,
    c: &Conn,
    alive: &mut dyn FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    rt.block_on(async {
        loop {
            match attempt(c).await {
                Ok(()) => return Ok(()),
                Err(e) if !alive() => {
                    let e = anyhow::Error::new(e);
                    return Err(anyhow!("{}:{}: the server exited: {e:#}", c.host, c.port));
                }
                Err(e) if Instant::now() > deadline => {
                    let e = anyhow::Error::new(e);
                    return Err(anyhow!("{}:{} never answered: {e:#}", c.host, c.port));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
}

async fn attempt(c: &Conn) -> Result<(), tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&c.host)
        .port(c.port)
        .user(&c.user)
        .password(&c.password)
        .dbname(&c.database)
        .connect_timeout(Duration::from_secs(2));
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    let answered = client.query_one("SELECT 1", &[]).await.map(drop);
    // Close the session now: a lingering one blocks DROP DATABASE.
    drop(client);
    let _ = conn.await;
    answered
}

/// Runs one statement with psql; returns its unaligned output.
pub fn psql(c: &Conn, sql: &str) -> Result<String> {
    let mut cmd = Command::new("psql");
    c.env(&mut cmd);
    let out = cmd
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("psql `{sql}`: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The size of the connection's database in bytes.
pub fn database_bytes(c: &Conn) -> Result<f64> {
    psql(c, "SELECT pg_database_size(current_database())")?
        .parse()
        .context("pg_database_size")
}

/// `pgbench -i -q -s scale` on the connection's database.
pub fn pgbench_init(c: &Conn, scale: u32) -> Result<()> {
    let mut cmd = Command::new("pgbench");
    c.env(&mut cmd);
    let out = cmd
        .args(["-i", "-q", "-s", &scale.to_string()])
        .output()
        .context("running pgbench -i")?;
    if !out.status.success() {
        bail!("pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
