//! velo's per-step timings, read from its stderr: every step ends with a line
//! `<mark> <label> <N>ms` (or `<x.y>s` from a second on), where the mark is one character
//! (`▸` today, an ASCII one may come). The bench notes when each line arrived, so steps that
//! run at the same time (a reset stops the old server while it clones) are not counted twice.

use std::collections::BTreeMap;

/// One step of one velo command.
#[derive(Clone, Debug)]
pub struct Step {
    pub label: String,
    /// When it ended and how long it took, in seconds since the command was spawned.
    pub end: f64,
    pub secs: f64,
}

/// Reads a step line: a single mark character, a space, the label, a space and the time.
pub fn parse(line: &str) -> Option<(String, f64)> {
    let mut chars = line.trim_end().chars();
    let mark = chars.next()?;
    if mark.is_alphanumeric() || mark.is_whitespace() {
        return None;
    }
    let rest = chars.as_str().strip_prefix(' ')?;
    let (label, time) = rest.rsplit_once(' ')?;
    let secs = match time.strip_suffix("ms") {
        Some(ms) => ms.parse::<u64>().ok()? as f64 / 1000.0,
        None => time.strip_suffix('s')?.parse::<f64>().ok()?,
    };
    let label = general(label.trim());
    (!label.is_empty()).then_some((label, secs))
}

/// A label without the counts of a progress line (`Copy 122120/122120 kB`, `Dump postgres
/// 4/4 tables`), which differ from run to run and size to size: `Copy N/N kB`.
fn general(label: &str) -> String {
    let count = |w: &str| {
        w.split_once('/').is_some_and(|(a, b)| {
            [a, b]
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
        })
    };
    label
        .split(' ')
        .map(|w| if count(w) { "N/N" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The seconds covered by at least one step, up to `until`.
pub fn covered(steps: &[Step], until: f64) -> f64 {
    let mut spans: Vec<(f64, f64)> = steps
        .iter()
        .map(|s| ((s.end - s.secs).max(0.0), s.end.min(until)))
        .filter(|(a, b)| b > a)
        .collect();
    spans.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (mut total, mut reach) = (0.0, 0.0_f64);
    for (a, b) in spans {
        let a = a.max(reach);
        if b > a {
            total += b - a;
            reach = b;
        }
    }
    total
}

/// The steps of one timed command and what surrounded them.
pub struct Timeline {
    pub steps: Vec<Step>,
    /// From spawning velo until it exited.
    pub velo: f64,
    /// From spawning velo until the bench's own `SELECT 1` answered.
    pub total: f64,
}

/// Samples per row of repeated timed commands: each step's label, then velo's own work (its
/// time less the steps: process start, state writes, checks between the steps) and the
/// bench's connection after velo exited.
#[derive(Default)]
pub struct Breakdown {
    rows: BTreeMap<String, Vec<f64>>,
    /// Labels in the order velo first printed them.
    order: Vec<String>,
}

pub const OWN_WORK: &str = "velo's own work";
pub const CONNECT: &str = "the bench's SELECT 1 after velo exited";

impl Breakdown {
    pub fn add(&mut self, t: &Timeline) {
        let mut this_run: BTreeMap<&str, f64> = BTreeMap::new();
        for s in &t.steps {
            *this_run.entry(&s.label).or_default() += s.secs;
            if !self.order.contains(&s.label) {
                self.order.push(s.label.clone());
            }
        }
        for (label, secs) in this_run {
            self.rows.entry(label.to_string()).or_default().push(secs);
        }
        let own = (t.velo - covered(&t.steps, t.velo)).max(0.0);
        self.rows.entry(OWN_WORK.into()).or_default().push(own);
        let connect = (t.total - t.velo).max(0.0);
        self.rows.entry(CONNECT.into()).or_default().push(connect);
    }

    /// The rows in velo's order, then velo's own work and the connection.
    pub fn rows(self) -> Vec<(String, Vec<f64>)> {
        let mut rows = self.rows;
        self.order
            .iter()
            .chain(&[OWN_WORK.to_string(), CONNECT.to_string()])
            .filter_map(|label| rows.remove_entry(label))
            .collect()
    }
}
