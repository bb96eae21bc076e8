//! Matrix–vector products with a kernel seen through a [`TileSource`]: all probe vectors of a pass are
//! multiplied together, streaming row panels of the matrix (or, when it fits a memory cap, reading the
//! whole matrix once and keeping it).

use super::dense::check_finite;
use crate::linalg::gemm::matmul;
use crate::linalg::TileSource;
use crate::Result;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// A symmetric linear operator applied to blocks of vectors.
pub trait LinearOp: Sync {
    /// Order of the operator.
    fn dim(&self) -> usize;
    /// `out = A · x` for an m × p block `x`.
    fn apply(&self, x: MatRef<'_, f64>, out: MatMut<'_, f64>) -> Result<()>;
}

/// K · X through a tile source, with a count of vectors multiplied and of panel reads.
pub struct KernelOperator<'a> {
    source: &'a dyn TileSource,
    panel_rows: usize,
    keep_whole: bool,
    whole: OnceLock<Mat<f64>>,
    matvecs: AtomicUsize,
    passes: AtomicUsize,
}

impl<'a> KernelOperator<'a> {
    /// Wrap `source`. If the whole m × m matrix takes at most `memory_bytes` (f64) it is read once and
    /// kept; otherwise each pass streams row panels of at most `memory_bytes / 4` bytes (at least one
    /// granule of rows) of the upper triangle (symmetry gives the rest), so every pass re-reads (for an
    /// NTK: recomputes) half the matrix.
    pub fn new(source: &'a dyn TileSource, memory_bytes: usize) -> Self {
        let m = source.dim().max(1);
        let g = source.granule().max(1);
        let whole_bytes = m.saturating_mul(m).saturating_mul(8);
        let rows = (memory_bytes / 4 / (8 * m)).max(1);
        let panel_rows = (rows / g).max(1) * g;
        Self {
            source,
            panel_rows,
            keep_whole: whole_bytes <= memory_bytes,
            whole: OnceLock::new(),
            matvecs: AtomicUsize::new(0),
            passes: AtomicUsize::new(0),
        }
    }

    /// Vectors multiplied so far (a block of p vectors counts p).
    pub fn matvecs(&self) -> usize {
        self.matvecs.load(Ordering::Relaxed)
    }

    /// Full passes over the matrix read from the source so far.
    pub fn passes(&self) -> usize {
        self.passes.load(Ordering::Relaxed)
    }

    /// True if the matrix is held in RAM after the first pass.
    pub fn keeps_whole(&self) -> bool {
        self.keep_whole
    }

    fn whole(&self) -> Result<&Mat<f64>> {
        if let Some(w) = self.whole.get() {
            return Ok(w);
        }
        let m = self.source.dim();
        let mut a = Mat::<f64>::zeros(m, m);
        self.source.fill(0..m, 0..m, a.as_mut())?;
        check_finite(a.as_ref(), 0, 0)?;
        self.passes.fetch_add(1, Ordering::Relaxed);
        Ok(self.whole.get_or_init(|| a))
    }
}

impl LinearOp for KernelOperator<'_> {
    fn dim(&self) -> usize {
        self.source.dim()
    }

    fn apply(&self, x: MatRef<'_, f64>, mut out: MatMut<'_, f64>) -> Result<()> {
        let m = self.source.dim();
        self.matvecs.fetch_add(x.ncols(), Ordering::Relaxed);
        if self.keep_whole {
            let a = self.whole()?;
            matmul(
                out.as_mut(),
                Accum::Replace,
                a.as_ref(),
                x,
                1.0,
                Par::rayon(0),
            );
            return Ok(());
        }
        // Symmetric streaming: only the panels on and right of the diagonal are read (half the tiles),
        // each used twice: out[R] += A[R, r0..] x[r0..] and out[r0+h..] += A[R, r0+h..]ᵀ x[R].
        let p = x.ncols();
        out.fill(0.0);
        let mut panel = Mat::<f64>::zeros(self.panel_rows.min(m), m);
        let mut r0 = 0;
        while r0 < m {
            let h = self.panel_rows.min(m - r0);
            let w = m - r0;
            let mut a = panel.as_mut().submatrix_mut(0, 0, h, w);
            self.source.fill(r0..r0 + h, r0..m, a.as_mut())?;
            check_finite(a.as_ref(), r0, r0)?;
            let a = a.as_ref();
            let dst = out.as_mut().submatrix_mut(r0, 0, h, p);
            matmul(
                dst,
                Accum::Add,
                a,
                x.submatrix(r0, 0, w, p),
                1.0,
                Par::rayon(0),
            );
            if w > h {
                let dst = out.as_mut().submatrix_mut(r0 + h, 0, w - h, p);
                let right = a.submatrix(0, h, h, w - h);
                matmul(
                    dst,
                    Accum::Add,
                    right.transpose(),
                    x.submatrix(r0, 0, h, p),
                    1.0,
                    Par::rayon(0),
                );
            }
            r0 += h;
        }
        self.passes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::DenseSource;

    #[test]
    fn streamed_and_whole_products_agree() {
        let m = 37;
        let a = Mat::from_fn(m, m, |i, j| 1.0 / (1.0 + i as f64 + j as f64));
        let x = Mat::from_fn(m, 3, |i, j| (i * 7 + j * 3) as f64 % 5.0 - 2.0);
        let src = DenseSource::new(a.clone()).with_granule(2);
        let reference = &a * &x;
        for bytes in [8 * 10 * m, 8 * m * m] {
            let op = KernelOperator::new(&src, bytes);
            let mut y = Mat::zeros(m, 3);
            op.apply(x.as_ref(), y.as_mut()).unwrap();
            op.apply(x.as_ref(), y.as_mut()).unwrap();
            assert!((&y - &reference).norm_max() < 1e-14);
            assert_eq!(op.matvecs(), 6);
        }
    }
}
