//! The `logdet` subcommand. (In progress: being implemented.)

use crate::cli::LogdetArgs;
use crate::progress::Progress;
use crate::{Error, Result};

/// Execute `logdet`.
pub fn run(_args: &LogdetArgs, _progress: &dyn Progress) -> Result<()> {
    Err(Error::Internal("the `logdet` subcommand is not implemented yet".into()))
}
