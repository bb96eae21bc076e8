//! SIGINT, SIGTERM and SIGHUP: every run stops cleanly on them, within about two seconds, in every phase.
//!
//! [`install`] (called once by the CLI) replaces the three signals' default action (kill the process, leaving
//! scratch and temporary outputs behind) with a handler that only records the signal. Long phases poll
//! [`check`] between units of work (feature chunks, contraction pairs, tiles, Lanczos steps, training steps,
//! download buffers) and return [`Error::Interrupted`], so every `Drop` (scratch directories, temporary
//! outputs) runs before `main` exits with `128 + signal` (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP).
//!
//! A watcher thread is the backstop: a second signal (a second Ctrl-C), or a first one that the running phase
//! has not answered within [`GRACE`], makes it remove every path registered with [`remove_on_exit`] and end
//! the process at once with the same code. Checkpoints are never registered: they are written atomically and
//! are meant to survive. A signal that was ignored when the process started (`nohup` ignores SIGHUP, a shell
//! ignores SIGINT for background jobs) stays ignored.

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the running phase has to unwind after the first signal before the watcher ends the process.
pub const GRACE: Duration = Duration::from_millis(1500);

/// The first signal received (0 while none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Signals received so far.
static COUNT: AtomicU32 = AtomicU32::new(0);
/// Set by [`request`] (tests, library users): behaves like a SIGINT without a process-wide handler.
static REQUESTED: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<()> = OnceLock::new();
/// Paths removed when the watcher ends the process: (registration id, path).
static CLEANUP: Mutex<Vec<(u64, PathBuf)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The handler: record the signal (async-signal-safe: atomics only).
extern "C" fn on_signal(sig: libc::c_int) {
    let _ = SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
}

/// Install the handler for SIGINT, SIGTERM and SIGHUP and start the watcher thread (once per process; later
/// calls do nothing).
pub fn install() {
    INSTALLED.get_or_init(|| {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: plain sigaction calls with a zeroed struct; the handler only touches atomics.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                    && old.sa_sigaction == libc::SIG_IGN
                {
                    continue;
                }
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
        let _ = std::thread::Builder::new()
            .name("signal-watcher".into())
            .spawn(watch);
    });
}

/// The watcher thread: end the process on a second signal or when the first is not answered in time.
fn watch() {
    let mut first_seen: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let count = COUNT.load(Ordering::SeqCst);
        if count == 0 {
            continue;
        }
        let since = *first_seen.get_or_insert_with(Instant::now);
        if count >= 2 || since.elapsed() >= GRACE {
            hard_exit(count >= 2);
        }
    }
}

/// Remove the registered paths and end the process now with `128 + signal`.
fn hard_exit(second: bool) -> ! {
    let paths: Vec<PathBuf> = match CLEANUP.lock() {
        Ok(list) => list.iter().map(|(_, p)| p.clone()).collect(),
        Err(poisoned) => poisoned.get_ref().iter().map(|(_, p)| p.clone()).collect(),
    };
    for p in paths {
        remove_path(&p);
    }
    let why = if second {
        "a second signal"
    } else {
        "the running step did not stop in time"
    };
    eprintln!("error: interrupted by {} ({why}); stopped at once", name());
    // SAFETY: _exit ends the process without running other threads' code; nothing here needs unwinding.
    unsafe { libc::_exit(exit_code()) }
}

/// Remove a file or a directory tree, ignoring errors (it may already be gone).
fn remove_path(p: &Path) {
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

/// Raise the stop flag as if Ctrl-C had been pressed (for library users and tests).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// The signal number received first, if any (SIGINT for [`request`]).
pub fn received() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 if REQUESTED.load(Ordering::SeqCst) => Some(libc::SIGINT),
        0 => None,
        s => Some(s),
    }
}

/// True once a stop was asked for.
pub fn requested() -> bool {
    received().is_some()
}

/// `Err(Error::Interrupted)` once a stop was asked for.
pub fn check() -> Result<()> {
    check_with(None)
}

/// [`check`], also honouring a caller's own flag `extra`.
pub fn check_with(extra: Option<&AtomicBool>) -> Result<()> {
    if requested() || extra.is_some_and(|f| f.load(Ordering::SeqCst)) {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// The process exit code for the signal received: 128 + its number (130 when none was received).
pub fn exit_code() -> i32 {
    128 + received().unwrap_or(libc::SIGINT)
}

/// The received signal's name (`SIGINT` when none was received, e.g. a caller's own flag).
pub fn name() -> &'static str {
    match received() {
        Some(libc::SIGTERM) => "SIGTERM",
        Some(libc::SIGHUP) => "SIGHUP",
        _ => "SIGINT",
    }
}

/// Removes its path from the exit-cleanup list when dropped (the path itself is left alone).
#[derive(Debug)]
pub struct CleanupGuard {
    id: u64,
}

/// Have `path` (a temporary file or a scratch directory) removed if the watcher ends the process before the
/// returned guard is dropped. Ordinary unwinding removes such paths through their own `Drop`.
pub fn remove_on_exit(path: &Path) -> CleanupGuard {
    let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut list) = CLEANUP.lock() {
        list.push((id, path.to_path_buf()));
    }
    CleanupGuard { id }
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if let Ok(mut list) = CLEANUP.lock() {
            list.retain(|(id, _)| *id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_register_and_unregister_their_paths() {
        let p = PathBuf::from("/nonexistent/ntk-signal-test");
        let guard = remove_on_exit(&p);
        assert!(CLEANUP.lock().unwrap().iter().any(|(_, q)| *q == p));
        drop(guard);
        assert!(!CLEANUP.lock().unwrap().iter().any(|(_, q)| *q == p));
    }

    #[test]
    fn a_callers_flag_interrupts() {
        let flag = AtomicBool::new(true);
        assert!(matches!(check_with(Some(&flag)), Err(Error::Interrupted)));
    }
}
