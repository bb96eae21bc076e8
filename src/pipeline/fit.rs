//! The `fit` subcommand. (In progress: being implemented.)

use crate::cli::FitArgs;
use crate::progress::Progress;
use crate::{Error, Result};

/// Execute `fit`.
pub fn run(_args: &FitArgs, _progress: &dyn Progress) -> Result<()> {
    Err(Error::Internal("the `fit` subcommand is not implemented yet".into()))
}
