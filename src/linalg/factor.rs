//! Factorisation of one pivot block of MEMDET: Cholesky (`spd`) by the blocked routine of `gemm.rs`, LDLᵀ without pivoting (`sym`) by faer,
//! with per-row pivot log-magnitudes and signs, and failures reported at their global row index.

use crate::{Error, Result};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::ldlt;
use faer::reborrow::ReborrowMut;
use faer::{MatMut, MatRef, Par};
use serde::Serialize;

/// Which factorisation the matrix admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Assume {
    /// Symmetric positive definite: Cholesky LLᵀ.
    Spd,
    /// Symmetric (possibly indefinite): LDLᵀ without pivoting.
    Sym,
}

impl Assume {
    /// Parse `spd` / `sym`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "spd" => Ok(Assume::Spd),
            "sym" => Ok(Assume::Sym),
            other => Err(Error::Usage(format!(
                "--assume {other:?}: expected `spd` or `sym`"
            ))),
        }
    }

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Assume::Spd => "spd",
            Assume::Sym => "sym",
        }
    }
}

/// Per-row results of factoring one pivot block.
#[derive(Debug, Clone, Default)]
pub struct BlockFactor {
    /// log|pivot| per row (2·log L_ii for Cholesky, log|D_ii| for LDLᵀ).
    pub logabs: Vec<f64>,
    /// Sign of each pivot (+1 or −1).
    pub signs: Vec<f64>,
    /// D_ii for LDLᵀ (empty for Cholesky).
    pub d: Vec<f64>,
}

/// Factor the symmetric block in place. On entry the lower triangle holds the (updated) block; on exit it
/// holds L (unit-diagonal with D on the diagonal for `Sym`); the strict upper triangle may be overwritten. `offset` is the block's first global
/// row, used in error messages.
pub fn factor_pivot(
    mut block: MatMut<'_, f64>,
    assume: Assume,
    offset: usize,
) -> Result<BlockFactor> {
    let n = block.nrows();
    let par = Par::rayon(0);
    match assume {
        Assume::Spd => match super::gemm::cholesky_in_place(block.rb_mut(), par) {
            Ok(()) => {
                let logabs = (0..n).map(|i| 2.0 * block[(i, i)].ln()).collect();
                Ok(BlockFactor {
                    logabs,
                    signs: vec![1.0; n],
                    d: Vec::new(),
                })
            }
            // The block is partly overwritten on failure; the caller rebuilds it and asks
            // `schur_pivot_value` for the value.
            Err(index) => Err(Error::NotPositiveDefinite {
                index: offset + index,
                value: f64::NAN,
            }),
        },
        Assume::Sym => {
            let req = ldlt::factor::cholesky_in_place_scratch::<f64>(n, par, Default::default());
            let mut mem = MemBuffer::new(req);
            let result = ldlt::factor::cholesky_in_place(
                block.rb_mut(),
                Default::default(),
                par,
                MemStack::new(&mut mem),
                Default::default(),
            );
            match result {
                Ok(_) => {
                    let d: Vec<f64> = (0..n).map(|i| block[(i, i)]).collect();
                    if let Some(i) = d.iter().position(|v| *v == 0.0 || !v.is_finite()) {
                        return Err(Error::ZeroPivot {
                            index: offset + i,
                            value: d[i],
                        });
                    }
                    let logabs = d.iter().map(|v| v.abs().ln()).collect();
                    let signs = d.iter().map(|v| v.signum()).collect();
                    Ok(BlockFactor { logabs, signs, d })
                }
                Err(ldlt::factor::LdltError::ZeroPivot { index }) => Err(Error::ZeroPivot {
                    index: offset + index,
                    value: block[(index, index)],
                }),
            }
        }
    }
}

/// The pivot at local row `index` of a symmetric block (lower triangle valid), i.e. the Schur complement
/// entry `a_ii - a_i,<i A_<i⁻¹ a_<i,i`, by LDLᵀ of the leading (index+1)² block in place (the block is
/// destroyed). Used to report the value of a failed Cholesky pivot.
pub fn schur_pivot_value(mut block: MatMut<'_, f64>, index: usize) -> f64 {
    let n = index + 1;
    let par = Par::rayon(0);
    let req = ldlt::factor::cholesky_in_place_scratch::<f64>(n, par, Default::default());
    let mut mem = MemBuffer::new(req);
    let lead = block.rb_mut().submatrix_mut(0, 0, n, n);
    match ldlt::factor::cholesky_in_place(
        lead,
        Default::default(),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    ) {
        Ok(_) => block[(index, index)],
        Err(ldlt::factor::LdltError::ZeroPivot { index: i }) => block[(i, i)],
    }
}

/// Overwrite `x` with L⁻¹·x, where `factor` holds the factored pivot block (its lower triangle).
pub fn solve_lower(factor: MatRef<'_, f64>, assume: Assume, x: MatMut<'_, f64>) {
    super::gemm::solve_lower_in_place(factor, assume == Assume::Sym, x, Par::rayon(0));
}

/// Divide row r of `x` by `d[r]` (applies D⁻¹ of an LDLᵀ pivot block).
pub fn scale_rows_inv(mut x: MatMut<'_, f64>, d: &[f64]) {
    for j in 0..x.ncols() {
        for (i, di) in d.iter().enumerate() {
            x[(i, j)] /= di;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    #[test]
    fn cholesky_failure_names_the_pivot_and_its_value() {
        // diag(4, 1, -2, 5) with a coupling between rows 0 and 1: pivots 4, 0.75, -2, 5.
        let a = Mat::<f64>::from_fn(4, 4, |i, j| match (i, j) {
            (0, 1) | (1, 0) => 1.0,
            _ if i == j => [4.0, 1.0, -2.0, 5.0][i],
            _ => 0.0,
        });
        match factor_pivot(a.clone().as_mut(), Assume::Spd, 10) {
            Err(Error::NotPositiveDefinite { index, .. }) => assert_eq!(index, 12),
            other => panic!("expected NotPositiveDefinite, got {other:?}"),
        }
        assert!((schur_pivot_value(a.clone().as_mut(), 2) + 2.0).abs() < 1e-15);
        assert!((schur_pivot_value(a.clone().as_mut(), 1) - 0.75).abs() < 1e-15);
    }

    #[test]
    fn ldlt_gives_signed_pivots() {
        let mut a = Mat::<f64>::from_fn(2, 2, |i, j| [[2.0, 4.0], [4.0, 3.0]][i][j]);
        let f = factor_pivot(a.as_mut(), Assume::Sym, 0).unwrap();
        // D = (2, 3 - 16/2 = -5)
        assert_eq!(f.signs, vec![1.0, -1.0]);
        assert!((f.d[1] + 5.0).abs() < 1e-15);
        assert!((f.logabs[0] - 2f64.ln()).abs() < 1e-15);
        let mut z = Mat::<f64>::from_fn(2, 2, |i, j| [[0.0, 1.0], [1.0, 0.0]][i][j]);
        assert!(matches!(
            factor_pivot(z.as_mut(), Assume::Sym, 5),
            Err(Error::ZeroPivot { index: 5, .. })
        ));
    }
}
