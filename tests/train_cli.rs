//! `ntk-pipeline train` end to end on a few hundred shipped MNIST examples: the weights load back with their
//! metadata, the log has one entry per epoch, and bad arguments fail with exit code 2 and no output.

use ntk_pipeline::model::load::load_model;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"))
}

#[test]
fn short_lenet_run_writes_loadable_weights_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.safetensors");
    let status = bin()
        .args([
            "--quiet", "train", "--arch", "lenet", "--data", "mnist", "--limit", "320", "--epochs",
            "1",
        ])
        .args(["--seed", "3", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "train failed: {status}");

    let loaded = load_model(out.to_str().unwrap(), None, None, None, None).unwrap();
    let meta = &loaded.metadata;
    assert_eq!(meta.get("arch").map(String::as_str), Some("lenet"));
    assert_eq!(meta.get("dataset").map(String::as_str), Some("mnist"));
    assert_eq!(meta.get("epochs").map(String::as_str), Some("1"));
    assert_eq!(meta.get("num_classes").map(String::as_str), Some("10"));
    assert_eq!(meta.get("input_shape").map(String::as_str), Some("1,28,28"));
    let acc: f64 = meta["train_acc"].parse().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(loaded.network.input_shape, [1, 28, 28]);

    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("tiny.log.json")).unwrap())
            .unwrap();
    assert_eq!(log["finished"], true);
    assert_eq!(log["train_examples"], 320);
    assert_eq!(log["augmentation"], false);
    let epochs = log["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 1);
    assert_eq!(epochs[0]["train_acc"].as_f64().unwrap(), acc);
    let loss = epochs[0]["loss"].as_f64().unwrap();
    // 5 steps from a random init: the loss is finite and no worse than a lot above chance (ln 10 ≈ 2.30).
    assert!(loss.is_finite() && loss > 0.0 && loss < 5.0, "loss {loss}");
    // Only the two outputs, no temporary files left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    names.sort();
    assert_eq!(names, ["tiny.log.json", "tiny.safetensors"]);
}

#[test]
fn bad_arguments_exit_2_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    for extra in [
        vec!["--arch", "resnet7000", "--data", "mnist"],
        vec!["--arch", "lenet", "--data", "no-such-dataset"],
        vec!["--arch", "lenet", "--data", "mnist", "--epochs", "0"],
        vec!["--arch", "lenet", "--data", "mnist", "--target-acc", "1.5"],
    ] {
        let output = bin()
            .args(["--quiet", "train"])
            .args(&extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{extra:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!out.exists());
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
