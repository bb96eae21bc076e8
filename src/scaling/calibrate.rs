//! The calibrated interval (SPEC §3.7): how far is an extrapolation from the truth, judged by the sample's own
//! nested log-dets.
//!
//! Backtest: fit the same model on sub-windows [n₀, e] that end well before n_s (e ≤ n_s / 1.25) but hold at
//! least a third as many points as the real window (shorter windows are much worse conditioned than the real
//! fit and would measure their own noise amplification, not the real fit's error), predict ℓ_t at a few
//! t ∈ [1.25·e, n_s], and record the relative error r against the extrapolation ratio ρ = t / e and the scale
//! t / n_s. Error growth model: `|r| ≈ c · (ρ − 1)^γ · (t / n_s)^δ`, fitted by least squares on logarithms,
//! with γ clamped to [1, 2] (an extrapolation error grows at least in proportion to the distance
//! extrapolated, as a wrong slope does; the backtests' short range of ratios cannot support a steeper law
//! carried to ratios of 10–100) and δ to [0, 1] (a model error that grows with the sample, such as a term
//! missing from the law, makes the real fit err more at the same ratio than the smaller backtests did).
//! The interval at the target is `ℓ̂_n ± Q · c · (ρ* − 1)^γ · ρ*^δ · |ℓ̂_n|` with ρ* = n / n_s, Q the `level`
//! quantile of the normalised backtest errors `|r_i| / (c (ρ_i − 1)^γ (t_i / n_s)^δ)`.
//!
//! What it is: an empirical error model carried from the small ratios the sample can test (up to
//! n_s / e_min) to the target's ratio. Its `level` is nominal; its coverage is measured on exact data
//! (README), never assumed.

use super::flodance::Fit;
use super::lstsq::lstsq;
use crate::{Error, Result};
use serde::Serialize;

/// Sub-windows end at most at n_s / this ratio ("well before n_s").
pub const MIN_RATIO: f64 = 1.25;
/// At most this many backtests (sub-window ends on a geometric grid).
pub const MAX_BACKTESTS: usize = 8;
/// Fewer backtests than this give no calibrated interval.
pub const MIN_BACKTESTS: usize = 3;
/// The clamp on the ratio exponent γ.
pub const EXPONENT_RANGE: (f64, f64) = (1.0, 2.0);
/// The clamp on the scale exponent δ.
pub const SCALE_EXPONENT_RANGE: (f64, f64) = (0.0, 1.0);
/// Targets per sub-window.
pub const TARGETS_PER_END: usize = 4;

/// One backtest: the sub-window [n₀, end] predicts ℓ at `target`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backtest {
    /// Last k of the sub-window.
    pub end: usize,
    /// The predicted size (≤ n_s).
    pub target: usize,
    /// `target / end`.
    pub ratio: f64,
    /// `(predicted − ℓ_target) / |ℓ_target|`.
    pub relative_error: f64,
}

/// The fitted error-growth model and its backtests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// Nominal level of the interval (quantile of the normalised backtest errors).
    pub level: f64,
    /// n_s: the sample size the scale factor is relative to.
    pub ns: usize,
    /// c in `|r| ≈ c (ρ − 1)^γ (t / n_s)^δ`.
    pub scale: f64,
    /// γ (clamped to [`EXPONENT_RANGE`]).
    pub exponent: f64,
    /// δ (clamped to [`SCALE_EXPONENT_RANGE`]).
    pub scale_exponent: f64,
    /// Q: the `level` quantile of `|r_i| / (c (ρ_i − 1)^γ (t_i / n_s)^δ)`.
    pub quantile: f64,
    /// The backtests behind it.
    pub backtests: Vec<Backtest>,
}

/// The sub-window ends for a window k ∈ [n₀, n_s] and a model of `ncoef` coefficients: a geometric grid from
/// the first end whose window holds max(a third of the real window, 2·ncoef, 10) points to ⌊n_s / [`MIN_RATIO`]⌋,
/// at most [`MAX_BACKTESTS`] distinct ends.
pub fn backtest_ends(n0: usize, ns: usize, ncoef: usize) -> Vec<usize> {
    let n0 = n0.max(1);
    let third = (ns.saturating_sub(n0) + 1).div_ceil(3);
    let first = n0 + third.max(2 * ncoef).max(10) - 1;
    let last = (ns as f64 / MIN_RATIO).floor() as usize;
    if last < first {
        return Vec::new();
    }
    let count = MAX_BACKTESTS.min(last - first + 1);
    let (l0, l1) = ((first as f64).ln(), (last as f64).ln());
    let mut ends: Vec<usize> = (0..count)
        .map(|i| {
            let t = if count == 1 {
                1.0
            } else {
                i as f64 / (count - 1) as f64
            };
            ((l0 + (l1 - l0) * t).exp().round() as usize).clamp(first, last)
        })
        .collect();
    ends.dedup();
    ends
}

/// Run the backtests: `refit(points, target)` fits the model on the given points (the caller's method,
/// including any shape constraint up to `target`); each sub-window predicts up to [`TARGETS_PER_END`] sizes
/// t on a geometric grid of [⌈1.25·e⌉, n_s] (n_s = the largest k of `nested`).
pub fn backtests(
    nested: &[(usize, f64)],
    n0: usize,
    ncoef: usize,
    refit: impl Fn(&[(usize, f64)], usize) -> Result<Fit>,
) -> Result<Vec<Backtest>> {
    let Some(ns) = nested.iter().map(|p| p.0).max() else {
        return Ok(Vec::new());
    };
    let value = |k: usize| nested.iter().find(|p| p.0 == k).map(|p| p.1);
    let mut out = Vec::new();
    for end in backtest_ends(n0, ns, ncoef) {
        let part: Vec<(usize, f64)> = nested.iter().copied().filter(|p| p.0 <= end).collect();
        let fit = refit(&part, ns)?;
        let first = (end as f64 * MIN_RATIO).ceil() as usize;
        let mut targets: Vec<usize> = (0..TARGETS_PER_END)
            .map(|i| {
                let u = (i + 1) as f64 / TARGETS_PER_END as f64;
                ((first as f64).ln() + ((ns as f64).ln() - (first as f64).ln()) * u)
                    .exp()
                    .round() as usize
            })
            .map(|t| t.clamp(first.min(ns), ns))
            .collect();
        targets.dedup();
        for t in targets {
            let Some(truth) = value(t) else { continue };
            out.push(Backtest {
                end,
                target: t,
                ratio: t as f64 / end as f64,
                relative_error: (fit.predict(t as f64) - truth) / truth.abs(),
            });
        }
    }
    Ok(out)
}

/// Fit the error-growth model to backtests of a sample of size `ns`. Errors below 1e-300 in magnitude are
/// taken as 1e-300 (the logarithm needs them positive); with exact data the interval then shrinks to the
/// estimate.
pub fn calibrate(backtests: Vec<Backtest>, ns: usize, level: f64) -> Result<Calibration> {
    if !(level > 0.0 && level < 1.0) {
        return Err(Error::Usage(format!(
            "the interval level must lie strictly between 0 and 1, got {level}"
        )));
    }
    let ends = {
        let mut e: Vec<usize> = backtests.iter().map(|b| b.end).collect();
        e.dedup();
        e.len()
    };
    if ends < MIN_BACKTESTS {
        return Err(Error::Input(format!(
            "a calibrated interval needs backtests from at least {MIN_BACKTESTS} sub-windows, the window allows {ends}"
        )));
    }
    let xs: Vec<f64> = backtests.iter().map(|b| (b.ratio - 1.0).ln()).collect();
    let zs: Vec<f64> = backtests
        .iter()
        .map(|b| (b.target as f64 / ns as f64).ln())
        .collect();
    let ys: Vec<f64> = backtests
        .iter()
        .map(|b| b.relative_error.abs().max(1e-300).ln())
        .collect();
    // Least squares for (log c, γ, δ), then each exponent clamped and the rest refitted given it.
    let (gamma, delta) = match lstsq(
        &xs.iter()
            .zip(&zs)
            .map(|(x, z)| vec![1.0, *x, *z])
            .collect::<Vec<_>>(),
        &ys,
    ) {
        Ok(sol) if sol.rank == 3 => (sol.coef[1], sol.coef[2]),
        _ => (slope(&xs, &ys), 0.0),
    };
    let gamma = gamma.clamp(EXPONENT_RANGE.0, EXPONENT_RANGE.1);
    let resid: Vec<f64> = ys.iter().zip(&xs).map(|(y, x)| y - gamma * x).collect();
    let delta = if delta == 0.0 {
        0.0
    } else {
        slope(&zs, &resid)
    }
    .clamp(SCALE_EXPONENT_RANGE.0, SCALE_EXPONENT_RANGE.1);
    let logs: Vec<f64> = resid.iter().zip(&zs).map(|(r, z)| r - delta * z).collect();
    let log_scale = logs.iter().sum::<f64>() / logs.len() as f64;
    let mut normalised: Vec<f64> = logs.iter().map(|l| (l - log_scale).exp()).collect();
    normalised.sort_by(f64::total_cmp);
    let pos = level * (normalised.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let quantile = normalised[lo] + (normalised[hi] - normalised[lo]) * (pos - lo as f64);
    Ok(Calibration {
        level,
        ns,
        scale: log_scale.exp(),
        exponent: gamma,
        scale_exponent: delta,
        quantile,
        backtests,
    })
}

/// The least-squares slope of y on x (0 when x is constant).
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

impl Calibration {
    /// The predicted relative error bound at extrapolation ratio `ratio` = n / n_s (≥ 1), where the
    /// scale factor t / n_s is the ratio too.
    pub fn relative_half_width(&self, ratio: f64) -> f64 {
        self.quantile
            * self.scale
            * (ratio - 1.0).max(0.0).powf(self.exponent)
            * ratio.max(1.0).powf(self.scale_exponent)
    }

    /// The interval around `estimate` at extrapolation ratio `ratio` = n / n_s.
    pub fn interval(&self, estimate: f64, ratio: f64) -> (f64, f64) {
        let h = self.relative_half_width(ratio) * estimate.abs();
        (estimate - h, estimate + h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(errors: impl Fn(f64) -> f64) -> Vec<Backtest> {
        [1.25, 1.5, 2.0, 3.0, 4.0]
            .iter()
            .enumerate()
            .map(|(i, &ratio)| Backtest {
                end: 100 + i,
                target: 100,
                ratio,
                relative_error: if i % 2 == 0 { 1.0 } else { -1.0 } * errors(ratio),
            })
            .collect()
    }

    #[test]
    fn recovers_a_known_error_growth() {
        let cal = calibrate(synthetic(|r| 0.01 * (r - 1.0).powf(1.5)), 100, 0.9).unwrap();
        assert!((cal.exponent - 1.5).abs() < 1e-12, "{}", cal.exponent);
        assert!((cal.scale - 0.01).abs() < 1e-14, "{}", cal.scale);
        assert!((cal.quantile - 1.0).abs() < 1e-12, "{}", cal.quantile);
        let want = 0.01 * 99f64.powf(1.5);
        assert!((cal.relative_half_width(100.0) - want).abs() < 1e-12 * want);
        let (lo, hi) = cal.interval(-200.0, 100.0);
        assert!((hi - lo - 2.0 * 200.0 * want).abs() < 1e-9 * want * 400.0);
    }

    #[test]
    fn recovers_a_known_growth_with_ratio_and_scale() {
        let mut tests = Vec::new();
        for (i, end) in [200usize, 250, 300, 350].into_iter().enumerate() {
            for target in [400usize, 450, 500] {
                let ratio = target as f64 / end as f64;
                let r = 0.02 * (ratio - 1.0).powf(1.25) * (target as f64 / 500.0).powf(0.5);
                tests.push(Backtest {
                    end,
                    target,
                    ratio,
                    relative_error: if i % 2 == 0 { r } else { -r },
                });
            }
        }
        let cal = calibrate(tests, 500, 0.9).unwrap();
        assert!((cal.exponent - 1.25).abs() < 1e-10, "{cal:?}");
        assert!((cal.scale_exponent - 0.5).abs() < 1e-10, "{cal:?}");
        assert!((cal.scale - 0.02).abs() < 1e-12, "{cal:?}");
        let want = 0.02 * 9f64.powf(1.25) * 10f64.sqrt();
        assert!((cal.relative_half_width(10.0) - want).abs() < 1e-9 * want);
    }

    #[test]
    fn shrinking_errors_are_not_extrapolated_downwards() {
        let cal = calibrate(synthetic(|r| 0.01 / r), 100, 0.5).unwrap();
        assert_eq!(cal.exponent, EXPONENT_RANGE.0);
        assert!(cal.relative_half_width(1000.0) > 0.001);
    }

    #[test]
    fn ends_leave_room_for_the_model_and_stop_before_ns() {
        let ends = backtest_ends(100, 500, 5);
        assert_eq!(ends.first(), Some(&233));
        assert_eq!(ends.last(), Some(&400));
        assert!(ends.len() == MAX_BACKTESTS && ends.windows(2).all(|w| w[0] < w[1]));
        assert!(backtest_ends(100, 120, 5).is_empty());
        assert_eq!(backtest_ends(1, 100, 5).first(), Some(&34));
        assert!(calibrate(synthetic(|_| 0.1), 100, 1.0).is_err());
    }
}
