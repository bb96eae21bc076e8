//! Non-negative least squares and least-distance programming (Lawson & Hanson, "Solving Least Squares
//! Problems", 1974, ch. 23): the small dense solvers behind the shape-constrained FLODANCE fit.

use crate::{Error, Result};
use faer::Mat;

/// `min ‖A x − b‖₂ subject to x ≥ 0` for a dense A (r × m, any shape), by Lawson and Hanson's active-set
/// algorithm. Returns x (length m). Each passive-set subproblem is solved as a minimum-norm least-squares
/// problem by SVD, so a rank-deficient passive set does not break it.
pub fn nnls(a: &Mat<f64>, b: &[f64]) -> Result<Vec<f64>> {
    let (r, m) = (a.nrows(), a.ncols());
    let norm1 = (0..m)
        .map(|j| (0..r).map(|i| a[(i, j)].abs()).sum::<f64>())
        .fold(0.0, f64::max);
    let tol = 10.0 * f64::EPSILON * norm1.max(f64::MIN_POSITIVE) * (r.max(m) as f64);
    let mut x = vec![0.0f64; m];
    let mut passive = vec![false; m];
    for _outer in 0..3 * m.max(1) {
        let w = gradient(a, b, &x);
        let candidate = (0..m)
            .filter(|&j| !passive[j])
            .max_by(|&i, &j| w[i].total_cmp(&w[j]));
        let Some(t) = candidate.filter(|&t| w[t] > tol) else {
            return Ok(x);
        };
        passive[t] = true;
        for _inner in 0..3 * m.max(1) {
            let s = passive_solve(a, b, &passive)?;
            if (0..m).all(|j| !passive[j] || s[j] > 0.0) {
                x = s;
                break;
            }
            let step = (0..m)
                .filter(|&j| passive[j] && s[j] <= 0.0)
                .map(|j| x[j] / (x[j] - s[j]))
                .fold(f64::INFINITY, f64::min);
            for j in 0..m {
                x[j] += step * (s[j] - x[j]);
                if passive[j] && x[j] <= tol {
                    passive[j] = false;
                    x[j] = 0.0;
                }
            }
        }
    }
    Err(Error::Internal(
        "non-negative least squares did not converge within 3·m active-set steps".into(),
    ))
}

/// `Aᵀ (b − A x)`: the negative gradient of ½‖A x − b‖².
fn gradient(a: &Mat<f64>, b: &[f64], x: &[f64]) -> Vec<f64> {
    let (r, m) = (a.nrows(), a.ncols());
    let resid: Vec<f64> = (0..r)
        .map(|i| b[i] - (0..m).map(|j| a[(i, j)] * x[j]).sum::<f64>())
        .collect();
    (0..m)
        .map(|j| (0..r).map(|i| a[(i, j)] * resid[i]).sum())
        .collect()
}

/// The minimum-norm least-squares solution on the passive columns (zero elsewhere).
fn passive_solve(a: &Mat<f64>, b: &[f64], passive: &[bool]) -> Result<Vec<f64>> {
    let cols: Vec<usize> = (0..a.ncols()).filter(|&j| passive[j]).collect();
    let sub = Mat::from_fn(a.nrows(), cols.len(), |i, k| a[(i, cols[k])]);
    let y = min_norm_solve(&sub, b)?;
    let mut s = vec![0.0f64; a.ncols()];
    for (k, &j) in cols.iter().enumerate() {
        s[j] = y[k];
    }
    Ok(s)
}

/// The minimum-norm solution of `min ‖A y − b‖₂` by the SVD of A (any shape).
fn min_norm_solve(a: &Mat<f64>, b: &[f64]) -> Result<Vec<f64>> {
    let svd = a.thin_svd().map_err(|e| {
        Error::Internal(format!(
            "SVD in non-negative least squares did not converge: {e:?}"
        ))
    })?;
    let sigma: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let smax = sigma.iter().copied().fold(0.0, f64::max);
    let tol = smax * (a.nrows().max(a.ncols()) as f64) * f64::EPSILON;
    let (u, v) = (svd.U(), svd.V());
    let mut y = vec![0.0f64; a.ncols()];
    for (k, &s) in sigma.iter().enumerate() {
        if s <= tol {
            continue;
        }
        let c = (0..a.nrows()).map(|i| u[(i, k)] * b[i]).sum::<f64>() / s;
        for (j, yj) in y.iter_mut().enumerate() {
            *yj += v[(j, k)] * c;
        }
    }
    Ok(y)
}

/// Least-distance programming: `min ‖z‖₂ subject to E z ≥ f` (E: c × n), by Lawson and Hanson's reduction
/// to NNLS on `[Eᵀ; fᵀ] w ≈ e_{n+1}`. When every constraint already holds at z = 0 (all f ≤ 0) the answer is
/// exactly zero. Incompatible constraints are an error.
pub fn ldp(e: &Mat<f64>, f: &[f64]) -> Result<Vec<f64>> {
    let (c, n) = (e.nrows(), e.ncols());
    let m = Mat::from_fn(n + 1, c, |i, j| if i < n { e[(j, i)] } else { f[j] });
    let mut target = vec![0.0f64; n + 1];
    target[n] = 1.0;
    let w = nnls(&m, &target)?;
    let resid: Vec<f64> = (0..=n)
        .map(|i| (0..c).map(|j| m[(i, j)] * w[j]).sum::<f64>() - target[i])
        .collect();
    let norm = resid.iter().map(|r| r * r).sum::<f64>().sqrt();
    if norm <= 1e3 * f64::EPSILON {
        return Err(Error::Input(
            "the shape constraints cannot all hold at once (least-distance problem infeasible)"
                .into(),
        ));
    }
    Ok((0..n).map(|i| -resid[i] / resid[n]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nnls_matches_a_hand_solved_problem() {
        // min ‖x − (1, −2)‖ with x ≥ 0 is x = (1, 0).
        let a = Mat::from_fn(2, 2, |i, j| if i == j { 1.0 } else { 0.0 });
        let x = nnls(&a, &[1.0, -2.0]).unwrap();
        assert_eq!(x, vec![1.0, 0.0]);
    }

    #[test]
    fn ldp_projects_onto_a_half_plane() {
        // min ‖z‖ with z₀ + z₁ ≥ 2 is z = (1, 1); with z₀ ≥ −1 (already true at 0) it is z = 0 exactly.
        let e = Mat::from_fn(1, 2, |_, _| 1.0);
        let z = ldp(&e, &[2.0]).unwrap();
        assert!(
            (z[0] - 1.0).abs() < 1e-14 && (z[1] - 1.0).abs() < 1e-14,
            "{z:?}"
        );
        let e = Mat::from_fn(1, 2, |_, j| if j == 0 { 1.0 } else { 0.0 });
        assert_eq!(ldp(&e, &[-1.0]).unwrap(), vec![0.0, 0.0]);
        // z₀ ≥ 1 and −z₀ ≥ 0 cannot both hold.
        let e = Mat::from_fn(2, 1, |i, _| if i == 0 { 1.0 } else { -1.0 });
        assert!(ldp(&e, &[1.0, 0.0]).is_err());
    }
}
