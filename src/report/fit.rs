//! The JSON schema of a FLODANCE fit (`fit --json`, and the `estimate`/`fit` parts of `run --json`), and
//! atomic file writing (temp name in the same directory, renamed on success).

use crate::scaling::Fit;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The extrapolated log-det at the target size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EstimateJson {
    /// Target size n (number of examples).
    pub n: usize,
    /// Extrapolated ℓ̂_n.
    pub logdet: f64,
    /// Lower end of the sensitivity interval (2.5th percentile of the refits, ≤ logdet).
    pub low: f64,
    /// Upper end of the sensitivity interval (97.5th percentile of the refits, ≥ logdet).
    pub high: f64,
}

/// The fitted model and its diagnostics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitJson {
    /// Burn-in n₀.
    pub n0: usize,
    /// Largest k fitted (n_s).
    pub ns: usize,
    /// Number of points in the window.
    pub points: usize,
    /// Laurent order q.
    pub q: usize,
    /// Number of plain k^{-i} terms.
    pub r: usize,
    /// Weight exponent α.
    pub alpha: f64,
    /// Coefficients by name: a, c, beta0..beta_q, gamma1..gamma_r.
    pub coefficients: BTreeMap<String, f64>,
    /// RMS of ℓ_k − fit(k) over the window.
    pub rms_residual: f64,
    /// Largest |ℓ_k − fit(k)| over the window.
    pub max_abs_residual: f64,
    /// Numerical rank of the design matrix.
    pub rank: usize,
    /// Condition number of the column-scaled weighted design (null if rank-deficient).
    pub condition: Option<f64>,
    /// Warnings: a degenerate fit (rank below the coefficient count), a target inside the window.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Number of half-window refits behind the interval.
    pub ensemble: usize,
}

/// The `fit` subcommand's JSON document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitReport {
    /// The extrapolated log-det.
    pub estimate: EstimateJson,
    /// The fitted model.
    pub fit: FitJson,
    /// The nested log-det file read.
    pub input: String,
}

impl EstimateJson {
    /// ℓ̂_n and its interval from a fit.
    pub fn from_fit(fit: &Fit, n: usize) -> Self {
        let (low, high) = fit.interval(n as f64);
        Self {
            n,
            logdet: fit.predict(n as f64),
            low,
            high,
        }
    }
}

impl FitJson {
    /// The serialisable summary of a fit.
    pub fn from_fit(fit: &Fit) -> Self {
        Self {
            n0: fit.n0,
            ns: fit.ns,
            points: fit.points,
            q: fit.q,
            r: fit.r,
            alpha: fit.alpha,
            coefficients: fit
                .coefficients
                .iter()
                .map(|c| (c.name.clone(), c.value))
                .collect(),
            rms_residual: fit.rms_residual,
            max_abs_residual: fit.max_abs_residual,
            rank: fit.rank,
            condition: fit.condition.is_finite().then_some(fit.condition),
            warnings: fit.warnings.clone(),
            ensemble: fit.ensemble_size(),
        }
    }
}
