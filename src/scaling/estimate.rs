//! One FLODANCE estimate as `run`, `fit` and `compare` report it: the law (with q and α chosen by backtest
//! error when asked), the extrapolated ℓ̂_n, the sensitivity band of the refits, the calibrated interval,
//! and the shape check of the fitted curve on [n_s, n].

use super::calibrate::{backtests, calibrate, Calibration};
use super::flodance::{fit, fit_concave, Fit, FitOptions};
use super::shape::ShapeCheck;
use crate::{Error, Result};
use serde::Serialize;

/// The Laurent orders `--q auto` chooses among.
pub const AUTO_Q: [usize; 4] = [1, 2, 3, 4];
/// The weight exponents `--alpha auto` chooses among.
pub const AUTO_ALPHA: [f64; 2] = [0.0, 1.0];

/// How the law is chosen and the estimate is reported.
#[derive(Debug, Clone)]
pub struct EstimateOptions {
    /// The fit's settings (q and α are the fixed choices when not automatic).
    pub fit: FitOptions,
    /// Choose q among [`AUTO_Q`] by backtest error.
    pub auto_q: bool,
    /// Choose α among [`AUTO_ALPHA`] by backtest error.
    pub auto_alpha: bool,
    /// Constrain the law's increments to be non-increasing on [n₀, n].
    pub shape_constrained: bool,
    /// Nominal level of the calibrated interval.
    pub level: f64,
}

/// One candidate law scored by its backtests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// Laurent order q.
    pub q: usize,
    /// Weight exponent α.
    pub alpha: f64,
    /// RMS of the backtests' relative errors (the selection score; smaller is better).
    pub backtest_rms: f64,
    /// True for the law used.
    pub chosen: bool,
}

/// The estimate and everything reported with it.
#[derive(Debug, Clone)]
pub struct Estimate {
    /// The fitted law used.
    pub fit: Fit,
    /// Target n.
    pub target_n: usize,
    /// ℓ̂_n.
    pub logdet: f64,
    /// The sensitivity band of the half-window refits (see [`Fit::interval`]).
    pub sensitivity: (f64, f64),
    /// The error model behind the calibrated interval, when the window allows one.
    pub calibration: Option<Calibration>,
    /// The calibrated interval at n, when available.
    pub calibrated: Option<(f64, f64)>,
    /// Why there is no calibrated interval, when there is none.
    pub calibration_note: Option<String>,
    /// The fitted curve's increments checked on [n_s, n].
    pub shape: ShapeCheck,
    /// The candidates scored when q or α was chosen automatically (empty otherwise).
    pub candidates: Vec<Candidate>,
    /// Warnings to show the user (terminal and JSON).
    pub warnings: Vec<String>,
}

/// Fit `nested` (k, ℓ_k), k = 1..n_s, by the chosen method and estimate ℓ_n at `target_n`.
pub fn estimate(
    nested: &[(usize, f64)],
    opts: &EstimateOptions,
    target_n: usize,
) -> Result<Estimate> {
    let ns = nested.iter().map(|p| p.0).max().unwrap_or(0);
    let method = |points: &[(usize, f64)], o: &FitOptions, upto: usize| -> Result<Fit> {
        if opts.shape_constrained {
            fit_concave(points, o, upto)
        } else {
            fit(points, o)
        }
    };
    let score = |o: &FitOptions| -> Result<Option<(f64, Vec<super::calibrate::Backtest>)>> {
        let quiet = FitOptions {
            ensemble: 0,
            ..o.clone()
        };
        let ncoef = 3 + o.q + o.r;
        let tests = backtests(nested, o.n0, ncoef, |p, t| method(p, &quiet, t))?;
        if tests.is_empty() {
            return Ok(None);
        }
        let ms = tests
            .iter()
            .map(|b| b.relative_error * b.relative_error)
            .sum::<f64>()
            / tests.len() as f64;
        Ok(Some((ms.sqrt(), tests)))
    };

    let mut chosen = opts.fit.clone();
    let mut candidates = Vec::new();
    if opts.auto_q || opts.auto_alpha {
        let qs: Vec<usize> = if opts.auto_q {
            AUTO_Q.to_vec()
        } else {
            vec![opts.fit.q]
        };
        let alphas: Vec<f64> = if opts.auto_alpha {
            AUTO_ALPHA.to_vec()
        } else {
            vec![opts.fit.alpha]
        };
        let mut best: Option<(f64, FitOptions)> = None;
        for &q in &qs {
            for &alpha in &alphas {
                let o = FitOptions {
                    q,
                    alpha,
                    ..opts.fit.clone()
                };
                if let Some((rms, _)) = score(&o)? {
                    candidates.push(Candidate {
                        q,
                        alpha,
                        backtest_rms: rms,
                        chosen: false,
                    });
                    if best.as_ref().is_none_or(|(b, _)| rms < *b) {
                        best = Some((rms, o));
                    }
                }
            }
        }
        let Some((_, o)) = best else {
            return Err(Error::Usage(format!(
                "--q auto / --alpha auto choose the law by backtests on sub-windows of [{}, {ns}], but that \
                 window is too short for any candidate; lower --burn-in or use a larger sample",
                opts.fit.n0
            )));
        };
        for c in &mut candidates {
            c.chosen = c.q == o.q && c.alpha == o.alpha;
        }
        chosen = o;
    }

    let fitted = method(nested, &chosen, target_n.max(ns))?;
    let logdet = fitted.predict(target_n as f64);
    let sensitivity = fitted.interval(target_n as f64);
    let shape = fitted.check_shape(ns, target_n.max(ns));
    let mut warnings: Vec<String> = shape.warning().into_iter().collect();
    let (calibration, calibrated, calibration_note) = match score(&chosen)? {
        Some((_, tests)) => match calibrate(tests, ns, opts.level) {
            Ok(cal) => {
                let ratio = target_n as f64 / ns as f64;
                let iv = cal.interval(logdet, ratio);
                (Some(cal), Some(iv), None)
            }
            Err(Error::Input(msg)) => (None, None, Some(msg)),
            Err(e) => return Err(e),
        },
        None => (
            None,
            None,
            Some(format!(
                "no calibrated interval: the window [{}, {ns}] is too short for backtests \
                 (each sub-window needs max(2 x coefficients, 10) points and must end by n_s / 1.25)",
                chosen.n0
            )),
        ),
    };
    if let Some(note) = &calibration_note {
        warnings.push(note.clone());
    }
    Ok(Estimate {
        fit: fitted,
        target_n,
        logdet,
        sensitivity,
        calibration,
        calibrated,
        calibration_note,
        shape,
        candidates,
        warnings,
    })
}
