//! Input that cannot be right is refused or warned about (issue 11, item 7): `fit` with a k given twice with
//! different values, a degenerate fit, a `--target-n` inside the fit window, `--num-blocks` finer than one
//! row, absurd `--threads`.

use ntk_pipeline::scaling::{fit, FitOptions};
use std::process::{Command, Output};

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"))
        .args(args)
        .output()
        .unwrap()
}

/// ℓ_k = 1 + 5k − 0.95·ln k! for k = 1..=n.
fn law(n: usize) -> Vec<(usize, f64)> {
    let mut lf = 0.0f64;
    (1..=n)
        .map(|k| {
            lf += (k as f64).ln();
            (k, 1.0 + 5.0 * k as f64 - 0.95 * lf)
        })
        .collect()
}

fn csv(points: &[(usize, f64)]) -> String {
    points.iter().map(|(k, l)| format!("{k},{l:e}\n")).collect()
}

fn opts() -> FitOptions {
    FitOptions {
        n0: 20,
        q: 2,
        r: 0,
        alpha: 0.0,
        ensemble: 10,
        seed: 0,
    }
}

#[test]
fn fit_refuses_a_k_with_two_values_and_accepts_an_identical_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let mut points = law(200);
    points.push((50, points[49].1 + 1.0));
    let path = dir.path().join("dup.csv");
    std::fs::write(&path, csv(&points)).unwrap();
    let out = bin(&[
        "fit",
        "--logdets",
        path.to_str().unwrap(),
        "--target-n",
        "5000",
        "--burn-in",
        "20",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("k = 50 appears more than once"), "{err}");
    // An identical repeat changes nothing.
    let clean = fit(&law(200), &opts()).unwrap();
    let mut repeated = law(200);
    repeated.push(repeated[49]);
    let again = fit(&repeated, &opts()).unwrap();
    assert_eq!(clean.points, again.points);
    assert_eq!(clean.predict(5000.0), again.predict(5000.0));
}

#[test]
fn degenerate_fit_and_target_inside_the_window_are_warned_in_output_and_json() {
    // k in a narrow band far out: the columns 1, k, ln k!, ln k!/k, ln k!/k² are numerically dependent.
    let mut lf: f64 = (1..1_000_000).map(|k| (k as f64).ln()).sum();
    let points: Vec<(usize, f64)> = (1_000_000..1_000_012)
        .map(|k| {
            lf += (k as f64).ln();
            (k, 1.0 + 5.0 * k as f64 - 0.95 * lf)
        })
        .collect();
    let f = fit(&points, &FitOptions { n0: 1, ..opts() }).unwrap();
    assert!(
        f.rank < f.coefficients.len(),
        "rank {} (test needs a degenerate design)",
        f.rank
    );
    assert!(
        f.warnings.iter().any(|w| w.contains("degenerate fit")),
        "{:?}",
        f.warnings
    );
    // A target inside the window: interpolation, warned about on stderr and in the JSON.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("law.csv");
    std::fs::write(&path, csv(&law(200))).unwrap();
    let json = dir.path().join("fit.json");
    let out = bin(&[
        "fit",
        "--logdets",
        path.to_str().unwrap(),
        "--target-n",
        "150",
        "--burn-in",
        "20",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: --target-n 150 lies inside the fit window"),
        "{stderr}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let warnings = v["estimate"]["warnings"].as_array().unwrap();
    assert!(warnings
        .iter()
        .any(|w| w.as_str().unwrap().contains("lies inside the fit window")));
    let out = bin(&[
        "fit",
        "--logdets",
        path.to_str().unwrap(),
        "--target-n",
        "5000",
        "--burn-in",
        "20",
    ]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("lies inside"));
}

#[test]
fn too_many_blocks_and_absurd_threads_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.npy");
    // A 4x4 identity as .npy (f64, C order).
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 4), }";
    let mut h = header.as_bytes().to_vec();
    let pad = (64 - (10 + h.len() + 1) % 64) % 64;
    h.resize(h.len() + pad, b' ');
    h.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&h);
    for i in 0..16 {
        bytes.extend_from_slice(&(if i % 5 == 0 { 1.0f64 } else { 0.0 }).to_le_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
    let m = path.to_str().unwrap();
    let out = bin(&["logdet", "--matrix", m, "--num-blocks", "5"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("smaller than one row"), "{err}");
    assert!(bin(&["logdet", "--matrix", m, "--num-blocks", "4"])
        .status
        .success());
    for t in ["0", "100000"] {
        let out = bin(&["--threads", t, "logdet", "--matrix", m]);
        assert_eq!(out.status.code(), Some(2), "--threads {t}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("--threads {t}: expected 1..="))
        );
    }
    assert!(bin(&["--threads", "1", "logdet", "--matrix", m])
        .status
        .success());
}
