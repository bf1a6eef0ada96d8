//! ZFS + Docker without data: status and branch list with 1, 10 and 50 branches, N branch
//! creates at once, and (on the same project) the floors.

use std::process::Stdio;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::Bench;
use crate::opts::Backend;
use crate::velo::branch_conn;

const PROJECT: &str = "bench-list";

impl Bench {
    pub fn list_suite(&mut self) -> Result<()> {
        self.velo.drop_project(PROJECT)?;
        self.create_project(&self.velo, PROJECT, &self.o.image)?;
        self.docker_floors(PROJECT)?;
        let mut count = 1;
        for (i, n) in self.o.list_counts.clone().into_iter().enumerate() {
            while count < n {
                let b = format!("{PROJECT}/b{count}");
                self.velo.run(&["branch", "create", &b])?;
                count += 1;
            }
            self.list_figures(n)?;
            if i == 0 {
                for k in self.o.concurrency.clone() {
                    self.concurrent_creates(k)?;
                }
            }
        }
        self.velo.run(&["project", "delete", PROJECT, "--force"])?;
        Ok(())
    }

    fn list_figures(&mut self, branches: usize) -> Result<()> {
        let label = format!("{branches} branch(es)");
        let (mut status, mut list) = (Vec::new(), Vec::new());
        for _ in 0..self.o.runs {
            status.push(self.timed(&self.velo, &["status"], None)?);
            list.push(self.timed(&self.velo, &["branch", "list", PROJECT], None)?);
        }
        self.add(Backend::ZfsDocker, "status", &label, "s", status, "");
        self.add(Backend::ZfsDocker, "branch list", &label, "s", list, "");
        Ok(())
    }

    /// `k` branch creates started at once, timed until every new branch answers.
    fn concurrent_creates(&mut self, k: usize) -> Result<()> {
        let main = self.velo.conn(&format!("{PROJECT}/main"))?;
        let mut samples = Vec::new();
        for _ in 0..self.o.runs {
            let names: Vec<String> = (0..k).map(|j| format!("{PROJECT}/p{j}")).collect();
            let start = Instant::now();
            let children: Vec<_> = names
                .iter()
                .map(|b| {
                    self.velo
                        .cmd(&["branch", "create", b])
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
                self.velo.run(&["branch", "delete", b])?;
            }
        }
        let name = format!("{k} branch creates at once, all ready");
        self.add(Backend::ZfsDocker, &name, "empty", "s", samples, "");
        Ok(())
    }
}
