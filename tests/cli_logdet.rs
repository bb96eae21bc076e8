//! `ntk-pipeline logdet` end to end: the built binary on `.npy` files, its output, JSON, exit codes and
//! error messages, and that nothing is left half-written or in the scratch directory.

mod support;
mod tolerance;

use std::path::Path;
use std::process::{Command, Output};
use support::*;
use tolerance::within;

#[path = "support/signals.rs"]
mod signals;
use signals::with_default_signals;

fn logdet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"))
        .arg("logdet")
        .args(args)
        .arg("--quiet")
        .output()
        .expect("run ntk-pipeline")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).unwrap().next().is_none()
}

/// Write raw `.npy` bytes with the given header dict and payload.
fn write_raw_npy(path: &Path, dict: &str, payload: &[u8]) {
    let mut header = dict.as_bytes().to_vec();
    let total = 10 + header.len() + 1;
    header.resize(header.len() + (64 - total % 64) % 64, b' ');
    header.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(payload);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn logdet_of_reference_matrix_with_json_and_nested() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let m = sym_part(&plus_identity(&numpy_rand(0, 200, 200), 100.0));
    let npy = dir.path().join("k.npy");
    write_npy(&npy, &m, false);
    let json = dir.path().join("out.json");
    let o = logdet(&[
        "--matrix",
        npy.to_str().unwrap(),
        "--assume",
        "sym",
        "--num-blocks",
        "3",
        "--nested",
        "50",
        "--scratch-dir",
        scratch.path().to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("log|det| = 1.0602936805867") && out.contains("sign     = +1"),
        "{out}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    within(
        "JSON logdet vs SPEC",
        rel(v["logdet"].as_f64().unwrap(), 1060.2936805867942),
        1e-14, // measured 0
    );
    assert_eq!(v["sign"], 1.0);
    assert_eq!(v["m"], 200);
    assert_eq!(v["assume"], "sym");
    assert_eq!(v["num_blocks"], 3);
    assert_eq!(v["block_size"], 67);
    assert_eq!(v["info"]["tiles_requested"], 6);
    assert_eq!(v["nested"]["granule"], 50);
    let nested = v["nested"]["logdets"].as_array().unwrap();
    assert_eq!(nested.len(), 4);
    within(
        "last nested logdet vs SPEC",
        rel(nested[3]["logdet"].as_f64().unwrap(), 1060.2936805867942),
        1e-14, // measured 0
    );
    assert!(is_empty_dir(scratch.path()), "scratch left behind");
}

#[test]
fn bad_inputs_exit_2_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = sym_part(&plus_identity(&numpy_rand(0, 20, 20), 10.0));
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();

    write_raw_npy(
        &d.join("rect.npy"),
        "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }",
        &[0u8; 96],
    );
    write_raw_npy(
        &d.join("int.npy"),
        "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }",
        &[0u8; 32],
    );
    write_raw_npy(
        &d.join("short.npy"),
        "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 4), }",
        &[0u8; 100],
    );
    std::fs::write(d.join("junk.npy"), b"hello").unwrap();
    let mut nan = good.clone();
    nan[(3, 17)] = f64::NAN;
    write_npy(&d.join("nan.npy"), &nan, false);
    write_npy(
        &d.join("indef.npy"),
        &sym_part(&numpy_rand(0, 20, 20)),
        false,
    );
    write_npy(&d.join("good.npy"), &good, false);

    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--matrix".into(), p("missing.npy")], "missing.npy"),
        (vec!["--matrix".into(), p("rect.npy")], "square"),
        (vec!["--matrix".into(), p("int.npy")], "unsupported dtype"),
        (vec!["--matrix".into(), p("short.npy")], "truncated"),
        (vec!["--matrix".into(), p("junk.npy")], "not a valid .npy"),
        (
            vec![
                "--matrix".into(),
                p("nan.npy"),
                "--num-blocks".into(),
                "2".into(),
            ],
            "non-finite value NaN at row 3, column 17",
        ),
        (
            vec!["--matrix".into(), p("indef.npy")],
            "not positive definite: pivot",
        ),
        (
            vec![
                "--matrix".into(),
                p("good.npy"),
                "--num-blocks".into(),
                "2".into(),
                "--scratch-dir".into(),
                "/nonexistent/x".into(),
            ],
            "scratch store",
        ),
        (
            vec![
                "--matrix".into(),
                p("good.npy"),
                "--max-mem".into(),
                "100B".into(),
            ],
            "memory budget",
        ),
        (
            vec![
                "--matrix".into(),
                p("good.npy"),
                "--max-mem".into(),
                "lots".into(),
            ],
            "invalid size",
        ),
        (
            vec![
                "--matrix".into(),
                p("good.npy"),
                "--assume".into(),
                "gen".into(),
            ],
            "--assume",
        ),
        (vec![], "--matrix"),
    ];
    for (args, needle) in cases {
        let json = d.join("never.json");
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(["--json", json.to_str().unwrap()]);
        let o = logdet(&all);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!json.exists(), "{args:?}: JSON written on failure");
    }
}

#[test]
fn scratch_full_exits_2_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let npy = dir.path().join("k.npy");
    write_npy(&npy, &random_spd(3, 120), false);
    let o = logdet(&[
        "--matrix",
        npy.to_str().unwrap(),
        "--num-blocks",
        "6",
        "--scratch-dir",
        scratch.path().to_str().unwrap(),
        "--scratch-cap",
        "20000",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("scratch space exhausted"),
        "{}",
        stderr(&o)
    );
    assert!(is_empty_dir(scratch.path()), "scratch left behind");
}

#[test]
fn ctrl_c_exits_130_and_removes_scratch() {
    // Waits on an event, not on time: the signal is sent once the process has printed that the
    // factorisation has started (its log-line reporter, stderr being a pipe), and the job is large enough
    // (m = 3000 in 100 × 100 blocks on one thread: 171,700 tile operations, about 4 s on the development
    // machine) that it cannot finish between that line and the signal.
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let npy = dir.path().join("k.npy");
    let m = 3000;
    // Strictly diagonally dominant (off-diagonal row sums < 2 ln m + 2 < 20), hence SPD; O(m²) to build.
    let a = faer::Mat::from_fn(m, m, |i, j| {
        if i == j {
            20.0
        } else {
            1.0 / (1 + i.abs_diff(j)) as f64
        }
    });
    write_npy(&npy, &a, false);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ntk-pipeline"));
    cmd.args([
        "--threads",
        "1",
        "logdet",
        "--num-blocks",
        "100",
        "--matrix",
    ])
    .arg(&npy)
    .arg("--scratch-dir")
    .arg(scratch.path())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = with_default_signals(&mut cmd).spawn().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let started = line.starts_with("progress: memdet started");
        seen.push(line);
        if started {
            break;
        }
    }
    assert!(
        seen.last()
            .is_some_and(|l| l.starts_with("progress: memdet started")),
        "the factorisation never reported its start: {seen:?}"
    );
    assert!(
        !is_empty_dir(scratch.path()),
        "scratch store not created before the factorisation"
    );
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("interrupted")), "{rest:?}");
    assert!(
        !stdout.contains("log|det|"),
        "a result was printed: {stdout}"
    );
    assert!(
        is_empty_dir(scratch.path()),
        "scratch left behind after Ctrl-C"
    );
}

/// `.npy` bytes of `a` in any supported layout: format `version` 1, 2 or 3 (2-byte or 4-byte header
/// length), `descr` one of `<f8 >f8 <f4 >f4`, C or Fortran order. Written here byte by byte, independently
/// of the crate's reader and writer.
fn npy_bytes(a: &faer::Mat<f64>, version: u8, descr: &str, fortran: bool) -> Vec<u8> {
    let n = a.nrows();
    let dict = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': ({n}, {}), }}",
        if fortran { "True" } else { "False" },
        a.ncols()
    );
    let prefix = if version == 1 { 10 } else { 12 };
    let mut header = dict.into_bytes();
    header.resize(
        header.len() + (64 - (prefix + header.len() + 1) % 64) % 64,
        b' ',
    );
    header.push(b'\n');
    let mut bytes = vec![0x93, b'N', b'U', b'M', b'P', b'Y', version, 0];
    if version == 1 {
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    bytes.extend_from_slice(&header);
    assert_eq!(bytes.len() % 64, 0, "data must start 64-byte aligned");
    let big = descr.starts_with('>');
    for o in 0..n {
        for i in 0..n {
            let v = if fortran { a[(i, o)] } else { a[(o, i)] };
            match (&descr[1..], big) {
                ("f8", false) => bytes.extend_from_slice(&v.to_le_bytes()),
                ("f8", true) => bytes.extend_from_slice(&v.to_be_bytes()),
                ("f4", false) => bytes.extend_from_slice(&(v as f32).to_le_bytes()),
                ("f4", true) => bytes.extend_from_slice(&(v as f32).to_be_bytes()),
                _ => unreachable!("unknown descr {descr}"),
            }
        }
    }
    bytes
}

/// log|det| printed by `logdet` (stdout line `log|det| = …`).
fn printed_logdet(o: &Output) -> f64 {
    let out = String::from_utf8_lossy(&o.stdout);
    out.lines()
        .find_map(|l| l.strip_prefix("log|det| = "))
        .unwrap_or_else(|| panic!("no log|det| line in {out}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn every_npy_layout_gives_the_dense_reference() {
    // A non-symmetric-looking file would be caught by C/Fortran mix-ups only if the matrix were not
    // symmetric; MEMDET reads the lower triangle of diagonal tiles and I <= J tiles, so an order mix-up on
    // a symmetric matrix is invisible. Hence `--triangle upper` on a matrix whose lower triangle is junk:
    // reading it transposed (Fortran as C) would pick the junk.
    let dir = tempfile::tempdir().unwrap();
    let a = random_spd(5, 24);
    let mut junk_lower = a.clone();
    for i in 0..24 {
        for j in 0..i {
            junk_lower[(i, j)] = -1e3 * (1 + i + j) as f64;
        }
    }
    // References by faer's dense Cholesky of the exact values the file holds (f32 files: rounded).
    let rounded = faer::Mat::from_fn(24, 24, |i, j| a[(i, j)] as f32 as f64);
    let (ref64, ref32) = (llt_logdet(&a), llt_logdet(&rounded));
    assert!(rel(ref32, ref64) > 1e-12, "f32 rounding must be visible");
    for version in [1u8, 2, 3] {
        for descr in ["<f8", ">f8", "<f4", ">f4"] {
            for fortran in [false, true] {
                let path = dir
                    .path()
                    .join(format!("v{version}{}{fortran}.npy", &descr[1..]));
                std::fs::write(&path, npy_bytes(&junk_lower, version, descr, fortran)).unwrap();
                let o = logdet(&[
                    "--matrix",
                    path.to_str().unwrap(),
                    "--triangle",
                    "upper",
                    "--num-blocks",
                    "3",
                ]);
                let case = format!("version {version} {descr} fortran {fortran}");
                assert!(o.status.success(), "{case}: {}", stderr(&o));
                let want = if descr.ends_with("f8") { ref64 } else { ref32 };
                let got = printed_logdet(&o);
                // Same matrix, two Cholesky orders: rounding only (measured ≤ 5.7e-16; about 100×).
                within(&format!("{case}: {got} vs {want}"), rel(got, want), 5e-14);
            }
        }
    }
}

#[test]
fn triangle_shift_and_scale_by_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let a = random_spd(6, 30);
    // Upper triangle holds A, lower triangle junk (and the other way round): only the named one is read.
    let half = |keep_upper: bool| {
        faer::Mat::from_fn(30, 30, |i, j| {
            if (i <= j) == keep_upper || i == j {
                a[(i, j)]
            } else {
                f64::NAN
            }
        })
    };
    let (upper, lower) = (dir.path().join("u.npy"), dir.path().join("l.npy"));
    write_npy(&upper, &half(true), false);
    write_npy(&lower, &half(false), false);
    let reference = llt_logdet(&a);
    for (path, triangle) in [(&upper, "upper"), (&lower, "lower")] {
        let p = path.to_str().unwrap();
        let o = logdet(&["--matrix", p, "--triangle", triangle, "--num-blocks", "4"]);
        assert!(o.status.success(), "{triangle}: {}", stderr(&o));
        within(
            &format!("--triangle {triangle}"),
            rel(printed_logdet(&o), reference),
            2e-14, // measured 2.3e-16
        );
        // Without --triangle the NaNs are read and refused.
        let o = logdet(&["--matrix", p, "--num-blocks", "4"]);
        assert_eq!(o.status.code(), Some(2), "{triangle}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("non-finite value NaN"),
            "{}",
            stderr(&o)
        );
    }
    // M = T·A + S·I against faer on the matrix formed here; the JSON records T and S.
    let full = dir.path().join("a.npy");
    write_npy(&full, &a, false);
    for (t, s) in [(2.5, 0.0), (1.0, 0.75), (0.3, 4.0)] {
        let m = faer::Mat::from_fn(30, 30, |i, j| t * a[(i, j)] + if i == j { s } else { 0.0 });
        let want = llt_logdet(&m);
        let json = dir.path().join("ts.json");
        let (ts, ss) = (t.to_string(), s.to_string());
        let o = logdet(&[
            "--matrix",
            full.to_str().unwrap(),
            "--scale-by",
            &ts,
            "--shift",
            &ss,
            "--num-blocks",
            "3",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "T {t} S {s}: {}", stderr(&o));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let got = v["logdet"].as_f64().unwrap();
        within(
            &format!("T {t} S {s}: {got} vs {want}"),
            rel(got, want),
            3e-14, // measured ≤ 3.2e-16
        );
        assert_eq!(
            (v["scale_by"].as_f64(), v["shift"].as_f64()),
            (Some(t), Some(s))
        );
        assert!(
            v.get("scale").is_none(),
            "a --matrix report has no kernel scale"
        );
    }
}
