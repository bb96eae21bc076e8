//! Linear least squares by the singular value decomposition of the column-scaled design matrix
//! (never the normal equations). Used by the FLODANCE fit and the naive extrapolations.

use crate::{Error, Result};
use faer::Mat;

/// The solution of `min ‖A x − b‖₂` and what it says about the problem's conditioning.
#[derive(Debug, Clone)]
pub struct Lstsq {
    /// Minimum-norm least-squares coefficients (in the caller's, unscaled, units).
    pub coef: Vec<f64>,
    /// Numerical rank of the column-scaled design: singular values above `σ_max · max(N, p) · ε`.
    pub rank: usize,
    /// 2-norm condition number `σ_max / σ_min` of the column-scaled design (∞ when rank-deficient).
    pub condition: f64,
}

/// The thin SVD `A D⁻¹ = U Σ Vᵀ` of a column-scaled design matrix (D: the columns' 2-norms), with the
/// rank tolerance applied. Shared by the plain and the shape-constrained least-squares solvers.
pub(crate) struct ScaledSvd {
    /// Column 2-norms D (1 for an all-zero column).
    pub scale: Vec<f64>,
    /// U (N × p).
    pub u: Mat<f64>,
    /// Singular values, in faer's (descending) order.
    pub sigma: Vec<f64>,
    /// V (p × p).
    pub v: Mat<f64>,
    /// Singular values at or below this are treated as zero: `σ_max · max(N, p) · ε`.
    pub tol: f64,
}

impl ScaledSvd {
    /// Scale and decompose the design given row by row (N × p, N ≥ p, every entry finite).
    pub fn new(rows: &[Vec<f64>]) -> Result<Self> {
        let n = rows.len();
        let p = rows.first().map_or(0, Vec::len);
        if p == 0 || n < p {
            return Err(Error::Input(format!(
                "least squares needs at least as many points as coefficients: {n} point(s) for {p} coefficient(s)"
            )));
        }
        if let Some((i, v)) = rows
            .iter()
            .flatten()
            .enumerate()
            .find(|(_, v)| !v.is_finite())
        {
            return Err(Error::Input(format!(
                "least squares: non-finite value {v} (entry {i}) in the design"
            )));
        }
        let mut scale = vec![0.0f64; p];
        for row in rows {
            for (s, v) in scale.iter_mut().zip(row) {
                *s = s.hypot(*v);
            }
        }
        for s in &mut scale {
            if *s == 0.0 {
                *s = 1.0;
            }
        }
        let a = Mat::from_fn(n, p, |i, j| rows[i][j] / scale[j]);
        let svd = a.thin_svd().map_err(|e| {
            Error::Internal(format!(
                "SVD of the {n}x{p} design matrix did not converge: {e:?}"
            ))
        })?;
        let sigma: Vec<f64> = svd.S().column_vector().iter().copied().collect();
        let smax = sigma.iter().copied().fold(0.0, f64::max);
        Ok(Self {
            scale,
            u: svd.U().to_owned(),
            sigma,
            v: svd.V().to_owned(),
            tol: smax * (n.max(p) as f64) * f64::EPSILON,
        })
    }

    /// Indices of the singular values above the rank tolerance.
    pub fn kept(&self) -> Vec<usize> {
        (0..self.sigma.len())
            .filter(|&k| self.sigma[k] > self.tol)
            .collect()
    }

    /// `Uᵀ b` restricted to the kept singular triplets, divided by σ (the unconstrained solution's
    /// coordinates in the basis `V`).
    pub fn coordinates(&self, rhs: &[f64]) -> Vec<f64> {
        self.kept()
            .into_iter()
            .map(|k| (0..rhs.len()).map(|i| self.u[(i, k)] * rhs[i]).sum::<f64>() / self.sigma[k])
            .collect()
    }

    /// The scaled coefficients `y = Σ_kept V_k c_k` for coordinates `c` (as from [`Self::coordinates`]).
    pub fn scaled_from(&self, coords: &[f64]) -> Vec<f64> {
        let p = self.scale.len();
        let mut y = vec![0.0f64; p];
        for (&k, c) in self.kept().iter().zip(coords) {
            for (j, yj) in y.iter_mut().enumerate() {
                *yj += self.v[(j, k)] * c;
            }
        }
        y
    }

    /// 2-norm condition number `σ_max / σ_min` (∞ when the design is rank-deficient).
    pub fn condition(&self) -> f64 {
        let smax = self.sigma.iter().copied().fold(0.0, f64::max);
        let smin = self.sigma.iter().copied().fold(f64::INFINITY, f64::min);
        if smin > 0.0 {
            smax / smin
        } else {
            f64::INFINITY
        }
    }
}

/// Solve `min ‖A x − b‖₂` for a tall `A` (N × p, N ≥ p) given row by row.
///
/// Each column is first divided by its 2-norm (a diagonal change of variables that does not change the
/// least-squares solution but removes the huge spread of scales between basis functions such as `1`,
/// `k` and `ln k!`), then the thin SVD `A D⁻¹ = U Σ Vᵀ` gives `x = D⁻¹ V Σ⁺ Uᵀ b`, with singular values below
/// the rank tolerance treated as zero (minimum-norm solution).
pub fn lstsq(rows: &[Vec<f64>], rhs: &[f64]) -> Result<Lstsq> {
    if rows.len() != rhs.len() {
        return Err(Error::Internal(format!(
            "lstsq: {} rows but {} right-hand sides",
            rows.len(),
            rhs.len()
        )));
    }
    if let Some((i, v)) = rhs.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Input(format!(
            "least squares: non-finite value {v} (right-hand side {i}) in the data"
        )));
    }
    let svd = ScaledSvd::new(rows)?;
    let y = svd.scaled_from(&svd.coordinates(rhs));
    Ok(Lstsq {
        coef: y.iter().zip(&svd.scale).map(|(y, s)| y / s).collect(),
        rank: svd.kept().len(),
        condition: svd.condition(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_exact_polynomial() {
        let xs: Vec<f64> = (0..20).map(|i| 1.0 + i as f64).collect();
        let rows: Vec<Vec<f64>> = xs.iter().map(|&x| vec![1.0, x, x * x * 1e6]).collect();
        let rhs: Vec<f64> = xs.iter().map(|&x| 2.0 - 3.0 * x + 4.0 * x * x).collect();
        let sol = lstsq(&rows, &rhs).unwrap();
        assert_eq!(sol.rank, 3);
        let expected = [2.0, -3.0, 4e-6];
        for (c, e) in sol.coef.iter().zip(expected) {
            assert!((c - e).abs() <= 1e-12 * e.abs().max(1e-6), "{c} vs {e}");
        }
    }

    #[test]
    fn rank_deficient_and_too_few_points() {
        let rows: Vec<Vec<f64>> = (0..5).map(|i| vec![1.0, 2.0, i as f64]).collect();
        let rhs: Vec<f64> = (0..5).map(|i| 1.0 + i as f64).collect();
        let sol = lstsq(&rows, &rhs).unwrap();
        assert_eq!(sol.rank, 2);
        assert!(sol.condition.is_infinite() || sol.condition > 1e14);
        let short = vec![vec![1.0, 2.0, 3.0]; 2];
        assert!(matches!(lstsq(&short, &[1.0, 2.0]), Err(Error::Input(_))));
    }
}
