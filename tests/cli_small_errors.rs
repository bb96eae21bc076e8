//! The small input errors of issue 11, item 11, each through the real CLI: exit 2 and a message that says
//! what is wrong (not a confusing one about something else).

use faer::Mat;
use ntk_pipeline::linalg::npy_write::write_npy_f64;
use ntk_pipeline::model::{arch, load::save_safetensors, SeededParams};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"))
}

fn lenet(dir: &Path) -> PathBuf {
    let net = arch::build("lenet", None, [1, 28, 28], 10, &mut SeededParams::new(4)).unwrap();
    let path = dir.join("lenet.safetensors");
    let meta = HashMap::from([("arch".to_string(), "lenet".to_string())]);
    save_safetensors(&net, &path, meta).unwrap();
    path
}

/// Exit 2 with every one of `expect` in stderr and none of `not`.
fn fails_with(out: Output, expect: &[&str], not: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    for e in expect {
        assert!(err.contains(e), "expected `{e}` in: {err}");
    }
    for n in not {
        assert!(!err.contains(n), "did not expect `{n}` in: {err}");
    }
    err
}

#[test]
fn a_directory_as_matrix_says_it_is_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["logdet", "--quiet", "--matrix"])
        .arg(dir.path())
        .output()
        .unwrap();
    fails_with(out, &["is a directory"], &["memory-map"]);
}

#[test]
fn run_names_n_sample_when_it_exceeds_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let model = lenet(dir.path());
    let out = bin()
        .args([
            "--quiet",
            "--data",
            "mnist",
            "--split",
            "test",
            "--n-sample",
            "20000",
        ])
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap();
    fails_with(out, &["--n-sample 20000", "10000"], &["--n 20000"]);
}

#[test]
fn a_text_file_named_pth_is_not_called_a_safetensors_problem() {
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("model.pth");
    std::fs::write(&pth, "this is not a model, just some text\n").unwrap();
    let out = bin()
        .args([
            "eval", "--quiet", "--data", "mnist", "--limit", "5", "--model",
        ])
        .arg(&pth)
        .output()
        .unwrap();
    fails_with(
        out,
        &["model.pth", "not a zip archive"],
        &["safetensors header", "header"],
    );
}

#[test]
fn nan_weights_name_the_tensor_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let clean = lenet(dir.path());
    let bytes = std::fs::read(&clean).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
        .collect();
    let victim = tensors.iter_mut().find(|t| t.0 == "conv2.weight").unwrap();
    victim.2[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap();
            (n.clone(), view)
        })
        .collect();
    let meta = HashMap::from([("arch".to_string(), "lenet".to_string())]);
    let bad = dir.path().join("nan.safetensors");
    safetensors::serialize_to_file(views, Some(meta), &bad).unwrap();
    let out = bin()
        .args([
            "eval", "--quiet", "--data", "mnist", "--limit", "5", "--model",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    fails_with(out, &["conv2.weight", "nan.safetensors", "non-finite"], &[]);
}

#[test]
fn a_missing_data_dir_is_an_error_not_a_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let model = lenet(dir.path());
    let out = bin()
        .args([
            "eval",
            "--quiet",
            "--data",
            "mnist",
            "--limit",
            "5",
            "--data-dir",
        ])
        .arg(dir.path().join("no-such-dir"))
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap();
    fails_with(out, &["--data-dir", "no-such-dir"], &[]);
}

/// A small SPD matrix as .npy.
fn spd(dir: &Path) -> PathBuf {
    let a = Mat::<f64>::from_fn(6, 6, |i, j| if i == j { 3.0 } else { 0.5 });
    let path = dir.join("a.npy");
    write_npy_f64(&path, a.as_ref()).unwrap();
    path
}

#[test]
fn nested_zero_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["logdet", "--quiet", "--nested", "0", "--matrix"])
        .arg(spd(dir.path()))
        .output()
        .unwrap();
    fails_with(out, &["--nested 0"], &[]);
}

#[test]
fn sizes_of_2_pow_64_bytes_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for size in ["16777216TiB", "18446744073709551616"] {
        let out = bin()
            .args(["logdet", "--quiet", "--max-mem", size, "--matrix"])
            .arg(spd(dir.path()))
            .output()
            .unwrap();
        fails_with(out, &["2^64"], &[]);
    }
}

/// [[0, 1], [1, 0]]: its first pivot is zero, so LDLᵀ in order stops at the leading 1×1 block (row 0).
#[test]
fn the_zero_pivot_message_names_the_block_and_mentions_nested_only_when_given() {
    let dir = tempfile::tempdir().unwrap();
    let a = Mat::<f64>::from_fn(2, 2, |i, j| if i == j { 0.0 } else { 1.0 });
    let npy = dir.path().join("swap.npy");
    write_npy_f64(&npy, a.as_ref()).unwrap();
    let with_nested = bin()
        .args([
            "logdet", "--quiet", "--assume", "sym", "--nested", "--matrix",
        ])
        .arg(&npy)
        .output()
        .unwrap();
    fails_with(with_nested, &["1x1", "row 0", "--nested"], &["0x0"]);
    let plain = bin()
        .args(["logdet", "--quiet", "--assume", "sym", "--matrix"])
        .arg(&npy)
        .output()
        .unwrap();
    if plain.status.success() {
        // With a pivoting factorisation the answer must be right: det = −1.
        let text = String::from_utf8_lossy(&plain.stdout);
        assert!(text.contains("sign     = -1"), "{text}");
    } else {
        fails_with(plain, &["1x1", "row 0"], &["--nested", "0x0"]);
    }
}
