//! End to end on real MNIST with a small seeded LeNet (seconds): `run` (FLODANCE) and `compare`, checked
//! against `ntk` + `logdet --matrix` on the same subsets and against the documented JSON schema.

mod tolerance;

use tolerance::within;

use faer::Mat;
use ntk_pipeline::estimators::Estimator;
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
        within(
            &format!("l_{k}: nested {got} vs exact {exact}"),
            ((got - exact).abs()) / (exact.abs()),
            1e-14, /* measured 0 */
        );
    }
    // --exact-n: exact ℓ_30 matches the file route too, and the reported error is consistent.
    let exact30 = exact_by_files(dir.path(), &model, 30);
    let e = &r["exact"];
    within(
        "exact l_30 vs ntk + logdet",
        ((e["logdet"].as_f64().unwrap() - exact30).abs()) / (exact30.abs()),
        1e-14, /* measured 0 */
    );
    // The report's relative error is consistent with its own exact and predicted values (not the file
    // route's ℓ_30, which differs at rounding: relative_error amplifies that by 1/relative_error).
    let own = e["logdet"].as_f64().unwrap();
    let predicted = e["predicted"].as_f64().unwrap();
    let rel = (predicted - own).abs() / own.abs();
    // serde_json's reader may be 1 ulp off per number (no float_roundtrip), and the difference of the two
    // values amplifies that by (|predicted| + |exact|) / |predicted − exact|: allow 8 ulp of it.
    let parse = 8.0 * f64::EPSILON * (predicted.abs() + own.abs()) / (predicted - own).abs();
    within(
        "exact.relative_error consistent",
        ((e["relative_error"].as_f64().unwrap() - rel).abs()) / (rel.max(1e-300)),
        1e-14 + parse, /* measured 1.05e-13 against a parse bound of about 2e-12 */
    );
    // K_N's own nested ℓ_k: its first n_s equal the sample's (the subsets are nested), its last is ℓ_N.
    let exact_nested: Vec<(usize, f64)> = serde_json::from_value(e["nested"].clone()).unwrap();
    assert_eq!(exact_nested.len(), 30);
    for (got, want) in exact_nested.iter().zip(&nested) {
        assert_eq!(got.0, want.0);
        within(
            &format!("{got:?} vs {want:?}"),
            ((got.1 - want.1).abs()) / (want.1.abs()),
            1e-14, /* measured 0 */
        );
    }
    within(
        "last nested of K_30 vs l_30",
        ((exact_nested[29].1 - exact30).abs()) / (exact30.abs()),
        1e-14, /* measured 0 */
    );
    // The estimate is FLODANCE on the report's own nested ℓ_k: `fit` on this JSON with the same options
    // (burn-in 4, q 2, α 0, ensemble 10, seed 0, target 60000) gives the same numbers, bit for bit.
    let fit_json = dir.path().join("fit.json");
    ok(bin()
        .args(["fit", "--quiet", "--logdets"])
        .arg(&out)
        .args([
            "--target-n",
            "60000",
            "--burn-in",
            "4",
            "--ensemble",
            "10",
            "--json",
        ])
        .arg(&fit_json));
    let refit = json(&fit_json);
    // (Equal to rounding: measured 1.4e-14 relative; tolerance 1e-12.)
    for key in ["logdet", "low", "high"] {
        let (a, b) = (
            r["estimate"][key].as_f64().unwrap(),
            refit["estimate"][key].as_f64().unwrap(),
        );
        eprintln!("run vs fit {key}: {:e}", (a - b).abs() / b.abs());
        within(
            &format!(
                "estimate.{key}: run {} vs fit {}",
                r["estimate"], refit["estimate"]
            ),
            ((a - b).abs()) / (b.abs()),
            1e-12, /* measured 1.4e-14 */
        );
    }
    // And the library's fit on the same points, independently of both subcommands' plumbing.
    let lib = ntk_pipeline::scaling::fit(
        &nested,
        &ntk_pipeline::scaling::FitOptions {
            n0: 4,
            q: 2,
            r: 0,
            alpha: 0.0,
            ensemble: 10,
            seed: 0,
        },
    )
    .unwrap();
    let (lib_low, lib_high) = lib.interval(60000.0);
    for (what, a, b) in [
        ("estimate", est, lib.predict(60000.0)),
        ("low", low, lib_low),
        ("high", high, lib_high),
    ] {
        eprintln!("run vs library {what}: {:e}", (a - b).abs() / b.abs());
        within(
            &format!("{what}: run {a} vs library {b}"),
            ((a - b).abs()) / (b.abs()),
            1e-12, /* measured 1.5e-14 */
        );
    }
    // The SVG draws the fitted curve (241 points), the fit window (shaded), one marker per nested ℓ_k,
    // the estimate and its interval, and names the window and the estimate in its title.
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "not an SVG"
    );
    let curve = svg
        .lines()
        .find(|l| l.starts_with("<polyline") && l.contains("#d95f02"))
        .expect("no fitted curve");
    let points = curve.split('"').nth(1).unwrap().split(' ').count();
    assert_eq!(points, 241, "{curve}");
    // The window: a full-height (440 px plot area) shaded rectangle (the legend's swatch has the same colour).
    assert!(
        svg.lines()
            .any(|l| l.starts_with("<rect") && l.ends_with(r##"height="440.00" fill="#dbe9f6"/>"##)),
        "no fit window"
    );
    let markers = svg.matches(r##"r="2" fill="#1f4e89""##).count();
    assert_eq!(markers, 24, "one marker per nested value");
    assert!(
        svg.contains(r##"width="9" height="9" fill="#d95f02""##),
        "no estimate marker"
    );
    let title = format!(
        "window k in [4, 24], q = 2, alpha = 0; estimate at n = 60000: {} [{}, {}]",
        plot_number(est),
        plot_number(low),
        plot_number(high)
    );
    assert!(svg.contains(&title), "title {title:?} not in the SVG");
}

/// How the plot writes a number: 5 significant digits in scientific notation beyond 1e7, else rounded.
fn plot_number(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e7).contains(&a) {
        format!("{v:.4e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
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
            "exact,flodance,slq,pslq,block-diag,pseudo-ntk,f32,f32-f64acc,linear,stopped-cholesky",
            "--json",
        ])
        .arg(&out));
    let r = json(&out);
    let rows = r["methods"].as_array().unwrap();
    assert_eq!(rows.len(), 10, "{stdout}");
    let exact = exact_by_files(dir.path(), &model, 20);
    within(
        "compare exact_logdet vs ntk + logdet",
        ((r["exact_logdet"].as_f64().unwrap() - exact).abs()) / (exact.abs()),
        1e-14, /* measured 0 */
    );
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
    within(
        "block-diag vs blocks of the written kernel",
        ((bd["logdet"].as_f64().unwrap() - expected).abs()) / (expected.abs()),
        1e-14, /* measured 0 */
    );
    // Each row's percentage is its error against the exact value, checked on the scale of the log-det:
    // relative to the (tiny) error itself it would be ruined by a one-ulp difference in the exact value or
    // in JSON number parsing (the f32 row's error is ~1e-9 relative, so one ulp of ℓ is ~2e-7 of it).
    for row in rows {
        let est = row["logdet"].as_f64().unwrap();
        let pct = row["relative_error_pct"].as_f64().unwrap();
        assert!(est.is_finite() && pct.is_finite(), "{row}");
        within(
            &format!("{row}"),
            (pct / 100.0 * exact.abs() - (est - exact)).abs() / exact.abs(),
            1e-14, /* one ulp of ℓ is 1.1e-16 relative */
        );
    }
    let ex = rows.iter().find(|row| row["method"] == "exact").unwrap();
    assert!(ex["relative_error_pct"].as_f64().unwrap().abs() < 1e-12);
    let row_of = |name: &str| {
        rows.iter()
            .find(|row| row["method"].as_str().is_some_and(|m| m.starts_with(name)))
            .unwrap_or_else(|| panic!("no {name} row"))
    };

    // FLODANCE is `fit` on the report's own nested ℓ_k (k ≤ n_s = 10) with compare's options.
    let nested: Vec<(usize, f64)> = serde_json::from_value(r["nested"].clone()).unwrap();
    assert_eq!(nested.len(), 20);
    let sample: Vec<(usize, f64)> = nested.iter().copied().filter(|p| p.0 <= 10).collect();
    let fitted = ntk_pipeline::scaling::fit(
        &sample,
        &ntk_pipeline::scaling::FitOptions {
            n0: 2,
            q: 2,
            r: 0,
            alpha: 0.0,
            ensemble: 20,
            seed: 0,
        },
    )
    .unwrap();
    let fl = row_of("flodance");
    assert_eq!(fl["method"], "flodance(2,10)");
    // Equal up to the last bit or two: serde_json (built without `float_roundtrip`) may read the report's
    // nested values one ulp away from what the binary fitted.
    let (got, want) = (fl["logdet"].as_f64().unwrap(), fitted.predict(20.0));
    assert!(
        (got - want).abs() <= 4.0 * f64::EPSILON * want.abs(),
        "{got} vs {want}"
    );

    // f32 formation: ln det K32 − ln det K64 = Σ ln(1 + λ_i), λ the eigenvalues of L⁻¹ (K32 − K64) L⁻ᵀ
    // (K64 = L Lᵀ), computed here from the two kernels `ntk` writes. The row must carry that error, and it
    // must not be zero (the kernel really was formed in f32).
    let k64 = dense(&dir.path().join("K20.npy"));
    let k32_path = dir.path().join("K20-f32.npy");
    ok(bin()
        .args(["ntk", "--quiet", "--precision", "f32", "--model"])
        .arg(&model)
        .args(["--data", "mnist", "--n", "20", "--out"])
        .arg(&k32_path));
    let k32 = dense(&k32_path);
    let l = k64.llt(faer::Side::Lower).unwrap();
    let mut x = &k32 - &k64;
    l.L().solve_lower_triangular_in_place(x.as_mut());
    let mut e = x.transpose().to_owned();
    l.L().solve_lower_triangular_in_place(e.as_mut());
    let lambdas = e.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
    let expected_error: f64 = lambdas.iter().map(|v| v.ln_1p()).sum();
    let f32_row = row_of("f32");
    let f32_error = f32_row["logdet"].as_f64().unwrap() - exact;
    eprintln!("f32 error {f32_error:e}, predicted {expected_error:e}");
    assert!(f32_error != 0.0);
    // Both sides are differences of ln dets of size |ℓ| ≈ 1.2e3: measured 1.7e-16·|ℓ| apart, tolerance
    // 1e-14·|ℓ| (while the f32 error itself is 2.6e-9·|ℓ|).
    within(
        &format!("f32 error {f32_error:e}, predicted from the kernels {expected_error:e}"),
        ((f32_error - expected_error).abs()) / (exact.abs()),
        1e-14, /* measured 1.7e-16 */
    );
    // The hybrid (f32 passes, f64 accumulation) has its own row, closer to the exact value than f32
    // throughout, whose f32 GEMMs add their rounding to the same f32 features' (measured 1.4e-10·|ℓ|
    // against 2.6e-9·|ℓ|).
    let hybrid = row_of("f32-f64acc");
    assert_eq!(hybrid["method"], "f32-f64acc formation");
    let hybrid_error = hybrid["logdet"].as_f64().unwrap() - exact;
    eprintln!("f32-f64acc error {hybrid_error:e}");
    assert!(hybrid_error != 0.0 && hybrid_error.abs() < f32_error.abs());

    // SLQ (paper-table2: 20 Lanczos steps, 10-50 Rademacher probes, seed 0): compare's row is the
    // library's SLQ on the dense kernel written by `ntk` (same probes, same matrix), and it lies within 3 of
    // its standard errors of the dense value. (A worst-case Gauss-quadrature bias bound for ln at this
    // condition number, κ ≈ 4e3, is vacuous after 20 steps, so only the statistical part is asserted.)
    let slq = row_of("slq");
    // (Its memory setting only batches the probes; 1 GiB holds all 50 here, as compare's budget does.)
    let options = ntk_pipeline::estimators::SlqOptions::paper_table2(0);
    let dense_slq = ntk_pipeline::estimators::Slq { options }
        .run(
            &ntk_pipeline::linalg::DenseSource::new(k64.clone()).with_granule(10),
            &ntk_pipeline::progress::Silent,
        )
        .unwrap();
    let got = slq["logdet"].as_f64().unwrap();
    eprintln!(
        "slq row vs library: {:e}",
        (got - dense_slq.logdet).abs() / exact.abs()
    );
    within(
        &format!(
            "compare's SLQ {got} vs SLQ on the written kernel {}",
            dense_slq.logdet
        ),
        ((got - dense_slq.logdet).abs()) / (exact.abs()),
        2e-14, /* measured 1.9e-16 */
    );
    let se = slq["details"][0]["std_error"].as_f64().unwrap();
    let slq_error = (got - exact).abs();
    eprintln!("slq error {slq_error:e}, se {se:e}, exact {exact:e}");
    assert!(se > 0.0);
    assert!(
        slq_error <= 3.0 * se,
        "SLQ off by {slq_error:e}, more than 3 se = {:e}",
        3.0 * se
    );
}

/// A dense kernel written by `ntk`.
fn dense(path: &Path) -> Mat<f64> {
    let src = NpySource::open(path, Triangle::Full).unwrap();
    let m = src.dim();
    let mut k = Mat::zeros(m, m);
    src.fill(0..m, 0..m, k.as_mut()).unwrap();
    k
}

#[test]
fn compare_refuses_a_kernel_larger_than_max_mem() {
    // n = 20 with d = 10: a 200×200 f64 kernel, 320,000 bytes, against a 200,000-byte budget.
    let dir = tempfile::tempdir().unwrap();
    let model = lenet(dir.path());
    let out = dir.path().join("cmp.json");
    let o = bin()
        .args(["compare", "--quiet", "--model"])
        .arg(&model)
        .args([
            "--data",
            "mnist",
            "--n",
            "20",
            // A fit window the model can use, so the memory check is what refuses.
            "--n-sample",
            "10",
            "--burn-in",
            "2",
            "--max-mem",
            "200000",
            "--json",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("200x200") && err.contains("--max-mem") && err.contains("lower --n"),
        "{err}"
    );
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(!out.exists(), "JSON written on refusal");
}
