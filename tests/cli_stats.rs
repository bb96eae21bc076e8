//! `stats` through the CLI: the exact statistics of the streamed pass equal a dense computation from the
//! kernel `ntk --out` writes (≤ 1e-12 relative, every output mode, with tiles forced small), including the
//! kernel–kernel alignment with a second model; the matrix-free route's exact parts (the alignment
//! numerators from K [1, Y]) agree too; bad input is refused before any work.

use faer::Mat;
use ntk_pipeline::data::{self, DataOptions, Split};
use ntk_pipeline::linalg::{NpySource, TileSource, Triangle};
use ntk_pipeline::model::{arch, load::save_safetensors, SeededParams};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const LENET: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/lenet-mnist.safetensors"
);
const MNIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/mnist");
const N: usize = 12;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "failed: {so}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

/// A seeded (untrained) LeNet saved as safetensors: the "initial weights" kernel for --against.
fn seeded_lenet(dir: &Path) -> PathBuf {
    let net = arch::build("lenet", None, [1, 28, 28], 10, &mut SeededParams::new(3)).unwrap();
    let path = dir.join("init.safetensors");
    let meta = HashMap::from([("arch".to_string(), "lenet".to_string())]);
    save_safetensors(&net, &path, meta).unwrap();
    path
}

fn dense(path: &Path) -> Mat<f64> {
    let src = NpySource::open(path, Triangle::Full).unwrap();
    let m = src.dim();
    let mut k = Mat::zeros(m, m);
    src.fill(0..m, 0..m, k.as_mut()).unwrap();
    k
}

fn ntk_out(dir: &Path, model: &str, outputs: &str, name: &str) -> Mat<f64> {
    let out = dir.join(name);
    run_ok(
        bin()
            .args([
                "ntk",
                "--model",
                model,
                "--data",
                MNIST,
                "--n",
                &N.to_string(),
            ])
            .args([
                "--outputs",
                outputs,
                "--out",
                out.to_str().unwrap(),
                "--quiet",
            ]),
    );
    dense(&out)
}

fn labels() -> Vec<usize> {
    let opts = DataOptions {
        split: Split::Train,
        data_dir: None,
        download: false,
    };
    let ds = data::load_with(
        MNIST,
        &opts,
        &data::Locations::from_env(),
        &ntk_pipeline::progress::Silent,
    )
    .unwrap();
    ds.labels()[..N].iter().map(|&l| l as usize).collect()
}

fn frob_inner(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let mut s = 0.0;
    for c in 0..a.ncols() {
        for r in 0..a.nrows() {
            s += a[(r, c)] * b[(r, c)];
        }
    }
    s
}

/// The target Y Yᵀ written out densely from its definition in README.
fn target(labels: &[usize], rows: usize) -> Mat<f64> {
    let m = labels.len() * rows;
    Mat::from_fn(m, m, |a, b| {
        if rows > 1 {
            let hit = |r: usize| labels[r / rows] == r % rows;
            if hit(a) && hit(b) {
                1.0
            } else {
                0.0
            }
        } else if labels[a] == labels[b] {
            1.0
        } else {
            0.0
        }
    })
}

fn centre(a: &Mat<f64>) -> Mat<f64> {
    let m = a.nrows();
    let h = Mat::from_fn(m, m, |r, c| f64::from(r == c) - 1.0 / m as f64);
    &h * a * &h
}

fn alignment(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    frob_inner(a, b) / (frob_inner(a, a).sqrt() * frob_inner(b, b).sqrt())
}

fn close(got: &Value, want: f64, what: &str) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {got}"));
    let rel = (got - want).abs() / want.abs();
    assert!(
        rel <= 1e-12,
        "{what}: {got} vs dense {want} (relative {rel:e})"
    );
}

#[test]
fn exact_statistics_equal_dense_computation_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let init = seeded_lenet(dir.path());
    let labels = labels();
    for (outputs, rows) in [("full", 10), ("sum", 1), ("trace", 1), ("logit:3", 1)] {
        let k = ntk_out(dir.path(), LENET, outputs, "k.npy");
        let k2 = ntk_out(dir.path(), init.to_str().unwrap(), outputs, "k2.npy");
        let json = dir.path().join("stats.json");
        // A budget of about 12 MiB beyond what lives outside (data, models, inputs, 40 MiB for the binary)
        // forces small tiles and panels, with the feature cache evicting. (It was 48 MiB before the feature
        // pass's working set for one example, 3 MiB for LeNet, was counted in the least, and 54 MiB before
        // the pass kept each of its extraction buffers at its largest use between chunks, 1328463.)
        run_ok(
            bin()
                .args([
                    "stats",
                    "--model",
                    LENET,
                    "--data",
                    MNIST,
                    "--n",
                    &N.to_string(),
                ])
                .args([
                    "--outputs",
                    outputs,
                    "--against",
                    init.to_str().unwrap(),
                    "--max-mem",
                    "56MiB",
                    "--json",
                    json.to_str().unwrap(),
                    "--quiet",
                ]),
        );
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let e = &r["exact"];
        let st = &e["statistics"];
        let m = k.nrows();
        let tr: f64 = (0..m).map(|i| k[(i, i)]).sum();
        let f2 = frob_inner(&k, &k);
        let t = target(&labels, rows);
        close(&st["trace"]["value"], tr, &format!("{outputs} trace"));
        close(
            &st["frobenius"]["value"],
            f2.sqrt(),
            &format!("{outputs} frobenius"),
        );
        close(
            &st["effective_rank"]["value"],
            tr * tr / f2,
            &format!("{outputs} effective rank"),
        );
        close(
            &st["alignment"]["value"],
            alignment(&k, &t),
            &format!("{outputs} alignment"),
        );
        close(
            &st["centred_alignment"]["value"],
            alignment(&centre(&k), &centre(&t)),
            &format!("{outputs} centred alignment"),
        );
        close(
            &e["against"]["alignment"]["value"],
            alignment(&k, &k2),
            &format!("{outputs} against"),
        );
        let per = e["per_example_trace"].as_array().unwrap();
        assert_eq!(per.len(), N);
        for (i, v) in per.iter().enumerate() {
            let want: f64 = (i * rows..(i + 1) * rows).map(|a| k[(a, a)]).sum();
            close(v, want, &format!("{outputs} per-example trace {i}"));
        }
        if rows > 1 {
            let tiles = e["tiles"].as_u64().unwrap();
            assert!(
                tiles > 1,
                "{outputs}: the budget should split the kernel into tiles, got {tiles}"
            );
        }
    }
}

#[test]
fn matrix_free_alignment_numerators_are_exact() {
    // The estimates differ from the exact values only through tr K and tr K²: with the exact ‖K‖_F (from
    // the same JSON) the estimated rows' alignments must reproduce the exact alignment.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("stats.json");
    run_ok(
        bin()
            .args(["stats", "--model", LENET, "--data", MNIST, "--n", "8"])
            .args([
                "--estimate",
                "hutchinson",
                "--exact",
                "--probes",
                "4",
                "--json",
                json.to_str().unwrap(),
                "--quiet",
            ]),
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let exact = &r["exact"]["statistics"];
    let row = &r["estimates"][0]["statistics"];
    let rescaled = row["alignment"]["value"].as_f64().unwrap()
        * row["frobenius"]["value"].as_f64().unwrap()
        / exact["frobenius"]["value"].as_f64().unwrap();
    close(
        &Value::from(rescaled),
        exact["alignment"]["value"].as_f64().unwrap(),
        "alignment numerator",
    );
    assert_eq!(r["target_products"], 2);
    assert_eq!(r["estimates"][0]["products"], 4);
}

#[test]
fn bad_stats_input_is_refused_before_work() {
    for (args, needle) in [
        (vec!["--estimate", "hutch"], "unknown estimator"),
        (vec!["--estimate", "hutchpp", "--probes", "3"], "at least 4"),
        (
            vec!["--estimate", "hutchinson", "--probes", "ten"],
            "not a positive integer",
        ),
        (
            vec!["--against", "/nonexistent/model.safetensors"],
            "nonexistent",
        ),
    ] {
        let out = bin()
            .args([
                "stats", "--model", LENET, "--data", MNIST, "--n", "4", "--quiet",
            ])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
