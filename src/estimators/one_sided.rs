//! The one-sided trace estimators of Hazelden (arXiv 2511.10796) for a kernel `K = F Fᵀ / s` given only
//! one kind of Jacobian product (SPEC §6):
//! - reverse only: `v_j = Fᵀ z_j` with Rademacher z_j ∈ R^m;
//! - forward only: `v_j = F w_j` with Rademacher w_j ∈ R^(factor dim).
//!
//! With `G = VᵀV / s` (S × S), both give `tr K ≈ mean_j G_jj` (for reverse, `z_jᵀ K z_j = ‖Fᵀz_j‖²/s`;
//! for forward, `E ‖F w‖²/s = tr FᵀF / s = tr K`) and `tr K² ≈ mean_{j<k} G_jk²` (for independent
//! Rademacher z, z': `E (zᵀ K z')² = ‖K‖_F²`; forward: `E (wᵀ B w')² = ‖B‖_F²` with `B = FᵀF/s` and
//! `‖B‖_F = ‖K‖_F`), a U-statistic over probe pairs. So neither needs a kernel product.
//!
//! The vectors v_j are held in batches that fit `memory_bytes` (reverse: factor-dim values each); pairs are
//! formed within a batch, so a smaller budget means fewer pairs (still unbiased, larger standard error).

use super::trace::{rademacher, Estimated, TraceMoments};
use crate::{Error, Result};
use faer::{Mat, MatRef};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A kernel given through its factor F (m × factor_dim), `K = F Fᵀ / s`.
pub trait Factored: Sync {
    /// Kernel order m.
    fn order(&self) -> usize;
    /// Columns of F.
    fn factor_dim(&self) -> usize;
    /// The scale s.
    fn divisor(&self) -> f64;
    /// `Fᵀ V` for V (m × q).
    fn jt(&self, v: MatRef<'_, f64>) -> Result<Mat<f64>>;
    /// `F W` for W (factor_dim × q).
    fn j(&self, w: MatRef<'_, f64>) -> Result<Mat<f64>>;
}

/// Which one-sided product the estimator draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `Fᵀ z`, z ∈ R^m (reverse mode).
    Reverse,
    /// `F w`, w ∈ R^(factor dim) (forward mode).
    Forward,
}

/// Estimate `tr K` and `tr K²` with `probes` one-sided products on `side`; `memory_bytes` bounds the
/// probe vectors held at once (at least three are always held, so that every batch has a jackknife).
pub fn one_sided(
    f: &dyn Factored,
    side: Side,
    probes: usize,
    seed: u64,
    memory_bytes: usize,
) -> Result<TraceMoments> {
    if probes < 3 {
        return Err(Error::Usage(format!(
            "the one-sided estimators need --probes >= 3 (tr K² pairs probes; its jackknife leaves one out), got {probes}"
        )));
    }
    // Each probe holds a vector of the factor dimension and one of the kernel order.
    let len = f.factor_dim() + f.order();
    let batch = (memory_bytes / (8 * len).max(1)).clamp(3, probes);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let s = f.divisor();
    let mut diag = Vec::with_capacity(probes);
    // Per-batch U-statistics of tr K² with their variances, combined by pair count.
    let mut parts: Vec<(f64, f64, f64)> = Vec::new();
    let mut done = 0;
    while done < probes {
        let b = batch.min(probes - done);
        let v = match side {
            Side::Reverse => f.jt(rademacher(&mut rng, f.order(), b).as_ref())?,
            Side::Forward => f.j(rademacher(&mut rng, f.factor_dim(), b).as_ref())?,
        };
        let g = (v.transpose() * &v) * (1.0 / s);
        diag.extend((0..b).map(|j| g[(j, j)]));
        if b >= 3 {
            parts.push(pair_statistic(&g));
        }
        done += b;
    }
    let total_pairs: f64 = parts.iter().map(|p| p.2).sum();
    let value = parts.iter().map(|p| p.0 * p.2).sum::<f64>() / total_pairs;
    let var = parts
        .iter()
        .map(|p| (p.2 / total_pairs).powi(2) * p.1)
        .sum::<f64>();
    let (reverse, forward) = match side {
        Side::Reverse => (probes, 0),
        Side::Forward => (0, probes),
    };
    Ok(TraceMoments {
        method: match side {
            Side::Reverse => "one-sided-reverse".into(),
            Side::Forward => "one-sided-forward".into(),
        },
        probes,
        trace: Estimated::from_samples(&diag, 0.0),
        trace_sq: Estimated {
            value,
            std_error: var.sqrt(),
        },
        products: 0,
        reverse_products: reverse,
        forward_products: forward,
    })
}

/// The U-statistic `mean_{j<k} G_jk²` of one batch, its jackknife variance (leave one probe out:
/// `U_(j)` averages the pairs without probe j; conservative for U-statistics) and its pair count.
fn pair_statistic(g: &Mat<f64>) -> (f64, f64, f64) {
    let s = g.nrows();
    let mut total = 0.0;
    let mut per_probe = vec![0.0; s];
    for j in 0..s {
        for k in (j + 1)..s {
            let h = g[(j, k)] * g[(j, k)];
            total += h;
            per_probe[j] += h;
            per_probe[k] += h;
        }
    }
    let pairs = (s * (s - 1) / 2) as f64;
    let u = total / pairs;
    if s < 3 {
        return (u, 0.0, pairs);
    }
    let loo_pairs = ((s - 1) * (s - 2) / 2) as f64;
    let loo: Vec<f64> = per_probe.iter().map(|r| (total - r) / loo_pairs).collect();
    let mean = loo.iter().sum::<f64>() / s as f64;
    let sf = s as f64;
    let var = (sf - 1.0) / sf * loo.iter().map(|v| (v - mean).powi(2)).sum::<f64>();
    (u, var, pairs)
}
