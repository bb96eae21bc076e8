//! Special functions for the scaling-law fit: `ln Γ(x)` and `ln x! = ln Γ(x + 1)` for real x > 0,
//! accurate to 1e-14 relative where |ln Γ(x)| ≥ 1 and to 5e-15 absolute elsewhere (near its zeros
//! x = 1, 2 no method without special expansions does better in relative terms; ln k! for integers k ≥ 2
//! is accurate to 1e-14 relative).

/// `B_{2k} / (2k (2k − 1))` for k = 1..8: the coefficients of Stirling's series for ln Γ.
const STIRLING: [f64; 8] = [
    1.0 / 12.0,
    -1.0 / 360.0,
    1.0 / 1260.0,
    -1.0 / 1680.0,
    1.0 / 1188.0,
    -691.0 / 360_360.0,
    1.0 / 156.0,
    -3617.0 / 122_400.0,
];

/// ln √(2π).
const HALF_LN_TWO_PI: f64 = 0.918_938_533_204_672_8;

/// Below this argument the recurrence Γ(x + 1) = x Γ(x) shifts x up before Stirling's series is used.
/// At z = 15 the first omitted term, B₁₈/(18·17·z¹⁷), is about 1e-20: far below f64 rounding.
const STIRLING_FROM: f64 = 15.0;

/// ln Γ(x) for real x > 0 (NaN for x ≤ 0 or NaN, +∞ for x = +∞).
///
/// Stirling's series with 8 Bernoulli terms for x ≥ 15; below that, ln Γ(x) = ln Γ(x + N) − ln Π (x + i)
/// with the product formed exactly enough (at most 15 factors, no overflow).
pub fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    if x == 1.0 || x == 2.0 {
        return 0.0;
    }
    if x >= STIRLING_FROM {
        return stirling(x);
    }
    let mut z = x;
    let mut product = 1.0;
    while z < STIRLING_FROM {
        product *= z;
        z += 1.0;
    }
    stirling(z) - product.ln()
}

/// ln x! = ln Γ(x + 1) for real x ≥ 0 (NaN for x < 0).
pub fn ln_factorial(x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    ln_gamma(x + 1.0)
}

/// Stirling's series (z − ½) ln z − z + ln √(2π) + Σ_k B_{2k} / (2k(2k−1) z^{2k−1}), for z ≥ 15.
fn stirling(z: f64) -> f64 {
    let inv = 1.0 / z;
    let inv2 = inv * inv;
    // Horner in 1/z² from the smallest term up.
    let mut series = 0.0;
    for c in STIRLING.iter().rev() {
        series = series * inv2 + c;
    }
    series *= inv;
    (z - 0.5) * z.ln() - z + HALF_LN_TWO_PI + series
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Σ ln i for i = 2..=k with Neumaier compensation: an independent reference for ln k!.
    fn log_factorial_sum(k: u64) -> f64 {
        let (mut sum, mut comp) = (0.0f64, 0.0f64);
        for i in 2..=k {
            let v = (i as f64).ln();
            let t = sum + v;
            comp += if sum.abs() >= v.abs() {
                (sum - t) + v
            } else {
                (v - t) + sum
            };
            sum = t;
        }
        sum + comp
    }

    #[test]
    fn small_factorials_exact_in_f64() {
        // k! is exact in f64 for k ≤ 18 (18! < 2^53), so ln(k!) has one rounding.
        let mut f = 1.0f64;
        for k in 2..=18u32 {
            f *= k as f64;
            let rel = (ln_factorial(k as f64) - f.ln()).abs() / f.ln();
            assert!(rel < 1e-14, "k = {k}: rel error {rel:e}");
        }
    }

    #[test]
    fn large_factorials_match_log_sums() {
        for &k in &[19u64, 50, 99, 100, 101, 1000, 4321, 50_000, 200_000] {
            let reference = log_factorial_sum(k);
            let rel = (ln_factorial(k as f64) - reference).abs() / reference;
            assert!(rel < 1e-14, "k = {k}: rel error {rel:e}");
        }
    }

    #[test]
    fn half_integers_match_closed_form() {
        // Γ(n + ½) = (2n)! √π / (4ⁿ n!)
        for n in 1..=12u64 {
            let x = n as f64 + 0.5;
            let reference = log_factorial_sum(2 * n) + 0.5 * std::f64::consts::PI.ln()
                - (n as f64) * 4f64.ln()
                - log_factorial_sum(n);
            let err = (ln_gamma(x) - reference).abs() / reference.abs().max(1.0);
            assert!(err < 1e-14, "x = {x}: error {err:e}");
        }
        assert!((ln_gamma(0.5) - 0.5 * std::f64::consts::PI.ln()).abs() < 1e-15);
    }

    #[test]
    fn domain() {
        assert!(ln_gamma(0.0).is_nan());
        assert!(ln_gamma(-1.5).is_nan());
        assert_eq!(ln_factorial(0.0), 0.0);
        assert_eq!(ln_factorial(1.0), 0.0);
        assert!(ln_gamma(1.0).abs() < 1e-15 && ln_gamma(2.0).abs() < 1e-15);
    }
}
