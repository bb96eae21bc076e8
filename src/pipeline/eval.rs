//! The `eval` subcommand. (In progress: being implemented.)

use crate::cli::EvalArgs;
use crate::progress::Progress;
use crate::{Error, Result};

/// Execute `eval`.
pub fn run(_args: &EvalArgs, _progress: &dyn Progress) -> Result<()> {
    Err(Error::Internal("the `eval` subcommand is not implemented yet".into()))
}
