//! The results: bench.json (every sample) and bench.md (the tables docs/benchmarks.md
//! shows), each row with its floor and, given `--before`, an earlier run's median.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;
use serde_json::json;

use crate::branches::{
    CREATE, DELETE, RESET, RESET_FIRST, RESET_LAST, RESTORE, SNAPSHOT, SPACE_FS, SPACE_ZFS,
};
use crate::figure::{Figure, Floor, fmt_value, size_key};
use crate::floors::{BARE_START, BARE_STOP, CLONE_RUN, DOCKER_INITDB, DOCKER_RM, ZFS_SNAPSHOT};
use crate::import::{
    FOLLOWER_CREATE, FOLLOWER_CREATE_PACED, FOLLOWER_LAG, IMPORT_FOLLOW, IMPORT_LOGICAL,
    IMPORT_PHYSICAL, PLAIN_JOBS, PLAIN_PIPE,
};
use crate::opts::{Backend, Opts, Part};
use crate::past::{self, Past};
use crate::project::{FIRST, PROJECT_CREATE};
use crate::{Bench, host, steps};

/// What the results say besides the figures.
pub struct Meta {
    started: String,
    machine: BTreeMap<&'static str, String>,
    before: Vec<Past>,
    /// Seconds the whole run took; set at its end.
    pub duration: f64,
}

impl Meta {
    pub fn new(o: &Opts) -> Result<Meta> {
        let before = match &o.before {
            None => Vec::new(),
            Some(path) => past::read(path)?,
        };
        Ok(Meta {
            started: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            machine: host::machine(),
            before,
            duration: 0.0,
        })
    }
}

/// The floor a row is compared with: what velo runs, started by hand.
fn floor_name(f: &Figure) -> Option<&'static str> {
    let docker = f.backend == Backend::ZfsDocker.to_string();
    match f.name.as_str() {
        FIRST => Some(DOCKER_INITDB),
        CREATE | RESET | RESET_FIRST | RESET_LAST | RESTORE | PROJECT_CREATE if docker => {
            Some(CLONE_RUN)
        }
        SNAPSHOT if docker => Some(ZFS_SNAPSHOT),
        DELETE if docker => Some(DOCKER_RM),
        CREATE | RESET | RESET_FIRST | RESET_LAST | PROJECT_CREATE => Some(BARE_START),
        DELETE => Some(BARE_STOP),
        _ => None,
    }
}

/// The floor of `f` among `figures`: of its backend, at its size, else without data, else
/// at any size.
fn floor_of(f: &Figure, figures: &[Figure]) -> Option<Floor> {
    let name = floor_name(f)?;
    let same = |g: &&Figure| g.name == name && g.backend == f.backend;
    let floor = figures
        .iter()
        .filter(same)
        .find(|g| g.size_key() == f.size_key())
        .or_else(|| figures.iter().filter(same).find(|g| g.size == "empty"))
        .or_else(|| figures.iter().find(same))?;
    Some(Floor {
        name: name.into(),
        median: floor.median,
    })
}

/// Sets each figure's floor, before and target.
fn annotate(figures: &mut [Figure], before: &[Past]) {
    let found: Vec<_> = figures
        .iter()
        .map(|f| (floor_of(f, figures), past::target(f, figures)))
        .collect();
    for (f, (floor, target)) in figures.iter_mut().zip(found) {
        f.floor = floor;
        f.target = target;
        f.before = before
            .iter()
            .find(|p| {
                p.name == f.name && p.backend == f.backend && size_key(&p.size) == f.size_key()
            })
            .map(|p| p.median);
    }
}

impl Bench {
    pub fn write(&mut self) -> Result<()> {
        annotate(&mut self.figures, &self.meta.before);
        std::fs::create_dir_all(&self.o.out)?;
        let backends: Vec<_> = self.o.backends.iter().map(|b| b.arg()).collect();
        let json = json!({
            "started": self.meta.started,
            "seconds": self.meta.duration,
            "commit": self.o.commit,
            "machine": self.meta.machine,
            "velo": self.o.velo.display().to_string(),
            "runs": self.o.runs,
            "backends": backends,
            "sizes": self.o.sizes,
            "backend_sizes": self.o.backend_sizes,
            "import_size": self.o.runs_part(Part::Import).then_some(&self.o.import_size),
            "before": self.o.before.as_ref().map(|p| p.display().to_string()),
            "figures": self.figures,
        });
        let out = &self.o.out;
        std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&json)?)?;
        std::fs::write(out.join("bench.md"), self.markdown())?;
        Ok(())
    }

    fn markdown(&self) -> String {
        let mut md = self.header();
        md.push_str(&self.targets());
        md.push_str(&self.per_backend());
        md.push_str(&self.imports());
        let ops = [
            PROJECT_CREATE,
            CREATE,
            RESET,
            IMPORT_LOGICAL,
            IMPORT_PHYSICAL,
            FOLLOWER_CREATE,
            FOLLOWER_CREATE_PACED,
        ];
        for op in ops {
            md.push_str(&self.step_table(op));
        }
        md.push_str(&self.all_rows());
        md
    }

    fn header(&self) -> String {
        let mut md = format!("Run of {}", self.meta.started);
        if !self.o.commit.is_empty() {
            let _ = write!(md, ", velo {}", self.o.commit);
        }
        if self.meta.duration > 0.0 {
            let _ = write!(md, ", {:.0} min", self.meta.duration / 60.0);
        }
        let _ = write!(
            md,
            "; {} run(s) per figure; sizes {} (ZFS + Docker), {} (every backend)",
            self.o.runs,
            self.o.sizes.join(", "),
            self.o.backend_sizes.join(", ")
        );
        if self.o.runs_part(Part::Import) {
            let _ = write!(md, "; import {}", self.o.import_size);
        }
        if let Some(before) = &self.o.before {
            let _ = write!(md, "; before = {}", before.display());
        }
        md.push_str(". Machine:\n\n");
        for (k, v) in &self.meta.machine {
            let _ = writeln!(md, "- {k}: {v}");
        }
        md
    }

    /// Issue 13's rows on ZFS + Docker: before, now, floor and target.
    fn targets(&self) -> String {
        let mut md = String::from(
            "\n### Issue 13: the targets on ZFS + Docker (medians)\n\n\
             | operation | data | before | now | floor | target |\n|---|---|---:|---:|---:|---|\n",
        );
        let zfs = Backend::ZfsDocker.to_string();
        for f in self.figures.iter().filter(|f| f.backend == zfs) {
            let Some(target) = &f.target else { continue };
            let v = |x: f64| fmt_value(x, f.unit);
            let floor = f.floor.as_ref().map(|x| v(x.median)).unwrap_or_default();
            let before = f.before.map(v).unwrap_or_default();
            let _ = writeln!(
                md,
                "| {} | {} | {before} | {} | {floor} | {target} |",
                cell(&f.name),
                f.size,
                v(f.median)
            );
        }
        md
    }

    /// Every figure, in the order measured.
    fn all_rows(&self) -> String {
        let mut md = String::from(
            "\n### Every figure\n\n\
             | operation | backend | data | runs | median | min | max | floor | before | target | note |\n\
             |---|---|---|---:|---:|---:|---:|---:|---:|---|---|\n",
        );
        for f in &self.figures {
            let v = |x: f64| fmt_value(x, f.unit);
            let floor = f.floor.as_ref().map(|x| v(x.median)).unwrap_or_default();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {floor} | {} | {} | {} |",
                cell(&f.name),
                f.backend,
                f.size,
                f.samples.len(),
                v(f.median),
                v(f.min),
                v(f.max),
                f.before.map(v).unwrap_or_default(),
                f.target.as_deref().unwrap_or_default(),
                cell(&f.note),
            );
        }
        md.push_str(&floor_legend());
        md
    }

    /// Issue 12's table: per backend, project create, and per size the medians of branch
    /// create, reset, snapshot, delete and a fresh branch's space.
    fn per_backend(&self) -> String {
        let backends: Vec<String> = self.o.backends.iter().map(ToString::to_string).collect();
        let mut md = String::from(
            "\n### Per backend (medians; the floor in brackets)\n\n| operation | data |",
        );
        for b in &backends {
            let _ = write!(md, " {b} |");
        }
        md.push_str("\n|---|---|");
        md.push_str(&"---:|".repeat(backends.len()));
        md.push('\n');
        md.push_str(&self.backend_row("project create, to `SELECT 1`", &[PROJECT_CREATE], "empty"));
        let rows = [
            ("branch create, to `SELECT 1`", &[CREATE][..]),
            ("branch reset, to `SELECT 1`", &[RESET]),
            ("snapshot create (idle branch)", &[SNAPSHOT]),
            ("branch delete", &[DELETE]),
            ("fresh branch's space", &[SPACE_ZFS, SPACE_FS]),
        ];
        for size in &self.o.backend_sizes {
            for (label, names) in rows {
                md.push_str(&self.backend_row(label, names, size));
            }
        }
        md.push_str(
            "\nzfs+native cannot run on this rig: zfs-fuse has no delegation (`zfs allow`), so only root can make datasets, and the native runtime refuses root.\n",
        );
        md
    }

    /// Issue 14's rows: imports of a running server against the plain way, and branch create
    /// from a follower under load; none if the import part did not run.
    fn imports(&self) -> String {
        let names = [
            IMPORT_LOGICAL,
            IMPORT_PHYSICAL,
            PLAIN_PIPE,
            PLAIN_JOBS,
            IMPORT_FOLLOW,
            FOLLOWER_CREATE,
            FOLLOWER_CREATE_PACED,
            FOLLOWER_LAG,
        ];
        let rows: Vec<&Figure> = names
            .iter()
            .flat_map(|n| self.figures.iter().filter(move |f| f.name == *n))
            .collect();
        if rows.is_empty() {
            return String::new();
        }
        let mut md = String::from(
            "\n### Issue 14: import of a running server, and branch create from a follower under load\n\n\
             | operation | data | runs | median | min | max |\n|---|---|---:|---:|---:|---:|\n",
        );
        for f in rows {
            let v = |x: f64| fmt_value(x, f.unit);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                cell(&f.name),
                f.size,
                f.samples.len(),
                v(f.median),
                v(f.min),
                v(f.max)
            );
        }
        md
    }

    /// One row of the per-backend table: the figure named one of `names`, per backend.
    fn backend_row(&self, label: &str, names: &[&str], size: &str) -> String {
        let mut md = format!("| {label} | {size} |");
        for b in &self.o.backends {
            let b = b.to_string();
            let f = self.figures.iter().find(|f| {
                names.contains(&f.name.as_str()) && f.backend == b && f.size_key() == size
            });
            let _ = write!(md, " {} |", f.map(brief).unwrap_or_default());
        }
        md.push('\n');
        md
    }

    /// The medians of each step of `op`, per backend and size.
    fn step_table(&self, op: &str) -> String {
        let prefix = format!("{op}: ");
        let (mut columns, mut labels) = (Vec::<(String, String)>::new(), Vec::<String>::new());
        for f in &self.figures {
            if let Some(label) = f.name.strip_prefix(&prefix) {
                let column = (f.backend.clone(), f.size_key().to_string());
                if !columns.contains(&column) {
                    columns.push(column);
                }
                if !labels.iter().any(|l| l == label) {
                    labels.push(label.to_string());
                }
            }
        }
        if columns.is_empty() {
            return String::new();
        }
        // velo's own work and the bench's connection last, whatever the order met.
        labels.sort_by_key(|l| {
            [steps::OWN_WORK, steps::CONNECT]
                .iter()
                .position(|x| x == l)
        });
        let mut md = format!("\n### {op}, step by step (medians)\n\n| step |");
        for (b, size) in &columns {
            let _ = write!(md, " {b}, {size} |");
        }
        md.push_str("\n|---|");
        md.push_str(&"---:|".repeat(columns.len()));
        md.push('\n');
        for label in labels.iter().map(String::as_str).chain(["total"]) {
            let name = match label {
                "total" => op.to_string(),
                _ => format!("{prefix}{label}"),
            };
            let _ = write!(md, "| {} |", cell(label));
            for (b, size) in &columns {
                let f = self
                    .figures
                    .iter()
                    .find(|f| f.name == name && f.backend == *b && f.size_key() == size);
                let median = f.map(|f| fmt_value(f.median, f.unit));
                let _ = write!(md, " {} |", median.unwrap_or_default());
            }
            md.push('\n');
        }
        md
    }
}

/// A median with its floor: `0.52 s (0.31 s)`.
fn brief(f: &Figure) -> String {
    let median = fmt_value(f.median, f.unit);
    match &f.floor {
        Some(floor) => format!("{median} ({})", fmt_value(floor.median, f.unit)),
        None => median,
    }
}

fn floor_legend() -> String {
    format!(
        "\nFloors, measured on this machine in the same run: on ZFS + Docker, branch create, \
         reset, restore and project create (a clone of the prepared cluster) against \
         \"{CLONE_RUN}\"; snapshot create against \"{ZFS_SNAPSHOT}\"; branch delete against \
         \"{DOCKER_RM}\"; the first project of an image against \"{DOCKER_INITDB}\". On the \
         native runtime, create, reset and project create against \"{BARE_START}\", delete \
         against \"{BARE_STOP}\", of the same backend and size. Targets are issue 13's.\n"
    )
}

/// A `|` inside a cell (the pg_dump | pg_restore pipeline) would end the cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}
