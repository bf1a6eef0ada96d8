//! What a row is compared with besides its floor: an earlier run's median (`--before`: its
//! bench.json, or a docs/benchmarks.md) and issue 13's target.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::branches::{CREATE, DELETE, RESET, RESET_FIRST, RESET_LAST, RESTORE};
use crate::figure::{Figure, fmt_value, size_key};
use crate::opts::Backend;
use crate::project::PROJECT_CREATE;

/// A row of an earlier run.
#[derive(Deserialize)]
pub struct Past {
    pub name: String,
    /// Runs before the backends were measured have none: they were all ZFS + Docker.
    #[serde(default = "zfs_docker")]
    pub backend: String,
    pub size: String,
    pub median: f64,
}

fn zfs_docker() -> String {
    Backend::ZfsDocker.to_string()
}

/// The rows of an earlier run: a bench.json (`.json`), or the tables of a
/// docs/benchmarks.md, where a row's first appearance counts (the full run comes first).
pub fn read(path: &Path) -> Result<Vec<Past>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        #[derive(Deserialize)]
        struct Run {
            figures: Vec<Past>,
        }
        let run: Run = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a bench.json", path.display()))?;
        return Ok(run.figures);
    }
    let rows = from_markdown(&text);
    if rows.is_empty() {
        bail!(
            "{}: no table with the columns operation, data and median",
            path.display()
        );
    }
    Ok(rows)
}

/// The rows of every table with the columns `operation`, `data` and `median` (and maybe
/// `backend`), first appearances only.
fn from_markdown(text: &str) -> Vec<Past> {
    let mut rows: Vec<Past> = Vec::new();
    let mut columns: Option<Vec<String>> = None;
    for line in text.lines() {
        if !line.starts_with('|') {
            columns = None;
            continue;
        }
        let cells = cells(line);
        let Some(names) = &columns else {
            columns = Some(cells);
            continue;
        };
        let get = |name: &str| {
            let i = names.iter().position(|c| c == name)?;
            cells.get(i).cloned()
        };
        let (Some(name), Some(size), Some(median)) = (get("operation"), get("data"), get("median"))
        else {
            continue;
        };
        let Some(median) = median.split(' ').next().and_then(|m| m.parse().ok()) else {
            continue;
        };
        let backend = get("backend").unwrap_or_else(zfs_docker);
        let seen = rows.iter().any(|p| {
            p.name == name && p.backend == backend && size_key(&p.size) == size_key(&size)
        });
        if !seen {
            rows.push(Past {
                name,
                backend,
                size,
                median,
            });
        }
    }
    rows
}

/// A table row's cells, `\|` read as a `|` inside a cell.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner
        .replace("\\|", "\u{0}")
        .split('|')
        .map(|c| c.trim().replace('\u{0}', "|"))
        .collect()
}

/// Issue 13's target of a row, as the report writes it: `≤ 0.40 s ✓`.
pub fn target(f: &Figure, figures: &[Figure]) -> Option<String> {
    let limit = match f.name.as_str() {
        PROJECT_CREATE => 1.0,
        CREATE => 0.4,
        RESET | RESET_FIRST | RESTORE => 0.5,
        RESET_LAST => return Some(tenth_target(f, figures)),
        DELETE => 0.3,
        "20 branch creates at once, all ready" => 6.0,
        _ => return None,
    };
    Some(format!(
        "≤ {} {}",
        fmt_value(limit, "s"),
        mark(f.median <= limit)
    ))
}

/// The last reset of a series: at most 0.5 s, and within 10 % of the first.
fn tenth_target(f: &Figure, figures: &[Figure]) -> String {
    let first = figures
        .iter()
        .find(|g| g.name == RESET_FIRST && g.backend == f.backend && g.size_key() == f.size_key());
    let met = f.median <= 0.5 && first.is_some_and(|g| f.median <= g.median * 1.1);
    format!("≤ 0.50 s and ≤ 1.1 × the 1st {}", mark(met))
}

fn mark(met: bool) -> &'static str {
    if met { "✓" } else { "✗" }
}
