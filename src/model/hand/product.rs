//! Matrix products on row-major slices, through the crate's one door to the `gemm` kernels
//! ([`crate::linalg::gemm::matmul`]), with every rayon thread.

use super::real::Real;
use faer::{Accum, MatMut, MatRef, Par};

/// A row-major `rows × cols` matrix in a slice, used as is or transposed.
#[derive(Clone, Copy)]
pub struct Operand<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl<'a, T: Real> Operand<'a, T> {
    /// The first `rows·cols` values of `data` as a row-major matrix.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        assert!(
            data.len() >= rows * cols,
            "operand: {} < {rows}x{cols}",
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            transposed: false,
        }
    }

    /// The transpose.
    pub fn t(self) -> Self {
        Self {
            transposed: !self.transposed,
            ..self
        }
    }

    /// Rows of the matrix as used (after any transpose).
    pub fn rows(&self) -> usize {
        if self.transposed {
            self.cols
        } else {
            self.rows
        }
    }

    fn view(&self) -> MatRef<'a, T> {
        let m =
            MatRef::from_row_major_slice(&self.data[..self.rows * self.cols], self.rows, self.cols);
        if self.transposed {
            m.transpose()
        } else {
            m
        }
    }
}

/// `dst (m × n, row-major) = lhs · rhs`, or `dst += lhs · rhs` when `add`.
pub fn product<T: Real>(dst: &mut [T], lhs: Operand<'_, T>, rhs: Operand<'_, T>, add: bool) {
    let (l, r) = (lhs.view(), rhs.view());
    let (m, n) = (l.nrows(), r.ncols());
    let dst = MatMut::from_row_major_slice_mut(&mut dst[..m * n], m, n);
    let accum = if add { Accum::Add } else { Accum::Replace };
    crate::linalg::gemm::matmul(dst, accum, l, r, T::from(1.0), Par::rayon(0));
}
