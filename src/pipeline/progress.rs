//! What a run shows while it works: on a terminal, one overall bar (cases, slices/s, ETA) and a
//! bar for the volume in the model; otherwise one plain line per finished case on stderr.
//! `--quiet` shows errors only (failed cases) and the safety warnings that must reach the
//! user. With `--json`, one JSON object per finished case on stdout; with `--statistics`, a
//! per-label table per case on stdout (both unaffected by `--quiet`: they are results).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::cases::Case;
use super::engine::{CaseOutcome, CaseStatus, Observer};
use super::report::CaseRecord;
use super::stats::format_table;

/// How to show progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    Bars,
    Lines,
    /// `--quiet`: failed cases and safety warnings only.
    Quiet,
}

impl Display {
    /// Quiet when asked; bars on a terminal; plain lines otherwise.
    pub fn choose(quiet: bool) -> Display {
        if quiet {
            Display::Quiet
        } else if std::io::stderr().is_terminal() {
            Display::Bars
        } else {
            Display::Lines
        }
    }
}

pub struct Progress {
    display: Display,
    json: bool,
    statistics: bool,
    multi: MultiProgress,
    overall: ProgressBar,
    volume: Mutex<Option<ProgressBar>>,
    slices: AtomicU64,
    start: Instant,
    total: usize,
    done: AtomicU64,
    /// The demo-model warning banner was printed (later cases get one line).
    demo_warned: AtomicBool,
}

impl Progress {
    pub fn new(display: Display, total_cases: usize, json: bool, statistics: bool) -> Progress {
        let multi = MultiProgress::with_draw_target(match display {
            Display::Bars => ProgressDrawTarget::stderr(),
            Display::Lines | Display::Quiet => ProgressDrawTarget::hidden(),
        });
        let overall = multi.add(ProgressBar::new(total_cases as u64));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {pos}/{len} cases  {msg}  elapsed {elapsed}, ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        overall.set_prefix("run");
        Progress {
            display,
            json,
            statistics,
            multi,
            overall,
            volume: Mutex::new(None),
            slices: AtomicU64::new(0),
            start: Instant::now(),
            total: total_cases,
            done: AtomicU64::new(0),
            demo_warned: AtomicBool::new(false),
        }
    }

    /// An informational line on stderr, without breaking the bars; nothing with `--quiet`.
    pub fn note(&self, line: &str) {
        match self.display {
            Display::Bars => {
                let _ = self.multi.println(line);
            }
            Display::Lines => eprintln!("{line}"),
            Display::Quiet => {}
        }
    }

    /// A safety warning on stderr: printed in every display mode, `--quiet` included, and
    /// above the bars on a terminal.
    pub fn warn(&self, text: &str) {
        match self.display {
            Display::Bars => {
                let _ = self.multi.println(text);
            }
            Display::Lines | Display::Quiet => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{text}");
                let _ = err.flush();
            }
        }
    }

    /// Report cases that were not run (resume) the same way as finished ones.
    pub fn emit_skipped(&self, outcome: &CaseOutcome) {
        self.emit_stdout(outcome);
    }

    fn rate(&self) -> f64 {
        let s = self.start.elapsed().as_secs_f64();
        if s > 0.0 {
            self.slices.load(Ordering::Relaxed) as f64 / s
        } else {
            0.0
        }
    }

    fn emit_stdout(&self, outcome: &CaseOutcome) {
        let mut out = std::io::stdout().lock();
        if self.json {
            if let Ok(line) = serde_json::to_string(&CaseRecord::from(outcome)) {
                let _ = writeln!(out, "{line}");
            }
        } else if self.statistics && matches!(outcome.status, CaseStatus::Written) {
            let _ = write!(
                out,
                "{}",
                format_table(&outcome.case.id, &outcome.details.stats)
            );
        }
        let _ = out.flush();
    }

    pub fn finish(&self) {
        self.overall.finish_and_clear();
    }
}

impl Observer for Progress {
    fn demo_input_warning(&self, case: &Case) {
        if self.demo_warned.swap(true, Ordering::SeqCst) {
            self.warn(&super::demo::short_warning(&case.id));
        } else {
            self.warn(&super::demo::banner(&case.id, &case.input));
        }
    }

    fn case_started(&self, case: &Case, slices: usize) {
        if self.display != Display::Bars {
            return;
        }
        let bar = self.multi.add(ProgressBar::new(slices as u64));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} slices  {per_sec}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(truncate(&case.id, 8));
        if let Some(old) = self.volume.lock().expect("progress lock").replace(bar) {
            old.finish_and_clear();
        }
    }

    fn slices_done(&self, _case: &Case, n: usize) {
        self.slices.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(b) = self.volume.lock().expect("progress lock").as_ref() {
            b.inc(n as u64);
        }
        self.overall
            .set_message(format!("{:.1} slices/s", self.rate()));
    }

    fn case_finished(&self, o: &CaseOutcome) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(b) = self.volume.lock().expect("progress lock").take() {
            b.finish_and_clear();
        }
        self.overall.inc(1);
        let secs = o.details.timings.wall.as_secs_f64();
        let line = match &o.status {
            CaseStatus::Written => format!(
                "[{n}/{}] {}: {} slices in {secs:.1} s ({:.1} slices/s) -> {}",
                self.total,
                o.case.id,
                o.details.slices,
                o.details.slices as f64 / secs.max(1e-9),
                o.case
                    .outputs
                    .iter()
                    .map(|(_, p)| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            CaseStatus::Skipped => format!("[{n}/{}] {}: skipped", self.total, o.case.id),
            CaseStatus::Failed(e) => format!(
                "[{n}/{}] {}: FAILED ({} stage): {}",
                self.total, o.case.id, e.stage, e.message
            ),
        };
        if matches!(o.status, CaseStatus::Failed(_)) {
            // An error: shown in every mode, `--quiet` included.
            self.warn(&line);
        } else {
            self.note(&line);
        }
        self.emit_stdout(o);
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n - 1).collect();
        format!("{t}~")
    }
}
