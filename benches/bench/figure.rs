//! One measured figure (a row of the results) and how values are written.

use serde::Serialize;

use crate::opts::Backend;

/// What a row cannot beat on this machine: another row's median, named.
#[derive(Serialize, Clone)]
pub struct Floor {
    pub name: String,
    pub median: f64,
}

#[derive(Serialize)]
pub struct Figure {
    pub name: String,
    /// storage+runtime, e.g. `zfs+docker`.
    pub backend: String,
    /// The data it was measured on: a size label such as `100M (118 MB)`, `empty`, or a count.
    pub size: String,
    pub unit: &'static str,
    pub samples: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// Filled in when the results are written (`report::annotate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<Floor>,
    /// The median of the same row in the `--before` run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<f64>,
    /// Issue 13's target and whether the median meets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Figure {
    /// A figure of at least one sample.
    pub fn new(
        name: &str,
        backend: Backend,
        size: &str,
        unit: &'static str,
        samples: Vec<f64>,
        note: &str,
    ) -> Figure {
        Figure {
            name: name.into(),
            backend: backend.to_string(),
            size: size.into(),
            unit,
            median: median(&samples),
            min: samples.iter().copied().fold(f64::INFINITY, f64::min),
            max: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            samples,
            note: note.into(),
            floor: None,
            before: None,
            target: None,
        }
    }

    /// The size as the command line named it (`100M` of `100M (118 MB)`), which stays the same
    /// from run to run while the measured bytes do not.
    pub fn size_key(&self) -> &str {
        size_key(&self.size)
    }

    /// The figure's one-line summary for the progress output.
    pub fn summary(&self) -> String {
        format!(
            "{} [{}, {}]: median {} (min {}, max {}, {} runs)",
            self.name,
            self.backend,
            self.size,
            fmt_value(self.median, self.unit),
            fmt_value(self.min, self.unit),
            fmt_value(self.max, self.unit),
            self.samples.len()
        )
    }
}

pub fn size_key(size: &str) -> &str {
    size.split(" (").next().unwrap_or(size)
}

/// A size label with the bytes measured: `100M (118 MB)`.
pub fn size_label(size: &str, bytes: f64) -> String {
    format!("{size} ({:.0} MB)", bytes / 1e6)
}

/// The middle sample, or the mean of the middle two; at least one sample.
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

pub fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "s" if v < 10.0 => format!("{v:.2} s"),
        "s" => format!("{v:.1} s"),
        "tps" => format!("{v:.0} tps"),
        _ => format!("{v:.1} {unit}"),
    }
}
