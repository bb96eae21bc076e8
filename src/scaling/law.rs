//! The FLODANCE model's basis functions (SPEC §3): `1, k, ln k!, k^{-i} ln k! (i = 1..q), k^{-i} (i = 1..r)`,
//! their values, their per-example increments `f(k) − f(k−1)`, and the coefficient names.

use super::special::ln_factorial;

/// The basis functions at x, in coefficient order.
pub fn basis(x: f64, q: usize, r: usize) -> Vec<f64> {
    let lf = ln_factorial(x);
    let mut row = Vec::with_capacity(3 + q + r);
    row.push(1.0);
    row.push(x);
    row.push(lf);
    let mut p = 1.0;
    for _ in 1..=q {
        p /= x;
        row.push(lf * p);
    }
    let mut p = 1.0;
    for _ in 1..=r {
        p /= x;
        row.push(p);
    }
    row
}

/// The increments `basis(x) − basis(x − 1)` for x ≥ 2, in coefficient order, computed without the
/// cancellation of subtracting two large values: `ln x! − ln (x−1)! = ln x`, and
/// `x^{-i} − (x−1)^{-i} = (x−1)^{-i} · expm1(i · ln_1p(−1/x))`.
pub fn increment_basis(x: f64, q: usize, r: usize) -> Vec<f64> {
    let lx = x.ln();
    let lf_prev = ln_factorial(x - 1.0);
    let log1m = (-1.0 / x).ln_1p();
    let diff = |i: usize| (x - 1.0).powi(-(i as i32)) * (i as f64 * log1m).exp_m1();
    let mut row = Vec::with_capacity(3 + q + r);
    row.push(0.0);
    row.push(1.0);
    row.push(lx);
    for i in 1..=q {
        row.push(x.powi(-(i as i32)) * lx + lf_prev * diff(i));
    }
    for i in 1..=r {
        row.push(diff(i));
    }
    row
}

/// Coefficient names in model order.
pub fn names(q: usize, r: usize) -> Vec<String> {
    let mut v = vec!["a".to_string(), "c".to_string(), "beta0".to_string()];
    v.extend((1..=q).map(|i| format!("beta{i}")));
    v.extend((1..=r).map(|i| format!("gamma{i}")));
    v
}

/// The model with coefficients `coef` at x.
pub fn evaluate(coef: &[f64], x: f64, q: usize, r: usize) -> f64 {
    dot(&basis(x, q, r), coef)
}

/// The model's increment `f(x) − f(x − 1)` at x ≥ 2.
pub fn increment(coef: &[f64], x: f64, q: usize, r: usize) -> f64 {
    dot(&increment_basis(x, q, r), coef)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basis_matches_names() {
        assert_eq!(basis(3.0, 2, 1).len(), names(2, 1).len());
        assert_eq!(increment_basis(3.0, 2, 1).len(), names(2, 1).len());
        assert_eq!(names(2, 1), ["a", "c", "beta0", "beta1", "beta2", "gamma1"]);
    }

    #[test]
    fn increments_equal_differences_of_the_basis() {
        // At small x the plain difference loses nothing, so it is an independent reference.
        for x in [2.0, 3.0, 7.0, 25.0] {
            let (b1, b0) = (basis(x, 3, 2), basis(x - 1.0, 3, 2));
            for (j, inc) in increment_basis(x, 3, 2).iter().enumerate() {
                let want = b1[j] - b0[j];
                assert!(
                    (inc - want).abs() <= 1e-13 * want.abs().max(1.0),
                    "x {x}, term {j}: {inc} vs {want}"
                );
            }
        }
    }
}
