//! The `ntk` subcommand. (In progress: being implemented.)

use crate::cli::NtkArgs;
use crate::progress::Progress;
use crate::{Error, Result};

/// Execute `ntk`.
pub fn run(_args: &NtkArgs, _progress: &dyn Progress) -> Result<()> {
    Err(Error::Internal("the `ntk` subcommand is not implemented yet".into()))
}
