//! The `compare` subcommand. (In progress: being implemented.)

use crate::cli::CompareArgs;
use crate::progress::Progress;
use crate::{Error, Result};

/// Execute `compare`.
pub fn run(_args: &CompareArgs, _progress: &dyn Progress) -> Result<()> {
    Err(Error::Internal("the `compare` subcommand is not implemented yet".into()))
}
