//! Talking to PostgreSQL itself, with tokio-postgres: readiness, CHECKPOINT, the backup API,
//! WAL switches, setting the password.
//!
//! velo talks to its servers only through the Unix socket each one makes in a directory only
//! velo's user (and the server) can enter, with no password: nothing secret crosses the
//! connection, and no other program can stand in for the server, because it would have to
//! create a socket in that directory. Before connecting, velo opens the socket file without
//! following links, checks that it is a socket owned by the server's uid, connects through
//! the open handle, and checks the peer's uid again (`SO_PEERCRED`): a database superuser who
//! can write in the directory (it is the server's own) cannot point velo at another socket.
//!
//! "Ready" means a real connection that answers `SELECT 1`, never a pid file or an open port;
//! the waiting (how often, how long) is the operations' business ([`crate::ops::server`]).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rustix::fs::{Mode, OFlags};
use tokio_postgres::{Client, Config, NoTls};

use crate::fsx;

/// The `application_name` of velo's own connections, which `velo gc` does not count as use.
pub const APPLICATION_NAME: &str = "velo";

/// How to reach one server.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The directory holding the server's socket, as velo (not the server) sees it.
    pub socket_dir: PathBuf,
    pub port: u16,
    pub user: String,
    pub database: String,
    /// The uid the server runs as: the socket must belong to it.
    pub server_uid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL at {socket} was not ready after {waited:?}: {last}")]
    NotReady {
        socket: String,
        waited: Duration,
        last: String,
    },
    #[error("PostgreSQL at {socket}: {action}")]
    Query {
        socket: String,
        action: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL at {socket}: {why}")]
    Socket { socket: String, why: String },
}

/// Which names a connection's SQL resolves unqualified: velo's own queries only the system
/// catalog's, the user's SQL (`--after-import`) the database's and role's `search_path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    Catalog,
    Database,
}

impl Endpoint {
    /// The socket's file name in its directory, as libpq names it.
    pub fn socket_name(&self) -> String {
        format!(".s.PGSQL.{}", self.port)
    }

    fn socket_path(&self) -> String {
        self.socket_dir
            .join(self.socket_name())
            .display()
            .to_string()
    }

    fn socket_err(&self, why: impl std::fmt::Display) -> PgError {
        PgError::Socket {
            socket: self.socket_path(),
            why: why.to_string(),
        }
    }

    /// A Unix stream to the server's socket, after checking that it is what it should be.
    fn open_stream(&self) -> Result<std::os::unix::net::UnixStream, PgError> {
        let dir = fsx::open_dir(&self.socket_dir).map_err(|e| self.socket_err(e))?;
        let sock = rustix::fs::openat(
            dir.as_fd(),
            self.socket_name(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.socket_err(std::io::Error::from(e)))?;
        let st = rustix::fs::fstat(&sock).map_err(|e| self.socket_err(std::io::Error::from(e)))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
            return Err(self.socket_err("not a socket (a link or a file was put in its place)"));
        }
        if st.st_uid != self.server_uid {
            return Err(self.socket_err(format!(
                "the socket belongs to uid {}, not to the server's uid {}",
                st.st_uid, self.server_uid
            )));
        }
        // Connecting through the open handle reaches exactly the inode checked above.
        let via =
            Path::new("/proc/self/fd").join(std::os::fd::AsRawFd::as_raw_fd(&sock).to_string());
        let stream =
            std::os::unix::net::UnixStream::connect(&via).map_err(|e| self.socket_err(e))?;
        let peer = rustix::net::sockopt::socket_peercred(&stream)
            .map_err(|e| self.socket_err(std::io::Error::from(e)))?;
        if peer.uid.as_raw() != self.server_uid {
            return Err(self.socket_err(format!(
                "the process listening runs as uid {}, not as the server's uid {}",
                peer.uid.as_raw(),
                self.server_uid
            )));
        }
        stream
            .set_nonblocking(true)
            .map_err(|e| self.socket_err(e))?;
        Ok(stream)
    }

    async fn connect(&self) -> Result<Client, PgError> {
        self.connect_as(Search::Catalog).await
    }

    async fn connect_as(&self, search: Search) -> Result<Client, PgError> {
        let stream = self.open_stream()?;
        let stream = tokio::net::UnixStream::from_std(stream).map_err(|e| self.socket_err(e))?;
        let mut config = Config::new();
        config
            .user(&self.user)
            .dbname(&self.database)
            .application_name(APPLICATION_NAME);
        if search == Search::Catalog {
            // Only the system catalog names what velo's queries call: a superuser's
            // `ALTER ROLE … SET search_path` or objects in `public` cannot stand in for them
            // (startup options win over role and database settings).
            config.options("-c search_path=pg_catalog");
        }
        let (client, connection) = config
            .connect_raw(stream, NoTls)
            .await
            .map_err(self.query_err("connecting"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    fn query_err(&self, action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        let socket = self.socket_path();
        move |source| PgError::Query {
            socket,
            action,
            source,
        }
    }
}

/// The SQL side of a server: what velo asks PostgreSQL itself. [`Endpoint`] is the real one;
/// unit tests of the operations use a fake.
#[async_trait]
pub trait Sql: Send + Sync {
    /// One readiness attempt: `Ok(true)` when `SELECT 1` answers and recovery is over.
    async fn probe(&self) -> Result<bool, PgError>;

    /// CHECKPOINT; returns the WAL segment a recovery from a snapshot taken next starts at.
    async fn checkpoint(&self) -> Result<String, PgError>;

    /// Sets a role's password from a SCRAM verifier computed here: the password itself is
    /// never sent, logged or kept by the server.
    async fn set_password(&self, role: &str, password: &str) -> Result<(), PgError>;

    /// Commits a transaction (so the WAL holds a commit record stamped now), switches to a
    /// new WAL segment, and waits (up to `deadline`) until the archiver has archived it;
    /// false if it did not get there in time. Recovery to a target time stops only at a
    /// commit record after the target, so without the commit the moments since the last real
    /// transaction could not be recovered to.
    async fn flush_wal_archive(&self, deadline: Duration) -> Result<bool, PgError>;

    async fn server_version(&self) -> Result<String, PgError>;

    /// Runs the user's SQL (one or more statements, as one simple query: in one transaction
    /// unless it has its own) in the endpoint's database, with its own `search_path`.
    async fn batch(&self, sql: &str) -> Result<(), PgError>;

    /// How many clients are connected, besides velo (which connects as `application_name`
    /// `velo`): what tells `velo gc` a branch is in use.
    async fn client_connections(&self) -> Result<u64, PgError>;

    /// Starts an online backup; the copy made until [`BackupSession::stop`] is consistent.
    async fn backup_start(&self) -> Result<Box<dyn BackupSession>, PgError>;

    /// How a standby stands: whether it streams, and how far behind it is.
    async fn replication(&self) -> Result<Replication, PgError>;

    /// For a standby: the bytes of WAL it replayed since its last restartpoint, which a
    /// server started on a snapshot of it replays again.
    async fn since_restartpoint(&self) -> Result<u64, PgError>;

    /// For a standby: waits (up to `deadline`) until it has replayed the WAL up to `lsn`
    /// (`X/Y`, as PostgreSQL prints it); false if it did not get there in time.
    async fn replayed_to(&self, lsn: &str, deadline: Duration) -> Result<bool, PgError>;
}

/// What a standby says of its replication.
#[derive(Debug, Clone, PartialEq)]
pub struct Replication {
    /// `pg_stat_wal_receiver`'s status (`streaming`), or `stopped` when it has no receiver.
    pub receiver: String,
    /// WAL received but not yet replayed, in bytes.
    pub replay_bytes: i64,
    /// Since the last transaction it replayed was committed on the source (none replayed yet:
    /// `None`).
    pub since_last_commit: Option<Duration>,
}

impl Replication {
    pub fn streaming(&self) -> bool {
        self.receiver == "streaming"
    }

    /// How far behind the source it is: nothing while it streams and has replayed all it
    /// received; else the age of the last transaction it replayed (unknown if none).
    pub fn lag(&self) -> Option<Duration> {
        if self.streaming() && self.replay_bytes == 0 {
            return Some(Duration::ZERO);
        }
        self.since_last_commit
    }

    /// In words, for messages and `velo status`.
    pub fn describe(&self) -> String {
        let mut parts = vec![match self.streaming() {
            true => "streaming".to_string(),
            false => format!("not streaming: receiver {}", self.receiver),
        }];
        if self.replay_bytes > 0 {
            parts.push(format!("{} bytes to replay", self.replay_bytes));
        }
        if let Some(age) = self.since_last_commit.filter(|_| !self.streaming()) {
            let tenths = Duration::from_millis(age.as_millis() as u64 / 100 * 100);
            parts.push(format!(
                "last replayed commit {} ago",
                humantime::format_duration(tenths)
            ));
        }
        parts.join(", ")
    }
}

/// One row: the receiver's status, the bytes received and not replayed, and the seconds since
/// the last replayed commit.
const REPLICATION_SQL: &str = "SELECT \
    coalesce((SELECT status FROM pg_stat_wal_receiver), 'stopped'), \
    coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint, \
    extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8";

/// An online backup in progress.
#[async_trait]
pub trait BackupSession: Send {
    /// Ends the backup; returns the `backup_label` the copy needs and the WAL segment it
    /// starts from.
    async fn stop(self: Box<Self>) -> Result<(String, String), PgError>;
}

#[async_trait]
impl Sql for Endpoint {
    async fn replication(&self) -> Result<Replication, PgError> {
        let client = self.connect().await?;
        let row = client
            .query_one(REPLICATION_SQL, &[])
            .await
            .map_err(self.query_err("reading the replication status"))?;
        let seconds: Option<f64> = row.get(2);
        Ok(Replication {
            receiver: row.get(0),
            replay_bytes: row.get::<_, i64>(1).max(0),
            since_last_commit: seconds.map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }

    async fn since_restartpoint(&self) -> Result<u64, PgError> {
        let client = self.connect().await?;
        let row = client
            .query_one(
                "SELECT coalesce(pg_wal_lsn_diff(pg_last_wal_replay_lsn(), redo_lsn), 0)::bigint \
                 FROM pg_control_checkpoint()",
                &[],
            )
            .await
            .map_err(self.query_err("reading the last restartpoint"))?;
        Ok(row.get::<_, i64>(0).unsigned_abs())
    }

    async fn replayed_to(&self, lsn: &str, deadline: Duration) -> Result<bool, PgError> {
        let client = self.connect().await?;
        let start = Instant::now();
        loop {
            let row = client
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    &[&lsn],
                )
                .await
                .map_err(self.query_err("reading how far the standby replayed"))?;
            if row.get::<_, bool>(0) {
                return Ok(true);
            }
            if start.elapsed() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn probe(&self) -> Result<bool, PgError> {
        let client = self.connect().await?;
        let row = client
            .query_one("SELECT 1, pg_is_in_recovery()", &[])
            .await
            .map_err(self.query_err("SELECT 1"))?;
        let one: i32 = row.get(0);
        let in_recovery: bool = row.get(1);
        Ok(one == 1 && !in_recovery)
    }

    async fn checkpoint(&self) -> Result<String, PgError> {
        let client = self.connect().await?;
        client
            .batch_execute("CHECKPOINT")
            .await
            .map_err(self.query_err("CHECKPOINT"))?;
        redo_segment(&client)
            .await
            .map_err(self.query_err("reading the checkpoint"))
    }

    async fn set_password(&self, role: &str, password: &str) -> Result<(), PgError> {
        let client = self.connect().await?;
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let role = quote_ident(role);
        client
            .batch_execute(&format!("ALTER ROLE {role} PASSWORD '{verifier}'"))
            .await
            .map_err(self.query_err("setting the password"))
    }

    async fn flush_wal_archive(&self, deadline: Duration) -> Result<bool, PgError> {
        let client = self.connect().await?;
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

    async fn server_version(&self) -> Result<String, PgError> {
        let client = self.connect().await?;
        let row = client
            .query_one("SHOW server_version", &[])
            .await
            .map_err(self.query_err("SHOW server_version"))?;
        Ok(row.get(0))
    }

    async fn batch(&self, sql: &str) -> Result<(), PgError> {
        let client = self.connect_as(Search::Database).await?;
        client
            .batch_execute(sql)
            .await
            .map_err(self.query_err("running SQL"))
    }

    async fn client_connections(&self) -> Result<u64, PgError> {
        let client = self.connect().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND application_name IS DISTINCT FROM $1",
                &[&APPLICATION_NAME],
            )
            .await
            .map_err(self.query_err("reading pg_stat_activity"))?;
        // The superuser decides what this answers: a value of another type is an error, not a
        // panic.
        let n: i64 = row
            .try_get(0)
            .map_err(self.query_err("reading pg_stat_activity"))?;
        Ok(n.unsigned_abs())
    }

    async fn backup_start(&self) -> Result<Box<dyn BackupSession>, PgError> {
        let client = self.connect().await?;
        let major = server_major(&client)
            .await
            .map_err(self.query_err("SHOW server_version_num"))?;
        // A temporary slot holds every WAL segment from now on until this session ends, so a
        // checkpoint during the copy cannot recycle the WAL the copy needs.
        client
            .batch_execute(
                "SELECT pg_create_physical_replication_slot('velo_backup_' || pg_backend_pid(), true, true)",
            )
            .await
            .map_err(self.query_err("reserving WAL for the copy"))?;
        client
            .batch_execute(crate::pgversion::backup_start_sql(major))
            .await
            .map_err(self.query_err("starting the backup"))?;
        Ok(Box::new(Backup {
            client,
            major,
            socket: self.socket_path(),
        }))
    }
}

/// An online backup in progress: its session must stay open until it stops.
struct Backup {
    client: Client,
    major: u32,
    socket: String,
}

#[async_trait]
impl BackupSession for Backup {
    async fn stop(self: Box<Self>) -> Result<(String, String), PgError> {
        let err = |action| {
            let socket = self.socket.clone();
            move |source| PgError::Query {
                socket,
                action,
                source,
            }
        };
        let row = self
            .client
            .query_one(crate::pgversion::backup_stop_sql(self.major), &[])
            .await
            .map_err(err("stopping the backup"))?;
        let label: String = row.get(0);
        let segment = label
            .lines()
            .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
            .and_then(|l| l.split("(file ").nth(1))
            .map(|f| f.trim_end_matches(')').to_string())
            .unwrap_or_default();
        Ok((label, segment))
    }
}

/// The WAL segment of the last checkpoint's redo point. Named here, not by
/// `pg_walfile_name`, which a standby refuses while it is in recovery.
async fn redo_segment(client: &Client) -> Result<String, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT timeline_id::bigint, redo_lsn::text, \
             (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') \
             FROM pg_control_checkpoint()",
            &[],
        )
        .await?;
    let (timeline, lsn, segment): (i64, String, i64) = (row.get(0), row.get(1), row.get(2));
    Ok(wal_file_name(timeline, &lsn, segment).unwrap_or_default())
}

/// The name of the WAL segment holding `lsn` (`X/Y`, as PostgreSQL prints it) on `timeline`,
/// for segments of `segment_bytes`: what `pg_walfile_name` says.
fn wal_file_name(timeline: i64, lsn: &str, segment_bytes: i64) -> Option<String> {
    let (hi, lo) = lsn.split_once('/')?;
    let lsn = (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?;
    let size = u64::try_from(segment_bytes).ok().filter(|s| *s > 0)?;
    let per_log = (1u64 << 32) / size;
    let number = lsn / size;
    Some(format!(
        "{timeline:08X}{:08X}{:08X}",
        number / per_log,
        number % per_log
    ))
}

async fn server_major(client: &Client) -> Result<u32, tokio_postgres::Error> {
    let row = client.query_one("SHOW server_version_num", &[]).await?;
    let num: String = row.get(0);
    Ok(num.parse::<u32>().unwrap_or(0) / 10000)
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_file_names_are_pg_walfile_names() {
        assert_eq!(
            wal_file_name(1, "0/A000028", 16 << 20).as_deref(),
            Some("00000001000000000000000A")
        );
        assert_eq!(
            wal_file_name(2, "1/FF000000", 16 << 20).as_deref(),
            Some("0000000200000001000000FF")
        );
        // 1 MB segments: 4096 to a log id.
        assert_eq!(
            wal_file_name(1, "0/FFF00010", 1 << 20).as_deref(),
            Some("000000010000000000000FFF")
        );
        assert_eq!(wal_file_name(1, "nonsense", 16 << 20), None);
    }
}
