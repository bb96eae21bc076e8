//! The JSON schema of a FLODANCE fit (`fit --json`, and the `estimate`/`fit` parts of `run --json`), and
//! atomic file writing (temp name in the same directory, renamed on success).

use crate::scaling::calibrate::Calibration;
use crate::scaling::estimate::Candidate;
use crate::scaling::{Estimate, Fit, ShapeCheck};
use serde::Serialize;
use std::collections::BTreeMap;

/// The sensitivity band: how much the extrapolation depends on which window points were fitted.
#[derive(Debug, Clone, Serialize)]
pub struct SensitivityJson {
    /// 2.5th percentile of the half-window refits' predictions (≤ logdet).
    pub low: f64,
    /// 97.5th percentile (≥ logdet).
    pub high: f64,
    /// Number of refits.
    pub refits: usize,
}

/// The calibrated interval (SPEC §3.7): the backtests' error model carried to the target's ratio.
#[derive(Debug, Clone, Serialize)]
pub struct CalibratedJson {
    /// Lower end.
    pub low: f64,
    /// Upper end.
    pub high: f64,
    /// Nominal level (the quantile of normalised backtest errors used); coverage is measured, not assumed.
    pub level: f64,
    /// The extrapolation ratio n / n_s the model was carried to.
    pub ratio: f64,
    /// The error model `|r| ≈ scale · (1 − ln e / ln t)` (e the window end, t the predicted size) and its
    /// backtests.
    pub model: Calibration,
}

/// The extrapolated log-det at the target size, its two intervals and the shape check.
#[derive(Debug, Clone, Serialize)]
pub struct EstimateJson {
    /// Target size n (number of examples).
    pub n: usize,
    /// Extrapolated ℓ̂_n.
    pub logdet: f64,
    /// Same as `sensitivity.low` (kept for scripts written against the first schema).
    pub low: f64,
    /// Same as `sensitivity.high`.
    pub high: f64,
    /// The refit-sensitivity band.
    pub sensitivity: SensitivityJson,
    /// The calibrated interval, or null when the window is too short for backtests.
    pub calibrated: Option<CalibratedJson>,
    /// The fitted curve's per-example increments checked on [n_s, n].
    pub shape: ShapeCheck,
    /// Warnings (also printed): a law that turns up, no calibrated interval, …
    pub warnings: Vec<String>,
}

/// The fitted model and its diagnostics.
#[derive(Debug, Clone, Serialize)]
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
    /// Number of half-window refits behind the interval.
    pub ensemble: usize,
    /// Whether the law was fitted with non-increasing increments on [n₀, n] (`--shape-constrained`).
    pub shape_constrained: bool,
    /// The laws scored by backtest error when q or α was `auto` (empty otherwise).
    pub candidates: Vec<Candidate>,
}

/// The `fit` subcommand's JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    /// The extrapolated log-det.
    pub estimate: EstimateJson,
    /// The fitted model.
    pub fit: FitJson,
    /// The nested log-det file read.
    pub input: String,
    /// With `--n-sample` below the file's last k and the target in the file: the exact ℓ at the target.
    pub exact: Option<ExactAtTarget>,
}

/// The exact ℓ_n at the target, read from the nested log-det file beyond the fit's sample.
#[derive(Debug, Clone, Serialize)]
pub struct ExactAtTarget {
    /// Target n.
    pub n: usize,
    /// Exact ℓ_n.
    pub logdet: f64,
    /// (ℓ̂_n − ℓ_n) / |ℓ_n|.
    pub relative_error: f64,
}

impl EstimateJson {
    /// The JSON form of an estimate.
    pub fn from_estimate(e: &Estimate) -> Self {
        let (low, high) = e.sensitivity;
        Self {
            n: e.target_n,
            logdet: e.logdet,
            low,
            high,
            sensitivity: SensitivityJson {
                low,
                high,
                refits: e.fit.ensemble_size(),
            },
            calibrated: e
                .calibration
                .as_ref()
                .zip(e.calibrated)
                .map(|(cal, (low, high))| CalibratedJson {
                    low,
                    high,
                    level: cal.level,
                    ratio: e.target_n as f64 / e.fit.ns as f64,
                    model: cal.clone(),
                }),
            shape: e.shape.clone(),
            warnings: e.warnings.clone(),
        }
    }
}

impl FitJson {
    /// The serialisable summary of an estimate's fit.
    pub fn from_estimate(e: &Estimate) -> Self {
        Self {
            candidates: e.candidates.clone(),
            ..Self::from_fit(&e.fit)
        }
    }

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
            ensemble: fit.ensemble_size(),
            shape_constrained: fit.concave_to.is_some(),
            candidates: Vec::new(),
        }
    }
}
