//! The shipped models in `models/` are what `models/README.md` says: the file's sha256 matches, and the
//! top-1 accuracy on the first 1000 test images (MNIST's, or the dataset a `- test data:` line names),
//! recomputed here, matches the recorded count.
//!
//! models/README.md records, per model, lines of the form
//! `- sha256: <hex>`, `- first 1000 test images: <correct>/1000` and optionally `- test data: <name>`
//! under a heading `### <file name>`.

use ntk_pipeline::data::{self, DataOptions, Split};
use ntk_pipeline::model::load::load_model;
use ntk_pipeline::pipeline::eval::evaluate;
use ntk_pipeline::progress::Silent;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// The value after `- {key}: ` in the `### {file}` section of models/README.md.
fn recorded(file: &str, key: &str) -> String {
    recorded_opt(file, key).unwrap_or_else(|| panic!("{file}: no `- {key}: `"))
}

/// The value after `- {key}: ` in the `### {file}` section, if the section has that line.
fn recorded_opt(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(models_dir().join("README.md")).unwrap();
    let section = text
        .split("\n### ")
        .find(|s| s.starts_with(file))
        .unwrap_or_else(|| panic!("no section for {file}"));
    let prefix = format!("- {key}: ");
    let line = section.lines().find(|l| l.starts_with(&prefix))?;
    Some(line[prefix.len()..].trim().trim_matches('`').to_string())
}

fn check(file: &str) {
    let path = models_dir().join(file);
    let bytes = std::fs::read(&path).unwrap();
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        sha,
        recorded(file, "sha256"),
        "{file}: sha256 differs from models/README.md"
    );

    let model = load_model(path.to_str().unwrap(), None, None, None, None).unwrap();
    let dataset = recorded_opt(file, "test data").unwrap_or_else(|| "mnist".into());
    let test = data::load(
        &dataset,
        &DataOptions {
            split: Split::Test,
            ..Default::default()
        },
    )
    .unwrap();
    let indices: Vec<usize> = (0..1000).collect();
    let acc = evaluate(&model.network, &test, &indices, &Silent).unwrap();
    let expected: usize = recorded(file, "first 1000 test images")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // f32 forward; the summation order inside the matrix products may depend on the thread count, which
    // can flip a prediction whose two top logits tie to ~1e-6: allow one example of difference.
    assert!(
        acc.correct.abs_diff(expected) <= 1,
        "{file}: {} of the first 1000 test images correct, models/README.md records {expected}",
        acc.correct
    );
}

#[test]
fn lenet_mnist_matches_models_readme() {
    check("lenet-mnist.safetensors");
}

#[test]
fn resnet9_mnist_matches_models_readme() {
    check("resnet9-mnist.safetensors");
}

/// Every protocol-trained model models/README.md lists (its `### NAME.safetensors` sections above the earlier
/// models) is in `models/` with that sha256 and that accuracy.
#[test]
fn protocol_trained_models_match_models_readme() {
    let text = std::fs::read_to_string(models_dir().join("README.md")).unwrap();
    let protocol = text.split("## Earlier models").next().unwrap();
    let files: Vec<&str> = protocol
        .split("\n### ")
        .skip(1)
        .filter_map(|s| s.lines().next())
        .collect();
    assert!(files.len() >= 3, "models/README.md lists {files:?}");
    for file in files {
        check(file.trim());
    }
}
