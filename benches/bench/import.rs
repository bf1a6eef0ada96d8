//! Importing a running server (issue 14), on ZFS + Docker. The source is a container of the
//! bench's image on the host's network (127.0.0.1, a free port, SCRAM passwords, `wal_level =
//! replica`, replication allowed) holding pgbench data of `--import-size` in its database
//! `postgres`. Each of these is timed from its start until a new connection to the result
//! answers `SELECT 1`:
//! - `velo project create --from URL` (logical: velo runs `pg_dump -Fd -j N` and
//!   `pg_restore -j N`) and `--from URL --physical` (`pg_basebackup`), the password in velo's
//!   `PGPASSWORD`; each project deleted after;
//! - the same without velo, into a new database on a plain server of the same image whose data
//!   is on a dataset of the bench pool, as velo's is: `pg_dump -Fc | pg_restore`, and
//!   `pg_dump -Fd -j N` then `pg_restore -j N` (what velo's logical import runs);
//! - a follower (`--from URL --follow`) once, then `velo branch create` of it `--runs` times
//!   while `pgbench -c 2` writes to the source, with main's replication lag at each create.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::Bench;
use crate::figure::size_label;
use crate::floors::drop_leftover;
use crate::host::{self, sh};
use crate::opts::{Backend, scale_of};
use crate::pg::{self, Conn};
use crate::steps::Breakdown;
use crate::velo::{Velo, branch_conn};

pub const IMPORT_LOGICAL: &str = "project create --from URL (logical import)";
pub const IMPORT_PHYSICAL: &str = "project create --from URL --physical";
pub const IMPORT_FOLLOW: &str = "project create --from URL --follow";
pub const PLAIN_PIPE: &str = "plain import: pg_dump -Fc | pg_restore";
pub const PLAIN_JOBS: &str = "plain import: pg_dump -Fd -j N, then pg_restore -j N";
pub const FOLLOWER_CREATE: &str = "branch create from a follower, source under load";
pub const FOLLOWER_CREATE_PACED: &str =
    "branch create from a follower, source at 100 transactions a second";
pub const FOLLOWER_LAG: &str = "follower main's replication lag at each branch create";

/// The source's and the plain server's containers.
const SOURCE: &str = "velo-bench-import-source";
const PLAIN: &str = "velo-bench-import-plain";
/// The plain server's dataset in the bench pool.
const PLAIN_DATASET: &str = "velo-bench-import-plain";
/// Where the source's container sees its client authentication file.
const HBA: &str = "/etc/velo-bench-import-hba.conf";
const LOGICAL: &str = "bench-import-logical";
const PHYSICAL: &str = "bench-import-physical";
const FOLLOWER: &str = "bench-import-follow";
/// The project that makes the image's prepared cluster if no earlier run did.
const PREPARED: &str = "bench-import-prepared";
/// The plain server's new database.
const COPY_DB: &str = "bench_import";

impl Bench {
    pub fn import_suite(&mut self) -> Result<()> {
        let size = self.o.import_size.clone();
        self.drop_import_leftovers()?;
        let result = self.import_measures(&size);
        let dropped = self.drop_import_leftovers();
        result?;
        dropped
    }

    fn import_measures(&mut self, size: &str) -> Result<()> {
        let source = self.start_source()?;
        let scale = scale_of(size)?;
        self.say(format!(
            "import: pgbench -i -s {scale} on the source (~{size})"
        ));
        let start = Instant::now();
        pg::pgbench_init(&source, scale)?;
        let secs = start.elapsed().as_secs_f64();
        self.say(format!("import: source data made in {secs:.0} s"));
        let bytes = pg::database_bytes(&source)?;
        let label = size_label(size, bytes);
        let (runs, note) = self.slow_runs(bytes);
        // A logical import clones the image's prepared cluster (a physical one does not).
        self.ensure_prepared(PREPARED)?;
        self.velo_imports(&source, &label, runs, &note)?;
        self.write()?;
        self.plain_imports(&source, &label, runs, &note)?;
        self.write()?;
        self.follower_creates(&source, &label)
    }

    /// velo with the source's password in `PGPASSWORD`, and the URL it imports from.
    fn importer(&self, source: &Conn) -> (Velo, String) {
        let url = format!(
            "postgres://{}@{}:{}/{}",
            source.user, source.host, source.port, source.database
        );
        (self.velo.with_env("PGPASSWORD", &source.password), url)
    }

    /// `project create NAME --pool … --image … --from URL` and `extra`.
    fn import_args<'a>(
        &'a self,
        project: &'a str,
        url: &'a str,
        extra: &[&'a str],
    ) -> Vec<&'a str> {
        let mut args = vec!["project", "create", project, "--pool", &self.o.pool];
        args.extend(["--image", &self.o.image, "--from", url]);
        args.extend(extra);
        args
    }

    /// `runs` logical and physical imports, each until main answers, step by step.
    fn velo_imports(&mut self, source: &Conn, label: &str, runs: usize, note: &str) -> Result<()> {
        let (velo, url) = self.importer(source);
        let logical = format!(
            "velo runs pg_dump -Fd -j {0} and pg_restore -j {0} of the source's database (its default jobs: the cores, at most 4)",
            jobs()
        );
        let physical = "velo runs pg_basebackup of the whole source, WAL streamed".to_string();
        let kinds = [
            (IMPORT_LOGICAL, LOGICAL, None, logical),
            (IMPORT_PHYSICAL, PHYSICAL, Some("--physical"), physical),
        ];
        for (name, project, extra, what) in kinds {
            let args = self.import_args(project, &url, extra.as_slice());
            let (mut samples, mut steps) = (Vec::new(), Breakdown::default());
            for _ in 0..runs {
                let main = format!("{project}/main");
                let t = self.to_ready(&velo, &args, |_| velo.conn(&main))?;
                samples.push(t.total);
                steps.add(&t);
                self.velo.run(&["project", "delete", project, "--force"])?;
                self.velo.settle()?;
            }
            let note = format!(
                "{what}; includes `velo branch password` to learn the password; each project deleted after. {note}"
            );
            let z = Backend::ZfsDocker;
            self.add(z, name, label, "s", samples, note.trim_end());
            self.add_breakdown(z, name, label, steps);
        }
        Ok(())
    }

    /// `runs` copies of the source's database into a new database of a plain server, each way.
    fn plain_imports(&mut self, source: &Conn, label: &str, runs: usize, note: &str) -> Result<()> {
        let dataset = format!("{}/{PLAIN_DATASET}", self.o.pool);
        host::run("zfs", &["create", &dataset])?;
        let mountpoint = host::run("zfs", &["get", "-H", "-o", "value", "mountpoint", &dataset])?;
        let pgdata = format!("{mountpoint}/pgdata");
        let dump = PathBuf::from(format!("{mountpoint}/dump"));
        std::fs::create_dir_all(&pgdata)?;
        let plain = self.start_server(
            PLAIN,
            &["-v", &format!("{pgdata}:/var/lib/postgresql/data")],
            &[],
        )?;
        let copy = plain.with_db(COPY_DB);
        let admin = plain.with_db("template1");
        let drop = format!("DROP DATABASE IF EXISTS {COPY_DB}");
        let (mut pipe, mut dir) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            pg::psql(&admin, &drop)?;
            pipe.push(self.dump_restore(source, &copy)?);
            pg::psql(&admin, &drop)?;
            dir.push(self.dump_restore_jobs(source, &copy, &dump)?);
            pg::psql(&admin, &drop)?;
        }
        host::run("docker", &["rm", "-f", "-v", PLAIN])?;
        host::zfs_destroy(&dataset)?;
        let z = Backend::ZfsDocker;
        let server = "into a new database of a plain server of the same image (its data on a dataset of the bench pool, like velo's), from CREATE DATABASE to `SELECT 1` on it";
        let pipe_note = format!("{server}. {note}");
        self.add(z, PLAIN_PIPE, label, "s", pipe, pipe_note.trim_end());
        let dir_note = format!(
            "N = {}, velo's default here; the dump's directory on the same dataset; {server}. {note}",
            jobs()
        );
        self.add(z, PLAIN_JOBS, label, "s", dir, dir_note.trim_end());
        Ok(())
    }

    /// Seconds to copy the database of `source` into `copy`'s new database with
    /// `pg_dump -Fd -j N` into `dump`, then `pg_restore -j N`, until `SELECT 1` answers on it.
    fn dump_restore_jobs(&self, source: &Conn, copy: &Conn, dump: &Path) -> Result<f64> {
        if dump.exists() {
            std::fs::remove_dir_all(dump)?;
        }
        let (dir, jobs) = (dump.display().to_string(), jobs().to_string());
        let start = Instant::now();
        let create = format!("CREATE DATABASE {}", copy.database);
        pg::psql(&copy.with_db("template1"), &create)?;
        let mut d = Command::new("pg_dump");
        source.env(&mut d);
        client(d.args(["-Fd", "-j", &jobs, "-f", &dir]), "pg_dump")?;
        let mut r = Command::new("pg_restore");
        copy.env(&mut r);
        let db = copy.database.as_str();
        client(
            r.args(["-j", &jobs, "--no-owner", "-d", db, &dir]),
            "pg_restore",
        )?;
        self.select1(copy)?;
        let secs = start.elapsed().as_secs_f64();
        std::fs::remove_dir_all(dump)?;
        Ok(secs)
    }

    /// A follower of the source, timed once until main answers; then `--runs` branch creates
    /// while pgbench writes to the source.
    fn follower_creates(&mut self, source: &Conn, label: &str) -> Result<()> {
        let (velo, url) = self.importer(source);
        let main = format!("{FOLLOWER}/main");
        let args = self.import_args(FOLLOWER, &url, &["--follow"]);
        // main is a standby of the source: its roles and passwords are the source's.
        let t = self.to_ready(&velo, &args, |_| {
            let v = self.velo.json(&["branch", "get", &main, "--json"])?;
            let port = v["port"].as_u64().ok_or_else(|| anyhow!("no port: {v}"))?;
            Ok(Conn {
                port: port as u16,
                ..source.clone()
            })
        })?;
        let note = "one run; velo runs pg_basebackup, then main streams from the source as a hot standby; includes `velo branch get` to learn main's port";
        self.add(
            Backend::ZfsDocker,
            IMPORT_FOLLOW,
            label,
            "s",
            vec![t.total],
            note,
        );
        // pgbench as fast as it goes (on this host's own cores), then paced as a busy
        // production server might be.
        for (rate, row) in [(None, FOLLOWER_CREATE), (Some(100), FOLLOWER_CREATE_PACED)] {
            let mut load = pgbench_load(source, 300 + 60 * self.o.runs as u64, rate)?;
            let result = self.timed_follower_creates(source, label, &mut load, row);
            let ended = load.try_wait();
            let _ = load.kill();
            let _ = load.wait();
            result?;
            if !matches!(ended, Ok(None)) {
                bail!("pgbench's load on the source ended before the branch creates did");
            }
        }
        self.velo.run(&["project", "delete", FOLLOWER, "--force"])?;
        self.velo.settle()
    }

    fn timed_follower_creates(
        &mut self,
        source: &Conn,
        label: &str,
        load: &mut Child,
        row: &str,
    ) -> Result<()> {
        wait_written(source, load)?;
        // One create, not timed, to learn the project's password (every branch of a follower
        // has it; main's is the source's).
        let first = format!("{FOLLOWER}/b0");
        self.velo.run(&["branch", "create", &first])?;
        let project = self.velo.conn(&first)?;
        self.velo.run(&["branch", "delete", &first])?;
        let (mut creates, mut lags, mut unknown) = (Vec::new(), Vec::new(), 0);
        let mut steps = Breakdown::default();
        for k in 1..=self.o.runs {
            let main = format!("{FOLLOWER}/main");
            let v = self.velo.json(&["branch", "get", &main, "--json"])?;
            match v["replication"]["lag_seconds"].as_f64() {
                Some(lag) => lags.push(lag),
                None => unknown += 1,
            }
            let b = format!("{FOLLOWER}/b{k}");
            let t = self.to_ready(&self.velo, &["branch", "create", &b], |out| {
                branch_conn(&project, &b, out)
            })?;
            creates.push(t.total);
            steps.add(&t);
            self.velo.run(&["branch", "delete", &b])?;
            self.velo.settle()?;
        }
        let z = Backend::ZfsDocker;
        let note = "pgbench -c 2 writing to the source all along; each branch deleted after; one untimed create before (to learn the project's password)";
        self.add(z, row, label, "s", creates, note);
        self.add_breakdown(z, row, label, steps);
        if row != FOLLOWER_CREATE {
            return Ok(());
        }
        let mut note = "`velo branch get F/main --json`: .replication.lag_seconds just before each create (0: streaming, nothing left to replay)".to_string();
        if unknown > 0 {
            note.push_str(&format!("; unknown at {unknown} create(s), not counted"));
        }
        if lags.is_empty() {
            self.say(format!("{FOLLOWER_LAG}: unknown at every create"));
        } else {
            self.add(z, FOLLOWER_LAG, label, "s", lags, &note);
        }
        Ok(())
    }

    /// The source: a new container with a password (SCRAM), replication allowed over TCP.
    fn start_source(&mut self) -> Result<Conn> {
        let hba = hba_file();
        std::fs::write(
            &hba,
            "local all all trust\nhost all all all scram-sha-256\nhost replication all all scram-sha-256\n",
        )?;
        std::fs::set_permissions(&hba, std::fs::Permissions::from_mode(0o644))?;
        let mount = format!("{}:{HBA}:ro", hba.display());
        let settings = [
            &format!("hba_file={HBA}")[..],
            "wal_level=replica",
            "max_wal_senders=5",
        ];
        self.start_server(SOURCE, &["-v", &mount], &settings)
    }

    /// A container `name` of the bench's image on the host's network, on 127.0.0.1 and a free
    /// port, its superuser `postgres` with a new password; `docker` are more arguments of
    /// `docker run`, `settings` the server's. Returns once it answers over TCP.
    fn start_server(&self, name: &str, docker: &[&str], settings: &[&str]) -> Result<Conn> {
        let c = Conn {
            host: "127.0.0.1".into(),
            port: free_port()?,
            user: "postgres".into(),
            password: format!("bench-{:016x}", RandomState::new().build_hasher().finish()),
            database: "postgres".into(),
        };
        let mut cmd = Command::new("docker");
        cmd.args(["run", "-d", "--name", name, "--network", "host"])
            .args(["-e", &format!("POSTGRES_PASSWORD={}", c.password)])
            .args(docker)
            .arg(&self.o.image)
            .args(["-c", &format!("port={}", c.port)])
            .args(["-c", "listen_addresses=127.0.0.1"]);
        for s in settings {
            cmd.args(["-c", s]);
        }
        let out = cmd.output().context("running docker")?;
        if !out.status.success() {
            bail!(
                "docker run {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let running = |n: &str| sh(&format!("docker inspect -f '{{{{.State.Running}}}}' {n}"));
        pg::select1_while(&self.rt, &c, &mut || running(name) == "true").with_context(|| {
            format!(
                "{name}: {}",
                sh(&format!("docker logs --tail 20 {name} 2>&1"))
            )
        })?;
        Ok(c)
    }

    /// What this part (or an earlier, stopped run of it) left: its projects, containers and
    /// the plain server's dataset.
    fn drop_import_leftovers(&self) -> Result<()> {
        for project in [LOGICAL, PHYSICAL, FOLLOWER, PREPARED] {
            self.velo.drop_project(project)?;
        }
        self.velo.settle()?;
        sh(&format!("docker rm -f -v {SOURCE} {PLAIN} 2>/dev/null"));
        let _ = std::fs::remove_file(hba_file());
        drop_leftover(&format!("{}/{PLAIN_DATASET}", self.o.pool))
    }
}

/// The source's client authentication file on the host.
fn hba_file() -> PathBuf {
    std::env::temp_dir().join("velo-bench-import-hba.conf")
}

/// Parallel jobs of velo's logical import by default: the cores, at most 4.
fn jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// A TCP port nothing listens on right now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs a client program that must succeed.
fn client(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// pgbench's TPC-B-like load on the source for at most `secs`, until killed: as fast as it
/// goes, or `rate` transactions a second.
fn pgbench_load(source: &Conn, secs: u64, rate: Option<u32>) -> Result<Child> {
    let mut cmd = Command::new("pgbench");
    source.env(&mut cmd);
    cmd.args(["-c", "2", "-n", "-T", &secs.to_string()]);
    if let Some(rate) = rate {
        cmd.args(["-R", &rate.to_string()]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running pgbench")
}

/// Waits until the load has written (a row in pgbench_history).
fn wait_written(source: &Conn, load: &mut Child) -> Result<()> {
    let started = Instant::now();
    while pg::psql(source, "SELECT count(*) FROM pgbench_history")? == "0" {
        if load.try_wait()?.is_some() || started.elapsed() > Duration::from_secs(60) {
            bail!("pgbench wrote nothing to the source");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
