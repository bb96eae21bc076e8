//! The form a feature chunk is cached in, and the contraction of two cached chunks into an f64 kernel block.
//!
//! With `--precision f64` and `f32-f64acc` a chunk is cached as the f64 features [`compute`] gives and
//! contracted in f64. With `f32` it is cached as their f32 narrowing (exact: every value is an f32, see
//! [`crate::ntk::features`]), half the bytes, and contracted with f32 GEMMs and f32 sums; the finished block
//! is then widened to f64 for the linear algebra.
//!
//! [`compute`]: crate::ntk::features::compute

use crate::ntk::contract::contract;
use crate::ntk::features::{Features, LayerPlan};
use crate::ntk::Precision;
use crate::{Error, Result};
use faer::{Mat, MatMut};
use std::ops::Range;

/// One cached feature chunk.
pub enum Cached {
    /// f64 features, contracted in f64.
    Wide(Features<f64>),
    /// f32 features, contracted in f32.
    Narrow(Features<f32>),
}

impl Cached {
    /// `feats` in the form `precision` contracts them in.
    pub fn of(feats: Features, precision: Precision) -> Self {
        if precision.accumulates_in_f32() {
            Cached::Narrow(feats.narrow())
        } else {
            Cached::Wide(feats)
        }
    }

    /// Bytes the cached form of `feats` takes in `precision`.
    pub fn bytes_of(feats: &Features, precision: Precision) -> usize {
        if precision.accumulates_in_f32() {
            feats.bytes() / 2
        } else {
            feats.bytes()
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Cached::Wide(f) => f.bytes(),
            Cached::Narrow(f) => f.bytes(),
        }
    }
}

/// `Σ_l J_l J_lᵀ` between examples `ia` of `a` and `jb` of `b` (see [`contract`]), computed in the chunks'
/// precision and written to `out` (|ia|·r × |jb|·r) as f64.
pub fn contract_cached(
    plan: &LayerPlan,
    a: &Cached,
    ia: Range<usize>,
    b: &Cached,
    jb: Range<usize>,
    mut out: MatMut<'_, f64>,
) -> Result<()> {
    match (a, b) {
        (Cached::Wide(a), Cached::Wide(b)) => contract(plan, a, ia, b, jb, out),
        (Cached::Narrow(a), Cached::Narrow(b)) => {
            let mut block = Mat::<f32>::zeros(out.nrows(), out.ncols());
            contract(plan, a, ia, b, jb, block.as_mut());
            for j in 0..out.ncols() {
                for i in 0..out.nrows() {
                    out[(i, j)] = block[(i, j)] as f64;
                }
            }
        }
        _ => {
            return Err(Error::Internal(
                "feature chunks of two precisions in one kernel".into(),
            ))
        }
    }
    Ok(())
}
