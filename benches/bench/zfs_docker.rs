//! ZFS + Docker at each data size (pgbench data): branch create and delete, a fresh
//! branch's footprint, snapshot, reset and restore, pgbench on main and on a branch, and the
//! alternatives on main's server.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow};

use crate::Bench;
use crate::branches::{RESTORE, Space, Subject};
use crate::opts::{Backend, Part, scale_of};
use crate::pg::{self, Conn};

const WRITE: &str = "UPDATE pgbench_branches SET bbalance = bbalance + 1";

impl Bench {
    pub fn size_suite(&mut self, size: &str) -> Result<()> {
        let (project, main) = self.data_project(size)?;
        let bytes = pg::database_bytes(&main)?;
        let s = Subject {
            runs: self.o.runs,
            series: self.o.runs,
            resets: self.o.runs.max(10),
            write: WRITE,
            space: Space::ZfsUsed,
            ..Subject::new(Backend::ZfsDocker, &self.velo, &project, &main, size, bytes)
        };
        self.create_cycle(&s)?;
        let (work, conn) = self.snapshots_and_resets(&s)?;
        self.restores(&s, &work, &conn)?;
        if self.o.runs_part(Part::Tps) {
            self.tps(&s, &conn)?;
        }
        self.velo.run(&["branch", "delete", &work])?;
        if self.o.runs_part(Part::Alternatives) {
            self.alternatives(&main, &s.label, bytes)?;
        }
        if !self.o.keep_data {
            self.velo.run(&["project", "delete", &project, "--force"])?;
        }
        Ok(())
    }

    /// A project whose main holds a pgbench database of `size`, made (or kept from an earlier
    /// `--keep-data` run) with `pgbench -i`.
    fn data_project(&mut self, size: &str) -> Result<(String, Conn)> {
        let scale = scale_of(size)?;
        let project = format!("bench-{}", size.to_lowercase());
        let check = "SELECT count(*) FROM pgbench_branches";
        if let Some(main) = self.velo.reusable(&project, check, &scale.to_string())? {
            self.say(format!("{project}: reusing pgbench data at scale {scale}"));
            return Ok((project, main));
        }
        self.create_project(&self.velo, &project, &self.o.image)?;
        let main = self.velo.conn(&format!("{project}/main"))?;
        self.say(format!("{project}: pgbench -i -s {scale} (~{size})"));
        let start = Instant::now();
        pg::pgbench_init(&main, scale)?;
        let secs = start.elapsed().as_secs_f64();
        self.say(format!("{project}: data made in {secs:.0} s"));
        Ok((project, main))
    }

    /// `runs` restores of the work branch to a snapshot, with a write before each.
    fn restores(&mut self, s: &Subject, work: &str, conn: &Conn) -> Result<()> {
        let id = self
            .velo
            .run(&["snapshot", "create", work])?
            .trim()
            .to_string();
        let mut restore = Vec::new();
        for _ in 0..s.runs {
            pg::psql(conn, s.write)?;
            let args = ["branch", "restore", work, &id];
            restore.push(self.timed(&self.velo, &args, Some(conn))?);
        }
        let note = "a write before each";
        self.add(s.backend, RESTORE, &s.label, "s", restore, note);
        Ok(())
    }

    /// What copy-on-write costs writes: pgbench on main and on the work branch.
    fn tps(&mut self, s: &Subject, branch: &Conn) -> Result<()> {
        let tps_main = self.pgbench_tps(&s.main)?;
        let tps_branch = self.pgbench_tps(branch)?;
        let note = format!("pgbench -c 2 -j 2 -T {}, one run", self.o.pgbench_secs);
        let name = "pgbench TPS on main (parent)";
        self.add(s.backend, name, &s.label, "tps", vec![tps_main], &note);
        let name = "pgbench TPS on a branch";
        self.add(s.backend, name, &s.label, "tps", vec![tps_branch], &note);
        Ok(())
    }

    fn pgbench_tps(&self, c: &Conn) -> Result<f64> {
        let mut cmd = Command::new("pgbench");
        c.env(&mut cmd);
        let secs = self.o.pgbench_secs.to_string();
        let out = cmd
            .args(["-c", "2", "-j", "2", "-n", "-T", &secs])
            .output()
            .context("running pgbench")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| anyhow!("pgbench printed no tps: {text}"))
    }
}
