//! Train-mode BatchNorm over a channel-major batch: each channel's `N·H·W` values are one contiguous row,
//! so statistics, normalisation and the backward rule run one channel per task. Statistics and the
//! parameter gradients are accumulated in f64.
//!
//! Forward: `y = γ·x̂ + β`, `x̂ = (x − μ)/sqrt(σ² + ε)` with the batch mean μ and the biased batch variance σ².
//! Backward: `dγ = Σ dy·x̂`, `dβ = Σ dy`, `dx = γ/sqrt(σ² + ε) · (dy − dβ/L − x̂·dγ/L)` with L = N·H·W.

use super::real::{sum2_f64, sum_f64, Real};
use rayon::prelude::*;

/// Batch statistics of one BatchNorm layer for one step.
#[derive(Debug, Clone, Default)]
pub struct NormStats {
    /// Per-channel batch mean μ.
    pub mean: Vec<f64>,
    /// Per-channel 1/sqrt(σ² + ε) with the biased variance σ².
    pub inv_std: Vec<f64>,
    /// Per-channel unbiased variance (divisor L − 1): what goes into the running variance.
    pub var_unbiased: Vec<f64>,
}

/// The batch statistics of every channel row of `x` (rows of `len` values), with ε added to the variance.
pub fn batch_stats<T: Real>(x: &[T], channels: usize, eps: f64, len: usize, stats: &mut NormStats) {
    let per: Vec<(f64, f64, f64)> = x[..channels * len]
        .par_chunks(len)
        .map(|row| {
            let mean = sum_f64(row, |v| v.to_f64()) / len as f64;
            let ss = sum_f64(row, |v| {
                let d = v.to_f64() - mean;
                d * d
            });
            let inv_std = 1.0 / (ss / len as f64 + eps).sqrt();
            (mean, inv_std, ss / (len as f64 - 1.0))
        })
        .collect();
    stats.mean = per.iter().map(|p| p.0).collect();
    stats.inv_std = per.iter().map(|p| p.1).collect();
    stats.var_unbiased = per.iter().map(|p| p.2).collect();
}

/// Statistics from running estimates (eval mode): mean μ and 1/sqrt(var + ε).
pub fn running_stats(mean: &[f64], var: &[f64], eps: f64) -> NormStats {
    NormStats {
        mean: mean.to_vec(),
        inv_std: var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
        var_unbiased: var.to_vec(),
    }
}

/// y = γ·(x − μ)·inv_std + β per channel row of `len` values, with the statistics in `stats`.
pub fn apply<T: Real>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    len: usize,
    stats: &NormStats,
    y: &mut [T],
) {
    let c = gamma.len();
    y[..c * len]
        .par_chunks_mut(len)
        .enumerate()
        .for_each(|(ch, out)| {
            let row = &x[ch * len..][..len];
            let scale = gamma[ch].to_f64() * stats.inv_std[ch];
            let (scale_t, shift_t) = (
                T::from_f64(scale),
                T::from_f64(beta[ch].to_f64() - stats.mean[ch] * scale),
            );
            for (o, &v) in out.iter_mut().zip(row) {
                *o = v * scale_t + shift_t;
            }
        });
}

/// Gradients of train-mode BatchNorm: `dgamma`, `dbeta` replaced; `dx` replaced or added to (`add`).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    x: &[T],
    gamma: &[T],
    dy: &[T],
    len: usize,
    stats: &NormStats,
    dgamma: &mut [T],
    dbeta: &mut [T],
    dx: Option<(&mut [T], bool)>,
) {
    let c = gamma.len();
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (row, grad) = (&x[ch * len..][..len], &dy[ch * len..][..len]);
            let (mean, inv_std) = (stats.mean[ch], stats.inv_std[ch]);
            let (sg, sb) = sum2_f64(
                row,
                grad,
                |v, d| d.to_f64() * (v.to_f64() - mean),
                |_, d| d.to_f64(),
            );
            (sg * inv_std, sb)
        })
        .collect();
    for (ch, &(sg, sb)) in sums.iter().enumerate() {
        dgamma[ch] = T::from_f64(sg);
        dbeta[ch] = T::from_f64(sb);
    }
    let Some((dx, add)) = dx else { return };
    dx[..c * len]
        .par_chunks_mut(len)
        .enumerate()
        .for_each(|(ch, out)| {
            let (row, grad) = (&x[ch * len..][..len], &dy[ch * len..][..len]);
            let (mean, inv_std) = (stats.mean[ch], stats.inv_std[ch]);
            let (sg, sb) = sums[ch];
            let k = gamma[ch].to_f64() * inv_std;
            let (mean_dy, mean_dyx) = (sb / len as f64, sg / len as f64);
            // dx = k·dy − k·mean_dy − k·mean_dyx·x̂, with x̂ = (x − μ)·inv_std: an affine map of (dy, x).
            let a = T::from_f64(k);
            let b = T::from_f64(-k * mean_dyx * inv_std);
            let c0 = T::from_f64(-k * mean_dy + k * mean_dyx * inv_std * mean);
            let values = out.iter_mut().zip(row.iter().zip(grad));
            if add {
                values.for_each(|(o, (&v, &d))| *o += a * d + b * v + c0);
            } else {
                values.for_each(|(o, (&v, &d))| *o = a * d + b * v + c0);
            }
        });
}
