//! The FLODANCE scaling-law fit (SPEC §3): fit nested log-dets ℓ_k on a window k ∈ [n₀, n_s] with
//!
//! `ℓ_k ≈ a + c·k + (β₀ + Σ_{i=1..q} β_i k^{-i}) · ln k! + Σ_{i=1..r} γ_i k^{-i}`
//!
//! (row weights k^{-α}), extrapolate to the full size n, and measure how sensitive the extrapolation is to
//! which window points were fitted (the ensemble interval).

use super::constrained::lstsq_nonpositive;
use super::law::{basis, evaluate, names};
use super::lstsq::lstsq;
use super::shape::{check_increments, concavity_rows, ShapeCheck};
use crate::{Error, Result};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Settings of one FLODANCE fit.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Burn-in n₀: only points with k ≥ n₀ are fitted.
    pub n0: usize,
    /// Laurent order q: terms β_i k^{-i} ln k! for i = 1..q.
    pub q: usize,
    /// Number r of plain terms γ_i k^{-i} (detkit's "Laurent series without logarithm"; 0 by default).
    pub r: usize,
    /// Weight exponent α: each row is weighted by k^{-α} (0 fits ℓ_k, 1 fits ℓ_k / k).
    pub alpha: f64,
    /// Number of refits on random half-windows for the interval (0: no interval).
    pub ensemble: usize,
    /// Seed of the ensemble's subsampling.
    pub seed: u64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            n0: 100,
            q: 2,
            r: 0,
            alpha: 0.0,
            ensemble: 50,
            seed: 0,
        }
    }
}

/// One named coefficient of the fitted model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Coefficient {
    /// `a`, `c`, `beta0`, `beta1`, …, `gamma1`, …
    pub name: String,
    /// Its fitted value.
    pub value: f64,
}

/// A fitted scaling law: coefficients, diagnostics, and the ensemble of refits behind the interval.
#[derive(Debug, Clone)]
pub struct Fit {
    /// Coefficients in model order: a, c, beta0, beta1..beta_q, gamma1..gamma_r.
    pub coefficients: Vec<Coefficient>,
    /// RMS of the unweighted residuals ℓ_k − fit(k) over the window (same units as ℓ).
    pub rms_residual: f64,
    /// Largest |ℓ_k − fit(k)| over the window.
    pub max_abs_residual: f64,
    /// Numerical rank of the (weighted, column-scaled) design matrix.
    pub rank: usize,
    /// 2-norm condition number of the weighted, column-scaled design matrix (∞ if rank-deficient).
    pub condition: f64,
    /// Burn-in n₀ requested.
    pub n0: usize,
    /// Largest abscissa fitted (n_s for nested log-dets), rounded to an integer.
    pub ns: usize,
    /// Smallest and largest abscissa actually fitted.
    pub window: (f64, f64),
    /// Number of points fitted.
    pub points: usize,
    /// Laurent order q.
    pub q: usize,
    /// Number of plain k^{-i} terms r.
    pub r: usize,
    /// Weight exponent α.
    pub alpha: f64,
    /// `Some(n)` when the fit was constrained to non-increasing increments on [n₀, n].
    pub concave_to: Option<usize>,
    /// Coefficient vectors of the ensemble refits (empty without an ensemble).
    ensemble: Vec<Vec<f64>>,
}

/// Weighted least-squares fit of the model to the given (x, y) points; returns coefficients, rank, condition.
/// With `concave`, the coefficients are constrained so that the curve's increments do not increase on
/// those rows' grid (see [`super::shape::concavity_rows`]).
fn solve(
    points: &[(f64, f64)],
    opts: &FitOptions,
    concave: Option<&[Vec<f64>]>,
) -> Result<(Vec<f64>, usize, f64)> {
    let mut rows = Vec::with_capacity(points.len());
    let mut rhs = Vec::with_capacity(points.len());
    for &(x, y) in points {
        let w = x.powf(-opts.alpha);
        rows.push(
            basis(x, opts.q, opts.r)
                .into_iter()
                .map(|b| b * w)
                .collect::<Vec<_>>(),
        );
        rhs.push(y * w);
    }
    let sol = match concave {
        None => lstsq(&rows, &rhs)?,
        Some(g) => lstsq_nonpositive(&rows, &rhs, g)?,
    };
    Ok((sol.coef, sol.rank, sol.condition))
}

/// Fit nested log-dets `(k, ℓ_k)` (k = number of examples) on the window k ≥ `opts.n0`.
pub fn fit(points: &[(usize, f64)], opts: &FitOptions) -> Result<Fit> {
    let xy: Vec<(f64, f64)> = points.iter().map(|&(k, l)| (k as f64, l)).collect();
    fit_xy(&xy, opts)
}

/// Fit nested log-dets with the shape constraint: the curve's per-example increments ℓ_k − ℓ_{k−1} do not
/// increase on [max(n₀, 2), `upto`] (constrained least squares; the ensemble refits are constrained too).
/// When the unconstrained fit already has that shape, the result equals it.
pub fn fit_concave(points: &[(usize, f64)], opts: &FitOptions, upto: usize) -> Result<Fit> {
    let xy: Vec<(f64, f64)> = points.iter().map(|&(k, l)| (k as f64, l)).collect();
    fit_inner(&xy, opts, Some(upto))
}

/// Fit the model to real abscissae `(x, y)` (x > 0) on the window x ≥ `opts.n0`.
pub fn fit_xy(points: &[(f64, f64)], opts: &FitOptions) -> Result<Fit> {
    fit_inner(points, opts, None)
}

fn fit_inner(points: &[(f64, f64)], opts: &FitOptions, concave_to: Option<usize>) -> Result<Fit> {
    if !opts.alpha.is_finite() {
        return Err(Error::Usage(format!(
            "--alpha must be finite, got {}",
            opts.alpha
        )));
    }
    if let Some(&(x, y)) = points
        .iter()
        .find(|(x, y)| !x.is_finite() || !y.is_finite() || *x <= 0.0)
    {
        return Err(Error::Input(format!(
            "bad nested log-det point (k = {x}, l_k = {y}): k must be positive and both values finite"
        )));
    }
    let mut window: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|&(x, _)| x >= opts.n0 as f64)
        .collect();
    window.sort_by(|a, b| a.0.total_cmp(&b.0));
    let ncoef = 3 + opts.q + opts.r;
    if window.len() < ncoef {
        return Err(Error::Usage(format!(
            "the fit window k >= {} holds {} point(s) but the model (q = {}, r = {}) has {} coefficients; \
             lower --burn-in, lower --q, or provide more nested log-dets",
            opts.n0,
            window.len(),
            opts.q,
            opts.r,
            ncoef
        )));
    }
    let rows = concave_to.map(|to| concavity_rows(opts.q, opts.r, opts.n0, to));
    let (coef, rank, condition) = solve(&window, opts, rows.as_deref())?;
    let (mut ss, mut max_abs) = (0.0f64, 0.0f64);
    for &(x, y) in &window {
        let res = y - evaluate(&coef, x, opts.q, opts.r);
        ss += res * res;
        max_abs = max_abs.max(res.abs());
    }
    let ensemble = refits(&window, opts, ncoef, rows.as_deref())?;
    let first = window[0].0;
    let last = window[window.len() - 1].0;
    Ok(Fit {
        coefficients: names(opts.q, opts.r)
            .into_iter()
            .zip(coef)
            .map(|(name, value)| Coefficient { name, value })
            .collect(),
        rms_residual: (ss / window.len() as f64).sqrt(),
        max_abs_residual: max_abs,
        rank,
        condition,
        n0: opts.n0,
        ns: last.round() as usize,
        window: (first, last),
        points: window.len(),
        q: opts.q,
        r: opts.r,
        alpha: opts.alpha,
        concave_to,
        ensemble,
    })
}

/// The ensemble: `opts.ensemble` refits, each on a uniformly random subset (without replacement) of
/// max(⌈N/2⌉, p) of the N window points, drawn from a ChaCha8 stream seeded with `opts.seed`.
fn refits(
    window: &[(f64, f64)],
    opts: &FitOptions,
    ncoef: usize,
    concave: Option<&[Vec<f64>]>,
) -> Result<Vec<Vec<f64>>> {
    let n = window.len();
    let size = n.div_ceil(2).max(ncoef).min(n);
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut out = Vec::with_capacity(opts.ensemble);
    for _ in 0..opts.ensemble {
        let mut idx = sample(&mut rng, n, size).into_vec();
        idx.sort_unstable();
        let subset: Vec<(f64, f64)> = idx.iter().map(|&i| window[i]).collect();
        out.push(solve(&subset, opts, concave)?.0);
    }
    Ok(out)
}

/// The `p`-th percentile (0..=100) of sorted data, linear interpolation between order statistics.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

impl Fit {
    /// The fitted curve at n (the extrapolated ℓ̂_n for n beyond the window).
    pub fn predict(&self, n: f64) -> f64 {
        let coef: Vec<f64> = self.coefficients.iter().map(|c| c.value).collect();
        evaluate(&coef, n, self.q, self.r)
    }

    /// The value of coefficient `name` (e.g. "beta0"), if the model has it.
    pub fn coefficient(&self, name: &str) -> Option<f64> {
        self.coefficients
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value)
    }

    /// The ensemble refits' predictions at n (empty without an ensemble).
    pub fn ensemble_predictions(&self, n: f64) -> Vec<f64> {
        self.ensemble
            .iter()
            .map(|c| evaluate(c, n, self.q, self.r))
            .collect()
    }

    /// Sensitivity interval at n: the 2.5th and 97.5th percentiles of the ensemble refits' predictions
    /// (linear interpolation), widened if necessary to contain the full fit's own prediction. Each refit
    /// uses a random half of the window. This measures how much the extrapolation depends on which points
    /// were fitted; it is not a calibrated confidence interval (model error is not in it). Without an
    /// ensemble it is the point prediction twice.
    pub fn interval(&self, n: f64) -> (f64, f64) {
        let centre = self.predict(n);
        let mut preds = self.ensemble_predictions(n);
        preds.retain(|v| v.is_finite());
        if preds.is_empty() {
            return (centre, centre);
        }
        preds.sort_by(f64::total_cmp);
        let low = percentile(&preds, 2.5).min(centre);
        let high = percentile(&preds, 97.5).max(centre);
        (low, high)
    }

    /// The coefficient values in model order.
    pub fn coefficient_values(&self) -> Vec<f64> {
        self.coefficients.iter().map(|c| c.value).collect()
    }

    /// Whether the fitted curve's per-example increments stay non-increasing on [from, to] (SPEC §3.6).
    pub fn check_shape(&self, from: usize, to: usize) -> ShapeCheck {
        check_increments(&self.coefficient_values(), self.q, self.r, from, to)
    }

    /// Number of ensemble refits behind the interval.
    pub fn ensemble_size(&self) -> usize {
        self.ensemble.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert!((percentile(&v, 2.5) - 1.1).abs() < 1e-12);
        assert_eq!(percentile(&v, 100.0), 5.0);
    }
}
