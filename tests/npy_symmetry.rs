//! `.npy` inputs are checked, not assumed (issue 11, items 3 and 7): a matrix whose triangles differ is refused
//! under every block plan unless `--triangle` names the valid one (then every plan gives the log-det of that
//! triangle's symmetric matrix), a NaN in either triangle is an error under every plan, and a file that
//! shrinks while it is read is an error, not a SIGBUS.

mod support;

use faer::Mat;
use ntk_pipeline::linalg::{memdet, MemdetOptions, NpySource, TileSource, Triangle};
use ntk_pipeline::progress::Silent;
use ntk_pipeline::Error;
use std::process::Command;
use support::*;

fn opts(nb: usize) -> MemdetOptions {
    MemdetOptions {
        num_blocks: Some(nb),
        ..Default::default()
    }
}

/// Upper triangle (with the diagonal) from `s`, strict lower triangle from `0.5·(s − diag s)`: both
/// symmetrisations are SPD (the lower one is ½ s + ½ diag s), with different log-dets.
fn two_faced(n: usize) -> (Mat<f64>, Mat<f64>, Mat<f64>) {
    let s = random_spd(21, n);
    let lower_sym = Mat::from_fn(
        n,
        n,
        |i, j| if i == j { s[(i, i)] } else { 0.5 * s[(i, j)] },
    );
    let a = Mat::from_fn(
        n,
        n,
        |i, j| if i <= j { s[(i, j)] } else { lower_sym[(i, j)] },
    );
    let upper_sym = Mat::from_fn(n, n, |i, j| s[(i.min(j), i.max(j))]);
    (a, upper_sym, lower_sym)
}

#[test]
fn non_symmetric_npy_is_refused_or_read_by_the_named_triangle_under_every_plan() {
    let n = 53;
    let (a, upper_sym, lower_sym) = two_faced(n);
    let dir = tempfile::tempdir().unwrap();
    for fortran in [false, true] {
        let path = dir.path().join(format!("a-{fortran}.npy"));
        write_npy(&path, &a, fortran);
        let full = NpySource::open(&path, Triangle::Full).unwrap();
        for nb in 1..=8 {
            match memdet(&full, &opts(nb), &Silent) {
                Err(Error::Input(msg)) => {
                    assert!(
                        msg.contains("not symmetric") && msg.contains("--triangle"),
                        "{msg}"
                    );
                }
                other => {
                    panic!("fortran={fortran} n_b={nb}: expected a symmetry error, got {other:?}")
                }
            }
        }
        for (tri, reference) in [(Triangle::Upper, &upper_sym), (Triangle::Lower, &lower_sym)] {
            let want = llt_logdet(reference);
            let src = NpySource::open(&path, tri).unwrap();
            for nb in 1..=8 {
                let got = memdet(&src, &opts(nb), &Silent).unwrap().logdet;
                assert!(
                    rel(got, want) < 1e-12,
                    "{tri:?} fortran={fortran} n_b={nb}: {got} vs {want}"
                );
            }
        }
    }
    // The CLI: exit 2 naming the first offending pair, for every plan.
    let path = dir.path().join("a-false.npy");
    for nb in 1..=8 {
        let out = Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"))
            .args([
                "logdet",
                "--matrix",
                path.to_str().unwrap(),
                "--num-blocks",
                &nb.to_string(),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "n_b={nb}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not symmetric: A["), "{err}");
    }
}

#[test]
fn nan_in_either_triangle_is_an_error_under_every_plan() {
    let n = 40;
    let s = random_spd(22, n);
    let dir = tempfile::tempdir().unwrap();
    for (r, c) in [(35, 3), (3, 35), (20, 21)] {
        let mut a = s.clone();
        a[(r, c)] = f64::NAN;
        let path = dir.path().join(format!("nan-{r}-{c}.npy"));
        write_npy(&path, &a, false);
        let src = NpySource::open(&path, Triangle::Full).unwrap();
        for nb in 1..=8 {
            match memdet(&src, &opts(nb), &Silent) {
                Err(Error::NonFinite {
                    row, col, value, ..
                }) => {
                    assert!(value.is_nan());
                    assert_eq!((row, col), (r, c), "n_b={nb}");
                }
                other => panic!("NaN at ({r},{c}), n_b={nb}: got {other:?}"),
            }
        }
    }
}

#[test]
fn rounding_level_asymmetry_is_accepted_and_gives_one_answer() {
    // Triangles that differ by 1e-13 relative (GEMM rounding): accepted, and every plan factors the same
    // symmetric part (the mean of the two triangles).
    let n = 45;
    let s = random_spd(23, n);
    let a = Mat::from_fn(n, n, |i, j| {
        if i > j {
            s[(j, i)] * (1.0 + 1e-13)
        } else {
            s[(i, j)]
        }
    });
    let mean = Mat::from_fn(n, n, |i, j| 0.5 * (a[(i, j)] + a[(j, i)]));
    let want = llt_logdet(&mean);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("near.npy");
    write_npy(&path, &a, false);
    let src = NpySource::open(&path, Triangle::Full).unwrap();
    for nb in 1..=8 {
        let got = memdet(&src, &opts(nb), &Silent).unwrap().logdet;
        assert!(rel(got, want) < 1e-13, "n_b={nb}: {got} vs {want}");
    }
}

#[test]
fn a_file_that_shrinks_while_open_is_an_error_not_a_crash() {
    let n = 64;
    let a = random_spd(24, n);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shrink.npy");
    write_npy(&path, &a, false);
    let src = NpySource::open(&path, Triangle::Full).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(4096).unwrap();
    let mut out = Mat::<f64>::zeros(32, 32);
    match src.fill(32..64, 32..64, out.as_mut()) {
        Err(Error::Input(msg)) => assert!(msg.contains("shrank"), "{msg}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let err = memdet(&src, &opts(2), &Silent).unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
}
