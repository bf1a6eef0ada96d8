//! All of velo's output goes through [`Shell`]: step progress and notes on stderr, results
//! (tables, JSON, URLs) on stdout, so `velo … --json | jq` and scripts see only data. Marks
//! (▸ ✓ ✗) and box-drawing tables become plain ASCII on a stream that is not a terminal, or
//! when `NO_COLOR` or `TERM=dumb` asks; `--quiet` leaves results, warnings and errors.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfy_table::{Table, presets};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone)]
pub struct Shell {
    /// Marks and tables on stdout may use Unicode (a terminal that is not `dumb`, no
    /// `NO_COLOR`); otherwise they are plain ASCII, for logs, pipes and cron mail.
    fancy_out: bool,
    /// The same for stderr (steps, notes, warnings).
    fancy_err: bool,
    /// `--quiet`: no steps, no notes; results, warnings and errors only.
    quiet: bool,
    /// Spinners and progress bars, drawn together on a terminal's stderr; `None` elsewhere.
    bars: Option<MultiProgress>,
    /// Set by [`Shell::captured`]: everything goes here instead of stdout and stderr.
    captured: Option<Arc<Mutex<String>>>,
}

impl Default for Shell {
    fn default() -> Self {
        Self::new(false)
    }
}

/// A mark before a line: a step done, a check passed, a warning, a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Step,
    Ok,
    Warn,
    Fail,
}

impl Mark {
    /// The mark in Unicode, or in plain ASCII.
    pub fn glyph(self, fancy: bool) -> &'static str {
        match (self, fancy) {
            (Mark::Step, true) => "▸",
            (Mark::Step, false) => "-",
            (Mark::Ok, true) => "✓",
            (Mark::Ok, false) => "ok",
            (Mark::Warn, _) => "!",
            (Mark::Fail, true) => "✗",
            (Mark::Fail, false) => "FAIL",
        }
    }
}

/// Whether the environment asks for plain output everywhere (`NO_COLOR`, `TERM=dumb`).
fn plain_asked() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    no_color || std::env::var_os("TERM").is_some_and(|t| t == "dumb")
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
    /// A shell for this process's stdout and stderr; `quiet` keeps only results, warnings and
    /// errors.
    pub fn new(quiet: bool) -> Self {
        let plain = plain_asked();
        let fancy_err = !plain && std::io::stderr().is_terminal();
        Self {
            fancy_out: !plain && std::io::stdout().is_terminal(),
            fancy_err,
            quiet,
            bars: (fancy_err && !quiet)
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            captured: None,
        }
    }

    /// A shell that keeps everything it is given (for tests), readable with [`Shell::output`].
    pub fn captured() -> Self {
        Self {
            fancy_out: false,
            fancy_err: false,
            quiet: false,
            bars: None,
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

    /// Runs one named step, showing a spinner while it runs (on a terminal) and then
    /// `▸ <label> <time>`, or `✗ <label> <time>` if it failed.
    pub async fn step<T, E, F>(&self, label: &str, work: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new_spinner());
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
        let mark = if result.is_ok() {
            Mark::Step
        } else {
            Mark::Fail
        };
        self.note_marked(mark, &format!("{label} {}", secs(start.elapsed())));
        result
    }

    /// A download to show: a bar of parts and bytes on a terminal, a line per finished part
    /// elsewhere, and at the end a step's line.
    pub fn transfer(&self, label: &str) -> Transfer {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::no_length());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {elapsed}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Transfer {
            shell: self.clone(),
            label: label.to_string(),
            bar,
            parts_done: 0,
        }
    }

    /// A step whose work can be counted (tables dumped, say): a bar on a terminal, and then
    /// `▸ <label> <done>/<total> <unit> <time>`. `total` is what is expected, if known.
    pub fn progress(&self, label: &str, unit: &'static str, total: Option<u64>) -> Progress {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::with_draw_target(
                total,
                ProgressDrawTarget::hidden(),
            ));
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
            quarters: AtomicU64::new(0),
            start: Instant::now(),
        }
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
            None => match &self.bars {
                Some(bars) => bars.suspend(|| {
                    let _ = writeln!(std::io::stderr(), "{text}");
                }),
                None => {
                    let _ = writeln!(std::io::stderr(), "{text}");
                }
            },
        }
    }

    /// Whether results go to a terminal (not a pipe, a file or a test's capture): tables may
    /// then use box-drawing characters.
    pub fn stdout_is_terminal(&self) -> bool {
        self.captured.is_none() && std::io::stdout().is_terminal()
    }

    /// A line of progress or explanation, on stderr (not with `--quiet`).
    pub fn note(&self, text: &str) {
        if !self.quiet {
            self.write(false, text);
        }
    }

    /// A note with a mark before it.
    pub fn note_marked(&self, mark: Mark, text: &str) {
        self.note(&format!("{} {text}", mark.glyph(self.fancy_err)));
    }

    /// A warning, on stderr (also with `--quiet`).
    pub fn warn(&self, text: &str) {
        self.write(false, &format!("warning: {text}"));
    }

    /// An error line, on stderr, always.
    pub fn error(&self, text: &str) {
        self.write(false, text);
    }

    /// A result, on stdout.
    pub fn out(&self, text: &str) {
        self.write(true, text);
    }

    /// A result with a mark before it.
    pub fn out_marked(&self, mark: Mark, text: &str) {
        self.out(&format!("{} {text}", self.out_glyph(mark)));
    }

    /// A mark as results on stdout show it.
    pub fn out_glyph(&self, mark: Mark) -> &'static str {
        mark.glyph(self.fancy_out)
    }

    /// A table of results, on stdout.
    pub fn table(&self, headers: &[&str], rows: Vec<Vec<String>>) {
        let mut table = Table::new();
        table.load_style(if self.fancy_out {
            presets::UTF8_HORIZONTAL_ONLY
        } else {
            presets::ASCII_HORIZONTAL_ONLY
        });
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

/// A download in progress (see [`Shell::transfer`]).
pub struct Transfer {
    shell: Shell,
    label: String,
    bar: Option<ProgressBar>,
    parts_done: usize,
}

impl Transfer {
    /// `parts_done` of `parts` finished; `bytes` of `total` bytes.
    pub fn update(&mut self, parts_done: usize, parts: usize, bytes: u64, total: u64) {
        let counted = format!("{parts_done} of {parts} layers");
        match &self.bar {
            Some(bar) => {
                if total > 0 {
                    bar.set_length(total);
                    bar.set_position(bytes.min(total));
                }
                bar.set_message(format!("{} {counted}", self.label));
            }
            // A line per finished layer once there are bytes to tell of (layers the host has
            // already finish at once).
            None if parts_done > self.parts_done && total > 0 => self.shell.note(&format!(
                "  {}: {counted}, {} of {}",
                self.label,
                human_bytes(bytes),
                human_bytes(total)
            )),
            None => {}
        }
        self.parts_done = parts_done;
    }

    /// Ends the display: `▸ <label> <time>` or `✗ …`, like a step.
    pub fn finish(self, ok: bool, took: Duration) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let mark = if ok { Mark::Step } else { Mark::Fail };
        self.shell
            .note_marked(mark, &format!("{} {}", self.label, secs(took)));
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
    /// Off a terminal: the quarters of the total already told.
    quarters: AtomicU64,
    start: Instant,
}

impl Progress {
    /// How much is done now (never shown above the total). Off a terminal, a plain line each
    /// time another quarter of a known total is done (the last one is [`Progress::finish`]'s).
    pub fn set(&self, done: u64) {
        let done = self.total.map_or(done, |t| done.min(t));
        self.done.store(done, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let Some(total) = self.total.filter(|t| *t > 0 && done < *t) else {
            return;
        };
        let quarter = done * 4 / total;
        if self.quarters.fetch_max(quarter, Ordering::Relaxed) < quarter {
            self.shell
                .note(&format!("  {}: {done}/{total} {}", self.label, self.unit));
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
        let mark = if ok { Mark::Step } else { Mark::Fail };
        self.shell.note_marked(
            mark,
            &format!(
                "{} {count} {} {}",
                self.label,
                self.unit,
                secs(self.start.elapsed())
            ),
        );
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
    fn marks_degrade_to_ascii() {
        let plain: String = [Mark::Step, Mark::Ok, Mark::Warn, Mark::Fail]
            .iter()
            .map(|m| m.glyph(false))
            .collect();
        assert!(plain.is_ascii(), "{plain}");
        assert_eq!(Mark::Ok.glyph(true), "✓");
    }

    #[test]
    fn a_captured_shell_is_plain() {
        let shell = Shell::captured();
        shell.out_marked(Mark::Ok, "fine");
        shell.table(&["A", "B"], vec![vec!["1".into(), "2".into()]]);
        let out = shell.output();
        assert!(out.starts_with("ok fine\n"), "{out}");
        assert!(out.is_ascii(), "{out}");
    }

    #[tokio::test]
    async fn quiet_keeps_results_warnings_and_errors() {
        let shell = Shell {
            quiet: true,
            ..Shell::captured()
        };
        shell.step("Work", async { Ok::<_, ()>(()) }).await.unwrap();
        shell.note("a note");
        shell.warn("careful");
        shell.error("error: bad");
        shell.out("result");
        assert_eq!(shell.output(), "warning: careful\nerror: bad\nresult\n");
    }

    #[test]
    fn transfers_print_a_line_per_downloaded_layer_off_a_terminal() {
        let shell = Shell::captured();
        let mut t = shell.transfer("Pull x:1");
        t.update(1, 1, 0, 0);
        t.update(1, 2, 512, 2048);
        t.update(2, 2, 2048, 2048);
        t.finish(true, Duration::from_millis(1500));
        assert_eq!(
            shell.output(),
            "  Pull x:1: 2 of 2 layers, 2.0 KiB of 2.0 KiB\n- Pull x:1 1.5s\n"
        );
    }

    #[test]
    fn a_counted_step_says_how_much_it_did() {
        let shell = Shell::captured();
        let p = shell.progress("Dump shop", "tables", Some(4));
        p.set(1);
        p.set(1);
        p.set(9);
        p.finish(false);
        shell
            .progress("Restore shop", "tables", Some(4))
            .finish(true);
        let open = shell.progress("Dump all", "tables", None);
        open.set(3);
        open.finish(true);
        let out = shell.output();
        assert!(
            out.starts_with("  Dump shop: 1/4 tables\nFAIL Dump shop 4/4 tables "),
            "{out}"
        );
        assert!(out.contains("- Restore shop 4/4 tables "), "{out}");
        assert!(out.contains("- Dump all 3 tables "), "{out}");
    }

    #[test]
    fn step_times() {
        assert_eq!(secs(Duration::from_micros(149_900)), "149ms");
        assert_eq!(secs(Duration::from_millis(1250)), "1.2s");
    }
}
