//! The crate's one error type. Every user-facing failure is a variant whose message says what was wrong,
//! where, and what to do; `Error::exit_code` maps it to the CLI's exit code (2 bad input, 1 internal).

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in ntk-pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line usage (conflicting or out-of-range options).
    #[error("{0}")]
    Usage(String),
    /// A file could not be opened, read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What we were doing ("cannot open", "cannot write", ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying OS error.
        source: std::io::Error,
    },
    /// Malformed input file or value (wrong shape, dtype, magic number, truncated file, ...).
    #[error("invalid input: {0}")]
    Input(String),
    /// A non-finite value was found in a tile of the matrix.
    #[error("non-finite value {value} at row {row}, column {col} (in tile rows {rows:?} x cols {cols:?}); the input matrix must be finite")]
    NonFinite {
        /// The offending value (NaN or ±Inf).
        value: f64,
        /// Global row index.
        row: usize,
        /// Global column index.
        col: usize,
        /// Row range of the tile.
        rows: std::ops::Range<usize>,
        /// Column range of the tile.
        cols: std::ops::Range<usize>,
    },
    /// Cholesky found a non-positive pivot: the matrix is not symmetric positive definite.
    #[error("matrix is not positive definite: pivot {index} is {value:e} (<= 0); {}", not_pd_hint(*.sym_pivoted))]
    NotPositiveDefinite {
        /// Global row index of the failing pivot.
        index: usize,
        /// Value of the pivot after elimination of the previous rows.
        value: f64,
        /// True when `--assume sym` would use the pivoted (backward-stable) LDLᵀ, i.e. no nested
        /// log-dets were asked for; only then does the message recommend it.
        sym_pivoted: bool,
    },
    /// Pivoted LDLᵀ found an exactly zero (or non-finite) pivot block: the matrix is singular.
    #[error("the matrix is singular: pivoted LDL^T (Bunch-Kaufman) found a pivot of {value:e} at row {index}, so log|det| = -inf; check the input, or add a diagonal shift with --shift")]
    Singular {
        /// Global row index of the pivot.
        index: usize,
        /// The pivot (or 2×2 pivot determinant).
        value: f64,
    },
    /// The factorisation cannot be trusted (element growth, or a singular leading block under pivoting
    /// confined to blocks): refused rather than reporting an inaccurate log-determinant.
    #[error("{0}")]
    Unstable(String),
    /// LDLᵀ without pivoting hit an exactly zero (or non-finite) pivot.
    #[error("zero pivot at row {index} (value {value:e}) in LDL^T without pivoting: the leading {size}x{size} block (rows 0..={index}) is singular; the whole matrix may still be non-singular, but then it needs a pivoting factorisation", size = .index + 1)]
    ZeroPivot {
        /// Global row index of the pivot.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// Scratch store problems: unwritable directory, disk full, size cap exceeded.
    #[error("scratch store: {0}")]
    Scratch(String),
    /// The memory budget cannot be met.
    #[error("memory budget: {0}")]
    Budget(String),
    /// Dataset problems: unknown name, missing files, bad checksum.
    #[error("dataset: {0}")]
    Data(String),
    /// Model problems: missing or mis-shaped tensors, unknown architecture or layer type.
    #[error("model: {0}")]
    Model(String),
    /// A network operation failed (an internal error unless wrapped into `Model`).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The run was stopped by SIGINT, SIGTERM or SIGHUP (see `signals`); exit code 128 + the signal.
    #[error(
        "interrupted by {}; scratch and temporary outputs removed",
        crate::signals::name()
    )]
    Interrupted,
    /// A bug: an invariant of ours did not hold.
    #[error("internal error: {0}")]
    Internal(String),
    /// Another process of the same MPI job reported the failure; this one exits with the code, silently.
    #[error("failed on another rank (exit code {0})")]
    Reported(i32),
}

/// What to try after a failed Cholesky: `--assume sym` only where it is pivoted (backward stable).
fn not_pd_hint(sym_pivoted: bool) -> &'static str {
    if sym_pivoted {
        "try --assume sym (LDL^T with Bunch-Kaufman pivoting, for indefinite matrices), or add a diagonal shift with --shift"
    } else {
        "nested log-dets need a factorisation without pivoting, which is not backward stable on indefinite \
         matrices: add a diagonal shift with --shift, or compute log|det| alone without --nested \
         (`logdet --assume sym` then pivots)"
    }
}

impl Error {
    /// The process exit code for this error: 2 for bad usage or bad input, 128 + the signal (130 for
    /// Ctrl-C, 143 for SIGTERM, 129 for SIGHUP) when stopped by one, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Candle(_) | Error::Internal(_) => 1,
            Error::Interrupted => crate::signals::exit_code(),
            Error::Reported(code) => *code,
            _ => 2,
        }
    }

    /// Shorthand for an [`Error::Io`] with the given action and path.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
