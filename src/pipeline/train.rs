//! The `train` subcommand. (In progress: being implemented.)

use crate::cli::TrainArgs;
use crate::progress::Progress;
use crate::{Error, Result};

/// Execute `train`.
pub fn run(_args: &TrainArgs, _progress: &dyn Progress) -> Result<()> {
    Err(Error::Internal("the `train` subcommand is not implemented yet".into()))
}
