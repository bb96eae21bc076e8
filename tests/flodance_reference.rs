//! SPEC §3 reference fits for FLODANCE, plus error handling and the ensemble interval.

mod tolerance;

use ntk_pipeline::scaling::{fit, fit_xy, FitOptions};
use ntk_pipeline::Error;
use tolerance::within;

/// ln k! for k = 0..=n by a running sum of ln i (independent of the crate's ln Γ).
fn log_factorials(n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    let (mut sum, mut comp) = (0.0f64, 0.0f64);
    out.push(0.0);
    for i in 1..=n {
        let v = (i as f64).ln();
        let t = sum + v;
        comp += if sum.abs() >= v.abs() {
            (sum - t) + v
        } else {
            (v - t) + sum
        };
        sum = t;
        out.push(sum + comp);
    }
    out
}

fn opts(n0: usize, q: usize, alpha: f64) -> FitOptions {
    FitOptions {
        n0,
        q,
        r: 0,
        alpha,
        ensemble: 0,
        seed: 0,
    }
}

#[test]
fn synthetic_law_is_recovered_and_extrapolated() {
    // SPEC: y_k = 1 + 5k − 95.3·ln k!, fit q = 2 on k ∈ [100, 5000], evaluate at 50,000.
    let lf = log_factorials(50_000);
    let y = |k: usize| 1.0 + 5.0 * k as f64 - 95.3 * lf[k];
    let points: Vec<(usize, f64)> = (1..=5000).map(|k| (k, y(k))).collect();
    let truth = y(50_000);
    for alpha in [0.0, 1.0] {
        let f = fit(&points, &opts(100, 2, alpha)).unwrap();
        assert_eq!((f.points, f.ns, f.rank), (4901, 5000, 5));
        let est = f.predict(50_000.0);
        // SPEC asks for 1e-9 and 1e-6; measured 5e-15 and 7e-15 (α = 0, 1) for the extrapolation, 2e-12 and
        // 4e-12 absolute for β₀, rms residual 8e-17 relative: tolerances at about 100× those.
        within(
            &format!("alpha {alpha}: extrapolation to 50000"),
            ((est - truth) / truth).abs(),
            1e-12,
        );
        let beta0 = f.coefficient("beta0").unwrap();
        within(
            &format!("alpha {alpha}: beta0"),
            (beta0 + 95.3).abs(),
            5e-10,
        );
        within(
            &format!("alpha {alpha}: rms residual / |truth|"),
            f.rms_residual / truth.abs(),
            1e-14,
        );
    }
}

#[test]
fn x_log_x_reference_values() {
    // SPEC: x = logspace(1, 3, 50), y = −x ln x, q = 3, α = 0.
    let points: Vec<(f64, f64)> = (0..50)
        .map(|i| {
            let x = 10f64.powf(1.0 + 2.0 * i as f64 / 49.0);
            (x, -x * x.ln())
        })
        .collect();
    let f = fit_xy(&points, &opts(0, 3, 0.0)).unwrap();
    // The references are given to 10-11 significant digits (6, 5 and 4 decimals): the fit must agree with
    // every digit given, i.e. to half a unit of the last one (measured: 0.66, 0.61 and 0.28 of that half
    // unit; the references' rounding, not the fit, limits this check).
    for (x, expected, half_unit) in [
        (1e3, -6907.755299, 5e-7),
        (1e4, -92103.43434, 5e-6),
        (1e5, -1151293.4982, 5e-5),
    ] {
        let got = f.predict(x);
        within(
            &format!("x = {x}: |fit - reference| in half units of its last digit"),
            (got - expected).abs() / half_unit,
            1.0,
        );
    }
}

#[test]
fn too_few_points_is_a_usage_error() {
    let points: Vec<(usize, f64)> = (1..=10).map(|k| (k, k as f64)).collect();
    // q = 2: 5 coefficients; window k >= 7 holds only 4 points.
    match fit(&points, &opts(7, 2, 0.0)) {
        Err(Error::Usage(msg)) => assert!(msg.contains("4 point"), "{msg}"),
        other => panic!("expected a usage error, got {other:?}"),
    }
    assert!(fit(&points, &opts(6, 2, 0.0)).is_ok());
    assert!(matches!(
        fit(&[(1, f64::NAN), (2, 1.0)], &opts(0, 0, 0.0)),
        Err(Error::Input(_))
    ));
}

#[test]
fn ensemble_interval_brackets_and_is_seeded() {
    // Noisy law: the interval has positive width, contains the estimate, and depends only on the seed.
    let lf = log_factorials(20_000);
    let points: Vec<(usize, f64)> = (1..=1000)
        .map(|k| {
            let noise = 0.3 * ((k as f64 * 12.9898).sin() * 43758.5453).fract();
            (k, 2.0 + 3.0 * k as f64 - 0.9 * lf[k] + noise)
        })
        .collect();
    let o = FitOptions {
        n0: 50,
        q: 2,
        r: 1,
        alpha: 0.0,
        ensemble: 40,
        seed: 7,
    };
    let a = fit(&points, &o).unwrap();
    let b = fit(&points, &o).unwrap();
    let c = fit(
        &points,
        &FitOptions {
            seed: 8,
            ..o.clone()
        },
    )
    .unwrap();
    let n = 20_000.0;
    let (lo, hi) = a.interval(n);
    let est = a.predict(n);
    assert!(lo <= est && est <= hi && hi > lo, "{lo} {est} {hi}");
    assert_eq!(a.interval(n), b.interval(n));
    assert_ne!(a.interval(n), c.interval(n));
    assert_eq!(a.ensemble_size(), 40);
    assert_eq!(a.coefficients.len(), 6);
    // Without an ensemble the interval collapses to the estimate.
    let d = fit(&points, &FitOptions { ensemble: 0, ..o }).unwrap();
    assert_eq!(d.interval(n), (d.predict(n), d.predict(n)));
}
