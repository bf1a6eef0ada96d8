//! velo's benchmark (issues 6, 12, 13 and 14); run it with `scripts/bench.sh`, which sets up the
//! rig, a bench pool and file systems of its own, builds velo in release mode and passes its
//! arguments here.
//!
//! Every velo figure is the wall time from spawning the command until it has exited and a new
//! connection to the branch answers `SELECT 1` (what a user's `velo … && psql` waits for).
//! Branch creates and resets are also split into the steps velo prints. The alternatives
//! (pg_dump | pg_restore, CREATE DATABASE … TEMPLATE) are timed the same way, to a connection
//! to the new database, and so are imports of a running server (issue 14: `import.rs`). Results go to `<out>/bench.json` and `<out>/bench.md`
//! (docs/benchmarks.md says what each row means).

mod alternatives;
mod branches;
mod figure;
mod floors;
mod host;
mod import;
mod list;
mod native;
mod opts;
mod past;
mod pg;
mod project;
mod report;
mod steps;
mod velo;
mod zfs_docker;

use anyhow::Result;

use figure::Figure;
use opts::{Backend, Opts, Part};
use pg::Conn;
use steps::{Breakdown, Timeline};
use velo::Velo;

pub struct Bench {
    o: Opts,
    rt: tokio::runtime::Runtime,
    figures: Vec<Figure>,
    /// velo as root, in the bench's home: the ZFS + Docker projects.
    velo: Velo,
    meta: report::Meta,
}

impl Bench {
    fn say(&self, text: String) {
        eprintln!("[bench] {text}");
    }

    fn push(&mut self, f: Figure) {
        self.say(f.summary());
        self.figures.push(f);
    }

    /// Records a figure of one backend.
    fn add(
        &mut self,
        backend: Backend,
        name: &str,
        size: &str,
        unit: &'static str,
        samples: Vec<f64>,
        note: &str,
    ) {
        self.push(Figure::new(name, backend, size, unit, samples, note));
    }

    /// Records the rows `<op>: <step>` of repeated timed commands.
    fn add_breakdown(&mut self, backend: Backend, op: &str, size: &str, b: Breakdown) {
        for (label, samples) in b.rows() {
            let name = format!("{op}: {label}");
            self.add(backend, &name, size, "s", samples, "");
        }
    }

    fn select1(&self, c: &Conn) -> Result<()> {
        pg::select1(&self.rt, c)
    }

    /// Seconds from starting `velo args` until it exited and, with `ready`, `SELECT 1` answered.
    fn timed(&self, velo: &Velo, args: &[&str], ready: Option<&Conn>) -> Result<f64> {
        let start = std::time::Instant::now();
        velo.run(args)?;
        if let Some(c) = ready {
            self.select1(c)?;
        }
        Ok(start.elapsed().as_secs_f64())
    }

    /// Runs a velo command that starts a server, then `SELECT 1` on the server `conn` names
    /// from velo's stdout; its timeline, step by step.
    fn to_ready(
        &self,
        velo: &Velo,
        args: &[&str],
        conn: impl FnOnce(&str) -> Result<Conn>,
    ) -> Result<Timeline> {
        let c = velo.captured(args)?;
        self.select1(&conn(&c.stdout)?)?;
        Ok(Timeline {
            steps: c.steps,
            velo: c.velo,
            total: c.start.elapsed().as_secs_f64(),
        })
    }

    fn run(&mut self) -> Result<()> {
        if self.o.measures(Backend::ZfsDocker) {
            self.zfs_docker_parts()?;
        }
        if self.o.runs_part(Part::Backends) {
            for backend in self.o.backends.clone() {
                if backend != Backend::ZfsDocker {
                    self.native_suite(backend)?;
                    self.write()?;
                }
            }
        }
        Ok(())
    }

    fn zfs_docker_parts(&mut self) -> Result<()> {
        if self.o.runs_part(Part::Project) {
            self.project_create()?;
            self.write()?;
        }
        if self.o.runs_part(Part::Sizes) {
            for size in self.o.sizes.clone() {
                self.size_suite(&size)?;
                self.write()?;
            }
        }
        if self.o.runs_part(Part::List) {
            self.list_suite()?;
            self.write()?;
        }
        if self.o.runs_part(Part::Import) {
            self.import_suite()?;
            self.write()?;
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let o = Opts::parse()?;
    std::fs::create_dir_all(&o.home)?;
    let mut b = Bench {
        velo: Velo::root(&o.velo, &o.home),
        meta: report::Meta::new(&o)?,
        o,
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        figures: Vec::new(),
    };
    let start = std::time::Instant::now();
    let result = b.run();
    b.meta.duration = start.elapsed().as_secs_f64();
    b.write()?;
    let (min, sec) = (b.meta.duration as u64 / 60, b.meta.duration as u64 % 60);
    eprintln!(
        "[bench] the run took {min} min {sec} s; results in {}",
        b.o.out.display()
    );
    result
}
