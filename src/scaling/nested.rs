//! Nested log-dets from one unpivoted factorisation: without pivoting the factor of a leading principal
//! block is the leading block of the full factor, so `ℓ_k = Σ_{i < k·d} ln|pivot_i|` for every k = 1..n.

use crate::{Error, Result};

/// Nested log-dets ℓ_k = ln|det K_k| of the leading k·d rows, with the sign of det K_k.
#[derive(Debug, Clone, PartialEq)]
pub struct Nested {
    /// `(k, ℓ_k)` for k = 1..n.
    pub points: Vec<(usize, f64)>,
    /// Sign of det K_k (+1.0 or −1.0) for the same k.
    pub signs: Vec<f64>,
}

/// ℓ_k for every k = 1..m/d from per-row ln|pivot| (m entries) and per-row pivot signs (±1.0; pass an empty
/// slice for a Cholesky factorisation, where every pivot is positive). The prefix sums are compensated
/// (Neumaier), so ℓ_k carries no more rounding than the pivots themselves even for m ~ 10⁶.
pub fn nested_logdets(
    pivots_logabs: &[f64],
    pivot_signs: &[f64],
    granule: usize,
) -> Result<Nested> {
    let m = pivots_logabs.len();
    if granule == 0 || !m.is_multiple_of(granule) {
        return Err(Error::Input(format!(
            "nested log-dets: {m} pivots are not a whole number of blocks of {granule} rows"
        )));
    }
    if !pivot_signs.is_empty() && pivot_signs.len() != m {
        return Err(Error::Input(format!(
            "nested log-dets: {} pivot signs for {m} pivots",
            pivot_signs.len()
        )));
    }
    if let Some((i, v)) = pivots_logabs
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())
    {
        return Err(Error::Input(format!(
            "nested log-dets: ln|pivot| of row {i} is {v} (a zero or non-finite pivot); ℓ_k is undefined from there on"
        )));
    }
    let n = m / granule;
    let mut points = Vec::with_capacity(n);
    let mut signs = Vec::with_capacity(n);
    let (mut sum, mut comp, mut sign) = (0.0f64, 0.0f64, 1.0f64);
    for (i, &v) in pivots_logabs.iter().enumerate() {
        let t = sum + v;
        comp += if sum.abs() >= v.abs() {
            (sum - t) + v
        } else {
            (v - t) + sum
        };
        sum = t;
        if let Some(&s) = pivot_signs.get(i) {
            if s < 0.0 {
                sign = -sign;
            }
        }
        if (i + 1) % granule == 0 {
            points.push(((i + 1) / granule, sum + comp));
            signs.push(sign);
        }
    }
    Ok(Nested { points, signs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_sums_at_granule_multiples() {
        let logs = [0.5, -1.0, 2.0, 0.25, 1.0, 1.0];
        let signs = [1.0, -1.0, 1.0, 1.0, -1.0, -1.0];
        let nested = nested_logdets(&logs, &signs, 2).unwrap();
        assert_eq!(nested.points, vec![(1, -0.5), (2, 1.75), (3, 3.75)]);
        assert_eq!(nested.signs, vec![-1.0, -1.0, -1.0]);
        let plain = nested_logdets(&logs, &[], 3).unwrap();
        assert_eq!(plain.points, vec![(1, 1.5), (2, 3.75)]);
        assert_eq!(plain.signs, vec![1.0, 1.0]);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(nested_logdets(&[1.0; 5], &[], 2).is_err());
        assert!(nested_logdets(&[1.0; 4], &[1.0; 3], 2).is_err());
        assert!(nested_logdets(&[1.0, f64::NEG_INFINITY], &[], 1).is_err());
        assert!(nested_logdets(&[1.0; 4], &[], 0).is_err());
    }
}
