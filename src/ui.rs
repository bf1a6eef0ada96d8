//! All of velo's output goes through [`Shell`]: step progress and notes on stderr, results
//! (tables, JSON, URLs) on stdout, so `velo … --json | jq` and scripts see only data.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use comfy_table::{Table, presets};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone)]
pub struct Shell {
    interactive: bool,
    /// Set by [`Shell::captured`]: everything goes here instead of stdout and stderr.
    captured: Option<std::sync::Arc<std::sync::Mutex<String>>>,
}

impl Default for Shell {
    fn default() -> Self {
        Self {
            interactive: std::io::stderr().is_terminal(),
            captured: None,
        }
    }
}

/// Formats a step's time the way the original tool's transcript did ("0.1s").
/// A step's time: milliseconds under a second (what most steps take, and what the benchmark
/// reads), else seconds to a tenth.
pub fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

impl Shell {
    /// Runs one named step, showing a spinner while it runs (on a terminal) and then
    /// `▸ <label> <time>`, or `✗ <label> <time>` if it failed.
    pub async fn step<T, E, F>(&self, label: &str, work: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        let bar = self.interactive.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("static template"),
            );
            bar.set_message(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(80));
            bar
        });
        let start = Instant::now();
        let result = work.await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let mark = if result.is_ok() { "▸" } else { "✗" };
        self.note(&format!("{mark} {label} {}", secs(start.elapsed())));
        result
    }

    /// A step whose work can be counted (tables dumped, say): a bar on a terminal, and then
    /// `▸ <label> <done>/<total> <unit> <time>`. `total` is what is expected, if known.
    pub fn progress(&self, label: &str, unit: &'static str, total: Option<u64>) -> Progress {
        let bar = self.interactive.then(|| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            let template = match total {
                Some(_) => "{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}",
                None => "{spinner} {msg} {pos} {elapsed}",
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.set_message(format!("{label} ({unit})"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            shell: self.clone(),
            bar,
            label: label.to_string(),
            unit,
            total,
            done: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    /// A shell that keeps everything it is given (for tests), readable with [`Shell::output`].
    pub fn captured() -> Self {
        Self {
            interactive: false,
            captured: Some(Default::default()),
        }
    }

    /// What a captured shell was given, stdout and stderr in order.
    pub fn output(&self) -> String {
        self.captured
            .as_ref()
            .map(|c| c.lock().expect("no panic while held").clone())
            .unwrap_or_default()
    }

    fn write(&self, to_stdout: bool, text: &str) {
        match &self.captured {
            Some(c) => {
                let mut c = c.lock().expect("no panic while held");
                c.push_str(text);
                c.push('\n');
            }
            None if to_stdout => {
                let _ = writeln!(std::io::stdout(), "{text}");
            }
            None => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
        }
    }

    /// A line of progress or explanation, on stderr.
    pub fn note(&self, text: &str) {
        self.write(false, text);
    }

    pub fn warn(&self, text: &str) {
        self.note(&format!("warning: {text}"));
    }

    /// A result, on stdout.
    pub fn out(&self, text: &str) {
        self.write(true, text);
    }

    /// A table of results, on stdout.
    pub fn table(&self, headers: &[&str], rows: Vec<Vec<String>>) {
        let mut table = Table::new();
        table.load_style(presets::UTF8_HORIZONTAL_ONLY);
        table.set_header(headers.to_vec());
        for row in rows {
            table.add_row(row);
        }
        self.out(&table.to_string());
    }

    /// Pretty JSON, on stdout.
    pub fn json(&self, value: &serde_json::Value) {
        self.out(&serde_json::to_string_pretty(value).expect("JSON values serialize"));
    }
}

/// A counted step in progress ([`Shell::progress`]). Shared with whatever reads the work's
/// output, on any thread.
pub struct Progress {
    shell: Shell,
    bar: Option<ProgressBar>,
    label: String,
    unit: &'static str,
    total: Option<u64>,
    done: AtomicU64,
    start: Instant,
}

impl Progress {
    /// How much is done now (never shown above the total).
    pub fn set(&self, done: u64) {
        let done = self.total.map_or(done, |t| done.min(t));
        self.done.store(done, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    /// Ends the step, all done if it succeeded, and prints its line.
    pub fn finish(self, ok: bool) {
        if ok && let Some(total) = self.total {
            self.set(total);
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let done = self.done.load(Ordering::Relaxed);
        let count = match self.total {
            Some(total) => format!("{done}/{total}"),
            None => done.to_string(),
        };
        let mark = if ok { "▸" } else { "✗" };
        self.shell.note(&format!(
            "{mark} {} {count} {} {}",
            self.label,
            self.unit,
            secs(self.start.elapsed())
        ));
    }
}

/// Bytes as a short human figure (KiB, MiB, GiB).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(19_456), "19.0 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn a_counted_step_says_how_much_it_did() {
        let shell = Shell::captured();
        let p = shell.progress("Dump shop", "tables", Some(4));
        p.set(9);
        p.finish(false);
        shell
            .progress("Restore shop", "tables", Some(4))
            .finish(true);
        let open = shell.progress("Dump all", "tables", None);
        open.set(3);
        open.finish(true);
        let out = shell.output();
        assert!(out.contains("✗ Dump shop 4/4 tables "), "{out}");
        assert!(out.contains("▸ Restore shop 4/4 tables "), "{out}");
        assert!(out.contains("▸ Dump all 3 tables "), "{out}");
    }

    #[test]
    fn step_times() {
        assert_eq!(secs(Duration::from_micros(149_900)), "149ms");
        assert_eq!(secs(Duration::from_millis(1250)), "1.2s");
    }
}
