//! A source PostgreSQL for the import tests: a container of one of the rig's images on the
//! host's network, listening on 127.0.0.1 on a free port, asking every TCP client for a
//! password (SCRAM), with a replication role. The tests' own psql and pgbench read its
//! password from a private password file, never from the environment or a command line, so a
//! test can look for it in every process and find only what velo leaked.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Source {
    pub name: String,
    pub port: u16,
    pub password: String,
    passfile: tempfile::NamedTempFile,
    _hba: tempfile::NamedTempFile,
}

/// About 40 MB of WAL on the source: more than a snapshot of main replays before velo asks
/// the source for a checkpoint.
pub const FILLER: &str =
    "CREATE TABLE filler AS SELECT repeat('x', 1000) AS x FROM generate_series(1, 40000)";

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Source {
    /// Starts a source from `image` and waits until it answers over TCP with its password.
    pub fn start(image: &str) -> Source {
        Self::start_archiving(image, None)
    }

    /// As [`Source::start`], archiving its WAL into the host directory `archive` if given.
    pub fn start_archiving(image: &str, archive: Option<&std::path::Path>) -> Source {
        let n: u32 = rand::random();
        let password = format!("src-{n:08x}-{:08x}", rand::random::<u32>());
        let port = free_port();
        let mut hba = tempfile::NamedTempFile::new().unwrap();
        hba.write_all(
            b"local all all trust\nhost all all all scram-sha-256\nhost replication all all scram-sha-256\n",
        )
        .unwrap();
        std::fs::set_permissions(hba.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut passfile = tempfile::NamedTempFile::new().unwrap();
        writeln!(passfile, "*:*:*:*:{password}").unwrap();
        let name = format!("velo-it-source-{n:08x}");
        let mut archiving = Vec::new();
        if let Some(dir) = archive {
            archiving.extend([
                "-v".to_string(),
                format!("{}:/velo-it-archive", dir.display()),
            ]);
        }
        let settings = match archive {
            Some(_) => vec![
                "-c",
                "archive_mode=on",
                "-c",
                "archive_command=cp %p /velo-it-archive/%f",
            ],
            None => Vec::new(),
        };
        let out = Command::new("docker")
            .args(["run", "-d", "--name", &name, "--network", "host"])
            .args(&archiving)
            // The password is set over the container's socket once it runs, so that it is in
            // no process's environment (the entrypoint would keep POSTGRES_PASSWORD there).
            .args(["-e", "POSTGRES_HOST_AUTH_METHOD=trust"])
            .args([
                "-v",
                &format!("{}:/etc/velo-it-hba.conf:ro", hba.path().display()),
            ])
            .arg(image)
            .args(["postgres", "-c", &format!("port={port}")])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "hba_file=/etc/velo-it-hba.conf"])
            .args(["-c", "wal_level=replica", "-c", "max_wal_senders=5"])
            // Above PostgreSQL's default: a follower must run with at least the source's.
            .args(["-c", "max_connections=120"])
            .args(&settings)
            .output()
            .expect("docker runs");
        assert!(
            out.status.success(),
            "starting the source: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let source = Source {
            name,
            port,
            password,
            passfile,
            _hba: hba,
        };
        source.wait_ready();
        source
    }

    /// Waits until the source answers over TCP with its password, setting the password over
    /// its socket (SQL on stdin) until it does.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self.psql_cmd("postgres", "SELECT 1").output().unwrap();
            if out.status.success() {
                return;
            }
            let mut set = Command::new("docker")
                .args([
                    "exec", "-i", &self.name, "psql", "-X", "-q", "-U", "postgres",
                ])
                .args(["-p", &self.port.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let sql = format!("ALTER ROLE postgres PASSWORD '{}';\n", self.password);
            let _ = set.stdin.take().unwrap().write_all(sql.as_bytes());
            let _ = set.wait();
            assert!(
                Instant::now() < deadline,
                "the source did not answer: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A command of the host's PostgreSQL client programs, connected to the source.
    pub fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGPASSFILE", self.passfile.path())
            .env_remove("PGPASSWORD");
        cmd
    }

    fn psql_cmd(&self, db: &str, sql: &str) -> Command {
        let mut cmd = self.client("psql");
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-c",
            sql,
        ]);
        cmd
    }

    /// Runs SQL on database `db`; returns the unaligned, tuples-only output.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_cmd(db, sql).output().unwrap();
        assert!(
            out.status.success(),
            "psql on the source failed for {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `pgbench -i -s scale` on database `db`.
    pub fn pgbench_init(&self, db: &str, scale: u32) {
        let out = self
            .client("pgbench")
            .args(["-i", "-q", "-s", &scale.to_string(), db])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// pgbench's load on database `db`, returned once it has written (killed by the caller).
    pub fn pgbench_writing(&self, db: &str) -> Child {
        let load = self.pgbench_load(db);
        let started = Instant::now();
        while self.sql(db, "SELECT count(*) FROM pgbench_history") == "0" {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "pgbench wrote nothing"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        load
    }

    /// pgbench's TPC-B-like load on database `db`, running until killed.
    pub fn pgbench_load(&self, db: &str) -> Child {
        self.client("pgbench")
            .args(["-c", "2", "-T", "600", "-n", db])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// The URL velo imports from, without the password.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL with the password in it.
    pub fn url_with_password(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// Kills the source's server at once (a source that goes away).
    pub fn kill(&self) {
        let _ = Command::new("docker").args(["kill", &self.name]).output();
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

/// Every user table of a database (`schema.table`), and a fingerprint of each: its row count
/// and the md5 of its rows in order, from `sql` (which runs a query there). `columns` picks,
/// per table, what to compare instead of whole rows.
pub fn fingerprints(
    sql: &dyn Fn(&str) -> String,
    columns: &[(&str, &str)],
) -> Vec<(String, String)> {
    let tables = sql(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    );
    tables
        .lines()
        .map(|t| {
            let row = columns
                .iter()
                .find(|(table, _)| *table == t)
                .map_or_else(|| "r::text".to_string(), |(_, c)| format!("({c})::text"));
            let print = sql(&format!(
                "SELECT count(*) || ' ' || coalesce(md5(string_agg({row}, '|' ORDER BY {row})), '-') FROM {t} r"
            ));
            (t.to_string(), print)
        })
        .collect()
}
