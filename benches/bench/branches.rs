//! What every backend is measured on: branch create (to `SELECT 1`, and step by step), a
//! fresh branch's space, branch delete, snapshot create and branch reset.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::figure::size_label;
use crate::host;
use crate::opts::Backend;
use crate::pg::{self, Conn};
use crate::steps::Breakdown;
use crate::velo::{Velo, branch_conn};
use crate::{Bench, figure};

/// A project with data, and how to measure its branches.
pub struct Subject {
    pub backend: Backend,
    pub velo: Velo,
    pub project: String,
    pub main: Conn,
    /// The size label, e.g. `100M (118 MB)`.
    pub label: String,
    pub runs: usize,
    /// Reset series, each from a settled state, and the resets in each.
    pub series: usize,
    pub resets: usize,
    /// A statement that changes the data, run before each reset.
    pub write: &'static str,
    pub space: Space,
}

/// How a fresh branch's space is measured.
pub enum Space {
    /// `zfs get used` of its dataset.
    ZfsUsed,
    /// What the file system holding this directory gained while the branch was made; the
    /// file system is the bench's own, so nothing else writes there.
    FileSystem(PathBuf),
}

pub const SPACE_ZFS: &str = "fresh branch ZFS used";
pub const SPACE_FS: &str = "fresh branch: file system space used";
pub const CREATE: &str = "branch create";
pub const RESET: &str = "branch reset";
pub const DELETE: &str = "branch delete";
pub const RESTORE: &str = "branch restore";
pub const SNAPSHOT: &str = "snapshot create (idle branch)";
pub const RESET_FIRST: &str = "branch reset, the 1st of the series";
pub const RESET_LAST: &str = "branch reset, the last of the series";

impl Subject {
    pub fn new(
        backend: Backend,
        velo: &Velo,
        project: &str,
        main: &Conn,
        size: &str,
        bytes: f64,
    ) -> Subject {
        Subject {
            backend,
            velo: velo.clone(),
            project: project.into(),
            main: main.clone(),
            label: size_label(size, bytes),
            runs: 1,
            series: 1,
            resets: 1,
            write: "",
            space: Space::ZfsUsed,
        }
    }
}

impl Bench {
    /// `runs` times: create a branch (timed to `SELECT 1`, step by step), measure its space
    /// (and on Docker its idle memory), delete it (timed). What the part before left to a
    /// background velo (a reset series' old generations) is done first.
    pub fn create_cycle(&mut self, s: &Subject) -> Result<()> {
        s.velo.settle()?;
        let (mut create, mut delete, mut space, mut memory) = (vec![], vec![], vec![], vec![]);
        let mut steps = Breakdown::default();
        for i in 0..s.runs {
            let b = format!("{}/c{i}", s.project);
            let before = self.space_before(s)?;
            let t = self.to_ready(&s.velo, &["branch", "create", &b], |out| {
                branch_conn(&s.main, &b, out)
            })?;
            create.push(t.total);
            steps.add(&t);
            space.push(self.space_after(s, &b, before)?);
            if s.backend == Backend::ZfsDocker {
                memory.push(idle_memory(&s.velo, &b)?);
            }
            delete.push(self.timed(&s.velo, &["branch", "delete", &b], None)?);
        }
        let (backend, label) = (s.backend, s.label.as_str());
        self.add(backend, CREATE, label, "s", create, "");
        self.add_breakdown(backend, CREATE, label, steps);
        self.add(backend, DELETE, label, "s", delete, "");
        match &s.space {
            Space::ZfsUsed => self.add(
                backend,
                SPACE_ZFS,
                label,
                "MB",
                space,
                "`zfs get used` just after create, while it runs",
            ),
            Space::FileSystem(_) => self.add(
                backend,
                SPACE_FS,
                label,
                "MB",
                space,
                "what the file system gained from before the create until just after it, while it runs",
            ),
        }
        if !memory.is_empty() {
            let note = "docker stats, 2 s after ready";
            self.add(
                backend,
                "idle branch container memory",
                label,
                "MB",
                memory,
                note,
            );
        }
        Ok(())
    }

    fn space_before(&self, s: &Subject) -> Result<f64> {
        match &s.space {
            Space::ZfsUsed => Ok(0.0),
            Space::FileSystem(dir) => {
                s.velo.settle()?;
                host::fs_used(dir)
            }
        }
    }

    /// MB a fresh branch took.
    fn space_after(&self, s: &Subject, branch: &str, before: f64) -> Result<f64> {
        let bytes = match &s.space {
            Space::ZfsUsed => {
                let dataset = s.velo.volume_of(branch)?;
                let used = host::run("zfs", &["get", "-H", "-p", "-o", "value", "used", &dataset])?;
                used.parse::<f64>()
                    .map_err(|e| anyhow!("zfs get used {dataset}: `{used}`: {e}"))?
            }
            Space::FileSystem(dir) => host::fs_used(dir)? - before,
        };
        Ok(bytes / 1e6)
    }

    /// Makes the branch `work`, times `runs` snapshots of it while idle and `series` series of
    /// `resets` resets with a write before each (step by step), each series begun once the
    /// background has destroyed what the one before retired, as after a pause in real use.
    /// The 1st and the last of each series go to rows of their own, so that their medians say
    /// whether a series climbs. Returns the branch and how to reach it.
    pub fn snapshots_and_resets(&mut self, s: &Subject) -> Result<(String, Conn)> {
        let b = format!("{}/work", s.project);
        let out = s.velo.run(&["branch", "create", &b])?;
        let conn = branch_conn(&s.main, &b, &out)?;
        let mut snap = Vec::new();
        for _ in 0..s.runs {
            snap.push(self.timed(&s.velo, &["snapshot", "create", &b], None)?);
        }
        let (backend, label) = (s.backend, s.label.as_str());
        self.add(backend, SNAPSHOT, label, "s", snap, "");
        let (mut series, mut steps) = (Vec::new(), Breakdown::default());
        for _ in 0..s.series {
            s.velo.settle()?;
            let mut resets = Vec::new();
            for _ in 0..s.resets {
                pg::psql(&conn, s.write)?;
                let t = self.to_ready(&s.velo, &["branch", "reset", &b], |_| Ok(conn.clone()))?;
                resets.push(t.total);
                steps.add(&t);
            }
            series.push(resets);
        }
        let by_position = by_position(&series);
        if let [first, .., last] = &by_position[..] {
            let n = format!("the {} of each series", ordinal(by_position.len()));
            self.add(backend, RESET_FIRST, label, "s", first.clone(), "");
            self.add(backend, RESET_LAST, label, "s", last.clone(), &n);
        }
        let note = reset_note(&by_position);
        self.add(backend, RESET, label, "s", series.concat(), &note);
        self.add_breakdown(backend, RESET, label, steps);
        Ok((b, conn))
    }
}

/// The samples of each position in a series: `[1st of every series, 2nd of every series, …]`.
fn by_position(series: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let len = series.iter().map(Vec::len).min().unwrap_or(0);
    (0..len)
        .map(|i| series.iter().map(|one| one[i]).collect())
        .collect()
}

/// "5 series of 10, a write before each; medians in order 0.28 0.29 … 0.30 s".
fn reset_note(by_position: &[Vec<f64>]) -> String {
    let series = by_position.first().map_or(0, Vec::len);
    let mut note = format!(
        "{series} series of {}, a write before each",
        by_position.len()
    );
    if by_position.len() > 1 {
        let medians: Vec<String> = by_position
            .iter()
            .map(|samples| format!("{:.2}", figure::median(samples)))
            .collect();
        note.push_str(&format!("; medians in order {} s", medians.join(" ")));
    }
    note
}

/// `1st`, `2nd`, `3rd`, `10th`, …
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// MB an idle branch's container uses, 2 s after it answered.
fn idle_memory(velo: &Velo, branch: &str) -> Result<f64> {
    std::thread::sleep(Duration::from_secs(2));
    let v = velo.json(&["branch", "get", branch, "--json"])?;
    let container = v["server"]
        .as_str()
        .ok_or_else(|| anyhow!("`velo branch get {branch} --json` names no server"))?;
    let text = host::run(
        "docker",
        &[
            "stats",
            "--no-stream",
            "--format",
            "{{.MemUsage}}",
            container,
        ],
    )?;
    let used = text.split('/').next().unwrap_or("").trim();
    parse_docker_size(used)
        .map(|b| b / 1e6)
        .ok_or_else(|| anyhow!("docker stats {container}: cannot read `{text}`"))
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
