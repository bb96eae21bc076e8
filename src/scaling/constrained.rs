//! Least squares under linear inequality constraints `G x ≤ 0` (Lawson & Hanson's LSI → LDP reduction), for
//! the shape-constrained FLODANCE fit. With the column-scaled SVD `A D⁻¹ = U Σ Vᵀ` (rank-r part), the
//! coefficients are `x = D⁻¹ V_r (c₀ + Σ_r⁻¹ z)` where `c₀ = Σ_r⁻¹ U_rᵀ b` is the unconstrained solution's
//! and the residual is `‖z‖² + const`; the constraints become `E z ≥ f` and z is the least-distance point.
//! When the unconstrained solution satisfies every constraint, z = 0 and the result is exactly it.

use super::lstsq::{Lstsq, ScaledSvd};
use super::nnls::ldp;
use crate::{Error, Result};
use faer::Mat;

/// `min ‖A x − b‖₂` subject to `g · x ≤ 0` for every row g of `constraints` (A given row by row, N ≥ p).
pub fn lstsq_nonpositive(
    rows: &[Vec<f64>],
    rhs: &[f64],
    constraints: &[Vec<f64>],
) -> Result<Lstsq> {
    let svd = ScaledSvd::new(rows)?;
    let kept = svd.kept();
    let c0 = svd.coordinates(rhs);
    let scaled0 = svd.scaled_from(&c0);
    let x0: Vec<f64> = scaled0.iter().zip(&svd.scale).map(|(y, s)| y / s).collect();
    let p = svd.scale.len();
    // h = D⁻¹ V_r Σ_r⁻¹ (p × r): how a unit step in z moves the coefficients.
    let h = Mat::from_fn(p, kept.len(), |j, t| {
        svd.v[(j, kept[t])] / svd.scale[j] / svd.sigma[kept[t]]
    });
    let mut e_rows: Vec<Vec<f64>> = Vec::new();
    let mut f = Vec::new();
    for g in constraints {
        let row: Vec<f64> = (0..kept.len())
            .map(|t| -(0..p).map(|j| g[j] * h[(j, t)]).sum::<f64>())
            .collect();
        let bound: f64 = g.iter().zip(&x0).map(|(g, x)| g * x).sum();
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        let size: f64 = g.iter().zip(&x0).map(|(g, x)| (g * x).abs()).sum();
        if norm == 0.0 {
            if bound > 64.0 * f64::EPSILON * size {
                return Err(Error::Input(
                    "a shape constraint cannot be met by any coefficients of this model".into(),
                ));
            }
            continue;
        }
        e_rows.push(row.iter().map(|v| v / norm).collect());
        f.push(bound / norm);
    }
    let coef = if f.iter().all(|&v| v <= 0.0) {
        x0
    } else {
        let e = Mat::from_fn(e_rows.len(), kept.len(), |i, t| e_rows[i][t]);
        let z = ldp(&e, &f)?;
        let c: Vec<f64> = c0
            .iter()
            .zip(&z)
            .zip(&kept)
            .map(|((c, z), &k)| c + z / svd.sigma[k])
            .collect();
        let y = svd.scaled_from(&c);
        y.iter().zip(&svd.scale).map(|(y, s)| y / s).collect()
    };
    Ok(Lstsq {
        coef,
        rank: kept.len(),
        condition: svd.condition(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inactive_constraints_change_nothing_and_active_ones_bind() {
        // Fit y = 1 + 2x on x = 1..10 with constraint "slope ≤ 5" (inactive) and "slope ≤ 1" (active).
        let rows: Vec<Vec<f64>> = (1..=10).map(|x| vec![1.0, x as f64]).collect();
        let rhs: Vec<f64> = (1..=10).map(|x| 1.0 + 2.0 * x as f64).collect();
        let free = super::super::lstsq::lstsq(&rows, &rhs).unwrap();
        // slope − 5 ≤ 0 is not homogeneous; use slope·1 ≤ 0 on y' = y − 5x instead (slope' = −3 ≤ 0).
        let shifted: Vec<f64> = (1..=10).map(|x| rhs[x - 1] - 5.0 * x as f64).collect();
        let inactive = lstsq_nonpositive(&rows, &shifted, &[vec![0.0, 1.0]]).unwrap();
        let free_shifted = super::super::lstsq::lstsq(&rows, &shifted).unwrap();
        assert_eq!(inactive.coef, free_shifted.coef);
        assert!((free.coef[1] - 2.0).abs() < 1e-12);
        // slope ≤ 0 on y (true slope 2): the answer is the best constant, the mean of y = 12.
        let bound = lstsq_nonpositive(&rows, &rhs, &[vec![0.0, 1.0]]).unwrap();
        // The binding constraint is met to rounding of the scaled coordinates (≈ 1e-13 here).
        assert!(bound.coef[1].abs() < 1e-11, "{:?}", bound.coef);
        assert!((bound.coef[0] - 12.0).abs() < 1e-11, "{:?}", bound.coef);
    }
}
