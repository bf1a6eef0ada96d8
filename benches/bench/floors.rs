//! What velo cannot beat here: the image started by hand on a branch's data (with a published
//! port and on the host's network), the image's first start on an empty data directory, and a
//! bare `postgres` started and stopped on the host. The native backends measure the bare
//! start on their own data (`native.rs`), with [`Bench::bare_postgres`].

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail};

use crate::Bench;
use crate::host::{self, sh};
use crate::opts::Backend;
use crate::pg::{self, Conn};

pub const DOCKER_PUBLISHED: &str = "floor: docker run -p 127.0.0.1:PORT:5432, to ready";
pub const DOCKER_HOST: &str = "floor: docker run --network host, to ready";
pub const DOCKER_INITDB: &str =
    "floor: docker run --network host on an empty data directory, to ready";
pub const ZFS_SNAPSHOT: &str = "floor: zfs snapshot";
pub const CLONE_RUN: &str =
    "floor: zfs snapshot + clone + docker run --network host on the clone, to ready";
pub const DOCKER_RM: &str = "floor: docker rm -f of a ready server";
pub const BARE_START: &str = "floor: bare postgres start, to ready";
pub const BARE_STOP: &str = "floor: bare postgres fast shutdown";
const CONTAINER: &str = "velo-bench-floor";
const SOCKETS: &str = "/tmp/velo-bench-sockets";
const HBA: &str = "/etc/velo-bench/pg_hba.conf";
/// A bare postgres's stderr, for the error if it does not start.
const BARE_LOG: &str = "/tmp/velo-bench-sockets/postgres.log";

/// Who a bare `postgres` runs as: `setpriv`'s arguments.
pub struct RunAs(pub Vec<String>);

impl RunAs {
    /// A numeric uid and gid, no other groups (the image's postgres user).
    pub fn ids(uid: &str, gid: &str) -> RunAs {
        RunAs(vec![
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
        ])
    }

    /// A named user with its groups.
    pub fn user(user: &str) -> RunAs {
        RunAs(vec![
            format!("--reuid={user}"),
            format!("--regid={user}"),
            "--init-groups".into(),
        ])
    }
}

impl Bench {
    /// The floors of ZFS + Docker, on a stopped branch of `project`.
    pub fn docker_floors(&mut self, project: &str) -> Result<()> {
        // What a stopped earlier run left.
        sh(&format!("docker rm -f {CONTAINER} 2>/dev/null"));
        let b = format!("{project}/floor");
        self.velo.run(&["branch", "create", &b])?;
        self.velo.run(&["branch", "stop", &b])?;
        let conn = self.velo.conn(&b)?;
        let dataset = self.velo.volume_of(&b)?;
        let mountpoint = host::run("zfs", &["get", "-H", "-o", "value", "mountpoint", &dataset])?;
        let pgdata = format!("{mountpoint}/pgdata");
        for (name, host_network) in [(DOCKER_PUBLISHED, false), (DOCKER_HOST, true)] {
            let mut samples = Vec::new();
            for _ in 0..self.o.runs {
                samples.push(self.docker_run(&pgdata, &conn, host_network)?);
            }
            self.add(Backend::ZfsDocker, name, "empty", "s", samples, "");
        }
        self.clone_floors(&dataset, &conn)?;
        let owner = host::run("stat", &["-c", "%u:%g", &pgdata])?;
        self.initdb_floor(&owner, &conn)?;
        let (uid, gid) = owner
            .split_once(':')
            .ok_or_else(|| anyhow!("stat {pgdata}: {owner}"))?;
        // velo keeps a volume's root to itself (0700); the image's postgres uid, run on the
        // host, must be let through to pgdata. This branch is deleted right after.
        host::run("chmod", &["711", &mountpoint])?;
        let (starts, stops) = self.bare_postgres(&RunAs::ids(uid, gid), &pgdata, &conn)?;
        let z = Backend::ZfsDocker;
        let note = "on the host, a cleanly stopped data directory";
        self.add(z, BARE_START, "empty", "s", starts, note);
        let note = "SIGINT until the postmaster exits";
        self.add(z, BARE_STOP, "empty", "s", stops, note);
        self.velo.run(&["branch", "delete", &b])?;
        Ok(())
    }

    /// What a branch create does, by hand: `zfs snapshot` of the stopped branch's dataset,
    /// `zfs clone`, and `docker run` on the clone until it answers; then `docker rm -f`.
    fn clone_floors(&mut self, dataset: &str, conn: &Conn) -> Result<()> {
        let (mut snaps, mut creates, mut removes) = (vec![], vec![], vec![]);
        for run in 0..self.o.runs {
            let snap = format!("{dataset}@velo-bench-floor-{run}");
            let clone = format!("{}/velo-bench-floor-clone-{run}", self.o.pool);
            drop_leftover(&clone)?;
            drop_leftover(&snap)?;
            let start = Instant::now();
            host::run("zfs", &["snapshot", &snap])?;
            snaps.push(start.elapsed().as_secs_f64());
            host::run("zfs", &["clone", &snap, &clone])?;
            let mountpoint = host::run("zfs", &["get", "-H", "-o", "value", "mountpoint", &clone])?;
            self.docker_start(&format!("{mountpoint}/pgdata"), conn, true)?;
            creates.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            host::run("docker", &["rm", "-f", CONTAINER])?;
            removes.push(start.elapsed().as_secs_f64());
            host::zfs_destroy(&clone)?;
            host::zfs_destroy(&snap)?;
        }
        let z = Backend::ZfsDocker;
        self.add(
            z,
            ZFS_SNAPSHOT,
            "empty",
            "s",
            snaps,
            "of a stopped branch's dataset",
        );
        self.add(z, CLONE_RUN, "empty", "s", creates, "");
        self.add(z, DOCKER_RM, "empty", "s", removes, "");
        Ok(())
    }

    /// Seconds from `docker run` of the image on `pgdata` until it answers.
    fn docker_run(&self, pgdata: &str, conn: &Conn, host_network: bool) -> Result<f64> {
        let start = Instant::now();
        self.docker_start(pgdata, conn, host_network)?;
        let secs = start.elapsed().as_secs_f64();
        host::run("docker", &["stop", "-t", "30", CONTAINER])?;
        host::run("docker", &["rm", "-f", CONTAINER])?;
        Ok(secs)
    }

    /// `docker run` of the image on `pgdata`, until it answers; the container is removed if
    /// it does not.
    fn docker_start(&self, pgdata: &str, conn: &Conn, host_network: bool) -> Result<()> {
        let port = conn.port.to_string();
        let mut cmd = Command::new("docker");
        cmd.args(["run", "-d", "--name", CONTAINER])
            .args(["-v", &format!("{pgdata}:/var/lib/postgresql/data")])
            .args(["-e", "POSTGRES_PASSWORD=unused"]);
        if host_network {
            cmd.arg("--network=host").arg(&self.o.image);
            cmd.args(["-c", &format!("port={port}")])
                .args(["-c", "listen_addresses=127.0.0.1"]);
        } else {
            // The cluster velo prepared listens on localhost and lets TCP in from 127.0.0.1
            // only, out of the published port's reach; velo's own client authentication file
            // (the bench home's) lets it in with the password, as it would behind a bridge.
            let hba = self.o.home.join("pg_hba.conf");
            cmd.args(["-p", &format!("127.0.0.1:{port}:5432")])
                .args(["-v", &format!("{}:{HBA}:ro", hba.display())])
                .arg(&self.o.image)
                .args(["-c", "listen_addresses=*", "-c", &format!("hba_file={HBA}")]);
        }
        let out = cmd.output().context("running docker")?;
        if !out.status.success() {
            bail!("docker run: {}", String::from_utf8_lossy(&out.stderr));
        }
        let ready = self.select1(conn);
        if ready.is_err() {
            sh(&format!("docker rm -f {CONTAINER}"));
        }
        ready
    }

    /// What a project create of a new image waits for: the image's first start on an empty
    /// data directory (initdb, the entrypoint's temporary server, the real start), on a
    /// dataset of its own per run (zfs-fuse may still call the last one busy just after its
    /// container went away).
    fn initdb_floor(&mut self, owner: &str, conn: &Conn) -> Result<()> {
        let mut inits = Vec::new();
        for run in 0..self.o.runs {
            let scratch = format!("{}/velo-bench-initdb-{run}", self.o.pool);
            drop_leftover(&scratch)?;
            host::run("zfs", &["create", &scratch])?;
            let mountpoint =
                host::run("zfs", &["get", "-H", "-o", "value", "mountpoint", &scratch])?;
            let dir = format!("{mountpoint}/pgdata");
            host::run("install", &["-d", "-m", "700", &dir])?;
            host::run("chown", &[owner, &dir])?;
            if std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_some()) {
                bail!("{dir} is not a new, empty directory");
            }
            inits.push(self.first_start(&dir, conn)?);
        }
        for run in 0..self.o.runs {
            host::zfs_destroy(&format!("{}/velo-bench-initdb-{run}", self.o.pool))?;
        }
        let note = "what the first project of an image waits for: initdb and the entrypoint's temporary server";
        self.add(Backend::ZfsDocker, DOCKER_INITDB, "empty", "s", inits, note);
        Ok(())
    }

    fn first_start(&self, dir: &str, conn: &Conn) -> Result<f64> {
        let password = "bench-floor";
        let start = Instant::now();
        let out = Command::new("docker")
            .args(["run", "-d", "--name", CONTAINER, "--network=host"])
            .args(["-v", &format!("{dir}:/var/lib/postgresql/data")])
            .args(["-e", &format!("POSTGRES_PASSWORD={password}")])
            .arg(&self.o.image)
            .args(["-c", &format!("port={}", conn.port)])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .output()
            .context("running docker")?;
        if !out.status.success() {
            bail!("docker run: {}", String::from_utf8_lossy(&out.stderr));
        }
        let ready = self.select1(&Conn {
            password: password.into(),
            ..conn.clone()
        });
        let secs = start.elapsed().as_secs_f64();
        host::run("docker", &["rm", "-f", CONTAINER])?;
        ready.map(|()| secs)
    }

    /// `runs` bare starts of the host's `postgres` on a cleanly stopped `pgdata`, each until
    /// `conn` answers, and each fast shutdown (SIGINT until the postmaster exits).
    pub fn bare_postgres(
        &self,
        who: &RunAs,
        pgdata: &str,
        conn: &Conn,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        std::fs::create_dir_all(SOCKETS)?;
        host::run("chmod", &["1777", SOCKETS])?;
        let bin = sh("ls -d /usr/lib/postgresql/*/bin/postgres | tail -1");
        if !Path::new(&bin).exists() {
            bail!("no postgres in /usr/lib/postgresql/*/bin (apt-get install postgresql-15)");
        }
        let (mut starts, mut stops) = (vec![], vec![]);
        for _ in 0..self.o.runs {
            let log = std::fs::File::create(BARE_LOG)?;
            let start = Instant::now();
            let mut child = Command::new("setpriv")
                .args(&who.0)
                .args(["--", &bin, "-D", pgdata, "-p", &conn.port.to_string()])
                .args(["-k", SOCKETS, "-c", "listen_addresses=127.0.0.1"])
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("LC_MESSAGES", "C")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("running postgres")?;
            let ready =
                pg::select1_while(&self.rt, conn, &mut || matches!(child.try_wait(), Ok(None)));
            if let Err(e) = ready {
                let _ = child.kill();
                let _ = child.wait();
                let said = std::fs::read_to_string(BARE_LOG).unwrap_or_default();
                return Err(e.context(format!("a bare postgres on {pgdata}, which said:\n{said}")));
            }
            starts.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            host::run("kill", &["-INT", &child.id().to_string()])?;
            child.wait()?;
            stops.push(start.elapsed().as_secs_f64());
        }
        std::fs::remove_dir_all(SOCKETS)?;
        Ok((starts, stops))
    }
}

/// Destroys a dataset or snapshot an earlier, stopped run left, if there is one.
pub fn drop_leftover(name: &str) -> Result<()> {
    if host::run("zfs", &["list", "-H", "-o", "name", name]).is_ok() {
        host::zfs_destroy(name)?;
    }
    Ok(())
}
