//! `ntk-pipeline fit` end to end: CSV and JSON inputs, the JSON report's keys, the SVG, bad input → exit 2.

mod tolerance;

use tolerance::within;

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"))
}

/// A synthetic nested log-det law ℓ_k = 1 + 5k − 0.95·ln k! for k = 1..=n (ln k! by a running sum).
fn law(n: usize) -> Vec<(usize, f64)> {
    let mut lf = 0.0f64;
    (1..=n)
        .map(|k| {
            lf += (k as f64).ln();
            (k, 1.0 + 5.0 * k as f64 - 0.95 * lf)
        })
        .collect()
}

/// `points` as a `k,l_k` CSV file `nested.csv` in `dir` (17 significant digits).
fn write_csv(dir: &Path, points: &[(usize, f64)]) -> std::path::PathBuf {
    let csv = dir.join("nested.csv");
    let mut text = String::from("k,l_k\n");
    for (k, l) in points {
        text.push_str(&format!("{k},{l:.17e}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    csv
}

fn run_fit(input: &Path, dir: &Path, extra: &[&str]) -> (std::process::Output, serde_json::Value) {
    let json = dir.join("out.json");
    let svg = dir.join("fit.svg");
    let mut cmd = bin();
    cmd.args(["--quiet", "fit", "--logdets"]).arg(input);
    cmd.args([
        "--target-n",
        "5000",
        "--burn-in",
        "20",
        "--ensemble",
        "20",
        "--json",
    ])
    .arg(&json);
    cmd.arg("--plot").arg(&svg).args(extra);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<svg") && svg_text.trim_end().ends_with("</svg>"));
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (out, value)
}

fn check_report(v: &serde_json::Value) {
    let est = &v["estimate"];
    assert_eq!(est["n"], 5000);
    let (l, lo, hi) = (
        est["logdet"].as_f64().unwrap(),
        est["low"].as_f64().unwrap(),
        est["high"].as_f64().unwrap(),
    );
    assert!(lo <= l && l <= hi);
    let truth = law(5000)[4999].1;
    within(
        &format!("{l} vs {truth}"),
        ((l - truth) / truth).abs(),
        1e-12, /* measured 1.1e-14 */
    );
    let fit = &v["fit"];
    for key in [
        "n0",
        "ns",
        "q",
        "alpha",
        "coefficients",
        "rms_residual",
        "rank",
        "condition",
    ] {
        assert!(!fit[key].is_null(), "missing fit.{key} in {fit}");
    }
    assert_eq!(fit["n0"], 20);
    assert_eq!(fit["ns"], 400);
    within(
        "beta0",
        (fit["coefficients"]["beta0"].as_f64().unwrap() + 0.95).abs(),
        2e-12, /* measured 1.8e-14 */
    );
}

#[test]
fn fit_csv_and_json_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let pts = law(400);
    let csv = write_csv(dir.path(), &pts);
    let (out, v) = run_fit(&csv, dir.path(), &[]);
    check_report(&v);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("beta0") && stdout.contains("estimate"),
        "{stdout}"
    );

    let json_in = dir.path().join("nested.json");
    let pairs: Vec<serde_json::Value> =
        pts.iter().map(|(k, l)| serde_json::json!([k, l])).collect();
    std::fs::write(&json_in, serde_json::json!({ "nested": pairs }).to_string()).unwrap();
    let (_, v) = run_fit(
        &json_in,
        dir.path(),
        &["--alpha", "1", "--plain-terms", "1"],
    );
    check_report(&v);
    assert_eq!(v["fit"]["alpha"], 1.0);
    assert_eq!(v["fit"]["r"], 1);
    within(
        "gamma1 (absent from the data)",
        v["fit"]["coefficients"]["gamma1"].as_f64().unwrap().abs(),
        1e-8, /* measured 1.5e-10 */
    );
}

#[test]
fn n_sample_fits_the_prefix_and_scores_and_draws_the_rest_as_exact() {
    let dir = tempfile::tempdir().unwrap();
    let all = law(5000);
    let csv = write_csv(dir.path(), &all);
    // The fit of the first 400 is the fit of a 400-point file (ns = 400, the law recovered).
    let (out, v) = run_fit(&csv, dir.path(), &["--n-sample", "400"]);
    check_report(&v);
    let exact = &v["exact"];
    assert_eq!(exact["n"], 5000);
    let truth = all[4999].1;
    within(
        "exact value read from the file",
        ((exact["logdet"].as_f64().unwrap() - truth) / truth).abs(),
        1e-15,
    );
    let est = v["estimate"]["logdet"].as_f64().unwrap();
    within(
        "relative error as reported",
        (exact["relative_error"].as_f64().unwrap() - (est - truth) / truth.abs()).abs(),
        1e-15,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("exact:    l_5000"));
    // The plot draws ℓ_k/k for k in (400, 5000] as the exact curve; without --n-sample it has none.
    let svg = std::fs::read_to_string(dir.path().join("fit.svg")).unwrap();
    assert!(svg.contains(r#"<polyline class="exact""#), "no exact curve");
    let (_, whole) = run_fit(&csv, dir.path(), &[]);
    assert!(whole["exact"].is_null());
    let svg = std::fs::read_to_string(dir.path().join("fit.svg")).unwrap();
    assert!(!svg.contains(r#"class="exact""#));
    // A `run --exact-n` document: the exact K_N's nested log-dets are read, not the sample's.
    let pair = |&(k, l): &(usize, f64)| serde_json::json!([k, l]);
    let doc = serde_json::json!({
        "nested": all[..400].iter().map(pair).collect::<Vec<_>>(),
        "exact": { "n": 5000, "nested": all.iter().map(pair).collect::<Vec<_>>() },
    });
    let run_json = dir.path().join("run.json");
    std::fs::write(&run_json, doc.to_string()).unwrap();
    let (_, from_run) = run_fit(&run_json, dir.path(), &["--n-sample", "400"]);
    assert_eq!(from_run["exact"]["n"], 5000);
    assert_eq!(from_run["estimate"]["logdet"], v["estimate"]["logdet"]);
    // An n_s beyond the file is refused, exit code 2.
    let out = bin()
        .args(["--quiet", "fit", "--logdets"])
        .arg(&csv)
        .args(["--target-n", "6000", "--n-sample", "5001"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("k = 1..5000"));
}

#[test]
fn bad_input_exits_2_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "k,l_k\n1,2\n2,abc\n").unwrap();
    let short = dir.path().join("short.json");
    std::fs::write(&short, "[[1, 1.0], [2, 2.5], [3, 3.1]]").unwrap();
    let missing = dir.path().join("missing.csv");
    for input in [&bad, &short, &missing] {
        let json = dir.path().join("out.json");
        let out = bin()
            .args(["--quiet", "fit", "--logdets"])
            .arg(input)
            .args(["--target-n", "100", "--burn-in", "1", "--json"])
            .arg(&json)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {}",
            input.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
        assert!(!json.exists());
    }
}

/// `logdet --nested --json` output is `fit` input (issue 11, item 8): a diagonal matrix whose leading
/// log-dets are `law(k)` (d_k = exp(ℓ_k − ℓ_{k−1})) gives the same fit as the law itself.
#[test]
fn fit_reads_logdet_nested_json() {
    let dir = tempfile::tempdir().unwrap();
    let points = law(400);
    let diag: Vec<f64> = points
        .iter()
        .enumerate()
        .map(|(i, &(_, l))| (l - if i == 0 { 0.0 } else { points[i - 1].1 }).exp())
        .collect();
    let d = faer::Mat::<f64>::from_fn(400, 400, |i, j| if i == j { diag[i] } else { 0.0 });
    let npy = dir.path().join("D.npy");
    ntk_pipeline::linalg::npy_write::write_npy_f64(&npy, d.as_ref()).unwrap();
    let ld = dir.path().join("ld.json");
    let out = bin()
        .args([
            "logdet",
            "--quiet",
            "--num-blocks",
            "3",
            "--nested",
            "1",
            "--matrix",
        ])
        .arg(&npy)
        .arg("--json")
        .arg(&ld)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, report) = run_fit(&ld, dir.path(), &[]);
    check_report(&report);

    // A nested log-det with a negative determinant is not a kernel's: refused, naming the entry.
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ld).unwrap()).unwrap();
    doc["nested"]["logdets"][7]["sign"] = serde_json::json!(-1.0);
    let bad = dir.path().join("neg.json");
    std::fs::write(&bad, doc.to_string()).unwrap();
    let out = bin()
        .args([
            "fit",
            "--quiet",
            "--target-n",
            "5000",
            "--burn-in",
            "20",
            "--logdets",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("entry 7") && err.contains("sign"), "{err}");
}

/// `compare --json` output is `fit` input: its `nested` pairs give the same fit as the same pairs as CSV.
#[test]
fn fit_reads_compare_json() {
    use ntk_pipeline::model::{arch, load::save_safetensors, SeededParams};
    let dir = tempfile::tempdir().unwrap();
    let net = arch::build("lenet", None, [1, 28, 28], 10, &mut SeededParams::new(2)).unwrap();
    let model = dir.path().join("lenet.safetensors");
    let meta = std::collections::HashMap::from([("arch".to_string(), "lenet".to_string())]);
    save_safetensors(&net, &model, meta).unwrap();
    let cmp = dir.path().join("c.json");
    let out = bin()
        .args([
            "compare",
            "--quiet",
            "--data",
            "mnist",
            "--n",
            "24",
            "--methods",
            "exact",
            "--model",
        ])
        .arg(&model)
        .arg("--json")
        .arg(&cmp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cmp).unwrap()).unwrap();
    let csv: String = doc["nested"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{},{:e}\n", p[0], p[1].as_f64().unwrap()))
        .collect();
    let csv_path = dir.path().join("c.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let estimate = |input: &Path| -> serde_json::Value {
        let json = dir.path().join("f.json");
        let out = bin()
            .args([
                "fit",
                "--quiet",
                "--target-n",
                "100",
                "--burn-in",
                "4",
                "--ensemble",
                "5",
            ])
            .arg("--logdets")
            .arg(input)
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        v["estimate"].clone()
    };
    let from_json = estimate(&cmp);
    assert!(from_json["logdet"].as_f64().unwrap().is_finite());
    assert_eq!(from_json, estimate(&csv_path));
}
