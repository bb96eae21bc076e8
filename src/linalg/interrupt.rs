//! Ctrl-C handling for long factorisations: the CLI installs a handler that raises a process-wide flag;
//! MEMDET polls it between tile operations and returns `Error::Interrupted`, so that every Drop (the scratch
//! directory above all) runs before the process exits.

use crate::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Install the Ctrl-C handler once per process (later calls do nothing). Returns false if another handler
/// was already installed by someone else, in which case Ctrl-C keeps its previous behaviour.
pub fn install_ctrlc_handler() -> bool {
    *INSTALLED
        .get_or_init(|| ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst)).is_ok())
}

/// Raise the process-wide interrupt flag (what the Ctrl-C handler does).
pub fn request() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// True once Ctrl-C was pressed.
pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err(Error::Interrupted)` once Ctrl-C was pressed or `extra` (a caller's own flag) is set.
pub fn check(extra: Option<&AtomicBool>) -> Result<()> {
    if requested() || extra.is_some_and(|f| f.load(Ordering::SeqCst)) {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}
