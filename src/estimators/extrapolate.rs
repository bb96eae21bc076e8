//! Naive extrapolations of nested log-dets ℓ_k (k = 1..n_s) to ℓ_n, the baselines FLODANCE is compared
//! with (SPEC §4). They read the nested log-dets of one factorisation, not the tile source.
//!
//! - **Linear in k**: least-squares line `ℓ_k ≈ a + b·k` on the window k ∈ [n₀, n_s], evaluated at n.
//! - **Stopped Cholesky** (after Bartels, Boomsma, Frellsen & Garreau, JMLR 2023, "Kernel-matrix determinant
//!   estimates from stopped Cholesky decomposition"): ln det K_n is a sum of per-example increments
//!   δ_k = ℓ_k − ℓ_{k−1} (the log-det of the Schur complement block of example k, i.e. the log posterior
//!   variances), revealed in order. Stopping after n_s examples, the unseen n − n_s increments are
//!   replaced by an estimate of their conditional expectation from the last `window` observed ones:
//!   `Average`: ℓ̂_n = ℓ_{n_s} + (n − n_s) · mean(δ_k over the window) — Bartels et al.'s estimate when the
//!   increments decrease in conditional expectation only slowly (it is their upper-bound-type estimate;
//!   their lower bound needs a noise floor σ² > 0, which an NTK does not have, so it is not used);
//!   `Trend`: a least-squares line δ_k ≈ u + v·k on the window, summed exactly over k = n_s+1..n.

use super::Estimate;
use crate::scaling::lstsq::lstsq;
use crate::{Error, Result};
use std::time::Instant;

/// Linear-in-k extrapolation of ℓ_k.
#[derive(Debug, Clone)]
pub struct LinearExtrapolation {
    /// Burn-in: fit k ≥ n0.
    pub n0: usize,
    /// Extrapolate to this n.
    pub target_n: usize,
}

impl LinearExtrapolation {
    /// Estimate ℓ_n from nested `(k, ℓ_k)`.
    pub fn estimate(&self, nested: &[(usize, f64)]) -> Result<Estimate> {
        let start = Instant::now();
        let window: Vec<(usize, f64)> = nested
            .iter()
            .copied()
            .filter(|&(k, _)| k >= self.n0)
            .collect();
        check_finite(&window)?;
        if window.len() < 2 {
            return Err(Error::Usage(format!(
                "linear extrapolation needs at least 2 nested log-dets with k >= {}, found {}",
                self.n0,
                window.len()
            )));
        }
        let rows: Vec<Vec<f64>> = window.iter().map(|&(k, _)| vec![1.0, k as f64]).collect();
        let rhs: Vec<f64> = window.iter().map(|&(_, l)| l).collect();
        let sol = lstsq(&rows, &rhs)?;
        let (a, b) = (sol.coef[0], sol.coef[1]);
        Ok(Estimate {
            logdet: a + b * self.target_n as f64,
            std_error: None,
            matvecs: 0,
            seconds: start.elapsed().as_secs_f64(),
            details: serde_json::json!({
                "intercept": a, "slope": b, "n0": self.n0, "points": window.len(), "target_n": self.target_n,
            }),
        })
    }
}

/// How the unseen increments of the stopped Cholesky estimator are predicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StoppedCholeskyRule {
    /// Constant: the mean of the last `window` increments.
    Average,
    /// Linear in k, fitted on the last `window` increments.
    Trend,
}

/// Stopped-Cholesky extrapolation (see the module doc).
#[derive(Debug, Clone)]
pub struct StoppedCholesky {
    /// Number of last increments used (clamped to what is available).
    pub window: usize,
    /// Extrapolate to this n.
    pub target_n: usize,
    /// Constant or linear continuation of the increments.
    pub rule: StoppedCholeskyRule,
}

impl StoppedCholesky {
    /// Estimate ℓ_n from nested `(k, ℓ_k)` for consecutive k ending at n_s (ℓ_0 = 0 is implied).
    pub fn estimate(&self, nested: &[(usize, f64)]) -> Result<Estimate> {
        let start = Instant::now();
        let mut pts = nested.to_vec();
        pts.sort_by_key(|p| p.0);
        check_finite(&pts)?;
        let &(ns, lns) = pts
            .last()
            .ok_or_else(|| Error::Usage("stopped Cholesky: no nested log-dets".into()))?;
        let w = self.window.max(1).min(pts.len());
        let tail = &pts[pts.len() - w..];
        let mut incs = Vec::with_capacity(w);
        for (idx, &(k, l)) in tail.iter().enumerate() {
            let global = pts.len() - w + idx;
            let (kp, lp) = if global == 0 {
                (0, 0.0)
            } else {
                pts[global - 1]
            };
            if k != kp + 1 {
                return Err(Error::Input(format!(
                    "stopped Cholesky needs nested log-dets for consecutive k; k = {kp} is followed by k = {k}"
                )));
            }
            incs.push((k as f64, l - lp));
        }
        let remaining = self.target_n.saturating_sub(ns) as f64;
        let (n, nsf) = (self.target_n as f64, ns as f64);
        let (logdet, details) = match self.rule {
            StoppedCholeskyRule::Average => {
                let mean = incs.iter().map(|p| p.1).sum::<f64>() / incs.len() as f64;
                (
                    lns + remaining * mean,
                    serde_json::json!({ "mean_increment": mean }),
                )
            }
            StoppedCholeskyRule::Trend => {
                if incs.len() < 2 {
                    return Err(Error::Usage(
                        "stopped Cholesky (trend) needs a window of at least 2".into(),
                    ));
                }
                let rows: Vec<Vec<f64>> = incs.iter().map(|p| vec![1.0, p.0]).collect();
                let rhs: Vec<f64> = incs.iter().map(|p| p.1).collect();
                let sol = lstsq(&rows, &rhs)?;
                let (u, v) = (sol.coef[0], sol.coef[1]);
                // Σ_{k=ns+1}^{n} (u + v k) = (n − ns) u + v (n(n+1) − ns(ns+1)) / 2
                let sum = remaining * u + v * (n * (n + 1.0) - nsf * (nsf + 1.0)) / 2.0;
                (
                    lns + sum,
                    serde_json::json!({ "increment_intercept": u, "increment_slope": v }),
                )
            }
        };
        Ok(Estimate {
            logdet,
            std_error: None,
            matvecs: 0,
            seconds: start.elapsed().as_secs_f64(),
            details: serde_json::json!({
                "rule": self.rule, "window": w, "ns": ns, "target_n": self.target_n, "fit": details,
            }),
        })
    }
}

fn check_finite(points: &[(usize, f64)]) -> Result<()> {
    match points.iter().find(|p| !p.1.is_finite()) {
        Some(&(k, l)) => Err(Error::Input(format!("nested log-det at k = {k} is {l}"))),
        None => Ok(()),
    }
}
