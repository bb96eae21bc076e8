//! `report` on the committed exact data (docs/results): each cell's FLODANCE estimate equals `fit` run on
//! the same cut of the file, its exact value is the file's ℓ_n, and coverage is counted from the cells.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"))
}

const RESULTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/docs/results/lenet-mnist-2500.json"
);

/// The file's nested log-dets, read independently of the library.
fn nested() -> Vec<(usize, f64)> {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(RESULTS).unwrap()).unwrap();
    doc["nested"]["logdets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["k"].as_u64().unwrap() as usize,
                e["logdet"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn report_cells_equal_fit_on_the_same_cut() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let plot = dir.path().join("errors.svg");
    let status = bin()
        .args([
            "--quiet",
            "report",
            "--results",
            RESULTS,
            "--windows",
            "100:500",
            "--targets",
            "1000,2500",
        ])
        .args(["--shape-constrained", "--json"])
        .arg(&out)
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        stdout.contains("| lenet-mnist-2500.json | (100, 500) | 1000 |"),
        "{stdout}"
    );
    let report = json(&out);
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);

    let all = nested();
    let cut: String = all
        .iter()
        .filter(|p| p.0 <= 500)
        .map(|(k, l)| format!("{k},{l:e}\n"))
        .collect();
    let csv = dir.path().join("cut.csv");
    std::fs::write(&csv, cut).unwrap();
    for cell in cells {
        let n = cell["n"].as_u64().unwrap() as usize;
        assert_eq!(cell["exact"].as_f64().unwrap(), all[n - 1].1);
        let fit_json = dir.path().join(format!("fit-{n}.json"));
        let fit = bin()
            .args(["--quiet", "fit", "--logdets"])
            .arg(&csv)
            .args([
                "--burn-in",
                "100",
                "--q",
                "2",
                "--shape-constrained",
                "--target-n",
                &n.to_string(),
            ])
            .arg("--json")
            .arg(&fit_json)
            .output()
            .unwrap();
        assert!(
            fit.status.success(),
            "{}",
            String::from_utf8_lossy(&fit.stderr)
        );
        let est = json(&fit_json)["estimate"].clone();
        assert_eq!(cell["flodance"].as_f64(), est["logdet"].as_f64());
        assert_eq!(
            cell["calibrated"]["low"].as_f64(),
            est["calibrated"]["low"].as_f64()
        );
        let exact = all[n - 1].1;
        let want = 100.0 * (est["logdet"].as_f64().unwrap() - exact) / exact.abs();
        assert!(
            (cell["flodance_error_percent"].as_f64().unwrap() - want).abs() < 1e-12 * want.abs()
        );
    }
    let covered = cells
        .iter()
        .filter(|c| c["sensitivity"]["covers"] == true)
        .count();
    assert_eq!(
        report["sensitivity"]["covered"].as_u64(),
        Some(covered as u64)
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    // One FLODANCE mark per cell (the legend's mark has its own class).
    assert_eq!(
        svg.matches(r#"<circle class="FLODANCE""#).count(),
        cells.len()
    );
    assert!(svg.starts_with("<svg") && svg.contains("extrapolation ratio"));
}

#[test]
fn report_refuses_files_without_exact_nested_logdets() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"logdet": 1.0}"#).unwrap();
    let out = bin()
        .args(["--quiet", "report", "--results"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no exact nested log-dets"));
}

/// `--model`/`--data` arguments for the shipped LeNet on the shipped MNIST.
fn lenet() -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    [
        "--model",
        &format!("{root}/models/lenet-mnist.safetensors"),
        "--data",
        "mnist",
        "--data-dir",
        &format!("{root}/datasets"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn report_estimates_give_the_table2_errors_of_compare_and_logdet_runs() {
    // Real runs on the shipped LeNet (n = 30, m = 300): the exact nested log-dets (`logdet --nested`), a
    // `compare` run with two deterministic methods and an f32 `logdet`. Each Table 2 entry must be the
    // relative error of that file's estimate against the results file's exact ℓ_30, computed here from
    // the JSON files themselves.
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let run = |args: Vec<String>| {
        let o = bin().arg("--quiet").args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let mut a = vec!["logdet".to_string()];
    a.extend(lenet());
    a.extend(["--n", "30", "--nested", "--json", &p("exact.json")].map(String::from));
    run(a);
    let est = dir.path().join("est");
    std::fs::create_dir(&est).unwrap();
    let mut a = vec!["compare".to_string()];
    a.extend(lenet());
    a.extend(
        [
            "--n",
            "30",
            "--methods",
            "exact,block-diag,pseudo-ntk",
            "--n-sample",
            "10",
        ]
        .map(String::from),
    );
    a.extend([
        "--burn-in".into(),
        "2".into(),
        "--json".into(),
        p("est/compare.json"),
    ]);
    run(a);
    let mut a = vec!["logdet".to_string()];
    a.extend(lenet());
    a.extend(
        [
            "--n",
            "30",
            "--precision",
            "f32",
            "--json",
            &p("est/f32.json"),
        ]
        .map(String::from),
    );
    run(a);
    let out = dir.path().join("report.json");
    let o = bin()
        .args([
            "--quiet",
            "report",
            "--results",
            &p("exact.json"),
            "--estimates",
        ])
        .arg(&est)
        .args(["--windows", "1:10", "--targets", "30", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("| method | lenet / mnist n = 30 (1 net) |"),
        "{table}"
    );
    let exact_doc = json(&dir.path().join("exact.json"));
    let exact = exact_doc["nested"]["logdets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["k"] == 30)
        .unwrap()["logdet"]
        .as_f64()
        .unwrap();
    let compare = json(&est.join("compare.json"));
    let f32 = json(&est.join("f32.json"))["logdet"].as_f64().unwrap();
    let method = |name: &str| {
        compare["methods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["method"] == name)
            .unwrap()["logdet"]
            .as_f64()
            .unwrap()
    };
    let report = json(&out);
    let entry = |label: &str| {
        report["table2"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["method"] == label)
            .unwrap_or_else(|| panic!("no `{label}` entry: {}", report["table2"]))["value"]
            .as_f64()
            .unwrap()
    };
    let err = |v: f64| 100.0 * (v - exact) / exact.abs();
    for (label, want) in [
        ("block diagonal", err(method("block-diag"))),
        ("pseudo-NTK", err(method("pseudo-ntk"))),
        ("direct f32 formation", err(f32)),
        ("exact ℓ_n (f64)", exact),
    ] {
        let got = entry(label);
        assert!(
            (got - want).abs() <= 1e-12 * want.abs().max(1.0),
            "{label}: {got} vs {want}"
        );
    }
    // The compare run's own exact value is the same kernel's: it agrees with the results file.
    let own = compare["exact_logdet"].as_f64().unwrap();
    assert!(
        (own - exact).abs() <= 1e-10 * exact.abs(),
        "{own} vs {exact}"
    );
    // A FLODANCE row from the cell (1, 10) -> 30.
    assert!(table.contains("| FLODANCE n_0 = 1, n_s = 10 |"), "{table}");
}

#[test]
fn the_same_kernel_in_two_files_is_scored_once() {
    // A model's results file and a copy under another name (as a model's N = 1000 and N = 2500 runs hold
    // the same nested ℓ_k): each (window, target) cell counts once in the cells and the coverage.
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/results/protocol/resnet9-mnist-s0-1000.json"
    );
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.json", "b.json"] {
        std::fs::copy(file, dir.path().join(name)).unwrap();
    }
    let out = dir.path().join("report.json");
    let run = bin()
        .args(["--quiet", "report", "--results"])
        .arg(dir.path())
        .args(["--windows", "1:100,100:500", "--targets", "1000", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report = json(&out);
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2, "{cells:?}");
    assert!(cells.iter().all(|c| c["file"] == "a.json"));
    assert_eq!(
        report["sensitivity"]["cells"], 2,
        "{}",
        report["sensitivity"]
    );
}

/// README's Table 2 block (between its markers) is, byte for byte, what the command in its begin marker
/// prints on the committed protocol data: the tables cannot drift from the files they report.
#[test]
fn readme_table2_block_is_the_report_output() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let begin = readme
        .find("<!-- table2 begin")
        .expect("README has a table2 block");
    let marker_end = begin + readme[begin..].find('\n').unwrap();
    let marker = &readme[begin..marker_end];
    let command = marker
        .split("(generated: ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(") -->"))
        .expect("the begin marker names the command");
    let end = readme.find("<!-- table2 end -->").unwrap();
    let block = readme[marker_end + 1..end].trim();
    let output = bin()
        .current_dir(root)
        .args(command.split_whitespace())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        printed.trim(),
        block,
        "README's table2 block is stale: rerun `ntk-pipeline {command}`"
    );
}
