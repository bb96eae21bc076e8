//! Exact ln|det| of small in-RAM matrices (blocks, the pseudo-NTK, tests): Cholesky when the matrix is
//! SPD, otherwise LU with partial pivoting (|det| and its sign). Also the finiteness check for tiles.

use crate::{Error, Result};
use faer::{MatRef, Side};

/// ln|det A| of a small dense square matrix, its sign, and which factorisation gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenseLogDet {
    /// ln|det A|.
    pub logdet: f64,
    /// Sign of det A (+1.0, −1.0; 0.0 if A is exactly singular, when `logdet` is −∞).
    pub sign: f64,
    /// True if Cholesky succeeded (A numerically SPD); false if LU was used.
    pub cholesky: bool,
}

/// ln|det A| via faer's Cholesky (lower triangle of A read), falling back to partial-pivoting LU of the
/// full A if Cholesky meets a non-positive pivot.
pub fn dense_logdet(a: MatRef<'_, f64>) -> DenseLogDet {
    let n = a.nrows();
    if let Ok(llt) = a.llt(Side::Lower) {
        let l = llt.L();
        let logdet = 2.0 * (0..n).map(|i| l[(i, i)].ln()).sum::<f64>();
        return DenseLogDet {
            logdet,
            sign: 1.0,
            cholesky: true,
        };
    }
    let lu = a.partial_piv_lu();
    let u = lu.U();
    let mut sign = permutation_sign(lu.P().arrays().0);
    let mut logdet = 0.0;
    for i in 0..n {
        let v = u[(i, i)];
        if v < 0.0 {
            sign = -sign;
        }
        if v == 0.0 {
            sign = 0.0;
        }
        logdet += v.abs().ln();
    }
    DenseLogDet {
        logdet,
        sign,
        cholesky: false,
    }
}

/// Sign (+1/−1) of a permutation given as its forward index array.
fn permutation_sign(perm: &[usize]) -> f64 {
    let mut seen = vec![false; perm.len()];
    let mut sign = 1.0;
    for start in 0..perm.len() {
        if seen[start] {
            continue;
        }
        let mut len = 0;
        let mut i = start;
        while !seen[i] {
            seen[i] = true;
            i = perm[i];
            len += 1;
        }
        if len % 2 == 0 {
            sign = -sign;
        }
    }
    sign
}

/// Error naming the first non-finite entry of a tile filled from rows `r0..` and columns `c0..`.
pub fn check_finite(tile: MatRef<'_, f64>, r0: usize, c0: usize) -> Result<()> {
    for j in 0..tile.ncols() {
        for i in 0..tile.nrows() {
            let v = tile[(i, j)];
            if !v.is_finite() {
                return Err(Error::NonFinite {
                    value: v,
                    row: r0 + i,
                    col: c0 + j,
                    rows: r0..r0 + tile.nrows(),
                    cols: c0..c0 + tile.ncols(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    #[test]
    fn cholesky_and_lu_agree_with_hand_values() {
        let spd = Mat::from_fn(2, 2, |i, j| [[4.0, 2.0], [2.0, 3.0]][i][j]);
        let r = dense_logdet(spd.as_ref());
        assert!(r.cholesky && (r.logdet - 8f64.ln()).abs() < 1e-14 && r.sign == 1.0);
        // det [[0,1],[1,0]] = −1; [[1,2],[3,4]] = −2; [[2,0,0],[0,-1,0],[0,0,-3]] = 6.
        let swap = Mat::from_fn(2, 2, |i, j| if i != j { 1.0 } else { 0.0 });
        let r = dense_logdet(swap.as_ref());
        assert!(!r.cholesky && r.logdet.abs() < 1e-14 && r.sign == -1.0);
        let g = Mat::from_fn(2, 2, |i, j| [[1.0, 2.0], [3.0, 4.0]][i][j]);
        let r = dense_logdet(g.as_ref());
        assert!((r.logdet - 2f64.ln()).abs() < 1e-14 && r.sign == -1.0);
        let d = Mat::from_fn(3, 3, |i, j| if i == j { [2.0, -1.0, -3.0][i] } else { 0.0 });
        let r = dense_logdet(d.as_ref());
        assert!((r.logdet - 6f64.ln()).abs() < 1e-14 && r.sign == 1.0);
    }

    #[test]
    fn permutation_signs() {
        assert_eq!(permutation_sign(&[0, 1, 2]), 1.0);
        assert_eq!(permutation_sign(&[1, 0, 2]), -1.0);
        assert_eq!(permutation_sign(&[1, 2, 0]), 1.0);
    }
}
