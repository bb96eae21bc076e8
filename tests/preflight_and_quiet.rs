//! Before the work and around it: `--quiet` leaves stderr to errors alone (no checkpoint, clean-up or warning
//! lines), a resume on another thread count is refused naming both counts, `--checkpoint` with
//! `--assume sym` is refused before anything is read, the scratch disk's free space is checked against the
//! plan before the first tile, and `--max-mem` floors of `logdet --model`, `eval` and `stats` are refused
//! up front naming the least budget, which then works and holds; a run's data read keeps only the examples
//! it uses, with the checksum, labels and statistics of a full read.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"));
    c.env_remove("NTK_PIPELINE_TEST_KILL_AT");
    c
}

/// `--model models/<model> --data mnist --data-dir <repo>/datasets`.
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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Run `cmd` and return its output and the child's peak RSS (VmHWM via `wait4`) in bytes.
// The child is reaped by `wait4` (which also returns its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn output_and_peak(cmd: &mut Command) -> (i32, String, u64) {
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("stderr");
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: waiting for our own child; a zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let err = std::fs::read_to_string(&err_path).unwrap();
    (code, err, usage.ru_maxrss as u64 * 1024)
}

/// The `N` of "it needs at least N MiB" in `err`.
fn least_mib(err: &str) -> u64 {
    err.rsplit("it needs at least ")
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no minimum named: {err}"))
}

#[test]
fn quiet_prints_nothing_but_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A near-singular SPD matrix: the near-singular warning goes to the JSON only.
    let mut a = random_spd(5, 60);
    for j in 0..60 {
        a[(0, j)] *= 1e-8;
        a[(j, 0)] *= 1e-8;
    }
    let npy = dir.path().join("k.npy");
    write_npy(&npy, &a, false);
    // A stale scratch directory of a dead process: removed silently.
    let scratch = tempfile::tempdir().unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let stale = scratch.path().join("ntk-memdet-killed");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("lock"), format!("{pid} {}\n", host.trim())).unwrap();
    let ck = dir.path().join("ck");
    let out = dir.path().join("out.json");
    let run = |extra: &[&str], quiet: bool| {
        let mut c = bin();
        c.args(["logdet", "--num-blocks", "3", "--matrix"])
            .arg(&npy)
            .arg("--scratch-dir")
            .arg(scratch.path())
            .arg("--json")
            .arg(&out)
            .args(extra);
        if quiet {
            c.arg("--quiet");
        }
        c.output().unwrap()
    };
    let o = run(&[], true);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "--quiet printed on stderr");
    assert!(!stale.exists(), "the stale scratch directory was kept");
    let warnings = json(&out)["info"]["warnings"].clone();
    assert!(
        warnings[0].as_str().unwrap().contains("near-singular"),
        "{warnings}"
    );
    // Without --quiet the same warning is on stderr (so the quiet run did drop something).
    let o = run(&[], false);
    assert!(stderr(&o).contains("warning: 1 pivot(s) are near-singular"));
    // A checkpointed run, then its resume: "resuming from …" and "no checkpoint yet" are notes, dropped.
    let ck_s = ck.to_str().unwrap();
    for extra in [
        &["--checkpoint", ck_s, "--resume"][..],
        &["--checkpoint", ck_s, "--resume"][..],
    ] {
        let o = run(extra, true);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stderr(&o), "", "--quiet printed on stderr");
    }
    let o = run(&["--checkpoint", ck_s, "--resume"], false);
    assert!(stderr(&o).contains("resuming from"), "{}", stderr(&o));
    // Errors are still printed.
    let o = run(&["--shift", "nan"], true);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
}

#[test]
fn a_resume_on_another_thread_count_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("k.npy");
    write_npy(&npy, &random_spd(11, 400), false);
    let ck = dir.path().join("ck");
    let cmd = |threads: &str, out: &Path| {
        let mut c = bin();
        c.args([
            "logdet",
            "--quiet",
            "--threads",
            threads,
            "--num-blocks",
            "4",
        ])
        .args(["--nested", "10", "--matrix"])
        .arg(&npy)
        .arg("--checkpoint")
        .arg(&ck)
        .arg("--json")
        .arg(out);
        c
    };
    let whole = dir.path().join("whole.json");
    let o = bin()
        .args(["logdet", "--quiet", "--threads", "2", "--num-blocks", "4"])
        .args(["--nested", "10", "--matrix"])
        .arg(&npy)
        .arg("--json")
        .arg(&whole)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = dir.path().join("out.json");
    // Killed after two complete block columns.
    let o = cmd("2", &out)
        .env("NTK_PIPELINE_TEST_KILL_AT", "source:2")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), None, "not killed: {}", stderr(&o));
    let o = cmd("1", &out).arg("--resume").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("made with 2 threads, this command runs 1") && err.contains("--threads 2"),
        "{err}"
    );
    assert!(!out.exists());
    // On the same thread count it resumes, bitwise.
    let o = cmd("2", &out).arg("--resume").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (json(&whole), json(&out));
    assert_eq!(b["info"]["resumed_columns"], 2);
    assert_eq!(
        a["logdet"].as_f64().unwrap().to_bits(),
        b["logdet"].as_f64().unwrap().to_bits()
    );
}

#[test]
fn a_scratch_disk_too_small_for_the_plan_is_refused_before_the_first_tile() {
    // A sparse .npy claiming a 200,000² f64 matrix (320 GB, no blocks on disk): its plan's scratch is
    // ~160 GB, more than this whole disk, so the run must stop before reading a tile.
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("big.npy");
    let m = 200_000u64;
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({m}, {m}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    let offset = bytes.len() as u64;
    let f = std::fs::File::create(&npy).unwrap();
    use std::io::Write;
    (&f).write_all(&bytes).unwrap();
    f.set_len(offset + 8 * m * m).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let o = bin()
        .args(["logdet", "--max-mem", "2GiB", "--matrix"])
        .arg(&npy)
        .arg("--scratch-dir")
        .arg(scratch.path())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("of scratch in") && err.contains("are free"),
        "{err}"
    );
    // Refused at once: no tile was formed (reading one 160 MB tile of zeros would also fail later).
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!err.contains("progress: memdet"), "{err}");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn logdet_model_below_its_least_budget_is_refused_and_the_least_works() {
    let args = |max_mem: &str| {
        let mut c = bin();
        c.arg("logdet")
            .args(model_args("resnet9-mnist.safetensors"))
            .args(["--n", "2", "--quiet", "--max-mem", max_mem]);
        c
    };
    let started = Instant::now();
    let o = args("100MiB").output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("two examples' features"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "not refused up front"
    );
    let least = least_mib(&err);
    assert!(least > 100, "{err}");
    let (code, err, peak) = output_and_peak(&mut args(&format!("{least}MiB")));
    assert_eq!(code, 0, "{err}");
    assert!(peak <= (least + 64) << 20, "peak {} MiB", peak >> 20);
}

/// The `A` and `B` of "--feature-mem between A and B MiB" in `err`.
fn feature_mem_range(err: &str) -> (u64, u64) {
    let tail = err
        .rsplit("--feature-mem between ")
        .next()
        .filter(|_| err.contains("--feature-mem between "))
        .unwrap_or_else(|| panic!("no --feature-mem range named: {err}"));
    let words: Vec<&str> = tail.split_whitespace().collect();
    (words[0].parse().unwrap(), words[2].parse().unwrap())
}

#[test]
fn a_refused_budget_names_a_feature_mem_that_makes_it_enough_and_the_given_split_adds_up() {
    // ResNet9's least feature share (two examples' features beside one example's working set) is more
    // than half of 192 MiB, so the default half split is refused; the refusal names the --feature-mem
    // range with which 192 MiB is enough, and the low end of that range runs within budget + 64 MiB.
    let args = |max_mem: &str, feature_mem: Option<&str>| {
        let mut c = bin();
        c.arg("logdet")
            .args(model_args("resnet9-mnist.safetensors"))
            .args(["--n", "2", "--quiet", "--max-mem", max_mem]);
        if let Some(f) = feature_mem {
            c.args(["--feature-mem", f]);
        }
        c
    };
    let o = args("192MiB", None).output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let (low, high) = feature_mem_range(&err);
    assert!(low <= high && high < 192, "{err}");
    let (code, err, peak) = output_and_peak(&mut args("192MiB", Some(&format!("{low}MiB"))));
    assert_eq!(code, 0, "{err}");
    assert!(peak <= (192 + 64) << 20, "peak {} MiB", peak >> 20);
    // One MiB below the range's low end is refused, naming that low end as the --feature-mem to give and
    // the least --max-mem beside it; that pair is enough (a given --feature-mem is the feature share
    // itself, not scaled by what lives outside the plan).
    let o = args("192MiB", Some(&format!("{}MiB", low - 1)))
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("with --feature-mem {low} MiB")),
        "{err}"
    );
    let least = least_mib(&err);
    let (code, err, peak) = output_and_peak(&mut args(
        &format!("{least}MiB"),
        Some(&format!("{low}MiB")),
    ));
    assert_eq!(code, 0, "{err}");
    assert!(peak <= (least + 64) << 20, "peak {} MiB", peak >> 20);
    // A --feature-mem that leaves nothing for MEMDET beside what lives outside the plan: refused up front.
    let o = args("140MiB", Some(&format!("{low}MiB"))).output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("leaves nothing of --max-mem 140MiB for MEMDET"),
        "{err}"
    );
}

#[test]
fn eval_keeps_to_its_budget_and_refuses_one_below_its_least() {
    let args = |max_mem: &str| {
        let mut c = bin();
        c.arg("eval")
            .args(model_args("lenet-mnist.safetensors"))
            .args(["--limit", "3000", "--quiet", "--max-mem", max_mem]);
        c
    };
    let o = args("20MiB").output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot hold what eval needs"), "{err}");
    let least = least_mib(&err);
    // Only the 3,000 evaluated images are held, not the 47 MB of the whole split.
    assert!(least < 60, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.json");
    let (code, err, peak) = output_and_peak(args(&format!("{least}MiB")).arg("--json").arg(&small));
    assert_eq!(code, 0, "{err}");
    assert!(peak <= (least + 64) << 20, "peak {} MiB", peak >> 20);
    // The accuracy does not depend on the batch size the budget chose.
    let big = dir.path().join("big.json");
    let o = args("4GiB").arg("--json").arg(&big).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (json(&small), json(&big));
    assert_eq!(a["correct"], b["correct"]);
    assert_eq!(a["per_class"], b["per_class"]);
}

#[test]
fn stats_below_its_least_budget_is_refused_before_the_work() {
    let o = bin()
        .arg("stats")
        .args(model_args("resnet9-mnist.safetensors"))
        .args(["--n", "4", "--quiet", "--max-mem", "100MiB"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("two examples' features"), "{err}");
    assert!(least_mib(&err) > 100, "{err}");
    // With the estimators too and a given split, the least named beside that --feature-mem is enough
    // for the features, the operator and the estimators together.
    let args = |max_mem: &str| {
        let mut c = bin();
        c.arg("stats")
            .args(model_args("resnet9-mnist.safetensors"))
            .args([
                "--n",
                "4",
                "--quiet",
                "--estimate",
                "hutchinson",
                "--probes",
                "3",
            ])
            .args(["--feature-mem", "125MiB", "--max-mem", max_mem]);
        c
    };
    let o = args("192MiB").output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("matrix-free estimators") && err.contains("with --feature-mem 125 MiB"),
        "{err}"
    );
    let least = least_mib(&err);
    let (code, err, peak) = output_and_peak(&mut args(&format!("{least}MiB")));
    assert_eq!(code, 0, "{err}");
    assert!(peak <= (least + 64) << 20, "peak {} MiB", peak >> 20);
}

/// An IDX split of `n` images of 5×4 pixels (gzipped) in `dir`, as `t10k-*` files.
fn write_tiny_idx(dir: &Path, n: u32) {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let gz = |name: &str, bytes: &[u8]| {
        let f = std::fs::File::create(dir.join(name)).unwrap();
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap();
    };
    let mut images = 0x803u32.to_be_bytes().to_vec();
    for d in [n, 5, 4] {
        images.extend_from_slice(&d.to_be_bytes());
    }
    images.extend((0..n * 20).map(|i| (i * 37 % 251) as u8));
    let mut labels = 0x801u32.to_be_bytes().to_vec();
    labels.extend_from_slice(&n.to_be_bytes());
    labels.extend((0..n).map(|i| (i % 3) as u8));
    gz("t10k-images-idx3-ubyte.gz", &images);
    gz("t10k-labels-idx1-ubyte.gz", &labels);
}

#[test]
fn a_run_reads_only_its_examples_with_the_full_reads_checksum_and_statistics() {
    use ntk_pipeline::data::{load_kept, load_with, DataOptions, Locations, Split};
    use ntk_pipeline::progress::Silent;
    let tmp = tempfile::tempdir().unwrap();
    let tiny = tmp.path().join("tinyidx");
    write_tiny_idx(&tiny, 50);
    let shipped = DataOptions {
        split: Split::Test,
        data_dir: Some(root().join("datasets")),
        download: false,
    };
    let plain = DataOptions {
        split: Split::Test,
        data_dir: None,
        download: false,
    };
    let tiny_name = tiny.display().to_string();
    for (name, opts, keep) in [
        ("mnist", &shipped, vec![9000, 3, 3, 7]),
        (tiny_name.as_str(), &plain, vec![49, 0, 12]),
    ] {
        let full = load_with(name, opts, &Locations::default(), &Silent).unwrap();
        let mut seen = 0;
        let kept = load_kept(name, opts, &Locations::default(), &Silent, &mut |len| {
            seen = len;
            Ok(keep.clone())
        })
        .unwrap();
        assert_eq!(seen, full.len());
        assert_eq!(kept.len(), full.len());
        assert_eq!(kept.labels(), full.labels());
        // The plain directory's own statistics are measured over every image, as a full read does.
        assert_eq!(kept.normalization(), full.normalization(), "{name}");
        assert_eq!(
            kept.content_sha256().unwrap(),
            ntk_pipeline::report::provenance::record_dataset(&full),
            "{name}"
        );
        for &i in &keep {
            assert_eq!(kept.raw_image(i), full.raw_image(i));
        }
        let absent = (0..full.len()).find(|i| !keep.contains(i)).unwrap();
        assert!(kept.raw_image(absent).is_none());
        assert!(kept.images(&[absent], kept.image_shape()).is_err());
        let want = kept.images(&keep, [3, 32, 32]).unwrap();
        let got = full.images(&keep, [3, 32, 32]).unwrap();
        assert_eq!(
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    // Only the kept pixels are held: 3 MNIST images, not 10,000 (7.8 MB).
    let kept = load_kept(
        "mnist",
        &shipped,
        &Locations::default(),
        &Silent,
        &mut |_| Ok(vec![1, 2, 3]),
    )
    .unwrap();
    assert!(kept.resident_bytes() < 100_000, "{}", kept.resident_bytes());
}
