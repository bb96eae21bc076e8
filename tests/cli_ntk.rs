//! The NTK through the CLI: `ntk --out` layout and scale, `logdet --model` against `ntk` + `logdet --matrix`
//! (in core and with ≥ 4 blocks), and bad input (unsupported layer, --n too large, m > p warning).

mod tolerance;

use tolerance::within;

use ntk_pipeline::data::{self, DataOptions, Split};
use ntk_pipeline::linalg::{NpySource, TileSource, Triangle};
use ntk_pipeline::model::{arch, load::save_safetensors, Network, SeededParams};
use ntk_pipeline::ntk::{brute, KernelSpec, Outputs, Precision, Scale};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"))
}

/// A seeded LeNet for 1×28×28 MNIST saved as safetensors with its architecture in the metadata.
fn lenet(dir: &Path) -> (Network, PathBuf) {
    let net = arch::build("lenet", None, [1, 28, 28], 10, &mut SeededParams::new(1)).unwrap();
    let path = dir.join("lenet.safetensors");
    let meta = HashMap::from([
        ("arch".to_string(), "lenet".to_string()),
        ("input_shape".to_string(), "1,28,28".to_string()),
    ]);
    save_safetensors(&net, &path, meta).unwrap();
    (net, path)
}

fn run_ok(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "failed: {so}\n{se}");
    (so, se)
}

fn logdet_of(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("log|det|"))
        .expect("a log|det| line");
    line.split('=').nth(1).unwrap().trim().parse().unwrap()
}

#[test]
fn ntk_file_has_the_documented_layout_and_scale() {
    let dir = tempfile::tempdir().unwrap();
    let (net, model) = lenet(dir.path());
    let out = dir.path().join("K.npy");
    let json = dir.path().join("K.json");
    run_ok(
        bin()
            .args(["ntk", "--quiet", "--model"])
            .arg(&model)
            .args(["--data", "mnist", "--n", "4", "--out"])
            .arg(&out)
            .arg("--json")
            .arg(&json),
    );
    let k = NpySource::open(&out, Triangle::Full).unwrap();
    assert_eq!(k.dim(), 40);
    let mut ours = faer::Mat::zeros(40, 40);
    k.fill(0..40, 0..40, ours.as_mut()).unwrap();
    // Independent reference: brute-force autograd on the same four MNIST training images (f64 inputs, as
    // `--precision f64` uses).
    let ds = data::load(
        "mnist",
        &DataOptions {
            split: Split::Train,
            data_dir: None,
            download: false,
        },
    )
    .unwrap();
    let x = ds.images_f64(&[0, 1, 2, 3], [1, 28, 28]).unwrap();
    let spec = KernelSpec {
        outputs: Outputs::Full,
        scale: Scale::SqrtP,
        precision: Precision::F64,
    };
    let reference = brute::kernel(&net, &x, &spec).unwrap();
    let err = (&ours - &reference).norm_l2() / reference.norm_l2();
    within(
        "ntk file vs brute force",
        err,
        2e-14, /* measured 2.1e-16 */
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in [
        "m",
        "n",
        "d",
        "p",
        "outputs",
        "scale",
        "precision",
        "wall_s",
    ] {
        assert!(meta.get(key).is_some(), "metadata lacks {key}: {meta}");
    }
    assert_eq!(meta["m"], 40);
    assert_eq!(meta["p"].as_u64().unwrap() as usize, net.num_params());
}

#[test]
fn logdet_of_streamed_tiles_equals_logdet_of_the_written_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = lenet(dir.path());
    let out = dir.path().join("K.npy");
    let n = "12";
    run_ok(
        bin()
            .args(["ntk", "--quiet", "--model"])
            .arg(&model)
            .args(["--data", "mnist", "--n", n, "--out"])
            .arg(&out),
    );
    let (dense, _) = run_ok(bin().args(["logdet", "--quiet", "--matrix"]).arg(&out));
    let reference = logdet_of(&dense);
    for blocks in ["1", "4", "5"] {
        let (streamed, _) = run_ok(
            bin()
                .args(["logdet", "--quiet", "--model"])
                .arg(&model)
                .args(["--data", "mnist", "--n", n, "--num-blocks", blocks]),
        );
        let got = logdet_of(&streamed);
        within(
            &format!("{blocks} blocks: {got} vs {reference}"),
            ((got - reference).abs()) / (reference.abs()),
            1e-14, /* measured 0 */
        );
    }
}

#[test]
fn unsupported_layers_too_many_examples_and_singular_kernels_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    // Overlapping max-pool windows: refused with the layer named.
    let spec = dir.path().join("overlap.json");
    std::fs::write(
        &spec,
        r#"{"input": [1, 28, 28], "layers": [{"type": "conv2d", "name": "c1", "out": 2, "kernel": 3},
            {"type": "maxpool2d", "kernel": 3, "stride": 2}, {"type": "flatten"}, {"type": "linear", "name": "fc", "out": 10}]}"#,
    )
    .unwrap();
    let net = arch::build(
        spec.to_str().unwrap(),
        None,
        [1, 28, 28],
        10,
        &mut SeededParams::new(2),
    )
    .unwrap();
    let weights = dir.path().join("overlap.safetensors");
    save_safetensors(&net, &weights, HashMap::new()).unwrap();
    let out = bin()
        .args(["ntk", "--quiet", "--arch"])
        .arg(&spec)
        .arg("--model")
        .arg(&weights)
        .args(["--data", "mnist", "--n", "2", "--out"])
        .arg(dir.path().join("K.npy"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("maxpool2d") && err.contains("#2") && err.contains("kernel 3 != stride 2"),
        "{err}"
    );
    assert!(!dir.path().join("K.npy").exists());

    // More examples than the split has.
    let (_, model) = lenet(dir.path());
    let out = bin()
        .args(["ntk", "--quiet", "--model"])
        .arg(&model)
        .args([
            "--data", "mnist", "--split", "test", "--n", "10001", "--out",
        ])
        .arg(dir.path().join("K.npy"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("10001") && err.contains("10000"), "{err}");

    // m = n·d > p: a warning, not an error.
    let tiny = arch::build("mlp", Some(2), [1, 28, 28], 10, &mut SeededParams::new(3)).unwrap();
    let p = tiny.num_params();
    let path = dir.path().join("tiny.safetensors");
    save_safetensors(
        &tiny,
        &path,
        HashMap::from([
            ("arch".to_string(), "mlp".to_string()),
            ("width".to_string(), "2".to_string()),
        ]),
    )
    .unwrap();
    let n = (p / 10 + 5).to_string();
    let out = bin()
        // Not --quiet: that leaves stderr to errors alone.
        .args(["ntk", "--model"])
        .arg(&path)
        .args(["--data", "mnist", "--n", &n, "--out"])
        .arg(dir.path().join("T.npy"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains(&format!("p = {p}")),
        "{err}"
    );
}

#[test]
fn logdet_model_json_keeps_the_kernel_scale_and_scale_by_apart() {
    // `logdet --model … --json` merges the kernel's metadata (whose `scale` is the s of J Jᵀ / s) with
    // MEMDET's report (whose factor T of M = T·A + S·I is `scale_by`). Both must survive, with their own
    // values, and the log-dets must obey them: ln det(K / p) = ln det K − m ln p, and
    // ln det(T·K) = ln det K + m ln T.
    let dir = tempfile::tempdir().unwrap();
    let (net, model) = lenet(dir.path());
    let p = net.num_params() as f64;
    let doc = |scale: &str, scale_by: &str| {
        let json = dir.path().join(format!("ld-{scale}-{scale_by}.json"));
        run_ok(
            bin()
                .args(["logdet", "--quiet", "--model"])
                .arg(&model)
                .args(["--data", "mnist", "--n", "6", "--num-blocks", "2"])
                .args(["--scale", scale, "--scale-by", scale_by, "--json"])
                .arg(&json),
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        v
    };
    let none = doc("none", "1");
    let by_p = doc("p", "1");
    let doubled = doc("sqrt-p", "2");
    let root = doc("sqrt-p", "1");
    for (v, scale, scale_by) in [
        (&none, "none", 1.0),
        (&by_p, "p", 1.0),
        (&doubled, "sqrt-p", 2.0),
        (&root, "sqrt-p", 1.0),
    ] {
        assert_eq!(v["scale"], scale, "kernel scale lost: {v}");
        assert_eq!(v["scale_by"].as_f64(), Some(scale_by), "{v}");
        assert_eq!(v["shift"].as_f64(), Some(0.0));
        assert_eq!(
            (v["m"].as_u64(), v["n"].as_u64(), v["d"].as_u64()),
            (Some(60), Some(6), Some(10))
        );
        assert_eq!(v["p"].as_f64(), Some(p));
        assert_eq!(v["outputs"], "full");
        assert_eq!(v["precision"], "f64");
        assert!(v["kernel_stats"].is_object() && v["info"].is_object());
    }
    let l = |v: &serde_json::Value| v["logdet"].as_f64().unwrap();
    let m = 60.0;
    // Each identity holds to rounding of ln dets of size ~|ℓ| (measured ≤ 1.3e-16 relative; tolerance 2e-14).
    for (what, got, want) in [
        ("scale p", l(&by_p), l(&none) - m * p.ln()),
        ("scale sqrt-p", l(&root), l(&none) - m * 0.5 * p.ln()),
        ("scale-by 2", l(&doubled), l(&root) + m * 2f64.ln()),
    ] {
        let rel = (got - want).abs() / want.abs();
        within(&format!("{what}: {got} vs {want}"), rel, 2e-14);
    }
}

#[test]
fn ntk_refuses_kernels_above_its_dense_size_cap() {
    // `ntk --out` holds the kernel densely up to order 16384: n = 1639 with d = 10 is m = 16390, refused
    // before any tile is computed, with the way out named, and no file written.
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = lenet(dir.path());
    let out = dir.path().join("K.npy");
    let o = bin()
        .args(["ntk", "--quiet", "--model"])
        .arg(&model)
        .args(["--data", "mnist", "--n", "1639", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("16390x16390") && err.contains("16384") && err.contains("logdet --model"),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the model is in the directory"
    );
}
