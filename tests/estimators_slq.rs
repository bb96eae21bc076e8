//! SLQ and preconditioned SLQ against exact log-dets (faer Cholesky), and pivoted Cholesky exactness.

mod tolerance;

use tolerance::within;

use faer::{Mat, Side};
use ntk_pipeline::estimators::{pivoted_cholesky, Estimator, PreconditionedSlq, Slq, SlqOptions};
use ntk_pipeline::linalg::DenseSource;
use ntk_pipeline::progress::Silent;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn exact_logdet(a: &Mat<f64>) -> f64 {
    let l = a.llt(Side::Lower).expect("test matrix is SPD");
    2.0 * (0..a.nrows()).map(|i| l.L()[(i, i)].ln()).sum::<f64>()
}

fn gaussian(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Mat<f64> {
    // Sum of 12 uniforms minus 6: mean 0, variance 1 (good enough for test matrices).
    Mat::from_fn(rows, cols, |_, _| {
        (0..12).map(|_| rng.gen::<f64>()).sum::<f64>() - 6.0
    })
}

fn fixed(steps: usize, probes: usize, seed: u64) -> SlqOptions {
    SlqOptions {
        steps,
        min_probes: probes,
        max_probes: probes,
        rtol: 0.0,
        seed,
        memory_bytes: 1 << 26,
    }
}

#[test]
fn slq_is_exact_with_few_distinct_eigenvalues() {
    // 5 distinct eigenvalues ≤ 20 steps: the Krylov space is invariant and Gauss quadrature exact.
    let vals: [f64; 5] = [0.5, 1.0, 2.0, 3.0, 7.0];
    let m = 200;
    let a = Mat::from_fn(m, m, |i, j| if i == j { vals[i % 5] } else { 0.0 });
    let exact: f64 = (0..m).map(|i| vals[i % 5].ln()).sum();
    let est = Slq {
        options: fixed(20, 4, 3),
    }
    .run(&DenseSource::new(a), &Silent)
    .unwrap();
    within(
        &format!("{} vs {exact}", est.logdet),
        ((est.logdet - exact) / exact).abs(),
        3e-13, /* measured 3.2e-15 */
    );
    within(
        "SE / |exact|, exact quadrature",
        est.std_error.unwrap() / exact.abs(),
        1e-14, /* measured 0 */
    );
    // Each probe stops after 5 (+1 breakdown detection at most) products.
    assert!(est.matvecs <= 4 * 6, "matvecs {}", est.matvecs);
}

#[test]
fn slq_mean_within_three_standard_errors() {
    let m = 300;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let g = gaussian(&mut rng, m, m);
    let a = Mat::from_fn(m, m, |i, j| if i == j { 1.0 } else { 0.0 })
        + (&g * g.transpose()) * (0.5 / m as f64);
    let exact = exact_logdet(&a);
    let est = Slq {
        options: fixed(30, 30, 5),
    }
    .run(&DenseSource::new(a), &Silent)
    .unwrap();
    let se = est.std_error.unwrap();
    assert!(se > 0.0);
    assert!(
        (est.logdet - exact).abs() <= 3.0 * se,
        "{} vs {exact} (se {se})",
        est.logdet
    );
    assert_eq!(est.matvecs, 30 * 30);
    assert_eq!(est.details["probes"], 30);
}

#[test]
fn adaptive_preset_respects_its_probe_bounds() {
    let m = 120;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let g = gaussian(&mut rng, m, m);
    let a = Mat::from_fn(m, m, |i, j| if i == j { 2.0 } else { 0.0 })
        + (&g * g.transpose()) * (0.2 / m as f64);
    let opts = SlqOptions::paper_table2(1);
    assert_eq!(
        (opts.steps, opts.min_probes, opts.max_probes, opts.rtol),
        (20, 10, 50, 1e-2)
    );
    let t1 = SlqOptions::paper_table1(1);
    assert_eq!((t1.steps, t1.min_probes, t1.max_probes), (100, 104, 104));
    let est = Slq { options: opts }
        .run(&DenseSource::new(a.clone()), &Silent)
        .unwrap();
    let probes = est.details["probes"].as_u64().unwrap();
    assert!((10..=50).contains(&probes), "probes {probes}");
    // Well-conditioned: the 95 % rule (1.96 se <= 1e-2 |mean|) is met with the first 10 probes.
    assert_eq!(probes, 10);
    assert!(1.96 * est.std_error.unwrap() <= 1e-2 * est.logdet.abs());
    let exact = exact_logdet(&a);
    assert!((est.logdet - exact).abs() <= 4.0 * est.std_error.unwrap());
}

#[test]
fn pivoted_cholesky_reproduces_low_rank_matrix() {
    let (m, r) = (60, 7);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let g = gaussian(&mut rng, m, r);
    let a = &g * g.transpose();
    let src = DenseSource::new(a.clone());
    let pc = pivoted_cholesky(&src, r, 0.0, &Silent).unwrap();
    assert_eq!(pc.l.ncols(), r);
    let err = (&pc.l * pc.l.transpose() - &a).norm_max();
    within(
        "rank-r reconstruction / max |A|",
        err / a.norm_max(),
        3e-14, /* measured 2.4e-16 */
    );
    // Asking for more than the rank stops at the rank (relative tolerance 1e-10 on the residual diagonal).
    let more = pivoted_cholesky(&src, r + 5, 1e-10, &Silent).unwrap();
    assert_eq!(more.l.ncols(), r);
    let worst = more.residual.iter().fold(0f64, |m, &v| m.max(v));
    within(
        "residual diagonal / max |A|",
        worst / a.norm_max(),
        2e-14, /* measured 1.8e-16 */
    );
}

#[test]
fn preconditioned_slq_matches_exact_logdet() {
    // Low-rank-plus-diagonal SPD matrix with a wide spectrum (eigenvalues ~0.05 .. ~300).
    let (m, r) = (200, 15);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let g = gaussian(&mut rng, m, r);
    let d = Mat::from_fn(m, m, |i, j| {
        if i == j {
            0.05 + 0.05 * (i % 3) as f64
        } else {
            0.0
        }
    });
    let a = &g * g.transpose() + d;
    let exact = exact_logdet(&a);
    let src = DenseSource::new(a);
    let est = PreconditionedSlq::new(r, fixed(20, 10, 3))
        .run(&src, &Silent)
        .unwrap();
    let se = est.std_error.unwrap();
    assert!(
        (est.logdet - exact).abs() <= 3.0 * se + 1e-8 * exact.abs(),
        "{} vs {exact} (se {se})",
        est.logdet
    );
    assert_eq!(est.details["rank"], r);
    // The preconditioner removes most of the variance: plain SLQ with the same budget is noisier.
    let plain = Slq {
        options: fixed(20, 10, 3),
    }
    .run(&src, &Silent)
    .unwrap();
    assert!(
        se < plain.std_error.unwrap(),
        "pslq se {se} vs slq se {}",
        plain.std_error.unwrap()
    );
}

#[test]
fn full_rank_preconditioner_is_exact() {
    // With r = m the pivoted Cholesky is complete, P = K up to rounding, and ln det P carries the answer.
    let m = 40;
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let g = gaussian(&mut rng, m, m);
    let a = &g * g.transpose() + Mat::from_fn(m, m, |i, j| if i == j { 0.1 } else { 0.0 });
    let exact = exact_logdet(&a);
    let est = PreconditionedSlq::new(m, fixed(10, 4, 1))
        .run(&DenseSource::new(a), &Silent)
        .unwrap();
    within(
        &format!("{} vs {exact}", est.logdet),
        ((est.logdet - exact) / exact).abs(),
        1e-8, /* measured 2.6e-10; kept at 39x */
    );
    within(
        "SLQ of the exactly preconditioned matrix",
        est.details["slq_of_preconditioned"].as_f64().unwrap().abs(),
        1e-6, /* measured 3.0e-8; kept at 34x, tighter than 100x */
    );
}
