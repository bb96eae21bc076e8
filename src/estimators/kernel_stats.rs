//! The NTK statistics of SPEC §6 from their ingredients, exact or estimated.
//!
//! Definitions (K is m × m, exactly the matrix `ntk --out` writes, scale s included):
//! - `tr K`; `‖K‖_F = sqrt(tr K²)`; effective rank `r_eff = (tr K)² / ‖K‖_F²` (between 1 and rank K);
//! - the label target `T = Y Yᵀ`: for `--outputs full` Y is the one-hot label vector flattened like K's
//!   rows (y[i·d + c] = 1 iff example i has label c, so T = y yᵀ); for the n × n modes (sum, trace,
//!   logit:K) Y is the n × d one-hot matrix and T[i, j] = 1 iff examples i and j share a label;
//! - alignment `A(K, T) = ⟨K, T⟩_F / (‖K‖_F ‖T‖_F)`, with `⟨K, T⟩_F = Σ_c y_cᵀ K y_c`;
//! - centred alignment: the same for `HKH` and `HTH`, `H = I − 11ᵀ/m` (Cortes, Mohri, Rostamizadeh 2012):
//!   `⟨HKH, HTH⟩ = ⟨K, ỸỸᵀ⟩` with `Ỹ = HY` (column means removed), and
//!   `‖HKH‖_F² = ‖K‖_F² − (2/m)‖K1‖² + (1ᵀK1)²/m²`.
//!
//! The numerators only need `K [1, Y]` (1 + columns-of-Y products, exact even in the matrix-free route);
//! only `tr K` and `tr K²` are estimated there, and the derived statistics carry their standard errors by
//! first-order propagation, treating the two estimates as independent.

use super::trace::Estimated;
use faer::{Mat, MatRef};
use serde::Serialize;

/// The label target Y (m × c) for a kernel with `rows` rows per example (d for `full`, 1 otherwise).
pub fn label_targets(labels: &[usize], num_classes: usize, rows: usize) -> Mat<f64> {
    let n = labels.len();
    if rows > 1 {
        Mat::from_fn(n * rows, 1, |r, _| {
            if labels[r / rows] == r % rows {
                1.0
            } else {
                0.0
            }
        })
    } else {
        Mat::from_fn(
            n,
            num_classes,
            |i, c| if labels[i] == c { 1.0 } else { 0.0 },
        )
    }
}

/// `[1, Y]`: the vectors whose products with K give every alignment numerator.
pub fn probe_columns(y: MatRef<'_, f64>) -> Mat<f64> {
    Mat::from_fn(y.nrows(), y.ncols() + 1, |r, c| {
        if c == 0 {
            1.0
        } else {
            y[(r, c - 1)]
        }
    })
}

/// Exact quantities derived from `K [1, Y]`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TargetTerms {
    /// ⟨K, Y Yᵀ⟩_F.
    pub inner: f64,
    /// ⟨K, ỸỸᵀ⟩_F = ⟨HKH, HTH⟩_F.
    pub inner_centred: f64,
    /// ‖Y Yᵀ‖_F.
    pub target_norm: f64,
    /// ‖H Y Yᵀ H‖_F.
    pub target_norm_centred: f64,
    /// ‖K 1‖².
    pub k1_sq: f64,
    /// 1ᵀ K 1.
    pub k_sum: f64,
    /// m.
    pub m: usize,
}

impl TargetTerms {
    /// From `kx = K [1, Y]` and `y`.
    pub fn new(kx: MatRef<'_, f64>, y: MatRef<'_, f64>) -> Self {
        let m = y.nrows();
        let mf = m as f64;
        let c = y.ncols();
        fn col<'a>(mat: MatRef<'a, f64>, j: usize) -> impl Iterator<Item = f64> + 'a {
            (0..mat.nrows()).map(move |r| mat[(r, j)])
        }
        let k1: Vec<f64> = col(kx, 0).collect();
        let k_sum: f64 = k1.iter().sum();
        let k1_sq: f64 = k1.iter().map(|v| v * v).sum();
        let means: Vec<f64> = (0..c).map(|j| col(y, j).sum::<f64>() / mf).collect();
        let mut inner = 0.0;
        let mut inner_centred = 0.0;
        for (j, &mean) in means.iter().enumerate() {
            // K ỹ = K y − (K 1) ȳ ;  ⟨K, ỹỹᵀ⟩ = ỹᵀ (K ỹ)
            let ky: Vec<f64> = col(kx, j + 1).collect();
            let kyt: Vec<f64> = ky.iter().zip(&k1).map(|(a, b)| a - mean * b).collect();
            inner += col(y, j).zip(&ky).map(|(a, b)| a * b).sum::<f64>();
            inner_centred += col(y, j)
                .zip(&kyt)
                .map(|(a, b)| (a - mean) * b)
                .sum::<f64>();
        }
        // ‖Y Yᵀ‖_F = ‖Yᵀ Y‖_F, and the same for Ỹ.
        let gram = |centred: bool| -> f64 {
            let mut s = 0.0;
            for a in 0..c {
                for b in 0..c {
                    let ma = if centred { means[a] } else { 0.0 };
                    let mb = if centred { means[b] } else { 0.0 };
                    let v: f64 = (0..m).map(|r| (y[(r, a)] - ma) * (y[(r, b)] - mb)).sum();
                    s += v * v;
                }
            }
            s.sqrt()
        };
        Self {
            inner,
            inner_centred,
            target_norm: gram(false),
            target_norm_centred: gram(true),
            k1_sq,
            k_sum,
            m,
        }
    }

    /// `‖HKH‖_F²` from `‖K‖_F²`.
    pub fn centred_frob_sq(&self, frob_sq: f64) -> f64 {
        let m = self.m as f64;
        frob_sq - 2.0 * self.k1_sq / m + self.k_sum * self.k_sum / (m * m)
    }
}

/// The statistics of one kernel (each with a standard error, 0 when exact).
#[derive(Debug, Clone, Serialize)]
pub struct KernelStatistics {
    /// tr K.
    pub trace: Estimated,
    /// ‖K‖_F.
    pub frobenius: Estimated,
    /// (tr K)² / ‖K‖_F².
    pub effective_rank: Estimated,
    /// A(K, YYᵀ).
    pub alignment: Estimated,
    /// A(HKH, HYYᵀH); None when the centred ‖HKH‖_F² estimate is not positive (reason in `note`).
    pub centred_alignment: Option<Estimated>,
    /// Why a value is missing, or a caution about it.
    pub note: Option<String>,
}

impl KernelStatistics {
    /// From (estimated or exact) `tr K` and `tr K²` and the exact target terms.
    pub fn new(trace: Estimated, frob_sq: Estimated, terms: &TargetTerms) -> Self {
        let rse_f2 = frob_sq.relative_error();
        let rse_t = trace.relative_error();
        let frob = frob_sq.value.sqrt();
        let frobenius = Estimated {
            value: frob,
            std_error: frob * rse_f2 / 2.0,
        };
        let reff = trace.value * trace.value / frob_sq.value;
        let effective_rank = Estimated {
            value: reff,
            std_error: reff * (4.0 * rse_t * rse_t + rse_f2 * rse_f2).sqrt(),
        };
        let a = terms.inner / (frob * terms.target_norm);
        let alignment = Estimated {
            value: a,
            std_error: a.abs() * rse_f2 / 2.0,
        };
        let c2 = terms.centred_frob_sq(frob_sq.value);
        let mut note = None;
        let centred_alignment = if c2 > 0.0 && terms.target_norm_centred > 0.0 {
            let ac = terms.inner_centred / (c2.sqrt() * terms.target_norm_centred);
            if frob_sq.std_error == 0.0 && c2 < 1e-8 * frob_sq.value {
                note = Some(format!(
                    "‖HKH‖_F² is {:.1e} of ‖K‖_F²: the centred alignment loses about {:.0} digits to cancellation",
                    c2 / frob_sq.value,
                    (frob_sq.value / c2).log10()
                ));
            }
            Some(Estimated {
                value: ac,
                std_error: ac.abs() * frob_sq.std_error / c2 / 2.0,
            })
        } else {
            note = Some(if terms.target_norm_centred == 0.0 {
                "centred alignment undefined: the centred labels are zero (one class only)".into()
            } else {
                format!(
                    "centred alignment not reported: the estimate of ‖HKH‖_F² = ‖K‖_F² − (2/m)‖K1‖² + (1ᵀK1)²/m² is {c2:.3e} ≤ 0 (use more probes or the exact pass)"
                )
            });
            None
        };
        Self {
            trace,
            frobenius,
            effective_rank,
            alignment,
            centred_alignment,
            note,
        }
    }
}
