//! The distributed factorisation (feature `mpi`) on loopback: `mpirun -np 1, 2, 4` (grids 1×1, 1×2, 2×2) gives
//! ln det and every nested ℓ_k equal to single-process MEMDET to 1e-12 relative, for SPEC §2's matrices and
//! the shipped LeNet's NTK; a non-SPD matrix names the same failing row under every grid; a NaN seen by one
//! rank fails the whole job cleanly. Needs `mpirun` (Debian's openmpi-bin); `.ci/run` installs it.
#![cfg(feature = "mpi")]

mod support;

use ntk_pipeline::linalg::npy_write::write_npy_f64;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_ntk-pipeline");
const GRIDS: [(usize, &str); 3] = [(1, "1x1"), (2, "1x2"), (4, "2x2")];

fn mpirun(np: usize, args: &[&str]) -> Output {
    Command::new("mpirun")
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            &np.to_string(),
        ])
        .args(["-x", "OPENBLAS_NUM_THREADS=1", BIN, "--quiet"])
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

fn nested(doc: &serde_json::Value) -> Vec<f64> {
    doc["nested"]["logdets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["logdet"].as_f64().unwrap())
        .collect()
}

/// Every grid's ln det and nested ℓ_k against the single-process MEMDET run of the same arguments, to 1e-12.
fn agrees_on_every_grid(dir: &Path, args: &[&str], block: &str) {
    agrees_on_every_grid_within(dir, args, block, 1e-12, false);
}

/// [`agrees_on_every_grid`] to `tol` relative: ln det relative to itself, each ℓ_k relative to
/// max(|ℓ_k|, 1), or with `on_final_scale` to max(|ℓ_k|, |ℓ_n|) (rounding errors of a formed kernel move
/// every ℓ_k by about the same absolute amount).
fn agrees_on_every_grid_within(
    dir: &Path,
    args: &[&str],
    block: &str,
    tol: f64,
    on_final_scale: bool,
) {
    let reference = dir.join("memdet.json");
    let out = single(&[args, &["--json", reference.to_str().unwrap()]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = json(&reference);
    let want_nested = nested(&want);
    for (np, grid) in GRIDS {
        let path = dir.join(format!("dist-{np}.json"));
        let out = mpirun(
            np,
            &[
                args,
                &[
                    "--grid",
                    grid,
                    "--block-size",
                    block,
                    "--json",
                    path.to_str().unwrap(),
                ],
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "np {np}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = json(&path);
        assert_eq!(got["grid"], grid);
        assert_eq!(got["ranks"].as_u64(), Some(np as u64));
        let (g, w) = (
            got["logdet"].as_f64().unwrap(),
            want["logdet"].as_f64().unwrap(),
        );
        eprintln!(
            "np {np}: ln det {g} vs {w}: {:.1e} relative",
            (g - w).abs() / w.abs()
        );
        assert!((g - w).abs() <= tol * w.abs(), "np {np}: {g} vs {w}");
        let got_nested = nested(&got);
        assert_eq!(got_nested.len(), want_nested.len());
        for (k, (a, b)) in got_nested.iter().zip(&want_nested).enumerate() {
            assert!(
                (a - b).abs() <= tol * b.abs().max(if on_final_scale { w.abs() } else { 1.0 }),
                "np {np}, k {}: {a} vs {b}",
                k + 1
            );
        }
        // Rank 0 alone prints.
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.matches("log|det|").count(), 1, "{stdout}");
    }
}

#[test]
fn spec_matrix_on_every_grid_equals_memdet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ata.npy");
    let a = gram(&plus_identity(&numpy_rand(0, 200, 200), 100.0));
    write_npy_f64(&path, a.as_ref()).unwrap();
    // SPEC §2: A = R + 100·I, ln det(AᵀA) = 1843.4948931912127; block 24 splits 200 rows unevenly on every grid.
    agrees_on_every_grid(
        dir.path(),
        &[
            "logdet",
            "--matrix",
            path.to_str().unwrap(),
            "--nested",
            "1",
        ],
        "24",
    );
    let doc = json(&dir.path().join("dist-4.json"));
    let l = doc["logdet"].as_f64().unwrap();
    assert!((l - 1843.4948931912127).abs() < 1e-12 * 1843.5, "{l}");
}

#[test]
fn lenet_ntk_on_every_grid_equals_memdet() {
    let dir = tempfile::tempdir().unwrap();
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/lenet-mnist.safetensors"
    );
    let args = [
        "logdet", "--model", model, "--data", "mnist", "--n", "300", "--nested", "10",
    ];
    agrees_on_every_grid(dir.path(), &args, "250");
}

/// The other kernels the NTK engine forms: the n × n modes (`sum`, `logit:K`, `trace`) and the f32 kernels.
/// Each rank's tiles must equal the single-process ones whichever rank formed them: to 1e-12 for every
/// kernel accumulated in f64, `f32-f64acc` included (its f32 features travel between ranks exactly). The
/// f32-throughout kernel is another f32 rounding of the same features whenever its tiles are cut
/// differently (the GEMMs' shapes, so their summation order, follow the tiles), so its ln det is held
/// and its nested ℓ_k on the scale of ℓ_n to 5e-6 relative: about half of f32 formation's own error here
/// (ln det 9.6e-6 from f64's); the grids measured 6.4e-7 from single-process.
#[test]
fn lenet_ntk_other_outputs_and_f32_on_every_grid_equal_memdet() {
    let dir = tempfile::tempdir().unwrap();
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/lenet-mnist.safetensors"
    );
    for (extra, block) in [
        (&["--outputs", "sum"][..], "20"),
        (&["--outputs", "logit:3"][..], "40"),
        (&["--outputs", "trace"][..], "20"),
        (&["--precision", "f32-f64acc"][..], "250"),
        (&["--precision", "f32"][..], "250"),
    ] {
        let n = if block == "250" { "100" } else { "200" };
        let mut args = vec![
            "logdet", "--model", model, "--data", "mnist", "--n", n, "--nested", "10",
        ];
        args.extend_from_slice(extra);
        if extra == ["--precision", "f32"] {
            agrees_on_every_grid_within(dir.path(), &args, block, 5e-6, true);
        } else {
            agrees_on_every_grid(dir.path(), &args, block);
        }
    }
}

#[test]
fn non_spd_names_the_failing_row_on_every_grid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.npy");
    let r = numpy_rand(0, 200, 200);
    write_npy_f64(&path, sym_part(&r).as_ref()).unwrap();
    let memdet = single(&["logdet", "--matrix", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&memdet.stderr).to_string();
    let row: usize = err
        .split("pivot ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("MEMDET names a pivot: {err}"));
    for (np, grid) in GRIDS {
        let out = mpirun(
            np,
            &[
                "logdet",
                "--matrix",
                path.to_str().unwrap(),
                "--grid",
                grid,
                "--block-size",
                "16",
            ],
        );
        assert_eq!(out.status.code(), Some(2), "np {np}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.matches("error:").count(),
            1,
            "printed once: {stderr}"
        );
        assert!(
            stderr.contains(&format!("pivot of row {row} ")),
            "np {np}: {stderr} (MEMDET: row {row})"
        );
    }
}

#[test]
fn nan_seen_by_one_rank_fails_the_job_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.npy");
    let mut a = gram(&plus_identity(&numpy_rand(0, 200, 200), 100.0));
    // Only the owner of the last block row of the first block column reads this entry.
    a[(0, 199)] = f64::NAN;
    a[(199, 0)] = f64::NAN;
    write_npy_f64(&path, a.as_ref()).unwrap();
    let json_out = dir.path().join("out.json");
    let t = Instant::now();
    let out = mpirun(
        4,
        &[
            "logdet",
            "--matrix",
            path.to_str().unwrap(),
            "--grid",
            "2x2",
            "--block-size",
            "50",
            "--json",
            json_out.to_str().unwrap(),
        ],
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
    assert!(stderr.contains("NaN") && stderr.contains("199"), "{stderr}");
    assert!(!json_out.exists());
}
