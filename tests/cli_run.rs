//! End to end on real MNIST with a small seeded LeNet (seconds): `run` (FLODANCE) and `compare`, checked
//! against `ntk` + `logdet --matrix` on the same subsets and against the documented JSON schema.

use faer::Mat;
use ntk_pipeline::linalg::{NpySource, TileSource, Triangle};
use ntk_pipeline::model::{arch, load::save_safetensors, SeededParams};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"))
}

fn lenet(dir: &Path) -> PathBuf {
    let net = arch::build("lenet", None, [1, 28, 28], 10, &mut SeededParams::new(7)).unwrap();
    let path = dir.join("lenet.safetensors");
    let meta = HashMap::from([
        ("arch".to_string(), "lenet".to_string()),
        ("input_shape".to_string(), "1,28,28".to_string()),
    ]);
    save_safetensors(&net, &path, meta).unwrap();
    path
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "failed: {so}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// ln det of the kernel of the first k examples, via `ntk --out` and `logdet --matrix`.
fn exact_by_files(dir: &Path, model: &Path, k: usize) -> f64 {
    let npy = dir.join(format!("K{k}.npy"));
    let js = dir.join(format!("ld{k}.json"));
    ok(bin()
        .args(["ntk", "--quiet", "--model"])
        .arg(model)
        .args(["--data", "mnist", "--n", &k.to_string(), "--out"])
        .arg(&npy));
    ok(bin()
        .args(["logdet", "--quiet", "--matrix"])
        .arg(&npy)
        .arg("--json")
        .arg(&js));
    json(&js)["logdet"].as_f64().unwrap()
}

#[test]
fn run_writes_the_documented_report_and_its_nested_logdets_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let model = lenet(dir.path());
    let out = dir.path().join("run.json");
    let plot = dir.path().join("fit.svg");
    let stdout = ok(bin()
        .args(["--quiet", "--model"])
        .arg(&model)
        .args([
            "--data",
            "mnist",
            "--n-sample",
            "24",
            "--burn-in",
            "4",
            "--exact-n",
            "30",
            "--ensemble",
            "10",
            "--json",
        ])
        .arg(&out)
        .arg("--plot")
        .arg(&plot));
    assert!(stdout.contains("FLODANCE estimate"), "{stdout}");
    let r = json(&out);
    // Schema: the stable top-level keys and their fields.
    for key in ["n", "logdet", "low", "high"] {
        assert!(
            r["estimate"][key].is_number(),
            "estimate.{key} missing: {}",
            r["estimate"]
        );
    }
    for key in [
        "n0",
        "ns",
        "q",
        "alpha",
        "coefficients",
        "rms_residual",
        "rank",
    ] {
        assert!(!r["fit"][key].is_null(), "fit.{key} missing: {}", r["fit"]);
    }
    assert!(r["fit"].get("condition").is_some());
    for key in ["kernel", "sample", "exact", "timings", "memory", "memdet"] {
        assert!(r.get(key).is_some(), "{key} missing");
    }
    assert_eq!(
        r["estimate"]["n"], 60000,
        "default target is the training set size"
    );
    let est = r["estimate"]["logdet"].as_f64().unwrap();
    let (low, high) = (
        r["estimate"]["low"].as_f64().unwrap(),
        r["estimate"]["high"].as_f64().unwrap(),
    );
    assert!(
        est.is_finite() && low <= high,
        "estimate {est} in [{low}, {high}]"
    );
    let nested: Vec<(usize, f64)> = serde_json::from_value(r["nested"].clone()).unwrap();
    assert_eq!(nested.len(), 24);
    assert!(nested.iter().enumerate().all(|(i, p)| p.0 == i + 1));
    // Nested ℓ_k from one factorisation equal ℓ_k computed from scratch on each subset.
    for k in [1, 9, 24] {
        let exact = exact_by_files(dir.path(), &model, k);
        let got = nested[k - 1].1;
        assert!(
            (got - exact).abs() <= 1e-10 * exact.abs(),
            "l_{k}: nested {got} vs exact {exact}"
        );
    }
    // --exact-n: exact ℓ_30 matches the file route too, and the reported error is consistent.
    let exact30 = exact_by_files(dir.path(), &model, 30);
    let e = &r["exact"];
    assert!((e["logdet"].as_f64().unwrap() - exact30).abs() <= 1e-10 * exact30.abs());
    let rel = (e["predicted"].as_f64().unwrap() - exact30).abs() / exact30.abs();
    assert!((e["relative_error"].as_f64().unwrap() - rel).abs() <= 1e-9 * rel.max(1e-300));
    // K_N's own nested ℓ_k: its first n_s equal the sample's (the subsets are nested), its last is ℓ_N.
    let exact_nested: Vec<(usize, f64)> = serde_json::from_value(e["nested"].clone()).unwrap();
    assert_eq!(exact_nested.len(), 30);
    for (got, want) in exact_nested.iter().zip(&nested) {
        assert_eq!(got.0, want.0);
        assert!(
            (got.1 - want.1).abs() <= 1e-10 * want.1.abs(),
            "{got:?} vs {want:?}"
        );
    }
    assert!((exact_nested[29].1 - exact30).abs() <= 1e-10 * exact30.abs());
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "not an SVG"
    );
}

#[test]
fn compare_reports_every_method_against_the_exact_value() {
    let dir = tempfile::tempdir().unwrap();
    let model = lenet(dir.path());
    let out = dir.path().join("cmp.json");
    let stdout = ok(bin()
        .args(["compare", "--quiet", "--model"])
        .arg(&model)
        .args([
            "--data",
            "mnist",
            "--n",
            "20",
            "--n-sample",
            "10",
            "--burn-in",
            "2",
            "--precond-rank",
            "20",
        ])
        .args([
            "--methods",
            "exact,flodance,slq,pslq,block-diag,pseudo-ntk,f32,linear,stopped-cholesky",
            "--json",
        ])
        .arg(&out));
    let r = json(&out);
    let rows = r["methods"].as_array().unwrap();
    assert_eq!(rows.len(), 9, "{stdout}");
    let exact = exact_by_files(dir.path(), &model, 20);
    assert!((r["exact_logdet"].as_f64().unwrap() - exact).abs() <= 1e-10 * exact.abs());
    // Block diagonal, independently: Σ_i ln det of the 10×10 diagonal blocks of the written kernel.
    let k = NpySource::open(&dir.path().join("K20.npy"), Triangle::Full).unwrap();
    let mut expected = 0.0;
    for i in 0..20 {
        let mut b = Mat::<f64>::zeros(10, 10);
        k.fill(i * 10..(i + 1) * 10, i * 10..(i + 1) * 10, b.as_mut())
            .unwrap();
        let l = b.llt(faer::Side::Lower).unwrap();
        expected += (0..10).map(|j| 2.0 * l.L()[(j, j)].ln()).sum::<f64>();
    }
    let bd = rows
        .iter()
        .find(|row| row["method"] == "block-diag")
        .unwrap();
    assert!((bd["logdet"].as_f64().unwrap() - expected).abs() <= 1e-10 * expected.abs());
    for row in rows {
        let est = row["logdet"].as_f64().unwrap();
        let pct = row["relative_error_pct"].as_f64().unwrap();
        assert!(est.is_finite() && pct.is_finite(), "{row}");
        assert!(
            (pct - 100.0 * (est - exact) / exact.abs()).abs() <= 1e-6 * pct.abs().max(1e-9),
            "{row}"
        );
    }
    let ex = rows.iter().find(|row| row["method"] == "exact").unwrap();
    assert!(ex["relative_error_pct"].as_f64().unwrap().abs() < 1e-12);
}
