//! Distributed scaling benchmark (feature `mpi`; run by hand, on a quiet machine:
//! `cargo bench --features mpi --bench mpi_scaling`). Needs `mpirun` (openmpi-bin).
//!
//! Runs the release binary under `mpirun -np 1` (grid 1×1) and `-np 2` (grids 1×2 and, for the matrix,
//! 2×1), one compute thread and
//! one BLAS thread per rank (`--threads 1`, `OPENBLAS_NUM_THREADS=1`), on
//! 1. `logdet --matrix` of an m × m SPD matrix (m = 8192, env `MPI_BENCH_M`; block 256): pdpotrf's
//!    GFLOP/s (m³/3 over the slowest rank's seconds) and the formation seconds (reading the .npy);
//! 2. `logdet --model models/resnet9-mnist.safetensors --data mnist --n 300` (env `MPI_BENCH_N`): the
//!    formation seconds (features computed once over the ranks and shared, then each rank's tiles) and
//!    the factorisation,
//!
//! and prints each phase's parallel efficiency from 1 to 2 ranks, E = T₁ / (2·T₂) (1 = perfect), next to
//! single-process MEMDET with every core (its threads default) measured in the same run. Each
//! configuration runs `MPI_BENCH_REPS` times (default 1) and the best time is kept. Set `MPI_BENCH_SKIP`
//! to `matrix` or `ntk` to run only the other part. The load average is printed before and after.

use ntk_pipeline::linalg::npy_write::write_npy_f64;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ntk-pipeline");

/// (formation seconds, factorisation seconds, ln det as printed) of one configuration.
type Timing = (f64, f64, String);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
}

/// A random SPD matrix: symmetric with entries uniform in [-1, 1) off the diagonal and m on it
/// (diagonally dominant, so positive definite), built in O(m²).
fn write_spd(path: &Path, m: usize) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut a = faer::Mat::<f64>::zeros(m, m);
    for j in 0..m {
        a[(j, j)] = m as f64;
        for i in j + 1..m {
            let v = rng.gen_range(-1.0..1.0);
            a[(i, j)] = v;
            a[(j, i)] = v;
        }
    }
    write_npy_f64(path, a.as_ref()).expect("write the benchmark matrix");
}

/// One run on `grid` (None: single-process MEMDET); returns the JSON report.
fn run(grid: Option<(usize, usize)>, args: &[&str], json: &Path) -> serde_json::Value {
    let mut cmd = match grid {
        Some((p, q)) => {
            let mut c = Command::new("mpirun");
            c.args(["--allow-run-as-root", "-np", &(p * q).to_string()])
                .args(["-x", "OPENBLAS_NUM_THREADS=1", BIN, "--threads", "1"]);
            c.args(["--quiet"])
                .args(args)
                .args(["--grid", &format!("{p}x{q}")]);
            c
        }
        None => {
            let mut c = Command::new(BIN);
            c.arg("--quiet").args(args);
            c
        }
    };
    let out = cmd
        .args(["--json", json.to_str().unwrap()])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{:?}: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

fn slowest(v: &serde_json::Value) -> f64 {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .fold(0.0, f64::max)
}

/// (formation seconds, factorisation seconds) of the best of `reps` runs.
fn best(grid: Option<(usize, usize)>, args: &[&str], json: &Path, reps: usize) -> Timing {
    let mut best = (f64::INFINITY, f64::INFINITY, String::new());
    for _ in 0..reps {
        let doc = run(grid, args, json);
        let (form, fact) = match grid {
            Some(_) => (
                slowest(&doc["info"]["formation_seconds"]),
                slowest(&doc["info"]["factor_seconds"]),
            ),
            None => {
                let s = &doc["info"]["seconds"];
                let fact = s["factor"].as_f64().unwrap() + s["update"].as_f64().unwrap();
                (s["source"].as_f64().unwrap(), fact)
            }
        };
        best.0 = best.0.min(form);
        best.1 = best.1.min(fact);
        best.2 = doc["logdet"].to_string();
    }
    best
}

/// Print one part: 1 rank, 2 ranks on each grid of `twos`, single-process MEMDET; efficiencies against
/// the first 2-rank grid.
fn report(what: &str, m: usize, one: Timing, twos: &[((usize, usize), Timing)], memdet: Timing) {
    let gflops = |s: f64| (m as f64).powi(3) / 3.0 / s / 1e9;
    println!("{what} (m = {m})");
    println!(
        "  1 rank  (1x1, 1 thread):  formation {:8.2} s, factorisation {:7.2} s = {:6.1} GFLOP/s, ln det {}",
        one.0, one.1, gflops(one.1), one.2
    );
    for ((p, q), two) in twos {
        println!(
            "  2 ranks ({p}x{q}, 1 thread):  formation {:8.2} s, factorisation {:7.2} s = {:6.1} GFLOP/s, ln det {}; \
             parallel efficiency 1 -> 2 ranks: formation {:.2}, factorisation {:.2}",
            two.0,
            two.1,
            gflops(two.1),
            two.2,
            one.0 / (2.0 * two.0),
            one.1 / (2.0 * two.1)
        );
    }
    let two = &twos[0].1;
    println!(
        "  single-process MEMDET (all cores): source {:8.2} s, factor+update {:7.2} s = {:6.1} GFLOP/s; \
         2 ranks / MEMDET time: formation {:.2}, factorisation {:.2}",
        memdet.0,
        memdet.1,
        gflops(memdet.1),
        memdet.0 / two.0,
        memdet.1 / two.1
    );
}

fn main() {
    if Command::new("mpirun").arg("--version").output().is_err() {
        eprintln!("mpi_scaling: mpirun not found (install openmpi-bin); nothing measured");
        return;
    }
    let reps = env_or("MPI_BENCH_REPS", 1).max(1);
    let skip = std::env::var("MPI_BENCH_SKIP").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    println!("load average before: {}", load().trim());
    if skip != "matrix" {
        let m = env_or("MPI_BENCH_M", 8192);
        let path = dir.path().join("spd.npy");
        write_spd(&path, m);
        let p = path.to_str().unwrap();
        let args = ["logdet", "--matrix", p, "--block-size", "256"];
        let memdet_args = ["logdet", "--matrix", p, "--max-mem", "16GiB"];
        let one = best(Some((1, 1)), &args, &json, reps);
        let twos: Vec<_> = [(1, 2), (2, 1)]
            .into_iter()
            .map(|g| (g, best(Some(g), &args, &json, reps)))
            .collect();
        let memdet = best(None, &memdet_args, &json, reps);
        report("logdet --matrix", m, one, &twos, memdet);
    }
    if skip != "ntk" {
        let n = env_or("MPI_BENCH_N", 300);
        let model = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/resnet9-mnist.safetensors"
        );
        let n_s = n.to_string();
        let args = [
            "logdet",
            "--model",
            model,
            "--data",
            "mnist",
            "--n",
            &n_s,
            "--max-mem",
            "10GiB",
            "--feature-mem",
            "9GiB",
        ];
        let one = best(Some((1, 1)), &args, &json, reps);
        let twos = [((1, 2), best(Some((1, 2)), &args, &json, reps))];
        let memdet = best(None, &args, &json, reps);
        report(
            &format!("logdet --model resnet9-mnist --n {n}"),
            10 * n,
            one,
            &twos,
            memdet,
        );
    }
    println!("load average after:  {}", load().trim());
}
