//! The bench's command line: what to measure, where, and how often.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context as _, Result, anyhow, bail};

/// Roughly 15 MB of data per pgbench scale unit (table plus its primary key).
const BYTES_PER_SCALE: f64 = 15.0e6;

/// A storage and runtime pair the bench measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Backend {
    ZfsDocker,
    BtrfsNative,
    ReflinkNative,
    CopyNative,
}

impl Backend {
    pub const ALL: [Backend; 4] = [
        Backend::ZfsDocker,
        Backend::BtrfsNative,
        Backend::ReflinkNative,
        Backend::CopyNative,
    ];

    /// The name on the command line.
    pub fn arg(self) -> &'static str {
        match self {
            Backend::ZfsDocker => "zfs-docker",
            Backend::BtrfsNative => "btrfs-native",
            Backend::ReflinkNative => "reflink-native",
            Backend::CopyNative => "copy-native",
        }
    }

    /// `velo project create --storage` of a native backend.
    pub fn storage(self) -> &'static str {
        match self {
            Backend::ZfsDocker => "zfs",
            Backend::BtrfsNative => "btrfs",
            Backend::ReflinkNative => "reflink",
            Backend::CopyNative => "copy",
        }
    }
}

/// How the tables name a backend: storage + runtime.
impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runtime = if *self == Backend::ZfsDocker {
            "docker"
        } else {
            "native"
        };
        write!(f, "{}+{runtime}", self.storage())
    }
}

impl FromStr for Backend {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Backend> {
        Backend::ALL
            .into_iter()
            .find(|b| b.arg() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Backend::ALL.iter().map(|b| b.arg()).collect();
                anyhow!("unknown backend `{s}`; known: {}", known.join(", "))
            })
    }
}

/// A part of the run, for `--parts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Project create on ZFS + Docker, the first of an image and the usual one.
    Project,
    /// ZFS + Docker at each of `--sizes`.
    Sizes,
    /// pg_dump | pg_restore and CREATE DATABASE … TEMPLATE at each size (slow at 1 GB+).
    Alternatives,
    /// pgbench on main and on a branch at each size.
    Tps,
    /// Status and branch list with many branches, creates at once, and the Docker floors.
    List,
    /// The native backends at each of `--backend-sizes`.
    Backends,
    /// Project create from a running server (logical and physical) against a plain
    /// pg_dump | pg_restore, and branch create from a follower under load (issue 14).
    Import,
}

impl Part {
    pub const ALL: [Part; 7] = [
        Part::Project,
        Part::Sizes,
        Part::Alternatives,
        Part::Tps,
        Part::List,
        Part::Backends,
        Part::Import,
    ];

    fn arg(self) -> &'static str {
        match self {
            Part::Project => "project",
            Part::Sizes => "sizes",
            Part::Alternatives => "alternatives",
            Part::Tps => "tps",
            Part::List => "list",
            Part::Backends => "backends",
            Part::Import => "import",
        }
    }
}

impl FromStr for Part {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Part> {
        Part::ALL.into_iter().find(|p| p.arg() == s).ok_or_else(|| {
            let known: Vec<_> = Part::ALL.iter().map(|p| p.arg()).collect();
            anyhow!("unknown part `{s}`; known: {}", known.join(", "))
        })
    }
}

pub struct Opts {
    pub velo: PathBuf,
    /// The commit velo was built from, for the results.
    pub commit: String,
    pub home: PathBuf,
    pub pool: String,
    pub image: String,
    pub backends: Vec<Backend>,
    pub parts: Vec<Part>,
    /// Data sizes of the ZFS + Docker suite (pgbench data).
    pub sizes: Vec<String>,
    /// Data sizes of the native backends' suite.
    pub backend_sizes: Vec<String>,
    /// The size of the source server's data in the import part (pgbench data).
    pub import_size: String,
    pub runs: usize,
    /// Runs of the slow alternatives at sizes of 1 GB and more.
    pub alt_runs_large: usize,
    /// Runs on copy storage at sizes of 1 GB and more (each create copies the data twice).
    pub copy_runs_large: usize,
    pub list_counts: Vec<usize>,
    pub concurrency: Vec<usize>,
    pub pgbench_secs: u32,
    pub out: PathBuf,
    pub keep_data: bool,
    /// An earlier run's results, for the "before" column: its bench.json, or a
    /// docs/benchmarks.md whose first table of each row counts.
    pub before: Option<PathBuf>,
    /// The user who runs velo on the native runtime (which refuses root).
    pub native_user: String,
    pub btrfs_dir: PathBuf,
    pub reflink_dir: PathBuf,
    pub copy_dir: PathBuf,
}

const USAGE: &str = "usage: bench --velo PATH --home DIR --pool POOL --image IMAGE --out DIR
  --native-user USER --btrfs-dir DIR --reflink-dir DIR --copy-dir DIR
  [--backends zfs-docker,btrfs-native,reflink-native,copy-native]
  [--parts project,sizes,alternatives,tps,list,backends,import] [--sizes 100M,1G,5G|none]
  [--backend-sizes 100M,1G|none] [--import-size 1G] [--runs 5] [--alt-runs-large 1]
  [--copy-runs-large 1]
  [--list 1,10,50] [--concurrency 10,20] [--pgbench-secs 10] [--before bench.json|benchmarks.md]
  [--commit ID] [--keep-data] [--quick]
  --quick = --sizes 15M --backend-sizes 15M --import-size 15M --runs 2 --list 1,10
            --concurrency 5 --pgbench-secs 3";

impl Opts {
    fn defaults() -> Opts {
        Opts {
            velo: PathBuf::new(),
            commit: String::new(),
            home: PathBuf::new(),
            pool: String::new(),
            image: String::new(),
            backends: Backend::ALL.to_vec(),
            parts: Part::ALL.to_vec(),
            sizes: vec!["100M".into(), "1G".into(), "5G".into()],
            backend_sizes: vec!["100M".into(), "1G".into()],
            import_size: "1G".into(),
            runs: 5,
            alt_runs_large: 1,
            copy_runs_large: 1,
            list_counts: vec![1, 10, 50],
            concurrency: vec![10, 20],
            pgbench_secs: 10,
            out: PathBuf::new(),
            keep_data: false,
            before: None,
            native_user: String::new(),
            btrfs_dir: PathBuf::new(),
            reflink_dir: PathBuf::new(),
            copy_dir: PathBuf::new(),
        }
    }

    fn quick(&mut self) {
        self.sizes = vec!["15M".into()];
        self.backend_sizes = vec!["15M".into()];
        self.import_size = "15M".into();
        self.runs = 2;
        self.list_counts = vec![1, 10];
        self.concurrency = vec![5];
        self.pgbench_secs = 3;
    }

    pub fn parse() -> Result<Opts> {
        let mut o = Opts::defaults();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                // cargo bench passes --bench to every bench binary.
                "--bench" => continue,
                "--keep-data" => o.keep_data = true,
                "--quick" => o.quick(),
                _ => {
                    let v = args
                        .next()
                        .ok_or_else(|| anyhow!("{a} needs a value\n{USAGE}"))?;
                    o.set(&a, v)?;
                }
            }
        }
        o.check()?;
        Ok(o)
    }

    fn set(&mut self, name: &str, v: String) -> Result<()> {
        match name {
            "--velo" => self.velo = v.into(),
            "--commit" => self.commit = v,
            "--home" => self.home = v.into(),
            "--pool" => self.pool = v,
            "--image" => self.image = v,
            "--out" => self.out = v.into(),
            "--backends" => self.backends = list(&v)?,
            "--parts" => self.parts = list(&v)?,
            "--sizes" => self.sizes = sizes(&v),
            "--backend-sizes" => self.backend_sizes = sizes(&v),
            "--import-size" => self.import_size = v.trim().to_string(),
            "--runs" => self.runs = number(name, &v)?,
            "--alt-runs-large" => self.alt_runs_large = number(name, &v)?,
            "--copy-runs-large" => self.copy_runs_large = number(name, &v)?,
            "--list" => self.list_counts = list(&v)?,
            "--concurrency" => self.concurrency = list(&v)?,
            "--pgbench-secs" => self.pgbench_secs = number(name, &v)?,
            "--before" => self.before = Some(v.into()),
            "--native-user" => self.native_user = v,
            "--btrfs-dir" => self.btrfs_dir = v.into(),
            "--reflink-dir" => self.reflink_dir = v.into(),
            "--copy-dir" => self.copy_dir = v.into(),
            other => bail!("unknown option {other}\n{USAGE}"),
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        let missing = |s: &str| s.is_empty();
        if [&self.velo, &self.home, &self.out]
            .iter()
            .any(|p| p.as_os_str().is_empty())
            || missing(&self.pool)
            || missing(&self.image)
        {
            bail!("--velo, --home, --pool, --image and --out are required\n{USAGE}");
        }
        if self.native() && (missing(&self.native_user) || self.native_dirs_missing()) {
            bail!(
                "native backends need --native-user, --btrfs-dir, --reflink-dir and --copy-dir (scripts/bench.sh passes them)\n{USAGE}"
            );
        }
        if self.runs == 0 || self.copy_runs_large == 0 {
            bail!("--runs and --copy-runs-large must be at least 1");
        }
        for s in self.sizes.iter().chain(&self.backend_sizes) {
            bytes_of(s)?;
        }
        if self.runs_part(Part::Import) {
            bytes_of(&self.import_size)?;
        }
        if let Some(before) = self.before.as_ref().filter(|b| !b.is_file()) {
            bail!(
                "--before {}: no such file (give the bench.json of an earlier run)",
                before.display()
            );
        }
        Ok(())
    }

    fn native_dirs_missing(&self) -> bool {
        [&self.btrfs_dir, &self.reflink_dir, &self.copy_dir]
            .iter()
            .any(|p| p.as_os_str().is_empty())
    }

    /// Whether any native backend is measured.
    pub fn native(&self) -> bool {
        self.runs_part(Part::Backends) && self.backends.iter().any(|b| *b != Backend::ZfsDocker)
    }

    pub fn measures(&self, b: Backend) -> bool {
        self.backends.contains(&b)
    }

    pub fn runs_part(&self, p: Part) -> bool {
        self.parts.contains(&p)
    }

    /// The directory a native backend keeps its velo home and data in.
    pub fn dir_of(&self, b: Backend) -> &PathBuf {
        match b {
            Backend::BtrfsNative => &self.btrfs_dir,
            Backend::ReflinkNative => &self.reflink_dir,
            _ => &self.copy_dir,
        }
    }
}

fn number<T: FromStr>(name: &str, v: &str) -> Result<T> {
    v.trim()
        .parse()
        .map_err(|_| anyhow!("{name} {v}: not a number"))
}

fn list<T: FromStr>(v: &str) -> Result<Vec<T>>
where
    T::Err: fmt::Display,
{
    v.split(',')
        .map(|x| x.trim().parse().map_err(|e| anyhow!("`{x}`: {e}")))
        .collect()
}

fn sizes(v: &str) -> Vec<String> {
    if v == "none" {
        return Vec::new();
    }
    v.split(',').map(|s| s.trim().to_string()).collect()
}

/// The bytes of a size such as `100M` or `5G`.
pub fn bytes_of(size: &str) -> Result<f64> {
    let (n, unit) = size.split_at(size.len().saturating_sub(1));
    let n: f64 = n
        .parse()
        .with_context(|| format!("size `{size}`: want a number and M or G, e.g. 100M"))?;
    match unit {
        "M" => Ok(n * 1e6),
        "G" => Ok(n * 1e9),
        _ => bail!("size `{size}`: want M or G, e.g. 100M or 5G"),
    }
}

/// The pgbench scale for a size.
pub fn scale_of(size: &str) -> Result<u32> {
    Ok(((bytes_of(size)? / BYTES_PER_SCALE).round() as u32).max(1))
}
