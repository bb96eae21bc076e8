//! Factorisation of one pivot block of MEMDET: Cholesky (`spd`) by the blocked routine of `gemm.rs`; for
//! `sym`, LDLᵀ without pivoting (when nested log-dets are asked for) or Bunch–Kaufman LBLᵀ with rook
//! pivoting (faer's `lblt`) otherwise; with per-row pivot log-magnitudes and signs, and failures reported at
//! their global row index.

use super::pivots::Pivots;
use crate::{Error, Result};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::{lblt, ldlt};
use faer::reborrow::ReborrowMut;
use faer::{MatMut, MatRef, Par};
use serde::Serialize;

/// Which factorisation the matrix admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Assume {
    /// Symmetric positive definite: Cholesky LLᵀ.
    Spd,
    /// Symmetric (possibly indefinite): LDLᵀ, Bunch–Kaufman pivoted unless nested log-dets are asked for.
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
    /// B and P for LDLᵀ (empty for Cholesky).
    pub pivots: Pivots,
    /// Pivot magnitude per row (L_ii² for Cholesky; see [`Pivots::magnitudes`] for LDLᵀ).
    pub magnitudes: Vec<f64>,
}

/// Factor the symmetric block in place. On entry the lower triangle holds the (updated) block; on exit it
/// holds L (unit-diagonal with D on the diagonal for `Sym`; with `pivoting`, L of `P S Pᵀ = L B Lᵀ`, B's
/// diagonal on the diagonal and B's subdiagonal in [`Pivots::sub`], the strict lower entries of 2×2 blocks
/// zero); the strict upper triangle may be overwritten. `offset` is the block's first global row, used in
/// error messages.
pub fn factor_pivot(
    mut block: MatMut<'_, f64>,
    assume: Assume,
    pivoting: bool,
    offset: usize,
) -> Result<BlockFactor> {
    let n = block.nrows();
    let par = Par::rayon(0);
    match assume {
        Assume::Spd => match super::gemm::cholesky_in_place(block.rb_mut(), par) {
            Ok(()) => {
                let logabs = (0..n).map(|i| 2.0 * block[(i, i)].ln()).collect();
                let magnitudes = (0..n).map(|i| block[(i, i)] * block[(i, i)]).collect();
                Ok(BlockFactor {
                    logabs,
                    signs: vec![1.0; n],
                    pivots: Pivots::default(),
                    magnitudes,
                })
            }
            // The block is partly overwritten on failure; the caller rebuilds it and asks
            // `schur_pivot_value` for the value.
            Err(index) => Err(Error::NotPositiveDefinite {
                index: offset + index,
                value: f64::NAN,
                sym_pivoted: false,
            }),
        },
        Assume::Sym if pivoting => factor_lblt(block, offset),
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
                    let pivots = Pivots::diagonal(d);
                    let (logabs, signs) = pivots.logabs_signs();
                    let magnitudes = pivots.magnitudes();
                    Ok(BlockFactor {
                        logabs,
                        signs,
                        pivots,
                        magnitudes,
                    })
                }
                Err(ldlt::factor::LdltError::ZeroPivot { index }) => Err(Error::ZeroPivot {
                    index: offset + index,
                    value: block[(index, index)],
                }),
            }
        }
    }
}

/// Bunch–Kaufman `P S Pᵀ = L B Lᵀ` of the block (lower triangle read) with rook pivoting, whose |L| entries
/// are bounded (by about 2.8), so that the factorisation of the block is backward stable.
fn factor_lblt(mut block: MatMut<'_, f64>, offset: usize) -> Result<BlockFactor> {
    use lblt::factor::{LbltParams, PivotingStrategy};
    let n = block.nrows();
    let par = Par::rayon(0);
    let params = LbltParams {
        pivoting: PivotingStrategy::Rook,
        ..<LbltParams as faer::Auto<f64>>::auto()
    };
    let req = lblt::factor::cholesky_in_place_scratch::<usize, f64>(n, par, params.into());
    let mut mem = MemBuffer::new(req);
    let mut sub = faer::diag::Diag::<f64>::zeros(n);
    let mut perm = vec![0usize; n];
    let mut perm_inv = vec![0usize; n];
    lblt::factor::cholesky_in_place(
        block.rb_mut(),
        sub.as_mut(),
        &mut perm,
        &mut perm_inv,
        par,
        MemStack::new(&mut mem),
        params.into(),
    );
    let sub: Vec<f64> = (0..n).map(|k| sub[k]).collect();
    for k in 0..n.saturating_sub(1) {
        if sub[k] != 0.0 {
            block[(k + 1, k)] = 0.0;
        }
    }
    let pivots = Pivots {
        diag: (0..n).map(|k| block[(k, k)]).collect(),
        sub,
        perm,
    };
    if let Some((k, value)) = pivots.first_singular() {
        return Err(Error::Singular {
            index: offset + pivots.original_row(k),
            value,
        });
    }
    let (logabs, signs) = pivots.logabs_signs();
    let magnitudes = pivots.magnitudes();
    Ok(BlockFactor {
        logabs,
        signs,
        pivots,
        magnitudes,
    })
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
        match factor_pivot(a.clone().as_mut(), Assume::Spd, false, 10) {
            Err(Error::NotPositiveDefinite { index, .. }) => assert_eq!(index, 12),
            other => panic!("expected NotPositiveDefinite, got {other:?}"),
        }
        assert!((schur_pivot_value(a.clone().as_mut(), 2) + 2.0).abs() < 1e-15);
        assert!((schur_pivot_value(a.clone().as_mut(), 1) - 0.75).abs() < 1e-15);
    }

    #[test]
    fn ldlt_gives_signed_pivots() {
        let mut a = Mat::<f64>::from_fn(2, 2, |i, j| [[2.0, 4.0], [4.0, 3.0]][i][j]);
        let f = factor_pivot(a.as_mut(), Assume::Sym, false, 0).unwrap();
        // D = (2, 3 - 16/2 = -5)
        assert_eq!(f.signs, vec![1.0, -1.0]);
        assert!((f.pivots.diag[1] + 5.0).abs() < 1e-15);
        assert!((f.logabs[0] - 2f64.ln()).abs() < 1e-15);
        let mut z = Mat::<f64>::from_fn(2, 2, |i, j| [[0.0, 1.0], [1.0, 0.0]][i][j]);
        assert!(matches!(
            factor_pivot(z.as_mut(), Assume::Sym, false, 5),
            Err(Error::ZeroPivot { index: 5, .. })
        ));
    }

    #[test]
    fn pivoted_ldlt_reads_the_lower_triangle_and_keeps_the_determinant() {
        // [[0, 1, 2], [1, 0, 3], [2, 3, 1]]: zero leading pivots need a 2×2 block or a swap.
        let vals = [[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 1.0]];
        let full = Mat::<f64>::from_fn(3, 3, |i, j| vals[i][j]);
        let det = full.determinant();
        // The strict upper triangle is stale in MEMDET's diagonal tiles: poison it.
        let mut a = Mat::<f64>::from_fn(3, 3, |i, j| if i < j { f64::NAN } else { vals[i][j] });
        let f = factor_pivot(a.as_mut(), Assume::Sym, true, 0).unwrap();
        let logabs: f64 = f.logabs.iter().sum();
        let sign: f64 = f.signs.iter().product();
        assert!((logabs - det.abs().ln()).abs() < 1e-14, "{logabs} vs {det}");
        assert_eq!(sign, det.signum());
        // L Lᵀ-style reconstruction: P S Pᵀ = L B Lᵀ.
        let n = 3;
        let l = Mat::<f64>::from_fn(n, n, |i, j| match i.cmp(&j) {
            std::cmp::Ordering::Greater => a[(i, j)],
            std::cmp::Ordering::Equal => 1.0,
            std::cmp::Ordering::Less => 0.0,
        });
        let p = &f.pivots;
        let b = Mat::<f64>::from_fn(n, n, |i, j| match (i, j) {
            _ if i == j => p.diag[i],
            _ if i == j + 1 => p.sub.get(j).copied().unwrap_or(0.0),
            _ if j == i + 1 => p.sub.get(i).copied().unwrap_or(0.0),
            _ => 0.0,
        });
        // apply_inverse really inverts B.
        let mut x = b.clone();
        p.apply_inverse(x.as_mut());
        for i in 0..n {
            for j in 0..n {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((x[(i, j)] - want).abs() < 1e-14);
            }
        }
        let rebuilt = &l * &b * l.transpose();
        for i in 0..n {
            for j in 0..n {
                let want = vals[f.pivots.original_row(i)][f.pivots.original_row(j)];
                assert!((rebuilt[(i, j)] - want).abs() < 1e-13, "({i},{j})");
            }
        }
    }
}
