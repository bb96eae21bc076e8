//! Progress reporting for long phases. The library reports through [`Progress`]; the CLI draws indicatif
//! bars on a terminal and [`LogLines`] when stderr is a file or pipe (batch jobs, `nohup`); tests pass
//! [`Silent`].

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Receives progress of one phase at a time: `start`, any number of `advance`, then `finish`.
pub trait Progress: Sync {
    /// A new phase named `phase` with `total` units of work begins.
    fn start(&self, phase: &str, total: u64);
    /// `units` more units of the current phase are done.
    fn advance(&self, units: u64);
    /// The current phase is over.
    fn finish(&self);
    /// A line for the user before a phase (a run's plan); `make` is called only by reporters that show it.
    fn note(&self, make: &dyn Fn() -> String) {
        let _ = make;
    }
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

    fn note(&self, make: &dyn Fn() -> String) {
        eprintln!("{}", make());
    }
}

/// The reporter the CLI uses: bars on a terminal, plain lines (a status line a minute) otherwise.
pub fn for_stderr() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bars::new())
    } else {
        Box::new(LogLines::new(Duration::from_secs(60)))
    }
}

/// One plain line per phase start and end on stderr, and a status line every `interval` while a phase runs
/// (`progress: <phase> <done>/<total> (<pct> %), <elapsed> s elapsed, eta <s> s`), printed by a heartbeat
/// thread so that phases whose units take many minutes (one MEMDET block of a large NTK) still show life.
pub struct LogLines {
    interval: Duration,
    state: Arc<Mutex<Ticker>>,
}

/// What the heartbeat thread reads: the running phase, if any, and which phase number it is.
#[derive(Default)]
struct Ticker {
    phase: Option<Phase>,
    generation: u64,
}

/// The phase a [`LogLines`] is reporting.
struct Phase {
    name: String,
    total: u64,
    done: u64,
    started: Instant,
}

impl LogLines {
    /// Status lines every `interval` within a phase.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Arc::new(Mutex::new(Ticker::default())),
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

/// Print `state`'s phase every `interval` until that phase (number `generation`) is over.
fn heartbeat(state: Arc<Mutex<Ticker>>, generation: u64, interval: Duration) {
    loop {
        std::thread::sleep(interval);
        let Ok(ticker) = state.lock() else { return };
        match &ticker.phase {
            Some(p) if ticker.generation == generation => eprintln!("{}", p.line()),
            _ => return,
        }
    }
}

impl Progress for LogLines {
    fn start(&self, phase: &str, total: u64) {
        eprintln!("progress: {phase} started ({total} units)");
        let generation = match self.state.lock() {
            Ok(mut ticker) => {
                ticker.generation += 1;
                ticker.phase = Some(Phase {
                    name: phase.to_string(),
                    total,
                    done: 0,
                    started: Instant::now(),
                });
                ticker.generation
            }
            Err(_) => return,
        };
        let (state, interval) = (Arc::clone(&self.state), self.interval);
        std::thread::spawn(move || heartbeat(state, generation, interval));
    }

    fn advance(&self, units: u64) {
        if let Ok(mut ticker) = self.state.lock() {
            if let Some(p) = ticker.phase.as_mut() {
                p.done = p.done.saturating_add(units);
            }
        }
    }

    fn note(&self, make: &dyn Fn() -> String) {
        eprintln!("{}", make());
    }

    fn finish(&self) {
        if let Ok(mut ticker) = self.state.lock() {
            if let Some(p) = ticker.phase.take() {
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
        };
        let line = phase.line();
        assert!(
            line.starts_with("progress: kernel 2/8 (25.0 %), 10 s elapsed, eta 3"),
            "{line}"
        );
        let none_done = Phase { done: 0, ..phase };
        assert!(none_done.line().ends_with("eta ?"));
    }

    #[test]
    fn the_heartbeat_thread_stops_when_its_phase_ends() {
        let state = Arc::new(Mutex::new(Ticker::default()));
        let log = LogLines {
            interval: Duration::from_millis(5),
            state: Arc::clone(&state),
        };
        log.start("a", 2);
        log.advance(1);
        std::thread::sleep(Duration::from_millis(20));
        log.finish();
        log.start("b", 1);
        log.finish();
        // Only this test's handle and no heartbeat thread may hold the state once they have woken.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(Arc::strong_count(&state), 2);
        assert!(state.lock().unwrap().phase.is_none());
    }
}
