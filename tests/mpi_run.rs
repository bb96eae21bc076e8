//! `run` under MPI (feature `mpi`) and what the distributed path refuses, on loopback: `mpirun -np 1, 2, 4`
//! (grids 1×1, 1×2, 2×2) give the sample's nested ℓ_k and `--exact-n`'s exact nested ℓ_k equal to the
//! single-process run to 1e-12 relative on the shipped LeNet; options the distributed factorisation cannot
//! honour stop the job before any work with one message; `logdet --matrix`'s triangle, scale and shift
//! options and the on-demand fallback of feature sharing give single-process results. Needs `mpirun`
//! (Debian's openmpi-bin); `.ci/run` installs it.
#![cfg(feature = "mpi")]

mod support;

use ntk_pipeline::linalg::npy_write::write_npy_f64;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_ntk-pipeline");
const LENET: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/lenet-mnist.safetensors"
);
const GRIDS: [(usize, &str); 3] = [(1, "1x1"), (2, "1x2"), (4, "2x2")];

fn mpirun(np: usize, args: &[&str]) -> Output {
    Command::new("mpirun")
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            &np.to_string(),
        ])
        .args([BIN, "--quiet"])
        .args(args)
        .output()
        .expect("mpirun (install openmpi-bin)")
}

fn single(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `[[k, ℓ_k], …]` as ℓ_k by k.
fn pairs(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            assert_eq!(p[0].as_u64(), Some(i as u64 + 1));
            p[1].as_f64().unwrap()
        })
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (k, (a, b)) in got.iter().zip(want).enumerate() {
        // Same kernel, same Cholesky up to the order of floating-point sums: round-off only.
        assert!(
            (a - b).abs() <= 1e-12 * b.abs().max(1.0),
            "{what}, k {}: {a} vs {b}",
            k + 1
        );
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_on_every_grid_equals_single_process() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "run",
        "--model",
        LENET,
        "--data",
        "mnist",
        "--order",
        "random",
        "--seed",
        "3",
        "--n-sample",
        "40",
        "--burn-in",
        "10",
        "--ensemble",
        "5",
        "--exact-n",
        "60",
    ];
    let reference = dir.path().join("single.json");
    let out = single(&[&args[..], &["--json", reference.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let want = json(&reference);
    for (np, grid) in GRIDS {
        let path = dir.path().join(format!("run-{np}.json"));
        let plot = dir.path().join(format!("run-{np}.svg"));
        let extra = [
            "--grid",
            grid,
            "--block-size",
            "50",
            "--json",
            path.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ];
        let out = mpirun(np, &[&args[..], &extra].concat());
        assert!(out.status.success(), "np {np}: {}", stderr(&out));
        let got = json(&path);
        assert_close(
            &pairs(&got["nested"]),
            &pairs(&want["nested"]),
            &format!("np {np} sample"),
        );
        assert_close(
            &pairs(&got["exact"]["nested"]),
            &pairs(&want["exact"]["nested"]),
            &format!("np {np} exact-n"),
        );
        assert_eq!(got["exact"]["n"], 60);
        assert_eq!(got["grid"], grid);
        assert_eq!(got["ranks"].as_u64(), Some(np as u64));
        for part in ["sample", "exact"] {
            let d = &got["distributed"][part];
            assert_eq!(d["formation_seconds"].as_array().map(Vec::len), Some(np));
            assert_eq!(d["factor_seconds"].as_array().map(Vec::len), Some(np));
            assert_eq!(d["features_shared"]["shared"], true, "np {np} {part}");
        }
        // The fit is rank 0's, on the same ℓ_k: the same estimate up to round-off.
        let (e, w) = (
            got["estimate"]["logdet"].as_f64().unwrap(),
            want["estimate"]["logdet"].as_f64().unwrap(),
        );
        assert!((e - w).abs() <= 1e-8 * w.abs(), "np {np}: {e} vs {w}");
        assert!(plot.exists(), "np {np}: rank 0 writes the plot");
        // Rank 0 alone prints.
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.matches("FLODANCE estimate").count(), 1, "{stdout}");
    }
}

#[test]
fn unsupported_options_are_refused_once_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let matrix = dir.path().join("a.npy");
    write_npy_f64(
        &matrix,
        gram(&plus_identity(&numpy_rand(0, 200, 200), 100.0)).as_ref(),
    )
    .unwrap();
    let (m, out_json) = (matrix.to_str().unwrap(), dir.path().join("out.json"));
    let ckpt = dir.path().join("ckpt");
    let (j, c) = (out_json.to_str().unwrap(), ckpt.to_str().unwrap());
    let run = [
        "run",
        "--model",
        LENET,
        "--data",
        "mnist",
        "--n-sample",
        "40",
        "--burn-in",
        "10",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["logdet", "--matrix", m, "--assume", "sym"],
            "run it single-process",
        ),
        (
            vec!["logdet", "--matrix", m, "--checkpoint", c],
            "cannot be checkpointed",
        ),
        (
            [&run[..], &["--checkpoint", c]].concat(),
            "cannot be checkpointed",
        ),
        ([&run[..], &["--num-blocks", "2"]].concat(), "--num-blocks"),
        (
            vec!["logdet", "--matrix", m, "--scratch-dir", "/tmp"],
            "writes no scratch",
        ),
        (
            vec!["compare", "--model", LENET, "--data", "mnist", "--n", "20"],
            "`compare` is not distributed",
        ),
    ];
    for (args, why) in cases {
        let t = Instant::now();
        let out = mpirun(2, &[&args[..], &["--json", j]].concat());
        assert!(t.elapsed() < Duration::from_secs(30), "{args:?}");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(
            err.matches("error:").count(),
            1,
            "{args:?}: printed once: {err}"
        );
        assert!(err.contains(why), "{args:?}: {err}");
        assert!(!out_json.exists() && !ckpt.exists(), "{args:?}: no output");
        assert!(out.stdout.is_empty(), "{args:?}: no result printed");
    }
}

#[test]
fn matrix_triangle_scale_and_shift_on_two_ranks_equal_memdet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lower.npy");
    let mut a = gram(&plus_identity(&numpy_rand(1, 150, 150), 50.0));
    // Only the lower triangle is valid: the upper one holds NaN, which a read of it would report.
    for r in 0..150 {
        for c in r + 1..150 {
            a[(r, c)] = f64::NAN;
        }
    }
    write_npy_f64(&path, a.as_ref()).unwrap();
    let args = [
        "logdet",
        "--matrix",
        path.to_str().unwrap(),
        "--triangle",
        "lower",
        "--scale-by",
        "2",
        "--shift",
        "0.5",
        "--nested",
        "7",
    ];
    let (want_path, got_path) = (dir.path().join("memdet.json"), dir.path().join("dist.json"));
    let out = single(&[&args[..], &["--json", want_path.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = mpirun(
        2,
        &[
            &args[..],
            &["--block-size", "21", "--json", got_path.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (want, got) = (json(&want_path), json(&got_path));
    let nested = |d: &serde_json::Value| -> Vec<f64> {
        let l = d["nested"]["logdets"].as_array().unwrap();
        l.iter().map(|l| l["logdet"].as_f64().unwrap()).collect()
    };
    assert_eq!(got["nested"]["granule"], 7);
    assert_close(&nested(&got), &nested(&want), "nested");
    assert_close(
        &[got["logdet"].as_f64().unwrap()],
        &[want["logdet"].as_f64().unwrap()],
        "logdet",
    );
}

#[test]
fn lenet_features_shared_or_formed_on_demand_give_the_same_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "logdet", "--model", LENET, "--data", "mnist", "--n", "60", "--nested",
    ];
    let want_path = dir.path().join("memdet.json");
    let out = single(&[&base[..], &["--json", want_path.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let want = json(&want_path);
    let nested = |d: &serde_json::Value| -> Vec<f64> {
        let l = d["nested"]["logdets"].as_array().unwrap();
        l.iter().map(|l| l["logdet"].as_f64().unwrap()).collect()
    };
    // A roomy feature cache shares features; a cache of a few examples cannot hold a rank's share, so
    // every rank forms its tiles on demand.
    for (feature_mem, shared) in [("1GiB", true), ("4MiB", false)] {
        let path = dir.path().join(format!("dist-{feature_mem}.json"));
        let extra = [
            "--max-mem",
            "2GiB",
            "--feature-mem",
            feature_mem,
            "--block-size",
            "100",
            "--json",
            path.to_str().unwrap(),
        ];
        let out = mpirun(2, &[&base[..], &extra].concat());
        assert!(out.status.success(), "{feature_mem}: {}", stderr(&out));
        let got = json(&path);
        assert_close(&nested(&got), &nested(&want), feature_mem);
        let info = &got["info"]["features_shared"];
        assert_eq!(info["shared"], shared, "{feature_mem}: {info}");
        let stats = &got["kernel_stats"];
        let chunks = 60u64.div_ceil(stats["chunk_examples"].as_u64().unwrap());
        let computed = stats["feature_blocks_computed"].as_u64().unwrap();
        if shared {
            // Rank 0 computed only its own chunks, some but not all of them, and none twice. How many is
            // the plan's balance of feature passes against the tiles each rank contracts, weighed by the
            // pair cost measured at run time (`share::plan`), so it is not a fixed half: faster feature
            // passes give the rank with more tiles fewer chunks.
            assert_eq!(Some(computed), info["computed_chunks"].as_u64());
            assert!(computed >= 1 && computed < chunks, "{computed} of {chunks}");
            assert_eq!(
                info["computed_chunks"].as_u64().unwrap()
                    + info["received_chunks"].as_u64().unwrap(),
                chunks,
                "{info}"
            );
        } else {
            assert!(computed >= chunks, "{computed} of {chunks}");
        }
    }
}
