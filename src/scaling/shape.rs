//! The law's shape (SPEC §3.6): ℓ_k − ℓ_{k−1} is the log-det of a Schur complement that does not grow with k
//! on average, so a fitted curve whose per-example increments increase somewhere on [n_s, n] is suspect.
//! This module checks a fitted curve for that, and builds the concavity constraints of the shape-constrained
//! fit (increments non-increasing on [n₀, n]).

use super::law::{increment, increment_basis};
use serde::Serialize;

/// The check samples at most this many k (every integer when the range is shorter).
const MAX_GRID: usize = 4000;
/// Rises of the increments below this fraction of their size count as flat.
const RISE_TOLERANCE: f64 = 1e-9;
/// The constrained fit imposes concavity at most at this many k.
const MAX_CONSTRAINTS: usize = 400;

/// The outcome of checking a fitted curve's increments `f(k) − f(k−1)` on a range of k.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShapeCheck {
    /// First k of the checked range.
    pub from: usize,
    /// Last k of the checked range.
    pub to: usize,
    /// True when the increments never increase (beyond rounding) on the range.
    pub ok: bool,
    /// The first grid k at which the increment is larger than at the previous grid point.
    pub first_increase_at: Option<usize>,
    /// The largest rise of the increment between consecutive grid points (0 when `ok`).
    pub max_rise: f64,
}

impl ShapeCheck {
    /// The warning to print when the check failed.
    pub fn warning(&self) -> Option<String> {
        let at = self.first_increase_at?;
        Some(format!(
            "the fitted law's per-example increment l_k - l_(k-1) increases on [{}, {}] (first at k = {at}, \
             by up to {:.3e}): a log-det of a growing sample cannot do that on average, so the extrapolation \
             is suspect; try --shape-constrained, a larger --n-sample, or --q auto",
            self.from, self.to, self.max_rise
        ))
    }
}

/// The integers of [from, to] (from ≥ 2), all of them when there are at most `max`, else a geometric grid
/// of `max` points (rounded, deduplicated, both ends included).
pub fn grid(from: usize, to: usize, max: usize) -> Vec<usize> {
    let from = from.max(2);
    if to < from {
        return Vec::new();
    }
    if to - from < max {
        return (from..=to).collect();
    }
    let (l0, l1) = ((from as f64).ln(), (to as f64).ln());
    let mut g: Vec<usize> = (0..max)
        .map(|i| (l0 + (l1 - l0) * i as f64 / (max - 1) as f64).exp().round() as usize)
        .map(|k| k.clamp(from, to))
        .collect();
    g.dedup();
    g
}

/// Check that the increments of the curve with coefficients `coef` (model order q, r) do not increase on
/// [from, to]. A rise counts only beyond 1e-9 of the sum of the absolute terms of both increments: far above
/// their rounding (≈ 1e-15 of it), far below any rise that matters; a constrained fit that is exactly flat
/// at its constraint points may rise by ≈ 1e-12 of that between them.
pub fn check_increments(coef: &[f64], q: usize, r: usize, from: usize, to: usize) -> ShapeCheck {
    let mut check = ShapeCheck {
        from,
        to,
        ok: true,
        first_increase_at: None,
        max_rise: 0.0,
    };
    let mut prev: Option<(f64, f64)> = None;
    for k in grid(from, to, MAX_GRID) {
        let x = k as f64;
        let terms = increment_basis(x, q, r);
        let size: f64 = terms.iter().zip(coef).map(|(t, c)| (t * c).abs()).sum();
        let inc = increment(coef, x, q, r);
        if let Some((p, psize)) = prev {
            let rise = inc - p;
            if rise > RISE_TOLERANCE * (size + psize) {
                check.ok = false;
                check.first_increase_at.get_or_insert(k);
                check.max_rise = check.max_rise.max(rise);
            }
        }
        prev = Some((inc, size));
    }
    check
}

/// The concavity constraints on [from, to]: one row `g` per grid point k with `g · coef ≤ 0` meaning
/// `(f(k+1) − f(k)) − (f(k) − f(k−1)) ≤ 0`.
pub fn concavity_rows(q: usize, r: usize, from: usize, to: usize) -> Vec<Vec<f64>> {
    grid(from, to.saturating_sub(1), MAX_CONSTRAINTS)
        .into_iter()
        .map(|k| {
            let x = k as f64;
            let next = increment_basis(x + 1.0, q, r);
            let here = increment_basis(x, q, r);
            next.iter().zip(&here).map(|(a, b)| a - b).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_every_integer_or_geometric() {
        assert_eq!(grid(1, 5, 10), vec![2, 3, 4, 5]);
        let g = grid(100, 1_000_000, MAX_GRID);
        assert!(g.len() <= MAX_GRID && g.len() > MAX_GRID / 2);
        assert_eq!((g[0], *g.last().unwrap()), (100, 1_000_000));
        assert!(g.windows(2).all(|w| w[0] < w[1]));
    }
}
