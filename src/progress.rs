//! Progress reporting for long phases. The library reports through [`Progress`]; the CLI draws indicatif
//! bars on a terminal and [`LogLines`] when stderr is a file or pipe (batch jobs, `nohup`); tests pass
//! [`Silent`].

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Receives progress of one phase at a time: `start`, any number of `advance`, then `finish`.
pub trait Progress: Sync {
    /// A new phase named `phase` with `total` units of work begins.
    fn start(&self, phase: &str, total: u64);
    /// `units` more units of the current phase are done.
    fn advance(&self, units: u64);
    /// The current phase is over.
    fn finish(&self);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _phase: &str, _total: u64) {}
    fn advance(&self, _units: u64) {}
    fn finish(&self) {}
}

/// Draws one indicatif bar per phase on stderr (hidden when stderr is not a terminal).
#[derive(Default)]
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    /// Bars on stderr; indicatif hides them by itself when stderr is not a terminal.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Progress for Bars {
    fn start(&self, phase: &str, total: u64) {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(phase.to_string());
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(old) = slot.replace(bar) {
                old.finish_and_clear();
            }
        }
    }

    fn advance(&self, units: u64) {
        if let Ok(slot) = self.bar.lock() {
            if let Some(bar) = slot.as_ref() {
                bar.inc(units);
            }
        }
    }

    fn finish(&self) {
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(bar) = slot.take() {
                bar.finish_and_clear();
            }
        }
    }
}

/// The reporter the CLI uses: bars on a terminal, plain lines otherwise.
pub fn for_stderr() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bars::new())
    } else {
        Box::new(LogLines::new(Duration::from_secs(60)))
    }
}

/// One plain line per phase start and end on stderr, and one every `interval` in between
/// (`progress: <phase> <done>/<total> (<pct> %), <elapsed> s elapsed, eta <s> s`), for logs of long jobs.
pub struct LogLines {
    interval: Duration,
    state: Mutex<Option<Phase>>,
}

/// The phase a [`LogLines`] is reporting.
struct Phase {
    name: String,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
}

impl LogLines {
    /// Lines at most every `interval` within a phase.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(None),
        }
    }
}

impl Phase {
    /// The status line of this phase now.
    fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let frac = if self.total > 0 {
            self.done as f64 / self.total as f64
        } else {
            1.0
        };
        let eta = if frac > 0.0 {
            format!("{:.0} s", elapsed * (1.0 - frac) / frac)
        } else {
            "?".into()
        };
        format!(
            "progress: {} {}/{} ({:.1} %), {elapsed:.0} s elapsed, eta {eta}",
            self.name,
            self.done,
            self.total,
            100.0 * frac
        )
    }
}

impl Progress for LogLines {
    fn start(&self, phase: &str, total: u64) {
        let now = Instant::now();
        eprintln!("progress: {phase} started ({total} units)");
        if let Ok(mut slot) = self.state.lock() {
            *slot = Some(Phase {
                name: phase.to_string(),
                total,
                done: 0,
                started: now,
                last_line: now,
            });
        }
    }

    fn advance(&self, units: u64) {
        if let Ok(mut slot) = self.state.lock() {
            if let Some(p) = slot.as_mut() {
                p.done = p.done.saturating_add(units);
                if p.last_line.elapsed() >= self.interval {
                    p.last_line = Instant::now();
                    eprintln!("{}", p.line());
                }
            }
        }
    }

    fn finish(&self) {
        if let Ok(mut slot) = self.state.lock() {
            if let Some(p) = slot.take() {
                eprintln!(
                    "progress: {} done in {:.1} s",
                    p.name,
                    p.started.elapsed().as_secs_f64()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_states_the_fraction_done_and_an_eta() {
        let started = Instant::now() - Duration::from_secs(10);
        let phase = Phase {
            name: "kernel".into(),
            total: 8,
            done: 2,
            started,
            last_line: started,
        };
        let line = phase.line();
        assert!(
            line.starts_with("progress: kernel 2/8 (25.0 %), 10 s elapsed, eta 3"),
            "{line}"
        );
        let none_done = Phase { done: 0, ..phase };
        assert!(none_done.line().ends_with("eta ?"));
    }
}
