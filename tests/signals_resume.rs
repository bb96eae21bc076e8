//! Runs that survive: SIGINT/SIGTERM/SIGHUP stop `ntk`, `compare`, `run` and `train` with exit 128 + signal
//! and leave nothing behind; stale scratch of dead runs is removed; SIGKILL then `--resume` gives bitwise
//! the result of an uninterrupted run (`logdet --model`, `logdet --matrix`, `train`); a mismatching resume is
//! refused. The tests wait on events (a progress line on stderr, a manifest on disk), never fixed sleeps.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};
use support::*;

#[path = "support/signals.rs"]
mod signals;
use signals::with_default_signals;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"));
    c.env_remove("NTK_PIPELINE_TEST_KILL_AT");
    c
}

/// `--model … --data mnist --data-dir <repo>/datasets`.
fn model_args(model: &str) -> Vec<String> {
    vec![
        "--model".into(),
        root().join("models").join(model).display().to_string(),
        "--data".into(),
        "mnist".into(),
        "--data-dir".into(),
        root().join("datasets").display().to_string(),
    ]
}

/// A running child whose stderr lines arrive on a channel (and are kept for messages).
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

fn spawn(mut cmd: Command) -> Running {
    let mut child = with_default_signals(&mut cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ntk-pipeline");
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Running {
        child,
        lines,
        seen: Vec::new(),
    }
}

impl Running {
    /// Wait until a stderr line contains `pattern` (panics after two minutes or if stderr closes).
    fn wait_for(&mut self, pattern: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let hit = line.contains(pattern);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
        panic!("never saw `{pattern}` on stderr:\n{}", self.seen.join("\n"));
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait for the exit; returns the status and the rest of stderr.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        (status, self.seen.join("\n"))
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Send `sig` once the kernel's feature formation runs (the `pattern` phase has started); expect the exit
/// `code` within a few seconds, an empty scratch directory and nothing next to the output.
fn stops_cleanly(sub: &str, extra: &[&str], pattern: &str, sig: &str, code: i32) {
    let out = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = bin();
    cmd.arg(sub)
        .args(model_args("resnet9-mnist.safetensors"))
        .args(["--outputs", "sum"])
        .args(extra)
        .arg("--json")
        .arg(out.path().join("out.json"))
        .current_dir(out.path());
    if sub != "ntk" {
        cmd.arg("--scratch-dir").arg(scratch.path());
    }
    let mut run = spawn(cmd);
    run.wait_for(pattern);
    let sent = Instant::now();
    run.signal(sig);
    let (status, stderr) = run.finish();
    let waited = sent.elapsed();
    assert_eq!(status.code(), Some(code), "{sub}: {stderr}");
    assert!(
        stderr.contains(&format!("interrupted by SIG{sig}")),
        "{stderr}"
    );
    // The stop is asked within about 2 s (the watcher's grace is 1.5 s); allow for a loaded machine.
    assert!(
        waited < Duration::from_secs(6),
        "{sub} took {waited:?} to stop"
    );
    assert!(entries(scratch.path()).is_empty(), "scratch left by {sub}");
    assert!(
        entries(out.path()).is_empty(),
        "{sub} left {:?} next to its output",
        entries(out.path())
    );
}

#[test]
fn sigint_stops_ntk_during_feature_formation() {
    let out = tempfile::tempdir().unwrap();
    let k = out.path().join("k.npy");
    stops_cleanly(
        "ntk",
        &["--n", "300", "--out", k.to_str().unwrap()],
        "progress: NTK tiles started",
        "INT",
        130,
    );
    assert!(!k.exists());
}

#[test]
fn sigterm_stops_compare_during_feature_formation() {
    stops_cleanly(
        "compare",
        &["--n", "300", "--methods", "exact,slq", "--num-blocks", "2"],
        "progress: NTK tiles started",
        "TERM",
        143,
    );
}

#[test]
fn sighup_stops_run_during_feature_formation() {
    stops_cleanly(
        "run",
        &["--n-sample", "300", "--burn-in", "10", "--num-blocks", "3"],
        "progress: memdet started",
        "HUP",
        129,
    );
}

fn train_cmd(out: &Path, limit: &str, epochs: &str) -> Command {
    let mut c = bin();
    c.args(["train", "--arch", "lenet", "--data", "mnist", "--data-dir"])
        .arg(root().join("datasets"))
        .args(["--limit", limit, "--epochs", epochs, "--seed", "5", "--out"])
        .arg(out);
    c
}

#[test]
fn sigint_stops_train_and_keeps_the_last_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let mut run = spawn(train_cmd(&out, "6000", "4"));
    run.wait_for("epoch 1: loss");
    run.wait_for("progress: epoch 2/4 started");
    run.signal("INT");
    let (status, stderr) = run.finish();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert_eq!(
        entries(dir.path()),
        vec!["m.log.json", "m.safetensors", "m.train-state.safetensors"]
    );
    let log = json(&dir.path().join("m.log.json"));
    assert_eq!(log["finished"], false);
    assert_eq!(log["epochs"].as_array().unwrap().len(), 1);
}

/// Every tensor of a safetensors file, by name, as raw bytes.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

#[test]
fn train_resume_after_sigkill_gives_the_same_weights_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.safetensors");
    let o = train_cmd(&whole, "1500", "3")
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let cut = dir.path().join("cut.safetensors");
    let mut run = spawn(train_cmd(&cut, "1500", "3"));
    // The state of epoch 1 is saved before epoch 2 starts.
    run.wait_for("progress: epoch 2/3 started");
    run.signal("KILL");
    let (status, stderr) = run.finish();
    assert_eq!(status.code(), None, "not killed: {stderr}");
    let state = dir.path().join("cut.train-state.safetensors");
    assert!(state.exists(), "{stderr}");

    // A resume with other arguments is refused and names what differs.
    let o = train_cmd(&cut, "1500", "3")
        .args(["--lr", "0.05", "--resume"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("lr: checkpoint \"0.1\", this command \"0.05\""));

    let o = train_cmd(&cut, "1500", "3")
        .args(["--resume", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !state.exists(),
        "the state file is removed once training ends"
    );
    assert_eq!(tensors(&cut), tensors(&whole));
    let (a, b) = (
        json(&dir.path().join("whole.log.json")),
        json(&dir.path().join("cut.log.json")),
    );
    assert_eq!(b["provenance"]["resumed"], true);
    for (x, y) in a["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["epochs"].as_array().unwrap())
    {
        assert_eq!(x["loss"], y["loss"]);
        assert_eq!(x["train_acc"], y["train_acc"]);
    }
}

/// `logdet --model` on the shipped LeNet, n = 40 examples (m = 400) in 4 block columns.
fn lenet_logdet(json_out: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.arg("logdet")
        .args(model_args("lenet-mnist.safetensors"))
        .args([
            "--n",
            "40",
            "--num-blocks",
            "4",
            "--nested",
            "--quiet",
            "--json",
        ])
        .arg(json_out)
        .args(extra);
    c
}

/// ln det and every nested ℓ_k equal bit for bit (JSON prints f64 round-trip exactly), and the same
/// warnings (a resumed run once flagged every restored row as a near-singular pivot).
fn assert_same_logdets(a: &serde_json::Value, b: &serde_json::Value) {
    assert!(a["info"]["warnings"].is_array(), "{}", a["info"]);
    assert_eq!(a["info"]["warnings"], b["info"]["warnings"]);
    assert_eq!(
        a["logdet"].as_f64().unwrap().to_bits(),
        b["logdet"].as_f64().unwrap().to_bits()
    );
    let (na, nb) = (
        a["nested"]["logdets"].as_array().unwrap(),
        b["nested"]["logdets"].as_array().unwrap(),
    );
    assert!(!na.is_empty());
    assert_eq!(na.len(), nb.len());
    for (x, y) in na.iter().zip(nb) {
        assert_eq!(
            x["logdet"].as_f64().unwrap().to_bits(),
            y["logdet"].as_f64().unwrap().to_bits()
        );
    }
}

#[test]
fn logdet_model_resumes_bitwise_after_sigkill_in_tile_formation_and_in_factorisation() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.json");
    let o = lenet_logdet(&whole, &[]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = json(&whole);
    assert_eq!(whole["num_blocks"], 4);

    for (point, done) in [("source:2", 2), ("update:3", 3)] {
        let ck = dir.path().join(point.replace(':', "-"));
        let out = dir.path().join(format!("{}.json", point.replace(':', "-")));
        let ck_s = ck.to_str().unwrap();
        let o = lenet_logdet(&out, &["--checkpoint", ck_s])
            .env("NTK_PIPELINE_TEST_KILL_AT", point)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), None, "not killed at {point}");
        assert!(!out.exists());
        let manifest = json(&ck.join("manifest.json"));
        assert_eq!(manifest["columns_done"], done, "{point}");

        // Without --resume the checkpoint is refused; with other arguments it is refused naming them.
        let o = lenet_logdet(&out, &["--checkpoint", ck_s])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        let o = lenet_logdet(
            &out,
            &["--checkpoint", ck_s, "--resume", "--order", "random"],
        )
        .output()
        .unwrap();
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("order: checkpoint \"dataset (seed 0)\""),
            "{err}"
        );

        let o = lenet_logdet(&out, &["--checkpoint", ck_s, "--resume"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let resumed = json(&out);
        assert_eq!(resumed["info"]["resumed_columns"], done);
        assert_eq!(resumed["provenance"]["resumed"], true);
        assert_same_logdets(&whole, &resumed);
        // Only the manifest (holding every pivot) is kept once the run is complete.
        assert_eq!(entries(&ck), vec!["manifest.json"]);
    }
}

/// Run `args(out) --checkpoint ck`, SIGKILL it as soon as a block column is complete (the manifest
/// appears: the middle of the run), then resume it; returns the resumed run's report (at least one column
/// resumed).
fn killed_after_a_column_then_resumed(
    args: &dyn Fn(&Path) -> Command,
    out: &Path,
    ck: &Path,
) -> serde_json::Value {
    let mut child = args(out)
        .arg("--checkpoint")
        .arg(ck)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ck.join("manifest.json").exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    assert_eq!(
        child.wait().unwrap().code(),
        None,
        "the run ended before the kill"
    );
    let o = args(out)
        .arg("--checkpoint")
        .arg(ck)
        .arg("--resume")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resumed = json(out);
    assert!(resumed["info"]["resumed_columns"].as_u64().unwrap() >= 1);
    resumed
}

#[test]
fn logdet_matrix_resumes_bitwise_after_an_external_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("k.npy");
    write_npy(&npy, &random_spd(7, 1200), false);
    let args = |out: &Path| {
        let mut c = bin();
        c.args([
            "logdet",
            "--quiet",
            "--num-blocks",
            "30",
            "--nested",
            "40",
            "--matrix",
        ])
        .arg(&npy)
        .arg("--json")
        .arg(out);
        c
    };
    let whole = dir.path().join("whole.json");
    assert!(args(&whole).output().unwrap().status.success());
    let ck = dir.path().join("ck");
    let out = dir.path().join("cut.json");
    let resumed = killed_after_a_column_then_resumed(&args, &out, &ck);
    assert_same_logdets(&json(&whole), &resumed);

    // Touching the matrix changes its identity: a resume is refused.
    let o = args(&out)
        .arg("--checkpoint")
        .arg(&ck)
        .arg("--resume")
        .arg("--shift")
        .arg("1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("shift: checkpoint \"none\""));
}

/// An LDLᵀ run (`--assume sym`, Bunch–Kaufman within each of 30 pivot blocks) of the indefinite R + Rᵀ,
/// killed once a column is complete and resumed: the same ln det, sign, element growth and warnings, bit
/// for bit. The pivot blocks and the growth monitor come back from the manifest; without them the later
/// columns would apply the wrong B⁻¹ and permutations.
#[test]
fn logdet_sym_resumes_bitwise_after_an_external_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("s.npy");
    write_npy(&npy, &sym_part(&numpy_rand(0, 1200, 1200)), false);
    let args = |out: &Path| {
        let mut c = bin();
        c.args([
            "logdet",
            "--quiet",
            "--assume",
            "sym",
            "--num-blocks",
            "30",
            "--matrix",
        ])
        .arg(&npy)
        .arg("--json")
        .arg(out);
        c
    };
    let whole = dir.path().join("whole.json");
    let o = args(&whole).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ck = dir.path().join("ck");
    let out = dir.path().join("cut.json");
    let b = killed_after_a_column_then_resumed(&args, &out, &ck);
    let a = json(&whole);
    assert_eq!(
        a["info"]["pivoted"], true,
        "Bunch–Kaufman pivoting was used"
    );
    assert_eq!(a["sign"], b["sign"]);
    for key in [&a["logdet"], &a["info"]["growth"]] {
        assert!(key.as_f64().is_some(), "{}", a["info"]);
    }
    assert_eq!(
        a["logdet"].as_f64().unwrap().to_bits(),
        b["logdet"].as_f64().unwrap().to_bits()
    );
    assert_eq!(
        a["info"]["growth"].as_f64().unwrap().to_bits(),
        b["info"]["growth"].as_f64().unwrap().to_bits()
    );
    assert_eq!(a["info"]["warnings"], b["info"]["warnings"]);
    // A resume with the other factorisation is refused (the identity names `assume`).
    let o = bin()
        .args(["logdet", "--quiet", "--num-blocks", "30", "--matrix"])
        .arg(&npy)
        .arg("--checkpoint")
        .arg(&ck)
        .arg("--resume")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_stale_scratch_dir_of_a_dead_pid_is_removed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let npy = dir.path().join("k.npy");
    write_npy(&npy, &random_spd(3, 60), false);
    // A process that has exited: its pid is free. Its scratch directory names it, on this host.
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let stale = scratch.path().join("ntk-memdet-killed");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("lock"), format!("{pid} {}\n", host.trim())).unwrap();
    std::fs::write(stale.join("tiles.f64"), vec![0u8; 4096]).unwrap();
    // A live run's directory (this test process) is left alone.
    let live = scratch.path().join("ntk-memdet-live");
    std::fs::create_dir(&live).unwrap();
    std::fs::write(
        live.join("lock"),
        format!("{} {}\n", std::process::id(), host.trim()),
    )
    .unwrap();
    let o: Output = bin()
        .args(["logdet", "--quiet", "--num-blocks", "3", "--matrix"])
        .arg(&npy)
        .arg("--scratch-dir")
        .arg(scratch.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(entries(scratch.path()), vec!["ntk-memdet-live"]);
}

#[test]
fn progress_moves_within_a_single_tile_of_the_ntk() {
    // One block: one source tile. n = 40 examples go in chunks of ceil(40/16) = 3, i.e. 14 chunks, and the
    // diagonal tile's 14·15/2 = 105 chunk pairs each report a unit, plus one unit for the factorisation.
    let o = bin()
        .arg("logdet")
        .args(model_args("lenet-mnist.safetensors"))
        .args(["--n", "40", "--num-blocks", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("progress: memdet started (106 units)"),
        "{err}"
    );
    assert!(err.contains("plan: m = 400, 1 block of 400 rows"), "{err}");
    assert!(err.contains("FLOP (m^3/3), about"), "{err}");
    // The time to form the tiles, calibrated on one feature chunk and one contraction pair.
    assert!(
        err.contains("forming the tiles about")
            && err.contains("calibrated just now: features of one chunk of 3 examples")
            && err.contains("and 105 pairs)"),
        "{err}"
    );
}

/// `train --init` (fine-tuning the shipped LeNet) with `--shuffle false --augment none`, killed after its
/// first epoch and resumed, ends with the same weights, byte for byte, as one uninterrupted run; and the
/// initial weights really are the file's (the first epoch's loss is the trained model's, far below ln 10).
#[test]
fn train_init_and_resume_without_shuffle_give_the_uninterrupted_weights() {
    let dir = tempfile::tempdir().unwrap();
    let init = root().join("models/lenet-mnist.safetensors");
    let cmd = |out: &Path| {
        let mut c = train_cmd(out, "1500", "3");
        c.arg("--init").arg(&init).args([
            "--shuffle",
            "false",
            "--augment",
            "none",
            "--lr",
            "0.01",
        ]);
        c
    };
    let whole = dir.path().join("whole.safetensors");
    let o = cmd(&whole).arg("--quiet").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = json(&dir.path().join("whole.log.json"));
    let first_loss = log["epochs"][0]["loss"].as_f64().unwrap();
    assert!(
        first_loss < 0.5,
        "epoch 1 loss {first_loss}: not started from the trained weights"
    );
    assert_eq!(log["shuffle"], false);
    assert!(log["init"].as_str().unwrap().contains("sha256"));

    let cut = dir.path().join("cut.safetensors");
    let mut run = spawn(cmd(&cut));
    run.wait_for("progress: epoch 2/3 started");
    run.signal("KILL");
    let (status, stderr) = run.finish();
    assert_eq!(status.code(), None, "not killed: {stderr}");
    let o = cmd(&cut).args(["--resume", "--quiet"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tensors(&cut), tensors(&whole));

    // Weights of another architecture are refused before any training, naming what does not fit.
    let o = train_cmd(&dir.path().join("bad.safetensors"), "1500", "1")
        .arg("--init")
        .arg(root().join("models/resnet9-mnist.safetensors"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not fit the network") && err.contains("missing `conv1.bias`"),
        "{err}"
    );
    assert!(!dir.path().join("bad.safetensors").exists());
}
