//! Children that obey the test's signals: a test harness started in the background by a non-interactive
//! shell inherits SIGINT as ignored, and `ntk-pipeline` keeps an ignored signal ignored (as `nohup` expects),
//! so signal tests reset SIGINT, SIGTERM and SIGHUP to their defaults in the child before it starts.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Make `cmd`'s child start with the default action for SIGINT, SIGTERM and SIGHUP.
pub fn with_default_signals(cmd: &mut Command) -> &mut Command {
    // SAFETY: between fork and exec only async-signal-safe `signal` calls are made.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        })
    }
}
