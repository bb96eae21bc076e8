//! Matrix products through the `gemm` crate, built with its AVX-512 (`x86-v4`) kernels, and the two
//! level-3 routines MEMDET needs on top of them.
//!
//! faer 0.24 sends large f64 products to its own `private-gemm-x86` kernels, which measured 29–35 GFLOP/s on
//! the 2-core test machine, while the `gemm` crate ran the same products at 74–78 GFLOP/s in the same process
//! (`cargo bench --bench memdet` prints both). Every large product in MEMDET and in the NTK contractions
//! therefore goes through [`matmul`] here; faer still does the small, latency-bound pieces (the Cholesky of a
//! diagonal sub-block, triangular solves below [`SOLVE_BASE`] columns).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, MatMut, MatRef, Par};

/// `dst ← β·lhs·rhs` (`Accum::Replace`) or `dst ← dst + β·lhs·rhs` (`Accum::Add`), any strides (f64 or f32).
/// Same contract as `faer::linalg::matmul::matmul`; the operands cannot alias `dst` (Rust's borrows see to it).
pub fn matmul<T: Copy + From<f32> + 'static>(
    dst: MatMut<'_, T>,
    accum: Accum,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    beta: T,
    par: Par,
) {
    let (m, n, k) = (dst.nrows(), dst.ncols(), lhs.ncols());
    assert!(
        lhs.nrows() == m && rhs.nrows() == k && rhs.ncols() == n,
        "matmul: {}x{} = {}x{} · {}x{}",
        m,
        n,
        lhs.nrows(),
        k,
        rhs.nrows(),
        rhs.ncols()
    );
    if m == 0 || n == 0 {
        return;
    }
    let parallelism = match par {
        Par::Seq => gemm::Parallelism::None,
        Par::Rayon(threads) => gemm::Parallelism::Rayon(threads.get()),
    };
    // SAFETY: the pointers and strides come from live faer views of the stated shapes, so every element the
    // kernel touches is in bounds; `dst` is a unique borrow, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_ptr_mut(),
            dst.col_stride(),
            dst.row_stride(),
            accum == Accum::Add,
            lhs.as_ptr(),
            lhs.col_stride(),
            lhs.row_stride(),
            rhs.as_ptr(),
            rhs.col_stride(),
            rhs.row_stride(),
            T::from(1.0),
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Columns per panel of [`cholesky_in_place`].
const PANEL: usize = 256;

/// Columns per product in [`matmul_lower`]: wide enough for the GEMM kernels to reach full speed.
const LOWER_PANEL: usize = 1024;

/// `dst ← dst + β·lhs·rhs` on the lower triangle of the square `dst` (diagonal included); the strict upper
/// triangle gets the product too within each diagonal panel of [`LOWER_PANEL`] columns and is otherwise untouched,
/// so callers must treat it as stale. About `m²k` flops for the `2·m²k/2` that are needed.
pub fn matmul_lower(
    mut dst: MatMut<'_, f64>,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
    beta: f64,
    par: Par,
) {
    let m = dst.nrows();
    let mut c0 = 0;
    while c0 < m {
        let w = LOWER_PANEL.min(m - c0);
        matmul(
            dst.rb_mut().submatrix_mut(c0, c0, m - c0, w),
            Accum::Add,
            lhs.subrows(c0, m - c0),
            rhs.subcols(c0, w),
            beta,
            par,
        );
        c0 += w;
    }
}

/// Below this many rows a triangular solve is left to faer in one call.
const SOLVE_BASE: usize = 256;

/// `x ← L⁻¹·x` for the lower-triangular `l` (its strict upper triangle is not read; with `unit`, neither is
/// its diagonal, taken as 1): recursive halving, the off-diagonal half applied by [`matmul`].
pub fn solve_lower_in_place(l: MatRef<'_, f64>, unit: bool, mut x: MatMut<'_, f64>, par: Par) {
    let n = l.nrows();
    if n <= SOLVE_BASE {
        if unit {
            faer::linalg::triangular_solve::solve_unit_lower_triangular_in_place(l, x, par);
        } else {
            faer::linalg::triangular_solve::solve_lower_triangular_in_place(l, x, par);
        }
        return;
    }
    let h = n / 2;
    let (mut x1, mut x2) = x.rb_mut().split_at_row_mut(h);
    solve_lower_in_place(l.submatrix(0, 0, h, h), unit, x1.rb_mut(), par);
    matmul(
        x2.rb_mut(),
        Accum::Add,
        l.submatrix(h, 0, n - h, h),
        x1.rb(),
        -1.0,
        par,
    );
    solve_lower_in_place(l.submatrix(h, h, n - h, n - h), unit, x2, par);
}

/// Right-looking blocked Cholesky of the lower triangle of `a` in place (LAPACK's `potrf` schedule): each
/// panel of [`PANEL`] columns has its diagonal block factored by faer, the rows below solved against it, and
/// the trailing lower triangle updated by [`matmul_lower`]. Returns the index of the first non-positive pivot
/// on failure (the block is then partly overwritten). The strict upper triangle is stale afterwards.
pub fn cholesky_in_place(mut a: MatMut<'_, f64>, par: Par) -> Result<(), usize> {
    let n = a.nrows();
    let req = llt::factor::cholesky_in_place_scratch::<f64>(PANEL.min(n), par, Default::default());
    let mut mem = MemBuffer::new(req);
    let mut k = 0;
    while k < n {
        let w = PANEL.min(n - k);
        let (mut a11, _, mut a21, mut a22) = a
            .rb_mut()
            .submatrix_mut(k, k, n - k, n - k)
            .split_at_mut(w, w);
        if let Err(llt::factor::LltError::NonPositivePivot { index }) =
            llt::factor::cholesky_in_place(
                a11.rb_mut(),
                Default::default(),
                par,
                MemStack::new(&mut mem),
                Default::default(),
            )
        {
            return Err(k + index);
        }
        if k + w < n {
            // L21 = A21 L11⁻ᵀ, i.e. L11 L21ᵀ = A21ᵀ.
            faer::linalg::triangular_solve::solve_lower_triangular_in_place(
                a11.rb(),
                a21.rb_mut().transpose_mut(),
                par,
            );
            matmul_lower(a22.rb_mut(), a21.rb(), a21.rb().transpose(), -1.0, par);
        }
        k += w;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    fn filled(r: usize, c: usize, seed: usize) -> Mat<f64> {
        Mat::from_fn(r, c, |i, j| {
            ((i * 7919 + j * 104_729 + seed * 13) % 1009) as f64 / 1009.0 - 0.5
        })
    }

    fn max_diff(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
        let mut worst = 0.0f64;
        for j in 0..a.ncols() {
            for i in 0..a.nrows() {
                worst = worst.max((a[(i, j)] - b[(i, j)]).abs());
            }
        }
        worst
    }

    #[test]
    fn matmul_equals_faer_for_transposed_operands_and_both_accumulations() {
        let (a, b) = (filled(300, 170, 1), filled(230, 170, 2));
        for accum in [Accum::Replace, Accum::Add] {
            let mut ours = filled(300, 230, 3);
            let mut theirs = ours.clone();
            matmul(
                ours.as_mut(),
                accum,
                a.as_ref(),
                b.transpose(),
                -0.5,
                Par::rayon(0),
            );
            faer::linalg::matmul::matmul(
                theirs.as_mut(),
                accum,
                a.as_ref(),
                b.transpose(),
                -0.5,
                Par::Seq,
            );
            assert!(max_diff(ours.as_ref(), theirs.as_ref()) < 1e-12);
        }
        // A strided sub-view as destination.
        let mut big = filled(400, 400, 4);
        let mut want = big.clone();
        matmul(
            big.as_mut().submatrix_mut(10, 20, 300, 230),
            Accum::Add,
            a.as_ref(),
            b.transpose(),
            1.0,
            Par::Seq,
        );
        faer::linalg::matmul::matmul(
            want.as_mut().submatrix_mut(10, 20, 300, 230),
            Accum::Add,
            a.as_ref(),
            b.transpose(),
            1.0,
            Par::Seq,
        );
        assert!(max_diff(big.as_ref(), want.as_ref()) < 1e-12);
    }

    #[test]
    fn lower_product_solve_and_cholesky_match_dense_references() {
        let n = 700; // several panels and a partial one
        let g = filled(n, n, 5);
        let mut a = &g * g.transpose();
        for i in 0..n {
            a[(i, i)] += n as f64;
        }
        // matmul_lower: lower triangle equals the full product's.
        let x = filled(n, 90, 6);
        let mut lower = a.clone();
        matmul_lower(
            lower.as_mut(),
            x.as_ref(),
            x.transpose(),
            -1.0,
            Par::rayon(0),
        );
        let full = &a - &x * x.transpose();
        for j in 0..n {
            for i in j..n {
                assert!((lower[(i, j)] - full[(i, j)]).abs() < 1e-10);
            }
        }
        // Cholesky: equals faer's factor on the lower triangle.
        let mut ours = a.clone();
        cholesky_in_place(ours.as_mut(), Par::rayon(0)).unwrap();
        let reference = a.llt(faer::Side::Lower).unwrap();
        let l = reference.L();
        for j in 0..n {
            for i in j..n {
                assert!((ours[(i, j)] - l[(i, j)]).abs() <= 1e-12 * l[(j, j)].abs());
            }
        }
        // Solve: L (L⁻¹ B) = B, plain and unit-diagonal.
        let b = filled(n, 40, 7);
        for unit in [false, true] {
            let mut y = b.clone();
            solve_lower_in_place(ours.as_ref(), unit, y.as_mut(), Par::rayon(0));
            let mut lt = Mat::<f64>::from_fn(n, n, |i, j| if i > j { ours[(i, j)] } else { 0.0 });
            for i in 0..n {
                lt[(i, i)] = if unit { 1.0 } else { ours[(i, i)] };
            }
            let back = &lt * &y;
            assert!(max_diff(back.as_ref(), b.as_ref()) < 1e-9, "unit = {unit}");
        }
        // A non-positive pivot in the third panel is reported at its row.
        let mut bad = a.clone();
        bad[(600, 600)] = -1.0;
        assert_eq!(cholesky_in_place(bad.as_mut(), Par::Seq), Err(600));
    }
}
