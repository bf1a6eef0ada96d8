//! What a branch replaces: `pg_dump -Fc | pg_restore` and `CREATE DATABASE … TEMPLATE` of
//! main's database on main's own server, each timed until the new database answers.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::Bench;
use crate::opts::Backend;
use crate::pg::{self, Conn};

impl Bench {
    /// How often to run a slow copy of `bytes` (`--alt-runs-large` from 1 GB on, else
    /// `--runs`), and the note that says so when it is fewer.
    pub fn slow_runs(&self, bytes: f64) -> (usize, String) {
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
        (runs, note)
    }

    pub fn alternatives(&mut self, main: &Conn, label: &str, bytes: f64) -> Result<()> {
        let (runs, note) = self.slow_runs(bytes);
        let admin = main.with_db("template1");
        let (mut dump, mut template) = (vec![], vec![]);
        for _ in 0..runs {
            pg::psql(&admin, "DROP DATABASE IF EXISTS bench_copy")?;
            dump.push(self.dump_restore(main, &main.with_db("bench_copy"))?);
            pg::psql(&admin, "DROP DATABASE bench_copy")?;
            template.push(self.template_copy(main, &admin)?);
            pg::psql(&admin, "DROP DATABASE bench_copy")?;
        }
        let z = Backend::ZfsDocker;
        let name = "alternative: pg_dump -Fc | pg_restore";
        self.add(z, name, label, "s", dump, &note);
        let name = "alternative: CREATE DATABASE … TEMPLATE";
        let note = format!("PostgreSQL 15 default strategy (WAL_LOG). {note}");
        self.add(z, name, label, "s", template, note.trim_end());
        Ok(())
    }

    /// Seconds to copy the database of `source` into `copy`'s new database (on any server)
    /// through `pg_dump -Fc | pg_restore`: CREATE DATABASE, the pipe, and `SELECT 1` on it.
    pub fn dump_restore(&self, source: &Conn, copy: &Conn) -> Result<f64> {
        let start = Instant::now();
        let create = format!("CREATE DATABASE {}", copy.database);
        pg::psql(&copy.with_db("template1"), &create)?;
        let mut d = Command::new("pg_dump");
        source.env(&mut d);
        let mut dumper = d
            .args(["-Fc"])
            .stdout(Stdio::piped())
            .spawn()
            .context("running pg_dump")?;
        let mut r = Command::new("pg_restore");
        copy.env(&mut r);
        let restored = r
            .args(["--no-owner", "-d", &copy.database])
            .stdin(dumper.stdout.take().expect("piped"))
            .output()
            .context("running pg_restore")?;
        let dumped = dumper.wait()?;
        if !dumped.success() || !restored.status.success() {
            bail!(
                "pg_dump | pg_restore failed: {}",
                String::from_utf8_lossy(&restored.stderr)
            );
        }
        self.select1(copy)?;
        Ok(start.elapsed().as_secs_f64())
    }

    /// Seconds to copy main's database into `bench_copy` with `CREATE DATABASE … TEMPLATE`.
    fn template_copy(&self, main: &Conn, admin: &Conn) -> Result<f64> {
        // CREATE DATABASE … TEMPLATE refuses while anyone is connected to the source.
        pg::psql(
            admin,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
                main.database
            ),
        )?;
        let start = Instant::now();
        let sql = format!("CREATE DATABASE bench_copy TEMPLATE {}", main.database);
        pg::psql(admin, &sql)?;
        self.select1(&main.with_db("bench_copy"))?;
        Ok(start.elapsed().as_secs_f64())
    }
}
