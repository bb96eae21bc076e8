//! Classical log-det estimators for side-by-side comparison with MEMDET and FLODANCE (SPEC §4): SLQ,
//! preconditioned SLQ, block diagonal, pseudo-NTK, and the naive extrapolations of nested log-dets.
//! Each reads the kernel only through [`TileSource`], takes explicit seeds, and reports its own wall time
//! and matrix–vector product count in an [`Estimate`].
//!
//! The NTK statistics (SPEC §6) live here too: [`trace`] (Hutchinson, Hutch++ over any [`operator::LinearOp`]),
//! [`one_sided`] (reverse-only and forward-only trace estimators over a factored kernel), [`tile_moments`]
//! (the exact moments in one streamed pass over tiles) and [`kernel_stats`] (the statistics from them).

pub mod blockdiag;
pub mod dense;
pub mod extrapolate;
pub mod kernel_stats;
pub mod lanczos;
pub mod one_sided;
pub mod operator;
pub mod precond;
pub mod pseudo;
pub mod slq;
pub mod tile_moments;
pub mod trace;

use crate::linalg::TileSource;
use crate::progress::Progress;
use crate::Result;

pub use blockdiag::BlockDiagonal;
pub use extrapolate::{LinearExtrapolation, StoppedCholesky, StoppedCholeskyRule};
pub use precond::{pivoted_cholesky, PartialCholesky, PreconditionedSlq};
pub use pseudo::PseudoNtk;
pub use slq::{Slq, SlqOptions};

/// What an estimator reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Estimate {
    /// The estimate of ln|det K|.
    pub logdet: f64,
    /// Standard error of a stochastic estimate (None for deterministic ones).
    pub std_error: Option<f64>,
    /// Matrix–vector products with K (a block of p vectors counts p).
    pub matvecs: usize,
    /// Wall time of the estimator, seconds (including reading tiles from the source).
    pub seconds: f64,
    /// Estimator-specific details (settings, probes, ranks, signs, …).
    pub details: serde_json::Value,
}

/// A log-det estimator that reads the matrix through a tile source.
pub trait Estimator {
    /// Short method name as used by `compare --methods`.
    fn name(&self) -> &'static str;
    /// Estimate ln|det| of the matrix behind `source`.
    fn run(&self, source: &dyn TileSource, progress: &dyn Progress) -> Result<Estimate>;
}
