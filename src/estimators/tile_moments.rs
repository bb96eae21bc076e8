//! The exact moments behind the kernel statistics, in one streamed pass over the upper-triangle tiles of a
//! [`TileSource`] (each tile read once and dropped, the kernel never stored): `tr K`, `‖K‖_F²`, the diagonal,
//! `K X` for a few fixed vectors X (the all-ones vector and the label targets), and, with a second kernel
//! on the same sample, `⟨K₁, K₂⟩_F` and the second kernel's own trace and Frobenius norm.
//!
//! A tile (I, J) strictly above the diagonal stands for itself and its mirror (J, I): it counts twice in
//! the Frobenius sums and updates both `(K X)[I] += T X[J]` and `(K X)[J] += Tᵀ X[I]`.

use crate::linalg::TileSource;
use crate::progress::Progress;
use crate::{Error, Result};
use faer::{Mat, MatRef};
use std::ops::Range;

/// Moments of the second kernel of an alignment.
#[derive(Debug, Clone, Default)]
pub struct CrossMoments {
    /// ⟨K₁, K₂⟩_F.
    pub inner: f64,
    /// tr K₂.
    pub trace: f64,
    /// ‖K₂‖_F².
    pub frob_sq: f64,
}

/// What one pass over the tiles accumulates.
#[derive(Debug, Clone)]
pub struct TileMoments {
    /// tr K.
    pub trace: f64,
    /// ‖K‖_F² = tr K².
    pub frob_sq: f64,
    /// The diagonal of K.
    pub diag: Vec<f64>,
    /// K X for the X passed in.
    pub kx: Mat<f64>,
    /// With a second kernel: its moments and the inner product.
    pub cross: Option<CrossMoments>,
    /// Tiles read (per kernel).
    pub tiles: usize,
}

/// Accumulate the moments of `a` (and `b`, on the same sample) over `plan`, a list of (rows, cols) tiles
/// that are either on the diagonal (rows == cols) or strictly above it and together cover the upper
/// triangle exactly once. `x` is m × c.
pub fn stream_moments(
    a: &dyn TileSource,
    b: Option<&dyn TileSource>,
    x: MatRef<'_, f64>,
    plan: &[(Range<usize>, Range<usize>)],
    progress: &dyn Progress,
) -> Result<TileMoments> {
    let m = a.dim();
    if let Some(b) = b {
        if b.dim() != m {
            return Err(Error::Usage(format!(
                "the two kernels have orders {m} and {}: --against needs the same sample and outputs",
                b.dim()
            )));
        }
    }
    let mut out = TileMoments {
        trace: 0.0,
        frob_sq: 0.0,
        diag: vec![0.0; m],
        kx: Mat::zeros(m, x.ncols()),
        cross: b.map(|_| CrossMoments::default()),
        tiles: 0,
    };
    progress.start("NTK statistics tiles", plan.len() as u64);
    for (rows, cols) in plan {
        let diagonal = rows == cols;
        if !diagonal && rows.end > cols.start {
            return Err(Error::Internal(format!(
                "statistics tile {rows:?} x {cols:?} is neither diagonal nor above it"
            )));
        }
        let mut t = Mat::<f64>::zeros(rows.len(), cols.len());
        a.fill(rows.clone(), cols.clone(), t.as_mut())?;
        let weight = if diagonal { 1.0 } else { 2.0 };
        out.frob_sq += weight * sum_sq(&t);
        if diagonal {
            for (k, r) in rows.clone().enumerate() {
                out.diag[r] = t[(k, k)];
                out.trace += t[(k, k)];
            }
        }
        add_products(&t, rows, cols, diagonal, x, &mut out.kx);
        if let (Some(b), Some(cross)) = (b, out.cross.as_mut()) {
            let mut t2 = Mat::<f64>::zeros(rows.len(), cols.len());
            b.fill(rows.clone(), cols.clone(), t2.as_mut())?;
            cross.frob_sq += weight * sum_sq(&t2);
            let mut inner = 0.0;
            for c in 0..t.ncols() {
                for r in 0..t.nrows() {
                    inner += t[(r, c)] * t2[(r, c)];
                }
            }
            cross.inner += weight * inner;
            if diagonal {
                cross.trace += (0..t2.nrows()).map(|k| t2[(k, k)]).sum::<f64>();
            }
        }
        out.tiles += 1;
        progress.advance(1);
    }
    progress.finish();
    Ok(out)
}

fn sum_sq(t: &Mat<f64>) -> f64 {
    let mut s = 0.0;
    for c in 0..t.ncols() {
        for r in 0..t.nrows() {
            s += t[(r, c)] * t[(r, c)];
        }
    }
    s
}

/// `(K X)[rows] += T X[cols]`, and for an off-diagonal tile also `(K X)[cols] += Tᵀ X[rows]`.
fn add_products(
    t: &Mat<f64>,
    rows: &Range<usize>,
    cols: &Range<usize>,
    diagonal: bool,
    x: MatRef<'_, f64>,
    kx: &mut Mat<f64>,
) {
    let xc = x.subrows(cols.start, cols.len());
    let tx = t * xc;
    for j in 0..x.ncols() {
        for (k, r) in rows.clone().enumerate() {
            kx[(r, j)] += tx[(k, j)];
        }
    }
    if !diagonal {
        let xr = x.subrows(rows.start, rows.len());
        let ttx = t.transpose() * xr;
        for j in 0..x.ncols() {
            for (k, c) in cols.clone().enumerate() {
                kx[(c, j)] += ttx[(k, j)];
            }
        }
    }
}
