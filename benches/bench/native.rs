//! The native runtime on btrfs, reflink (XFS) and copy (ext4) storage, each on a file system
//! of the bench's own (scripts/bench.sh), with velo run as the non-root test user: the native
//! runtime refuses root, as PostgreSQL does.
//!
//! The data is a table of incompressible rows, loaded with `COPY` (`load`): at 5 GB that takes
//! a fraction of `pgbench -i`'s time, and no file system here compresses, so the bytes are
//! what the storage has to clone or copy.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};

use crate::Bench;
use crate::branches::{Space, Subject};
use crate::floors::{BARE_START, BARE_STOP, RunAs};
use crate::host;
use crate::opts::{Backend, bytes_of};
use crate::pg::{self, Conn};
use crate::project::{PROJECT_CREATE, PROJECT_NOTE};
use crate::steps::Breakdown;
use crate::velo::Velo;

const WRITE: &str = "INSERT INTO bench_ticks VALUES (1)";
/// Characters of base64 per row: below PostgreSQL's TOAST threshold (about 2 kB), so rows
/// stay in the table's own pages, uncompressed.
const ROW_CHARS: f64 = 1000.0;
/// Bytes of table per byte of random data: 4/3 for base64, and 1036 bytes of page space per
/// 1000-character row, 7 rows to an 8 kB page.
const TABLE_PER_RANDOM_BYTE: f64 = 4.0 / 3.0 * 8192.0 / 7.0 / ROW_CHARS;
/// What a new database holds before any data.
const EMPTY_DATABASE: f64 = 7.5e6;

impl Bench {
    pub fn native_suite(&mut self, backend: Backend) -> Result<()> {
        let dir = self.o.dir_of(backend).clone();
        let velo = Velo::as_user(&self.o.velo, &dir.join("home"), &self.o.native_user)?;
        self.native_project_create(backend, &velo, &dir)?;
        for size in self.o.backend_sizes.clone() {
            self.native_size(backend, &velo, &dir, &size)?;
            host::trim(&dir);
        }
        Ok(())
    }

    fn native_size(&mut self, backend: Backend, velo: &Velo, dir: &Path, size: &str) -> Result<()> {
        let large_copy = backend == Backend::CopyNative && bytes_of(size)? >= 0.9e9;
        let runs = if large_copy {
            self.o.copy_runs_large.min(self.o.runs)
        } else {
            self.o.runs
        };
        check_room(backend, dir, size)?;
        let (project, main) = self.native_data(backend, velo, dir, size)?;
        let bytes = pg::database_bytes(&main)?;
        let s = Subject {
            runs,
            series: if large_copy { 1 } else { runs },
            resets: if large_copy { runs } else { runs.max(10) },
            write: WRITE,
            space: Space::FileSystem(dir.to_path_buf()),
            ..Subject::new(backend, velo, &project, &main, size, bytes)
        };
        self.create_cycle(&s)?;
        let (work, _) = self.snapshots_and_resets(&s)?;
        velo.run(&["branch", "delete", &work])?;
        self.native_floor(&s)?;
        if !self.o.keep_data {
            velo.run(&["project", "delete", &project, "--force"])?;
            velo.settle()?;
        }
        Ok(())
    }

    /// A project of `backend` whose main holds `size` of data, made (or kept from an earlier
    /// `--keep-data` run).
    fn native_data(
        &mut self,
        backend: Backend,
        velo: &Velo,
        dir: &Path,
        size: &str,
    ) -> Result<(String, Conn)> {
        let project = format!("bench-{}-{}", backend.storage(), size.to_lowercase());
        let random = ((bytes_of(size)? - EMPTY_DATABASE) / TABLE_PER_RANDOM_BYTE).max(1e6) as u64;
        let rows = random.div_ceil(3) * 4;
        let rows = rows.div_ceil(ROW_CHARS as u64).to_string();
        if let Some(main) = velo.reusable(&project, "SELECT count(*) FROM bench_data", &rows)? {
            self.say(format!("{project}: reusing its {rows} rows of data"));
            return Ok((project, main));
        }
        velo.run(&create_args(backend, &data_dir(dir), &project))?;
        let got = velo.json(&["project", "get", &project, "--json"])?;
        self.say(format!("{project}: {}", got["chosen"]));
        let main = velo.conn(&format!("{project}/main"))?;
        self.load(&project, &main, random)?;
        Ok((project, main))
    }

    /// Project create (a clone of the prepared cluster, made first and not measured), to
    /// `SELECT 1` on main, step by step.
    fn native_project_create(&mut self, backend: Backend, velo: &Velo, dir: &Path) -> Result<()> {
        let prefix = format!("bench-{}-pc", backend.storage());
        let data = data_dir(dir);
        velo.drop_project(&prefix)?;
        velo.run(&create_args(backend, &data, &prefix))?;
        velo.run(&["project", "delete", &prefix, "--force"])?;
        let (mut samples, mut steps) = (Vec::new(), Breakdown::default());
        for i in 0..self.o.runs {
            let name = format!("{prefix}{i}");
            velo.drop_project(&name)?;
            let args = create_args(backend, &data, &name);
            let t = self.to_ready(velo, &args, |_| velo.conn(&format!("{name}/main")))?;
            samples.push(t.total);
            steps.add(&t);
            velo.run(&["project", "delete", &name, "--force"])?;
        }
        velo.settle()?;
        self.add(backend, PROJECT_CREATE, "empty", "s", samples, PROJECT_NOTE);
        self.add_breakdown(backend, PROJECT_CREATE, "empty", steps);
        Ok(())
    }

    /// Loads `random` bytes from /dev/urandom, as base64 rows, into a new table `bench_data`.
    fn load(&self, project: &str, main: &Conn, random: u64) -> Result<()> {
        pg::psql(
            main,
            "CREATE TABLE bench_data (payload text); CREATE TABLE bench_ticks (n int)",
        )?;
        self.say(format!(
            "{project}: loading {:.0} MB of random data",
            random as f64 / 1e6
        ));
        let start = Instant::now();
        let mut cmd = std::process::Command::new("bash");
        main.env(&mut cmd);
        let out = cmd
            .args(["-c", "set -o pipefail; head -c \"$1\" /dev/urandom | base64 -w \"$2\" | psql -X -q -v ON_ERROR_STOP=1 -c '\\copy bench_data FROM STDIN'"])
            .args(["bash", &random.to_string(), &(ROW_CHARS as u64).to_string()])
            .output()?;
        if !out.status.success() {
            bail!("loading the data: {}", String::from_utf8_lossy(&out.stderr));
        }
        pg::psql(main, "CHECKPOINT")?;
        let secs = start.elapsed().as_secs_f64();
        self.say(format!("{project}: data loaded in {secs:.0} s"));
        Ok(())
    }

    /// A bare `postgres` on main's data, stopped cleanly by velo: the native runtime's floor.
    fn native_floor(&mut self, s: &Subject) -> Result<()> {
        let main = format!("{}/main", s.project);
        s.velo.run(&["branch", "stop", &main])?;
        let pgdata = PathBuf::from(s.velo.volume_of(&main)?).join("pgdata");
        let who = RunAs::user(&self.o.native_user);
        let pgdata = pgdata.display().to_string();
        let (starts, stops) = self.bare_postgres(&who, &pgdata, &s.main)?;
        s.velo.run(&["branch", "start", &main])?;
        let note = "on the host, main's cleanly stopped data directory";
        self.add(s.backend, BARE_START, &s.label, "s", starts, note);
        let note = "SIGINT until the postmaster exits";
        self.add(s.backend, BARE_STOP, &s.label, "s", stops, note);
        Ok(())
    }
}

/// `velo project create` of `name` on `backend`, its data in `data`.
fn create_args<'a>(backend: Backend, data: &'a str, name: &'a str) -> [&'a str; 11] {
    [
        "project",
        "create",
        name,
        "--storage",
        backend.storage(),
        "--runtime",
        "native",
        "--data-dir",
        data,
        "--pg-version",
        "15",
    ]
}

/// Where a native backend's projects keep their data.
fn data_dir(dir: &Path) -> String {
    dir.join("data").display().to_string()
}

/// Fails early, with what to do, if the file system of `dir` (or the one under its loop
/// image) cannot hold a backend's data at `size`: a copy holds it six times over at its peak
/// (main, its WAL archive, a snapshot and a branch, and a reset's next snapshot and clone),
/// the others twice (main and its WAL archive) and some.
fn check_room(backend: Backend, dir: &Path, size: &str) -> Result<()> {
    let times = if backend == Backend::CopyNative {
        6.0
    } else {
        2.5
    };
    let need = bytes_of(size)? * times + 1e9;
    let mut places = vec![dir.display().to_string()];
    if let Some(image) = host::backing_file(dir) {
        let parent = Path::new(&image).parent().unwrap_or(Path::new("/"));
        places.push(parent.display().to_string());
    }
    for place in places {
        let free = host::fs_free(&place)?;
        if free < need {
            bail!(
                "{backend} at {size} needs about {:.0} GB free on the file system of {place}, which has {:.0} GB: free some space, or leave {size} out of --backend-sizes",
                need / 1e9,
                free / 1e9
            );
        }
    }
    Ok(())
}
