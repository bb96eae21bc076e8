//! Output files through the real CLI (issue 11, items 1 and 2): a device node, a FIFO or a directory given
//! as an output is refused before any work and left as it was; a symbolic link is written through, to its
//! target, and stays a link; created files get 0666 & !umask; an existing file keeps its mode; a bad output
//! path or a fit window too short for the model stops `run` before it loads anything or forms a tile.

use faer::Mat;
use ntk_pipeline::linalg::npy_write::write_npy_f64;
use ntk_pipeline::model::{arch, load::save_safetensors, SeededParams};
use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"))
}

/// Run `cmd`, killing it (and failing) after `limit`: a run that should stop at once must not hang CI.
fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: the work started before the check\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A small SPD matrix as .npy.
fn spd_npy(dir: &Path) -> PathBuf {
    let n = 12;
    let a = Mat::<f64>::from_fn(n, n, |i, j| {
        if i == j {
            4.0
        } else {
            1.0 / (1.0 + (i + j) as f64)
        }
    });
    let path = dir.join("a.npy");
    write_npy_f64(&path, a.as_ref()).unwrap();
    path
}

/// `logdet --matrix A --json <out>` with a time limit.
fn logdet_json(matrix: &Path, out: &Path) -> Output {
    run_within(
        bin()
            .args(["logdet", "--quiet", "--matrix"])
            .arg(matrix)
            .arg("--json")
            .arg(out),
        Duration::from_secs(30),
    )
}

/// The refusal every non-regular target gets: exit 2, a message naming the kind, nothing on stdout.
fn assert_refused(out: &Output, kind: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(kind), "message should say `{kind}`: {err}");
    assert!(
        out.stdout.is_empty(),
        "no work may be done before the refusal: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn no_temp_files_in(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ntk-pipeline"))
        .collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

#[test]
fn a_device_node_is_refused_and_left_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let matrix = spd_npy(dir.path());
    // As root (CI containers), a private node: major 1, minor 7 is /dev/full. Otherwise /dev/full itself,
    // which an unprivileged process cannot replace anyway.
    let node = dir.path().join("full");
    let made = Command::new("mknod")
        .arg(&node)
        .args(["c", "1", "7"])
        .status()
        .is_ok_and(|s| s.success());
    let node = if made {
        node
    } else {
        PathBuf::from("/dev/full")
    };
    let out = logdet_json(&matrix, &node);
    assert_refused(&out, "character device");
    let meta = std::fs::symlink_metadata(&node).unwrap();
    assert!(
        meta.file_type().is_char_device(),
        "{} is no longer a device",
        node.display()
    );
    no_temp_files_in(dir.path());
}

#[test]
fn a_fifo_is_refused_and_left_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let matrix = spd_npy(dir.path());
    let fifo = dir.path().join("pipe");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = logdet_json(&matrix, &fifo);
    assert_refused(&out, "FIFO");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    no_temp_files_in(dir.path());
}

#[test]
fn a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let matrix = spd_npy(dir.path());
    let sub = dir.path().join("out");
    std::fs::create_dir(&sub).unwrap();
    let out = logdet_json(&matrix, &sub);
    assert_refused(&out, "is a directory");
    assert!(sub.is_dir());
}

#[test]
fn a_symlink_is_written_through_to_its_target_and_stays_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let matrix = spd_npy(dir.path());
    let real_dir = dir.path().join("results");
    std::fs::create_dir(&real_dir).unwrap();
    let target = real_dir.join("ld.json");
    std::fs::write(&target, "old contents").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink("results/ld.json", &link).unwrap();

    let out = logdet_json(&matrix, &link);
    assert!(out.status.success(), "{}", stderr(&out));
    let meta = std::fs::symlink_metadata(&link).unwrap();
    assert!(meta.file_type().is_symlink(), "the link was replaced");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("results/ld.json")
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&target).unwrap()).unwrap();
    assert!(written["logdet"].as_f64().unwrap().is_finite());
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "an existing file keeps its mode");
    no_temp_files_in(dir.path());
    no_temp_files_in(&real_dir);

    // A dangling link: its target is created, and the link stays.
    let dangling = dir.path().join("new-link.json");
    std::os::unix::fs::symlink("results/new.json", &dangling).unwrap();
    let out = logdet_json(&matrix, &dangling);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::symlink_metadata(&dangling)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(real_dir.join("new.json").is_file());
}

#[test]
fn created_files_get_0666_reduced_by_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let matrix = spd_npy(dir.path());
    for (umask, expected) in [("022", 0o644), ("002", 0o664), ("077", 0o600)] {
        let out_path = dir.path().join(format!("ld-{umask}.json"));
        let script = format!("umask {umask} && exec \"$0\" \"$@\"");
        let out = run_within(
            Command::new("sh")
                .args(["-c", &script, env!("CARGO_BIN_EXE_ntk-pipeline")])
                .args(["logdet", "--quiet", "--matrix"])
                .arg(&matrix)
                .arg("--json")
                .arg(&out_path),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let mode = std::fs::metadata(&out_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, expected, "umask {umask}: mode {mode:o}");
    }
}

#[test]
fn train_writes_its_weights_and_log_with_the_umask_mode() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_within(
        Command::new("sh")
            .args([
                "-c",
                "umask 022 && exec \"$0\" \"$@\"",
                env!("CARGO_BIN_EXE_ntk-pipeline"),
            ])
            .args([
                "train", "--quiet", "--arch", "lenet", "--data", "mnist", "--limit", "64",
            ])
            .args(["--epochs", "1", "--out"])
            .arg(dir.path().join("w.safetensors")),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for name in ["w.safetensors", "w.log.json"] {
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644, "{name}: mode {mode:o}");
    }
    no_temp_files_in(dir.path());
}

/// A seeded LeNet for MNIST (the kernel of many examples takes minutes, the checks must take less).
fn lenet(dir: &Path) -> PathBuf {
    let net = arch::build("lenet", None, [1, 28, 28], 10, &mut SeededParams::new(3)).unwrap();
    let path = dir.join("lenet.safetensors");
    let meta = HashMap::from([
        ("arch".to_string(), "lenet".to_string()),
        ("input_shape".to_string(), "1,28,28".to_string()),
    ]);
    save_safetensors(&net, &path, meta).unwrap();
    path
}

/// `run` on 3000 examples (m = 30,000: far more than the limit below) with `extra` arguments; it must stop
/// with exit 2 before any phase starts.
fn run_must_stop_at_once(model: &Path, extra: &[&str], expect: &str) {
    let out = run_within(
        bin()
            .arg("--model")
            .arg(model)
            .args(["--data", "mnist", "--n-sample", "3000"])
            .args(extra),
        Duration::from_secs(20),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
    assert!(
        err.contains(expect),
        "{extra:?}: expected `{expect}` in {err}"
    );
    assert!(
        !err.contains("progress:"),
        "{extra:?}: a phase started before the check: {err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn output_path_errors_stop_run_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = lenet(dir.path());
    let missing = dir.path().join("no-such-dir").join("r.json");
    let missing = missing.to_str().unwrap();
    let plot_dir = dir.path().to_str().unwrap();
    let fifo = dir.path().join("p");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let same = dir.path().join("same");
    let same = same.to_str().unwrap();
    run_must_stop_at_once(&model, &["--json", missing], "--json");
    run_must_stop_at_once(&model, &["--plot", plot_dir], "is a directory");
    run_must_stop_at_once(&model, &["--plot", fifo.to_str().unwrap()], "FIFO");
    run_must_stop_at_once(
        &model,
        &["--json", same, "--plot", same],
        "name the same file",
    );
    // The fit window [2998, 3000]: 3 points for a q = 2 model's 5 coefficients.
    run_must_stop_at_once(&model, &["--burn-in", "2998"], "coefficients");
    // So is a scratch directory that does not exist.
    let no_scratch = dir.path().join("no-scratch");
    run_must_stop_at_once(
        &model,
        &["--scratch-dir", no_scratch.to_str().unwrap()],
        "--scratch-dir",
    );
    // `--exact-n` below the sample is known to be wrong before anything is loaded.
    run_must_stop_at_once(&model, &["--exact-n", "10"], "--exact-n");
}

#[test]
fn every_subcommand_checks_its_outputs_first() {
    let dir = tempfile::tempdir().unwrap();
    let model = lenet(dir.path());
    let matrix = spd_npy(dir.path());
    let model = model.to_str().unwrap();
    let bad = dir.path().join("missing").join("x");
    let bad = bad.to_str().unwrap();
    let logdets = dir.path().join("l.csv");
    std::fs::write(
        &logdets,
        (1..=20)
            .map(|k| format!("{k},{}\n", -(k as f64) * 2.0))
            .collect::<String>(),
    )
    .unwrap();
    let logdets = logdets.to_str().unwrap();
    // A private null device as root (never the system's /dev/null), else a FIFO.
    let node = dir.path().join("null");
    let made = Command::new("mknod")
        .arg(&node)
        .args(["c", "1", "3"])
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        assert!(Command::new("mkfifo")
            .arg(&node)
            .status()
            .unwrap()
            .success());
    }
    let node_str = node.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "ntk", "--model", model, "--data", "mnist", "--n", "3000", "--out", bad,
        ],
        vec![
            "ntk", "--model", model, "--data", "mnist", "--n", "3000", "--out", node_str,
        ],
        vec![
            "logdet",
            "--matrix",
            matrix.to_str().unwrap(),
            "--json",
            bad,
        ],
        vec![
            "logdet", "--model", model, "--data", "mnist", "--n", "3000", "--json", bad,
        ],
        vec![
            "fit",
            "--logdets",
            logdets,
            "--target-n",
            "100",
            "--burn-in",
            "1",
            "--plot",
            bad,
        ],
        vec![
            "compare", "--model", model, "--data", "mnist", "--n", "3000", "--json", bad,
        ],
        vec!["eval", "--model", model, "--data", "mnist", "--json", bad],
        vec!["train", "--arch", "lenet", "--data", "mnist", "--out", bad],
    ];
    for args in cases {
        let out = run_within(bin().args(&args), Duration::from_secs(20));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            !err.contains("progress:") && out.stdout.is_empty(),
            "{args:?}: work started before the output check: {err}"
        );
    }
    let kind = std::fs::symlink_metadata(&node).unwrap().file_type();
    assert!(
        kind.is_char_device() || kind.is_fifo(),
        "the node was replaced"
    );
}
