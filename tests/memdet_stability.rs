//! `--assume sym` is backward stable or refuses (issue 11, item 4): a well-conditioned symmetric indefinite
//! matrix with a tiny leading pivot, under every block plan, with and without nested log-dets (which forbid
//! pivoting). The reference is faer's dense partially pivoted LU, independent of MEMDET.

mod support;

use faer::Mat;
use ntk_pipeline::linalg::{memdet, Assume, DenseSource, LogDet, MemdetOptions};
use ntk_pipeline::progress::Silent;
use ntk_pipeline::Error;
use std::process::Command;
use support::*;

/// Q Λ Qᵀ of order 40, Q orthogonal (QR of numpy's `RandomState(7).rand(40, 40)`), eigenvalues ±(1 ..= 166)
/// alternating in sign (condition 166), then A[0,0] = 1e-16: the first unpivoted pivot is 1e-16 and the
/// unpivoted LDLᵀ's entries grow by about 1e16.
fn tiny_leading_pivot() -> Mat<f64> {
    let n = 40;
    let g = numpy_rand(7, n, n);
    let q = g.qr().compute_Q();
    let lambda: Vec<f64> = (0..n)
        .map(|i| {
            let mag = 1.0 + 165.0 * i as f64 / (n - 1) as f64;
            if i % 2 == 0 {
                mag
            } else {
                -mag
            }
        })
        .collect();
    let mut a = Mat::from_fn(n, n, |i, j| {
        (0..n)
            .map(|k| q[(i, k)] * lambda[k] * q[(j, k)])
            .sum::<f64>()
    });
    // Exactly symmetric (the sum above is evaluated in the same order for (i, j) and (j, i) only up to the
    // product's commutativity, so mirror explicitly).
    for i in 0..n {
        for j in 0..i {
            a[(j, i)] = a[(i, j)];
        }
    }
    a[(0, 0)] = 1e-16;
    a
}

fn sym(a: &Mat<f64>, nb: usize, nested: bool) -> Result<LogDet, Error> {
    let opts = MemdetOptions {
        assume: Assume::Sym,
        num_blocks: Some(nb),
        nested,
        pivoting: !nested,
        ..Default::default()
    };
    memdet(&DenseSource::new(a.clone()), &opts, &Silent)
}

#[test]
fn tiny_leading_pivot_is_accurate_or_refused_under_every_plan() {
    let a = tiny_leading_pivot();
    let (want, want_sign) = lu_logdet(&a);
    // Σ ln|λ| of the unmodified spectrum is 162.5; setting A[0,0] moves it a little.
    assert!((want - 162.5).abs() < 5.0, "reference {want}");
    for nb in 1..=8 {
        let outcome = sym(&a, nb, false);
        println!(
            "n_b={nb}: {:?}",
            outcome.as_ref().map(|r| (r.logdet, r.info.growth))
        );
        match outcome {
            Ok(r) => {
                assert!(
                    rel(r.logdet, want) <= 1e-10,
                    "n_b={nb}: {} vs {want}",
                    r.logdet
                );
                assert_eq!(r.sign, want_sign, "n_b={nb}");
                assert!(r.info.pivoted && r.info.growth.is_some_and(|g| g <= 1e4));
            }
            Err(Error::Unstable(msg)) => {
                // Refusal is allowed only for pivoting confined to blocks, never with one block.
                assert!(nb > 1, "n_b=1 must be accurate: {msg}");
                assert!(msg.contains("--num-blocks 1"), "{msg}");
            }
            Err(e) => panic!("n_b={nb}: unexpected error {e}"),
        }
    }
    // With nested log-dets there is no pivoting: the 1e16 growth must be refused, saying why.
    for nb in 1..=8 {
        match sym(&a, nb, true) {
            Err(Error::Unstable(msg)) => {
                assert!(msg.contains("element growth"), "{msg}");
                assert!(msg.contains("drop --nested"), "{msg}");
            }
            Ok(r) => panic!("n_b={nb}: nested sym returned {} (truth {want})", r.logdet),
            Err(e) => panic!("n_b={nb}: unexpected error {e}"),
        }
    }
}

#[test]
fn pivoted_sym_matches_reference_on_indefinite_matrices() {
    // SPEC's C = R + Rᵀ (indefinite, sign −1) and a shifted one: pivoting must not cost accuracy, and the
    // growth of these well-scaled matrices stays far below the limit.
    let r = numpy_rand(0, 200, 200);
    let c = sym_part(&r);
    for nb in [1, 3, 8] {
        let res = sym(&c, nb, false).unwrap();
        assert!(rel(res.logdet, 256.0142720998899) < 1e-12, "n_b={nb}");
        assert_eq!(res.sign, -1.0);
        let g = res.info.growth.unwrap();
        assert!(g < 1e3, "n_b={nb}: growth {g}");
    }
}

#[test]
fn cli_sym_refuses_or_is_accurate_and_warns_of_near_singular_pivots() {
    let dir = tempfile::tempdir().unwrap();
    let a = tiny_leading_pivot();
    let path = dir.path().join("a.npy");
    write_npy(&path, &a, false);
    let (want, _) = lu_logdet(&a);
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"))
            .args([
                "logdet",
                "--matrix",
                path.to_str().unwrap(),
                "--assume",
                "sym",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--num-blocks", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("log|det|")).unwrap();
    let got: f64 = line.split('=').nth(1).unwrap().trim().parse().unwrap();
    assert!(rel(got, want) <= 1e-10, "{got} vs {want}");
    let out = run(&["--num-blocks", "2", "--nested"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("element growth"), "{err}");
    // A pivot of 1e-14 relative to the largest diagonal entry is near-singular: warned about on stderr.
    let mut s = Mat::<f64>::identity(10, 10);
    s[(9, 9)] = 1e-14;
    let spath = dir.path().join("s.npy");
    write_npy(&spath, &s, false);
    let out = Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"))
        .args(["logdet", "--matrix", spath.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("near-singular") && err.contains("row 9"),
        "{err}"
    );
}
