//! Block-diagonal and pseudo-NTK estimators on a small hand-checked kernel, and the naive extrapolations
//! on data that follows their own models.

mod tolerance;

use tolerance::within;

use faer::Mat;
use ntk_pipeline::estimators::{
    BlockDiagonal, Estimator, LinearExtrapolation, PseudoNtk, StoppedCholesky, StoppedCholeskyRule,
};
use ntk_pipeline::linalg::DenseSource;
use ntk_pipeline::progress::Silent;

/// A 6 × 6 SPD kernel, n = 3 examples of d = 2 logits (diagonally dominant, so SPD).
fn kernel() -> Mat<f64> {
    let rows = [
        [5.0, 1.0, 0.5, 0.2, 0.1, 0.3],
        [1.0, 4.0, 0.3, 0.6, 0.2, 0.1],
        [0.5, 0.3, 6.0, 1.5, 0.4, 0.2],
        [0.2, 0.6, 1.5, 3.0, 0.1, 0.5],
        [0.1, 0.2, 0.4, 0.1, 2.0, 0.7],
        [0.3, 0.1, 0.2, 0.5, 0.7, 4.5],
    ];
    Mat::from_fn(6, 6, |i, j| rows[i][j])
}

#[test]
fn block_diagonal_is_sum_of_block_logdets() {
    let k = kernel();
    // 2 × 2 determinants ad − bc of the three diagonal blocks.
    let expected: f64 = (0..3)
        .map(|b| {
            let i = 2 * b;
            (k[(i, i)] * k[(i + 1, i + 1)] - k[(i, i + 1)] * k[(i + 1, i)]).ln()
        })
        .sum();
    let est = BlockDiagonal
        .run(&DenseSource::new(k).with_granule(2), &Silent)
        .unwrap();
    within(
        &format!("{} vs {expected}", est.logdet),
        (est.logdet - expected).abs(),
        1e-14, /* measured 0 */
    );
    assert_eq!(est.details["blocks"], 3);
}

#[test]
fn pseudo_ntk_is_d_times_logdet_of_block_means() {
    let k = kernel();
    let d = 2;
    let mut p = [[0.0f64; 3]; 3];
    for (i, row) in p.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            let mut s = 0.0;
            for a in 0..d {
                for b in 0..d {
                    s += k[(i * d + a, j * d + b)];
                }
            }
            *v = s / d as f64;
        }
    }
    // 3 × 3 determinant by cofactor expansion.
    let det = p[0][0] * (p[1][1] * p[2][2] - p[1][2] * p[2][1])
        - p[0][1] * (p[1][0] * p[2][2] - p[1][2] * p[2][0])
        + p[0][2] * (p[1][0] * p[2][1] - p[1][1] * p[2][0]);
    let expected = d as f64 * det.ln();
    for panel in [1, 2, 64] {
        let est = PseudoNtk {
            panel_examples: panel,
        }
        .run(&DenseSource::new(k.clone()).with_granule(2), &Silent)
        .unwrap();
        within(
            &format!("panel {panel}: {} vs {expected}", est.logdet),
            (est.logdet - expected).abs(),
            2e-13, /* measured 1.8e-15 */
        );
    }
}

#[test]
fn linear_extrapolation_is_exact_on_lines() {
    let nested: Vec<(usize, f64)> = (1..=50).map(|k| (k, 3.0 - 2.5 * k as f64)).collect();
    let est = LinearExtrapolation {
        n0: 10,
        target_n: 1000,
    }
    .estimate(&nested)
    .unwrap();
    let truth = 3.0 - 2.5 * 1000.0;
    within(
        &format!("{} vs {truth}", est.logdet),
        ((est.logdet - truth) / truth).abs(),
        5e-14, /* measured 3.6e-16 */
    );
    assert!(LinearExtrapolation {
        n0: 50,
        target_n: 10
    }
    .estimate(&nested)
    .is_err());
}

#[test]
fn stopped_cholesky_is_exact_on_its_models() {
    // Constant increments δ_k = −0.7: ℓ_k = −0.7 k.
    let nested: Vec<(usize, f64)> = (1..=40).map(|k| (k, -0.7 * k as f64)).collect();
    let est = StoppedCholesky {
        window: 10,
        target_n: 500,
        rule: StoppedCholeskyRule::Average,
    }
    .estimate(&nested)
    .unwrap();
    within(
        &format!("{}", est.logdet),
        (est.logdet + 0.7 * 500.0).abs(),
        5e-12, /* measured 0 */
    );
    // Linear increments δ_k = 2 − 0.01 k: ℓ_k = 2k − 0.01 k(k+1)/2.
    let l = |k: f64| 2.0 * k - 0.01 * k * (k + 1.0) / 2.0;
    let nested: Vec<(usize, f64)> = (1..=40).map(|k| (k, l(k as f64))).collect();
    let est = StoppedCholesky {
        window: 15,
        target_n: 900,
        rule: StoppedCholeskyRule::Trend,
    }
    .estimate(&nested)
    .unwrap();
    let truth = l(900.0);
    within(
        &format!("{} vs {truth}", est.logdet),
        ((est.logdet - truth) / truth).abs(),
        1e-12, /* measured 8.5e-15 */
    );
    // Gaps in k are rejected.
    let gappy = vec![(1, 1.0), (3, 2.0), (4, 3.0)];
    assert!(StoppedCholesky {
        window: 3,
        target_n: 10,
        rule: StoppedCholeskyRule::Average
    }
    .estimate(&gappy)
    .is_err());
}
