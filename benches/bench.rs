//! velo's benchmark (issue 6); run it with `scripts/bench.sh`, which sets up the rig and a
//! bench pool of its own, builds velo in release mode and passes its arguments here.
//!
//! Every velo figure is the wall time from spawning the command until it has exited and a new
//! connection to the branch answers `SELECT 1` (what a user's `velo … && psql` waits for).
//! The alternatives (pg_dump | pg_restore, CREATE DATABASE … TEMPLATE) are timed the same way,
//! to a connection to the new database. Results go to `<out>/bench.json` and `<out>/bench.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;
use serde_json::{Value, json};

/// Roughly 15 MB of data per pgbench scale unit (table plus its primary key).
const BYTES_PER_SCALE: f64 = 15.0e6;

struct Opts {
    velo: PathBuf,
    home: PathBuf,
    pool: String,
    image: String,
    sizes: Vec<String>,
    runs: usize,
    /// Runs of the slow alternatives at sizes of 1 GB and more.
    alt_runs_large: usize,
    list_counts: Vec<usize>,
    concurrency: Vec<usize>,
    pgbench_secs: u32,
    out: PathBuf,
    keep_data: bool,
}

const USAGE: &str = "usage: bench --velo PATH --home DIR --pool POOL --image IMAGE --out DIR
  [--sizes 100M,1G,5G|none] [--runs 5] [--alt-runs-large 1] [--list 1,10,50] [--concurrency 10,20]
  [--pgbench-secs 10] [--keep-data] [--quick]
  --quick = --sizes 15M --runs 3 --list 1,10 --concurrency 5 --pgbench-secs 3";

impl Opts {
    fn parse() -> Result<Opts> {
        let mut o = Opts {
            velo: PathBuf::new(),
            home: PathBuf::new(),
            pool: String::new(),
            image: String::new(),
            sizes: vec!["100M".into(), "1G".into(), "5G".into()],
            runs: 5,
            alt_runs_large: 1,
            list_counts: vec![1, 10, 50],
            concurrency: vec![10, 20],
            pgbench_secs: 10,
            out: PathBuf::new(),
            keep_data: false,
        };
        let list = |v: &str| -> Result<Vec<usize>> {
            v.split(',')
                .map(|x| {
                    x.trim()
                        .parse()
                        .with_context(|| format!("not a number: {x}"))
                })
                .collect()
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            // cargo bench passes --bench to every bench binary.
            if a == "--bench" {
                continue;
            }
            if a == "--keep-data" {
                o.keep_data = true;
                continue;
            }
            if a == "--quick" {
                o.sizes = vec!["15M".into()];
                o.runs = 3;
                o.list_counts = vec![1, 10];
                o.concurrency = vec![5];
                o.pgbench_secs = 3;
                continue;
            }
            let v = args
                .next()
                .ok_or_else(|| anyhow!("{a} needs a value\n{USAGE}"))?;
            match a.as_str() {
                "--velo" => o.velo = v.into(),
                "--home" => o.home = v.into(),
                "--pool" => o.pool = v,
                "--image" => o.image = v,
                "--out" => o.out = v.into(),
                "--sizes" if v == "none" => o.sizes.clear(),
                "--sizes" => o.sizes = v.split(',').map(|s| s.trim().to_string()).collect(),
                "--runs" => o.runs = v.parse()?,
                "--alt-runs-large" => o.alt_runs_large = v.parse()?,
                "--list" => o.list_counts = list(&v)?,
                "--concurrency" => o.concurrency = list(&v)?,
                "--pgbench-secs" => o.pgbench_secs = v.parse()?,
                other => bail!("unknown option {other}\n{USAGE}"),
            }
        }
        if o.velo.as_os_str().is_empty()
            || o.home.as_os_str().is_empty()
            || o.pool.is_empty()
            || o.image.is_empty()
            || o.out.as_os_str().is_empty()
        {
            bail!("--velo, --home, --pool, --image and --out are required\n{USAGE}");
        }
        if o.runs == 0 {
            bail!("--runs must be at least 1");
        }
        for s in &o.sizes {
            scale_of(s)?;
        }
        Ok(o)
    }
}

/// The pgbench scale for a size such as `100M` or `5G`.
fn scale_of(size: &str) -> Result<u32> {
    let (n, unit) = size.split_at(size.len().saturating_sub(1));
    let n: f64 = n
        .parse()
        .with_context(|| format!("size `{size}`: want a number and M or G, e.g. 100M"))?;
    let bytes = match unit {
        "M" => n * 1e6,
        "G" => n * 1e9,
        _ => bail!("size `{size}`: want M or G, e.g. 100M or 5G"),
    };
    Ok(((bytes / BYTES_PER_SCALE).round() as u32).max(1))
}

/// One measured figure.
#[derive(Serialize)]
struct Figure {
    name: String,
    size: String,
    unit: &'static str,
    samples: Vec<f64>,
    median: f64,
    min: f64,
    max: f64,
    #[serde(skip_serializing_if = "String::is_empty")]
    note: String,
}

fn figure(name: &str, size: &str, unit: &'static str, samples: Vec<f64>, note: &str) -> Figure {
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Figure {
        name: name.into(),
        size: size.into(),
        unit,
        median,
        min: sorted[0],
        max: sorted[n - 1],
        samples,
        note: note.into(),
    }
}

/// How to reach one branch (from `velo branch password --json`).
#[derive(Clone)]
struct Conn {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
}

impl Conn {
    fn with_db(&self, db: &str) -> Conn {
        Conn {
            database: db.into(),
            ..self.clone()
        }
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password)
            .env("PGDATABASE", &self.database);
    }
}

struct Bench {
    o: Opts,
    rt: tokio::runtime::Runtime,
    figures: Vec<Figure>,
}

impl Bench {
    fn say(&self, text: String) {
        eprintln!("[bench] {text}");
    }

    fn velo_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.o.velo);
        cmd.args(args)
            .env("VELO_HOME", &self.o.home)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs velo, failing with its stderr if it fails.
    fn velo(&self, args: &[&str]) -> Result<String> {
        let out = self
            .velo_cmd(args)
            .output()
            .with_context(|| format!("running {}", self.o.velo.display()))?;
        if !out.status.success() {
            bail!(
                "velo {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let text = self.velo(args)?;
        serde_json::from_str(&text).with_context(|| format!("velo {}: not JSON", args.join(" ")))
    }

    /// Runs `velo branch create branch` and returns how to reach the new branch: its port from
    /// the URL velo prints, the rest from `project` (every branch of a project has main's
    /// credentials). Nothing but velo runs between the start and the caller's `SELECT 1`.
    fn create_branch(&self, branch: &str, project: &Conn) -> Result<Conn> {
        let out = self.velo(&["branch", "create", branch])?;
        branch_conn(project, branch, &out)
    }

    fn conn(&self, branch: &str) -> Result<Conn> {
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

    /// Polls until a new connection answers `SELECT 1` (velo waited already, so normally the
    /// first attempt answers).
    fn select1(&self, c: &Conn) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        self.rt.block_on(async {
            loop {
                let mut cfg = tokio_postgres::Config::new();
                cfg.host(&c.host)
                    .port(c.port)
                    .user(&c.user)
                    .password(&c.password)
                    .dbname(&c.database)
                    .connect_timeout(Duration::from_secs(2));
                let attempt = async {
                    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
                    let conn = tokio::spawn(conn);
                    let answered = client.query_one("SELECT 1", &[]).await.map(drop);
                    // Close the session now: a lingering one blocks DROP DATABASE.
                    drop(client);
                    let _ = conn.await;
                    answered
                };
                match attempt.await {
                    Ok(()) => return Ok(()),
                    Err(e) if Instant::now() > deadline => {
                        return Err(anyhow!("{}:{} never answered: {e}", c.host, c.port));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        })
    }

    /// Seconds from starting `velo args` until it exited and, with `ready`, `SELECT 1` answered.
    fn timed(&self, args: &[&str], ready: Option<&Conn>) -> Result<f64> {
        let start = Instant::now();
        self.velo(args)?;
        if let Some(c) = ready {
            self.select1(c)?;
        }
        Ok(start.elapsed().as_secs_f64())
    }

    fn psql(&self, c: &Conn, sql: &str) -> Result<String> {
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

    fn push(&mut self, f: Figure) {
        let line = format!(
            "{} [{}]: median {} (min {}, max {}, {} runs)",
            f.name,
            f.size,
            fmt_value(f.median, f.unit),
            fmt_value(f.min, f.unit),
            fmt_value(f.max, f.unit),
            f.samples.len()
        );
        self.say(line);
        self.figures.push(f);
    }

    /// Removes every branch but main of a project (what an interrupted earlier run left).
    fn prune_branches(&self, project: &str) -> Result<()> {
        let list = self.json(&["branch", "list", project, "--json"])?;
        for b in list.as_array().into_iter().flatten() {
            let name = b["branch"].as_str().unwrap_or("main");
            if name != "main" {
                self.velo(&["branch", "delete", &format!("{project}/{name}"), "--force"])?;
            }
        }
        Ok(())
    }

    fn project_exists(&self, project: &str) -> Result<bool> {
        let list = self.json(&["project", "list", "--json"])?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == project))
    }

    fn create_project(&self, project: &str) -> Result<()> {
        self.velo(&[
            "project",
            "create",
            project,
            "--pool",
            &self.o.pool,
            "--image",
            &self.o.image,
        ])
        .map(drop)
    }

    fn project_create(&mut self) -> Result<()> {
        let mut samples = Vec::new();
        for i in 0..self.o.runs {
            let name = format!("bench-pc{i}");
            if self.project_exists(&name)? {
                self.velo(&["project", "delete", &name, "--force"])?;
            }
            let start = Instant::now();
            self.create_project(&name)?;
            let main = self.conn(&format!("{name}/main"))?;
            self.select1(&main)?;
            samples.push(start.elapsed().as_secs_f64());
            self.velo(&["project", "delete", &name, "--force"])?;
        }
        let f = figure(
            "project create",
            "empty",
            "s",
            samples,
            "includes `velo branch password` to learn the port",
        );
        self.push(f);
        Ok(())
    }

    /// A project whose main holds a pgbench database of `size`, made (or kept from an earlier
    /// `--keep-data` run) with `pgbench -i`.
    fn data_project(&mut self, size: &str) -> Result<(String, Conn)> {
        let scale = scale_of(size)?;
        let project = format!("bench-{}", size.to_lowercase());
        if self.project_exists(&project)? {
            self.prune_branches(&project)?;
            let main = self.conn(&format!("{project}/main"))?;
            self.velo(&["branch", "start", &format!("{project}/main")])?;
            let rows = self
                .psql(&main, "SELECT count(*) FROM pgbench_branches")
                .unwrap_or_default();
            if rows == scale.to_string() {
                self.say(format!("{project}: reusing pgbench data at scale {scale}"));
                return Ok((project, main));
            }
            self.velo(&["project", "delete", &project, "--force"])?;
        }
        self.create_project(&project)?;
        let main = self.conn(&format!("{project}/main"))?;
        self.say(format!("{project}: pgbench -i -s {scale} (~{size})"));
        let start = Instant::now();
        let mut cmd = Command::new("pgbench");
        main.env(&mut cmd);
        let out = cmd
            .args(["-i", "-q", "-s", &scale.to_string()])
            .output()
            .context("running pgbench -i")?;
        if !out.status.success() {
            bail!("pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
        }
        let secs = start.elapsed().as_secs_f64();
        self.say(format!("{project}: data made in {secs:.0} s"));
        Ok((project, main))
    }

    fn size_suite(&mut self, size: &str) -> Result<()> {
        let (project, main) = self.data_project(size)?;
        let bytes: f64 = self
            .psql(&main, "SELECT pg_database_size(current_database())")?
            .parse()?;
        let label = format!("{size} ({:.0} MB)", bytes / 1e6);
        let runs = self.o.runs;

        // branch create / delete, and a fresh branch's footprint
        let (mut create, mut delete, mut used, mut memory) = (vec![], vec![], vec![], vec![]);
        for i in 0..runs {
            let b = format!("{project}/c{i}");
            let start = Instant::now();
            let conn = self.create_branch(&b, &main)?;
            self.select1(&conn)?;
            create.push(start.elapsed().as_secs_f64());
            used.push(self.fresh_used(&b)?);
            memory.push(self.idle_memory(&b)?);
            delete.push(self.timed(&["branch", "delete", &b], None)?);
        }
        self.push(figure("branch create", &label, "s", create, ""));
        self.push(figure("branch delete", &label, "s", delete, ""));
        self.push(figure(
            "fresh branch ZFS used",
            &label,
            "MB",
            used,
            "`zfs get used` just after create, while it runs",
        ));
        self.push(figure(
            "idle branch container memory",
            &label,
            "MB",
            memory,
            "docker stats, 2 s after ready",
        ));

        // snapshot create on an idle branch; reset and restore with a write before each
        let b = format!("{project}/work");
        self.velo(&["branch", "create", &b])?;
        let conn = self.conn(&b)?;
        let mut snap = Vec::new();
        for _ in 0..runs {
            snap.push(self.timed(&["snapshot", "create", &b], None)?);
        }
        self.push(figure(
            "snapshot create (idle branch)",
            &label,
            "s",
            snap,
            "",
        ));
        let resets = runs.max(10);
        let mut reset = Vec::new();
        for _ in 0..resets {
            self.psql(&conn, "UPDATE pgbench_branches SET bbalance = bbalance + 1")?;
            reset.push(self.timed(&["branch", "reset", &b], Some(&conn))?);
        }
        let (first, tenth) = (reset[0], reset[9]);
        self.push(figure(
            "branch reset",
            &label,
            "s",
            reset,
            &format!("{resets} runs, a write before each; 1st {first:.2} s, 10th {tenth:.2} s"),
        ));
        let id = self.velo(&["snapshot", "create", &b])?.trim().to_string();
        let mut restore = Vec::new();
        for _ in 0..runs {
            self.psql(&conn, "UPDATE pgbench_branches SET bbalance = bbalance + 1")?;
            restore.push(self.timed(&["branch", "restore", &b, &id], Some(&conn))?);
        }
        self.push(figure(
            "branch restore",
            &label,
            "s",
            restore,
            "a write before each",
        ));

        // what copy-on-write costs writes
        let tps_main = self.pgbench_tps(&main)?;
        let tps_branch = self.pgbench_tps(&conn)?;
        let secs = self.o.pgbench_secs;
        self.push(figure(
            "pgbench TPS on main (parent)",
            &label,
            "tps",
            vec![tps_main],
            &format!("pgbench -c 2 -j 2 -T {secs}, one run"),
        ));
        self.push(figure(
            "pgbench TPS on a branch",
            &label,
            "tps",
            vec![tps_branch],
            &format!("pgbench -c 2 -j 2 -T {secs}, one run"),
        ));
        self.velo(&["branch", "delete", &b])?;

        self.alternatives(&main, &label, bytes)?;
        if !self.o.keep_data {
            self.velo(&["project", "delete", &project, "--force"])?;
        }
        Ok(())
    }

    fn dataset_of(&self, branch: &str) -> Result<String> {
        let v = self.json(&["branch", "get", branch, "--json"])?;
        v["dataset"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow!("`velo branch get {branch} --json` has no dataset"))
    }

    fn fresh_used(&self, branch: &str) -> Result<f64> {
        let dataset = self.dataset_of(branch)?;
        let out = Command::new("zfs")
            .args(["get", "-H", "-p", "-o", "value", "used", &dataset])
            .output()?;
        let bytes: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        Ok(bytes / 1e6)
    }

    fn idle_memory(&self, branch: &str) -> Result<f64> {
        std::thread::sleep(Duration::from_secs(2));
        let (project, name) = branch.split_once('/').expect("project/branch");
        let container = format!("velo-{project}.{name}");
        let out = Command::new("docker")
            .args([
                "stats",
                "--no-stream",
                "--format",
                "{{.MemUsage}}",
                &container,
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let used = text.split('/').next().unwrap_or("").trim();
        parse_docker_size(used)
            .map(|b| b / 1e6)
            .ok_or_else(|| anyhow!("docker stats {container}: cannot read `{}`", text.trim()))
    }

    fn pgbench_tps(&self, c: &Conn) -> Result<f64> {
        let mut cmd = Command::new("pgbench");
        c.env(&mut cmd);
        let out = cmd
            .args([
                "-c",
                "2",
                "-j",
                "2",
                "-n",
                "-T",
                &self.o.pgbench_secs.to_string(),
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| anyhow!("pgbench printed no tps: {text}"))
    }

    /// pg_dump | pg_restore and CREATE DATABASE … TEMPLATE of main's database, on main's server.
    fn alternatives(&mut self, main: &Conn, label: &str, bytes: f64) -> Result<()> {
        let runs = if bytes >= 0.9e9 {
            self.o.alt_runs_large.min(self.o.runs)
        } else {
            self.o.runs
        };
        let note = if runs < self.o.runs {
            format!("{runs} run(s) only at this size (slow)")
        } else {
            String::new()
        };
        let admin = main.with_db("template1");
        let copy = main.with_db("bench_copy");
        let (mut dump, mut template) = (vec![], vec![]);
        for _ in 0..runs {
            self.psql(&admin, "DROP DATABASE IF EXISTS bench_copy")?;
            let start = Instant::now();
            self.psql(&admin, "CREATE DATABASE bench_copy")?;
            let mut d = Command::new("pg_dump");
            main.env(&mut d);
            let mut dumper = d.args(["-Fc"]).stdout(Stdio::piped()).spawn()?;
            let mut r = Command::new("pg_restore");
            copy.env(&mut r);
            let restored = r
                .args(["--no-owner", "-d", "bench_copy"])
                .stdin(dumper.stdout.take().expect("piped"))
                .output()?;
            let dumped = dumper.wait()?;
            if !dumped.success() || !restored.status.success() {
                bail!(
                    "pg_dump | pg_restore failed: {}",
                    String::from_utf8_lossy(&restored.stderr)
                );
            }
            self.select1(&copy)?;
            dump.push(start.elapsed().as_secs_f64());
            self.psql(&admin, "DROP DATABASE bench_copy")?;

            // CREATE DATABASE … TEMPLATE refuses while anyone is connected to the source.
            self.psql(
                &admin,
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
                    main.database
                ),
            )?;
            let start = Instant::now();
            self.psql(
                &admin,
                &format!("CREATE DATABASE bench_copy TEMPLATE {}", main.database),
            )?;
            self.select1(&copy)?;
            template.push(start.elapsed().as_secs_f64());
            self.psql(&admin, "DROP DATABASE bench_copy")?;
        }
        self.push(figure(
            "alternative: pg_dump -Fc | pg_restore",
            label,
            "s",
            dump,
            &note,
        ));
        self.push(figure(
            "alternative: CREATE DATABASE … TEMPLATE",
            label,
            "s",
            template,
            &format!("PostgreSQL 15 default strategy (WAL_LOG). {note}"),
        ));
        Ok(())
    }

    /// status and branch list with 1, 10, 50 branches; N branch creates at once.
    fn list_suite(&mut self) -> Result<()> {
        let project = "bench-list".to_string();
        if self.project_exists(&project)? {
            self.velo(&["project", "delete", &project, "--force"])?;
        }
        self.create_project(&project)?;
        self.floors(&project)?;
        let mut count = 1;
        let counts = self.o.list_counts.clone();
        let concurrency = self.o.concurrency.clone();
        for (i, &n) in counts.iter().enumerate() {
            while count < n {
                self.velo(&["branch", "create", &format!("{project}/b{count}")])?;
                count += 1;
            }
            let label = format!("{n} branch(es)");
            let mut status = Vec::new();
            let mut list = Vec::new();
            for _ in 0..self.o.runs {
                status.push(self.timed(&["status"], None)?);
                list.push(self.timed(&["branch", "list", &project], None)?);
            }
            self.push(figure("status", &label, "s", status, ""));
            self.push(figure("branch list", &label, "s", list, ""));
            if i == 0 {
                for &k in &concurrency {
                    self.concurrent_creates(&project, k)?;
                }
            }
        }
        self.velo(&["project", "delete", &project, "--force"])?;
        Ok(())
    }

    /// What velo cannot beat here: a bare `docker run` of the image on a stopped branch's data
    /// (published port, and host network), and a bare `postgres` start and stop on the host.
    fn floors(&mut self, project: &str) -> Result<()> {
        let b = format!("{project}/floor");
        self.velo(&["branch", "create", &b])?;
        self.velo(&["branch", "stop", &b])?;
        let conn = self.conn(&b)?;
        let mountpoint = sh(&format!(
            "zfs get -H -o value mountpoint {}",
            self.dataset_of(&b)?
        ));
        let pgdata = format!("{mountpoint}/pgdata");
        let port = conn.port.to_string();
        for (name, network) in [
            ("floor: docker run -p 127.0.0.1:PORT:5432, to ready", None),
            ("floor: docker run --network host, to ready", Some("host")),
        ] {
            let mut samples = Vec::new();
            for _ in 0..self.o.runs {
                let mut args = vec![
                    "run".to_string(),
                    "-d".into(),
                    "--name".into(),
                    "velo-bench-floor".into(),
                    "-v".into(),
                    format!("{pgdata}:/var/lib/postgresql/data"),
                    "-e".into(),
                    "POSTGRES_PASSWORD=unused".into(),
                ];
                match network {
                    Some(net) => args.extend([format!("--network={net}")]),
                    None => args.extend(["-p".into(), format!("127.0.0.1:{port}:5432")]),
                }
                args.push(self.o.image.clone());
                if network.is_some() {
                    args.extend(["-c".into(), format!("port={port}")]);
                    args.extend(["-c".into(), "listen_addresses=127.0.0.1".into()]);
                }
                let start = Instant::now();
                let out = Command::new("docker").args(&args).output()?;
                if !out.status.success() {
                    bail!("docker run: {}", String::from_utf8_lossy(&out.stderr));
                }
                self.select1(&conn)?;
                samples.push(start.elapsed().as_secs_f64());
                Command::new("docker")
                    .args(["stop", "-t", "30", "velo-bench-floor"])
                    .output()?;
                Command::new("docker")
                    .args(["rm", "-f", "velo-bench-floor"])
                    .output()?;
            }
            self.push(figure(name, "empty", "s", samples, ""));
        }

        // What project create waits for: the image's first start on an empty data directory
        // (initdb, the entrypoint's temporary server, the real start), on a dataset of its own.
        let owner = sh(&format!("stat -c %u:%g {pgdata}"));
        let mut inits = Vec::new();
        for run in 0..self.o.runs {
            // A dataset per run: zfs-fuse may still call the last one busy just after its
            // container went away.
            let scratch = format!("{}/velo-bench-initdb-{run}", self.o.pool);
            sh(&format!(
                "zfs destroy -r {scratch} 2>/dev/null; zfs create {scratch}"
            ));
            let dir = format!(
                "{}/pgdata",
                sh(&format!("zfs get -H -o value mountpoint {scratch}"))
            );
            sh(&format!("mkdir -m 700 {dir} && chown {owner} {dir}"));
            if std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_some()) {
                bail!("{dir} is not a new, empty directory");
            }
            let password = "bench-floor";
            let start = Instant::now();
            let out = Command::new("docker")
                .args(["run", "-d", "--name", "velo-bench-floor", "--network=host"])
                .args(["-v", &format!("{dir}:/var/lib/postgresql/data")])
                .args(["-e", &format!("POSTGRES_PASSWORD={password}")])
                .arg(&self.o.image)
                .args([
                    "-c",
                    &format!("port={port}"),
                    "-c",
                    "listen_addresses=127.0.0.1",
                ])
                .output()?;
            if !out.status.success() {
                bail!("docker run: {}", String::from_utf8_lossy(&out.stderr));
            }
            self.select1(&Conn {
                password: password.into(),
                ..conn.clone()
            })?;
            inits.push(start.elapsed().as_secs_f64());
            Command::new("docker")
                .args(["rm", "-f", "velo-bench-floor"])
                .output()?;
        }
        for run in 0..self.o.runs {
            sh(&format!(
                "zfs destroy -r {}/velo-bench-initdb-{run}",
                self.o.pool
            ));
        }
        self.push(figure(
            "floor: docker run --network host on an empty data directory, to ready",
            "empty",
            "s",
            inits,
            "what project create waits for: initdb and the entrypoint's temporary server",
        ));

        let (uid, gid) = owner
            .split_once(':')
            .ok_or_else(|| anyhow!("stat {pgdata}: {owner}"))?;
        let sockets = Path::new("/tmp/velo-bench-sockets");
        std::fs::create_dir_all(sockets)?;
        sh(&format!("chmod 1777 {}", sockets.display()));
        let bin = sh("ls -d /usr/lib/postgresql/*/bin/postgres | tail -1");
        let (mut starts, mut stops) = (vec![], vec![]);
        for _ in 0..self.o.runs {
            let start = Instant::now();
            let mut child = Command::new("setpriv")
                .args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={gid}"),
                    "--clear-groups",
                    "--",
                    &bin,
                    "-D",
                    &pgdata,
                    "-p",
                    &port,
                    "-k",
                    &sockets.display().to_string(),
                    "-c",
                    "listen_addresses=127.0.0.1",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            self.select1(&conn)?;
            starts.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            sh(&format!("kill -INT {}", child.id()));
            child.wait()?;
            stops.push(start.elapsed().as_secs_f64());
        }
        self.push(figure(
            "floor: bare postgres start, to ready",
            "empty",
            "s",
            starts,
            "on the host, a cleanly stopped data directory",
        ));
        self.push(figure(
            "floor: bare postgres fast shutdown",
            "empty",
            "s",
            stops,
            "SIGINT until the postmaster exits",
        ));
        self.velo(&["branch", "delete", &b])?;
        Ok(())
    }

    fn concurrent_creates(&mut self, project: &str, k: usize) -> Result<()> {
        let main = self.conn(&format!("{project}/main"))?;
        let mut samples = Vec::new();
        for _ in 0..self.o.runs {
            let names: Vec<String> = (0..k).map(|j| format!("{project}/p{j}")).collect();
            let start = Instant::now();
            let children: Vec<_> = names
                .iter()
                .map(|b| {
                    self.velo_cmd(&["branch", "create", b])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                })
                .collect::<Result<_, _>>()?;
            for (child, b) in children.into_iter().zip(&names) {
                let out = child.wait_with_output()?;
                if !out.status.success() {
                    bail!(
                        "a concurrent branch create failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                let c = branch_conn(&main, b, &String::from_utf8_lossy(&out.stdout))?;
                self.select1(&c)?;
            }
            samples.push(start.elapsed().as_secs_f64());
            for b in &names {
                self.velo(&["branch", "delete", b])?;
            }
        }
        self.push(figure(
            &format!("{k} branch creates at once, all ready"),
            "empty",
            "s",
            samples,
            "",
        ));
        Ok(())
    }
}

/// How to reach a branch that `velo branch create` just made, from the URL it printed (`out`)
/// and its project's credentials.
fn branch_conn(project: &Conn, branch: &str, out: &str) -> Result<Conn> {
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

fn parse_docker_size(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = text.split_at(split);
    let n: f64 = n.trim().parse().ok()?;
    let mult = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return None,
    };
    Some(n * mult)
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "s" if v < 10.0 => format!("{v:.2} s"),
        "s" => format!("{v:.1} s"),
        "tps" => format!("{v:.0} tps"),
        _ => format!("{v:.1} {unit}"),
    }
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Cores, memory, kernel, ZFS and Docker of this machine, and what else was running.
fn machine() -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("cores", sh("nproc")),
        (
            "cpu",
            sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        ),
        ("memory", sh("free -h | awk '/^Mem:/ { print $2 }'")),
        ("kernel", sh("uname -sr")),
        (
            "zfs",
            sh(
                "if command -v zfs-fuse >/dev/null; then echo \"zfs-fuse $(dpkg-query -W -f='${Version}' zfs-fuse 2>/dev/null)\"; else zfs version 2>/dev/null | head -1; fi",
            ),
        ),
        (
            "docker",
            sh(
                "docker version --format 'client {{.Client.Version}}, server {{.Server.Version}} (API {{.Server.APIVersion}})'",
            ),
        ),
        ("load average at start", sh("cut -d' ' -f1-3 /proc/loadavg")),
        ("other containers at start", sh("docker ps -q | wc -l")),
    ])
}

fn markdown(figures: &[Figure], machine: &BTreeMap<&str, String>, started: &str) -> String {
    let mut md = format!("Run of {started}. Machine:\n\n");
    for (k, v) in machine {
        md.push_str(&format!("- {k}: {v}\n"));
    }
    md.push_str("\n| operation | data | runs | median | min | max | note |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---|\n");
    // A `|` inside a cell (the pg_dump | pg_restore pipeline) would end the cell.
    let cell = |text: &str| text.replace('|', "\\|");
    for f in figures {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            cell(&f.name),
            f.size,
            f.samples.len(),
            fmt_value(f.median, f.unit),
            fmt_value(f.min, f.unit),
            fmt_value(f.max, f.unit),
            cell(&f.note)
        ));
    }
    md
}

fn write_results(b: &Bench, machine: &BTreeMap<&str, String>, started: &str) -> Result<()> {
    std::fs::create_dir_all(&b.o.out)?;
    let json = json!({
        "started": started,
        "machine": machine,
        "velo": b.o.velo.display().to_string(),
        "runs": b.o.runs,
        "sizes": b.o.sizes,
        "figures": b.figures,
    });
    let out: &Path = &b.o.out;
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(out.join("bench.md"), markdown(&b.figures, machine, started))?;
    Ok(())
}

fn main() -> Result<()> {
    let o = Opts::parse()?;
    std::fs::create_dir_all(&o.home)?;
    let started = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let machine = machine();
    let mut b = Bench {
        o,
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        figures: Vec::new(),
    };
    let result = (|| -> Result<()> {
        b.project_create()?;
        for size in b.o.sizes.clone() {
            b.size_suite(&size)?;
            write_results(&b, &machine, &started)?;
        }
        b.list_suite()
    })();
    write_results(&b, &machine, &started)?;
    eprintln!("[bench] results in {}", b.o.out.display());
    result
}
