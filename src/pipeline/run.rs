//! The `run` subcommand. (In progress: being implemented.)

use crate::cli::RunArgs;
use crate::progress::Progress;
use crate::{Error, Result};

/// Execute `run`.
pub fn run(_args: &RunArgs, _progress: &dyn Progress) -> Result<()> {
    Err(Error::Internal("the `run` subcommand is not implemented yet".into()))
}
