//! Matrix-free estimates of `tr A` and `tr A² = ‖A‖_F²` of a symmetric operator from products `A Z` (SPEC §6):
//! - Hutchinson: `tr A ≈ mean zᵀ A z`, `tr A² ≈ mean ‖A z‖²` over S Rademacher probes (S products);
//! - Hutch++ (Meyer, Musco, Musco, Woodruff 2021): ⌊S/3⌋ products sketch the top range Q = orth(A Ω),
//!   ⌊S/3⌋ more give A Q, and the rest are Hutchinson probes on the deflated remainder:
//!   `tr A = tr(Qᵀ A Q) + E wᵀ A w` and `tr A² = ‖A Q‖_F² + E ‖A w‖²` with `w = (I − QQᵀ) z` (both
//!   splits are exact identities, so one set of S products estimates both traces).
//!
//! Standard errors are the sample standard deviation of the per-probe values over √(probes); the
//! deterministic Hutch++ part adds none.

use super::operator::LinearOp;
use crate::{Error, Result};
use faer::Mat;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// A stochastic estimate and its standard error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimated {
    /// The estimate.
    pub value: f64,
    /// Its standard error (0 for an exact value).
    pub std_error: f64,
}

impl Estimated {
    /// An exact value (standard error 0).
    pub fn exact(value: f64) -> Self {
        Self {
            value,
            std_error: 0.0,
        }
    }

    /// The mean of iid samples plus `offset`, with the standard error of the mean.
    pub fn from_samples(samples: &[f64], offset: f64) -> Self {
        let (mean, se) = mean_se(samples);
        Self {
            value: offset + mean,
            std_error: se,
        }
    }

    /// Relative standard error (∞ when the value is 0 and the error is not).
    pub fn relative_error(&self) -> f64 {
        if self.std_error == 0.0 {
            0.0
        } else {
            self.std_error / self.value.abs()
        }
    }
}

/// Estimates of `tr A` and `tr A²` and what they cost.
#[derive(Debug, Clone, Serialize)]
pub struct TraceMoments {
    /// Method name (`hutchinson`, `hutchpp`, `one-sided-reverse`, `one-sided-forward`).
    pub method: String,
    /// Probes S asked for.
    pub probes: usize,
    /// Estimate of tr A.
    pub trace: Estimated,
    /// Estimate of tr A² = ‖A‖_F².
    pub trace_sq: Estimated,
    /// Products with the operator A (a block of q vectors counts q).
    pub products: usize,
    /// Reverse-mode products Jᵀz used by the one-sided estimators (0 otherwise).
    pub reverse_products: usize,
    /// Forward-mode products J w used by the one-sided estimators (0 otherwise).
    pub forward_products: usize,
}

/// An m × cols block of Rademacher (±1) entries, drawn column by column from `rng`.
pub fn rademacher(rng: &mut ChaCha8Rng, m: usize, cols: usize) -> Mat<f64> {
    let mut z = Mat::<f64>::zeros(m, cols);
    for c in 0..cols {
        for r in 0..m {
            z[(r, c)] = if rng.gen::<bool>() { 1.0 } else { -1.0 };
        }
    }
    z
}

/// Mean and standard error of the mean (0 with fewer than two samples).
pub fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// `A Z` through the operator.
fn product(op: &dyn LinearOp, z: &Mat<f64>) -> Result<Mat<f64>> {
    let mut out = Mat::<f64>::zeros(op.dim(), z.ncols());
    op.apply(z.as_ref(), out.as_mut())?;
    Ok(out)
}

fn dot_col(a: &Mat<f64>, b: &Mat<f64>, c: usize) -> f64 {
    (0..a.nrows()).map(|r| a[(r, c)] * b[(r, c)]).sum()
}

/// Hutchinson's estimator with `probes` Rademacher probes drawn from ChaCha8 seeded with `seed`.
pub fn hutchinson(op: &dyn LinearOp, probes: usize, seed: u64) -> Result<TraceMoments> {
    if probes < 2 {
        return Err(Error::Usage(format!(
            "Hutchinson needs --probes >= 2 for a standard error, got {probes}"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let z = rademacher(&mut rng, op.dim(), probes);
    let az = product(op, &z)?;
    let quad: Vec<f64> = (0..probes).map(|c| dot_col(&z, &az, c)).collect();
    let sq: Vec<f64> = (0..probes).map(|c| dot_col(&az, &az, c)).collect();
    Ok(TraceMoments {
        method: "hutchinson".into(),
        probes,
        trace: Estimated::from_samples(&quad, 0.0),
        trace_sq: Estimated::from_samples(&sq, 0.0),
        products: probes,
        reverse_products: 0,
        forward_products: 0,
    })
}

/// Orthonormal basis of the range of `y` by Gram–Schmidt with reorthogonalisation; columns whose
/// remainder falls below 1e-12 of their norm (dependent directions) are dropped.
pub fn orthonormal_basis(y: &Mat<f64>) -> Mat<f64> {
    let m = y.nrows();
    let mut cols: Vec<Vec<f64>> = Vec::new();
    for c in 0..y.ncols() {
        let mut v: Vec<f64> = (0..m).map(|r| y[(r, c)]).collect();
        let norm0 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        for _ in 0..2 {
            for q in &cols {
                let d: f64 = q.iter().zip(&v).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(q).for_each(|(x, qi)| *x -= d * qi);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm0 > 0.0 && norm > 1e-12 * norm0 {
            v.iter_mut().for_each(|x| *x /= norm);
            cols.push(v);
        }
    }
    Mat::from_fn(m, cols.len(), |r, c| cols[c][r])
}

/// Hutch++ with `probes` ≥ 4 products: ⌊S/3⌋ sketch, ⌊S/3⌋ for A Q, the rest Hutchinson on the remainder.
pub fn hutchpp(op: &dyn LinearOp, probes: usize, seed: u64) -> Result<TraceMoments> {
    if probes < 4 {
        return Err(Error::Usage(format!(
            "Hutch++ needs --probes >= 4 (a third sketches the range, two or more estimate the rest), got {probes}"
        )));
    }
    let m = op.dim();
    let k = probes / 3;
    let l = probes - 2 * k;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let omega = rademacher(&mut rng, m, k);
    let q = orthonormal_basis(&product(op, &omega)?);
    let aq = product(op, &q)?;
    let top: f64 = (0..q.ncols()).map(|c| dot_col(&q, &aq, c)).sum();
    let top_sq: f64 = (0..q.ncols()).map(|c| dot_col(&aq, &aq, c)).sum();
    let g = rademacher(&mut rng, m, l);
    // w = (I − QQᵀ) g
    let qtg = q.transpose() * &g;
    let w = &g - &q * &qtg;
    let aw = product(op, &w)?;
    let quad: Vec<f64> = (0..l).map(|c| dot_col(&w, &aw, c)).collect();
    // ‖A w‖² estimates tr((I−P) A² (I−P)).
    let sq: Vec<f64> = (0..l).map(|c| dot_col(&aw, &aw, c)).collect();
    Ok(TraceMoments {
        method: "hutchpp".into(),
        probes,
        trace: Estimated::from_samples(&quad, top),
        trace_sq: Estimated::from_samples(&sq, top_sq),
        products: k + q.ncols() + l,
        reverse_products: 0,
        forward_products: 0,
    })
}

/// `H X`: subtract each column's mean.
pub fn centre_columns(x: &mut Mat<f64>) {
    let m = x.nrows() as f64;
    for c in 0..x.ncols() {
        let mean = (0..x.nrows()).map(|r| x[(r, c)]).sum::<f64>() / m;
        for r in 0..x.nrows() {
            x[(r, c)] -= mean;
        }
    }
}

/// The kernel–kernel alignment of two operators on the same space, by Hutchinson with shared probes.
#[derive(Debug, Clone, Serialize)]
pub struct PairAlignment {
    /// A(A, B) = ⟨A, B⟩_F / (‖A‖_F ‖B‖_F), standard error by the jackknife over probes.
    pub alignment: Estimated,
    /// ⟨A, B⟩_F ≈ mean (A z)·(B z).
    pub inner: Estimated,
    /// tr B ≈ mean zᵀ B z.
    pub trace_other: Estimated,
    /// ‖B‖_F ≈ sqrt(mean ‖B z‖²).
    pub frobenius_other: Estimated,
}

/// `A(a, b)` from `probes` ≥ 2 shared Rademacher probes (2·probes products): `⟨a, b⟩ = E (a z)·(b z)`,
/// `‖a‖_F² = E ‖a z‖²`, `‖b‖_F² = E ‖b z‖²`; the ratio's standard error by the leave-one-probe-out jackknife.
pub fn kernel_alignment(
    a: &dyn LinearOp,
    b: &dyn LinearOp,
    probes: usize,
    seed: u64,
) -> Result<PairAlignment> {
    if probes < 2 || a.dim() != b.dim() {
        return Err(Error::Usage(format!(
            "kernel alignment needs two operators of one order and >= 2 probes (orders {} and {}, {probes} probes)",
            a.dim(),
            b.dim()
        )));
    }
    let z = rademacher(&mut ChaCha8Rng::seed_from_u64(seed), a.dim(), probes);
    let (az, bz) = (product(a, &z)?, product(b, &z)?);
    let cross: Vec<f64> = (0..probes).map(|j| dot_col(&az, &bz, j)).collect();
    let aa: Vec<f64> = (0..probes).map(|j| dot_col(&az, &az, j)).collect();
    let bb: Vec<f64> = (0..probes).map(|j| dot_col(&bz, &bz, j)).collect();
    let tb: Vec<f64> = (0..probes).map(|j| dot_col(&z, &bz, j)).collect();
    let sums = |skip: Option<usize>, v: &[f64]| {
        let s: f64 = v.iter().sum::<f64>() - skip.map_or(0.0, |j| v[j]);
        s / (probes - usize::from(skip.is_some())) as f64
    };
    let ratio = |skip| sums(skip, &cross) / (sums(skip, &aa) * sums(skip, &bb)).sqrt();
    let loo: Vec<f64> = (0..probes).map(|j| ratio(Some(j))).collect();
    let mean = loo.iter().sum::<f64>() / probes as f64;
    let pf = probes as f64;
    let jack = ((pf - 1.0) / pf * loo.iter().map(|v| (v - mean).powi(2)).sum::<f64>()).sqrt();
    let f2 = Estimated::from_samples(&bb, 0.0);
    Ok(PairAlignment {
        alignment: Estimated {
            value: ratio(None),
            std_error: jack,
        },
        inner: Estimated::from_samples(&cross, 0.0),
        trace_other: Estimated::from_samples(&tb, 0.0),
        frobenius_other: Estimated {
            value: f2.value.sqrt(),
            std_error: f2.std_error / (2.0 * f2.value.sqrt()),
        },
    })
}
