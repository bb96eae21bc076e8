//! Progress reporting for long phases. The library reports through [`Progress`]; the CLI draws indicatif
//! bars on a terminal and [`LogLines`] when stderr is a file or pipe (batch jobs, `nohup`); tests pass
//! [`Silent`].

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `--quiet` for the lines printed outside a [`Progress`] reporter (see [`notice`]).
static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: drop the notes and warnings that [`notice`] prints (errors are printed by `main` regardless).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::SeqCst);
}

/// A note or warning for the user that does not belong to a phase (`note: …`, `warning: …`, a checkpoint
/// being resumed): printed on stderr, unless `--quiet`, which leaves stderr to errors alone. Warnings that
/// qualify a result are also kept in its JSON where the document has a place for them.
pub fn notice(line: &str) {
    if !QUIET.load(Ordering::SeqCst) {
        eprintln!("{line}");
    }
}

/// Receives progress of one phase at a time: `start`, any number of `advance`, then `finish`.
pub trait Progress: Sync {
    /// A new phase named `phase` with `total` units of work begins.
    fn start(&self, phase: &str, total: u64);
    /// `units` more units of the current phase are done.
    fn advance(&self, units: u64);
    /// The current phase is over.
    fn finish(&self);
    /// A line of information for the user (a finished epoch's summary, say): shown on stderr by the CLI's
    /// reporters, dropped by [`Silent`] (`--quiet`).
    fn note(&self, _line: &str) {}
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

    fn note(&self, line: &str) {
        match self.bar.lock().ok().as_ref().and_then(|slot| slot.as_ref()) {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
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
/// The heartbeat waits on a condition variable, so `finish` wakes it at once and returns only after it has
/// exited: no heartbeat outlives its phase, however loaded the machine.
pub struct LogLines {
    interval: Duration,
    state: Arc<Shared>,
    heartbeat: Mutex<Option<JoinHandle<()>>>,
}

/// What the heartbeat thread shares with its [`LogLines`]: the running phase, a wake-up signal, and where
/// lines go.
struct Shared {
    ticker: Mutex<Ticker>,
    changed: Condvar,
    sink: Box<dyn Fn(&str) + Send + Sync>,
}

/// The running phase, if any, and which phase number it is.
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
    /// Status lines every `interval` within a phase, on stderr.
    pub fn new(interval: Duration) -> Self {
        Self::with_sink(interval, Box::new(|line: &str| eprintln!("{line}")))
    }

    /// Status lines every `interval`, each handed to `sink` (stderr for [`LogLines::new`]).
    fn with_sink(interval: Duration, sink: Box<dyn Fn(&str) + Send + Sync>) -> Self {
        Self {
            interval,
            state: Arc::new(Shared {
                ticker: Mutex::new(Ticker::default()),
                changed: Condvar::new(),
                sink,
            }),
            heartbeat: Mutex::new(None),
        }
    }

    /// Wake the running heartbeat (its phase has changed) and wait until it has exited.
    fn stop_heartbeat(&self) {
        self.state.changed.notify_all();
        let handle = self.heartbeat.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Phase {
    /// The status line of this phase, `elapsed` seconds after it started.
    fn line(&self, elapsed: f64) -> String {
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

/// Print the phase number `generation` every `interval` until it is over (woken at once when it ends).
fn heartbeat(state: Arc<Shared>, generation: u64, interval: Duration) {
    let Ok(mut ticker) = state.ticker.lock() else {
        return;
    };
    loop {
        let running = |t: &mut Ticker| t.generation == generation && t.phase.is_some();
        ticker = match state.changed.wait_timeout_while(ticker, interval, running) {
            Ok((t, _)) => t,
            Err(_) => return,
        };
        match &ticker.phase {
            Some(p) if ticker.generation == generation => {
                (state.sink)(&p.line(p.started.elapsed().as_secs_f64()))
            }
            _ => return,
        }
    }
}

impl Progress for LogLines {
    fn start(&self, phase: &str, total: u64) {
        (self.state.sink)(&format!("progress: {phase} started ({total} units)"));
        let generation = match self.state.ticker.lock() {
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
        // A phase started without finishing the previous one: its heartbeat sees the new generation.
        self.stop_heartbeat();
        let (state, interval) = (Arc::clone(&self.state), self.interval);
        let handle = std::thread::spawn(move || heartbeat(state, generation, interval));
        if let Ok(mut slot) = self.heartbeat.lock() {
            *slot = Some(handle);
        }
    }

    fn advance(&self, units: u64) {
        if let Ok(mut ticker) = self.state.ticker.lock() {
            if let Some(p) = ticker.phase.as_mut() {
                p.done = p.done.saturating_add(units);
            }
        }
    }

    fn finish(&self) {
        let ended = self
            .state
            .ticker
            .lock()
            .ok()
            .and_then(|mut t| t.phase.take());
        self.stop_heartbeat();
        if let Some(p) = ended {
            (self.state.sink)(&format!(
                "progress: {} done in {:.1} s",
                p.name,
                p.started.elapsed().as_secs_f64()
            ));
        }
    }

    fn note(&self, line: &str) {
        (self.state.sink)(line);
    }
}

impl Drop for LogLines {
    fn drop(&mut self) {
        if let Ok(mut ticker) = self.state.ticker.lock() {
            ticker.phase = None;
        }
        self.stop_heartbeat();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_log_line_states_the_fraction_done_and_an_eta() {
        let phase = Phase {
            name: "kernel".into(),
            total: 8,
            done: 2,
            started: Instant::now(),
        };
        // 10 s elapsed, a quarter done: 30 s to go.
        assert_eq!(
            phase.line(10.0),
            "progress: kernel 2/8 (25.0 %), 10 s elapsed, eta 30 s"
        );
        let none_done = Phase { done: 0, ..phase };
        assert!(none_done.line(10.0).ends_with("eta ?"));
    }

    /// A [`LogLines`] whose lines arrive on a channel.
    fn captured(interval: Duration) -> (LogLines, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let log = LogLines::with_sink(
            interval,
            Box::new(move |line: &str| {
                if let Ok(tx) = tx.lock() {
                    let _ = tx.send(line.to_string());
                }
            }),
        );
        (log, rx)
    }

    #[test]
    fn the_heartbeat_reports_the_running_phase_and_stops_with_it() {
        let (log, rx) = captured(Duration::from_millis(1));
        log.start("a", 4);
        assert_eq!(rx.recv().unwrap(), "progress: a started (4 units)");
        log.advance(1);
        // Wait for the heartbeat's first line that has seen the advance (an event, not a sleep).
        let wait = Duration::from_secs(60);
        let status = loop {
            let line = rx
                .recv_timeout(wait)
                .expect("no heartbeat line within 60 s");
            if line.starts_with("progress: a 1/4") {
                break line;
            }
            assert!(line.starts_with("progress: a 0/4 (0.0 %)"), "{line}");
        };
        assert!(status.starts_with("progress: a 1/4 (25.0 %), "), "{status}");
        log.finish();
        // `finish` returns after the heartbeat exited: the done line is the last line of the phase.
        let rest: Vec<String> = rx.try_iter().collect();
        let done = rest.last().expect("a done line");
        assert!(done.starts_with("progress: a done in "), "{rest:?}");
        assert!(rest[..rest.len() - 1]
            .iter()
            .all(|l| l.starts_with("progress: a ")));
        assert_eq!(
            Arc::strong_count(&log.state),
            1,
            "a heartbeat still holds the state"
        );
        // A phase started without a finish: the next start retires its heartbeat.
        log.start("b", 1);
        log.start("c", 1);
        log.finish();
        assert_eq!(Arc::strong_count(&log.state), 1);
        let lines: Vec<String> = rx.try_iter().collect();
        assert_eq!(
            lines.first().map(String::as_str),
            Some("progress: b started (1 units)")
        );
        assert!(
            lines.last().unwrap().starts_with("progress: c done in "),
            "{lines:?}"
        );
        assert!(
            lines.iter().all(|l| !l.starts_with("progress: b done")),
            "{lines:?}"
        );
    }

    #[test]
    fn no_status_line_before_the_interval() {
        // A two-minute interval: start and finish print exactly their own two lines, and finish does not
        // wait for the interval to run out (the heartbeat is woken, not slept out: it returns in
        // microseconds, so half the interval is a bound no load can reach).
        let (log, rx) = captured(Duration::from_secs(120));
        let t = Instant::now();
        log.start("x", 2);
        log.advance(2);
        // Let the heartbeat reach its wait, so that the wake-up is what is tested. The assertions hold
        // whatever this delay is (a heartbeat that has not started yet sees the phase over and returns).
        std::thread::sleep(Duration::from_millis(50));
        log.finish();
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "finish waited {:?}",
            t.elapsed()
        );
        let lines: Vec<String> = rx.try_iter().collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].starts_with("progress: x done in "));
    }
}
