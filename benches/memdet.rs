//! MEMDET benchmark (run by hand: `cargo bench --bench memdet`).
//!
//! For each m (default 4096 and 8192; override with `MEMDET_BENCH_SIZES=4096,8192`) builds a random f64 SPD
//! matrix, times faer's in-core Cholesky (`llt::factor::cholesky_in_place`, Par::rayon(0)) of a copy, then
//! MEMDET with n_b ∈ {1, 2, 4, 8, 16} (override with `MEMDET_BENCH_BLOCKS`), scratch in the OS temp dir (or
//! `MEMDET_BENCH_SCRATCH`). Prints wall time, GFLOP/s (m³/3), the ratio faer time / MEMDET time measured in
//! the same run, the seconds in each phase (source reads, pivot-block factorisations, updates), the relative
//! difference of the log-dets, and the transfer counts. faer and MEMDET are timed
//! alternately (`MEMDET_BENCH_REPS`, default 2, times each) and the best time of each is used, so that a
//! busy machine affects both alike.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt;
use faer::{Mat, Par};
use ntk_pipeline::linalg::{memdet, DenseSource, MemdetOptions};
use ntk_pipeline::progress::Silent;
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// A random SPD matrix G Gᵀ / m + I with G uniform in [-1, 1).
fn random_spd(m: usize, seed: u64) -> Mat<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let g = Mat::from_fn(m, m, |_, _| rng.gen_range(-1.0..1.0));
    let mut a = Mat::<f64>::zeros(m, m);
    faer::linalg::matmul::matmul(
        a.as_mut(),
        faer::Accum::Replace,
        g.as_ref(),
        g.transpose(),
        1.0 / m as f64,
        Par::rayon(0),
    );
    for i in 0..m {
        a[(i, i)] += 1.0;
    }
    a
}

/// faer's in-core Cholesky of a copy of `a`: (seconds, log det).
fn faer_llt(a: &Mat<f64>) -> (f64, f64) {
    let mut f = a.clone();
    let m = a.nrows();
    let par = Par::rayon(0);
    let mut mem = MemBuffer::new(llt::factor::cholesky_in_place_scratch::<f64>(
        m,
        par,
        Default::default(),
    ));
    let t = Instant::now();
    llt::factor::cholesky_in_place(
        f.as_mut(),
        Default::default(),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    )
    .expect("benchmark matrix is SPD");
    let secs = t.elapsed().as_secs_f64();
    let logdet = (0..m).map(|i| 2.0 * f[(i, i)].ln()).sum();
    (secs, logdet)
}

fn list(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// The 1-, 5- and 15-minute load averages (Linux), to judge how noisy the machine was.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let sizes = list("MEMDET_BENCH_SIZES", &[4096, 8192]);
    let blocks = list("MEMDET_BENCH_BLOCKS", &[1, 2, 4, 8, 16]);
    let reps = list("MEMDET_BENCH_REPS", &[2])[0].max(1);
    let scratch = std::env::var_os("MEMDET_BENCH_SCRATCH").map(Into::into);
    println!(
        "threads: {}, load average at start: {}",
        rayon::current_num_threads(),
        load()
    );
    for m in sizes {
        let a = random_spd(m, 42);
        let flops = (m as f64).powi(3) / 3.0;
        let src = DenseSource::new(a.clone());
        println!("\nm = {m} (faer and MEMDET timed alternately, {reps} times each; best of each)");
        println!(
            "{:>5} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>10} {:>9} {:>7} {:>7} {:>9} {:>10}",
            "n_b",
            "b",
            "time[s]",
            "source",
            "factor",
            "update",
            "GFLOP/s",
            "faer[s]",
            "faer/ours",
            "rel.diff",
            "loads",
            "stores",
            "io_wait",
            "peak[MiB]"
        );
        for &nb in &blocks {
            let opts = MemdetOptions {
                num_blocks: Some(nb),
                scratch_dir: Option::clone(&scratch),
                ..Default::default()
            };
            let (mut best_faer, mut best) = (f64::INFINITY, None::<ntk_pipeline::linalg::LogDet>);
            let mut reference = 0.0;
            for _ in 0..reps {
                let (t, l) = faer_llt(&a);
                best_faer = best_faer.min(t);
                reference = l;
                match memdet(&src, &opts, &Silent) {
                    Ok(r) => {
                        if best
                            .as_ref()
                            .is_none_or(|b| r.info.seconds.total < b.info.seconds.total)
                        {
                            best = Some(r);
                        }
                    }
                    Err(e) => println!("{nb:>5} error: {e}"),
                }
            }
            let Some(r) = best else { continue };
            let i = &r.info;
            let secs = i.seconds.total;
            println!(
                "{:>5} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8.1} {:>9.3} {:>10.3} {:>9.1e} {:>7} {:>7} {:>9.3} {:>10.1}",
                nb,
                i.block_size,
                secs,
                i.seconds.source,
                i.seconds.factor,
                i.seconds.update,
                flops / secs / 1e9,
                best_faer,
                best_faer / secs,
                (r.logdet - reference).abs() / reference.abs(),
                i.tiles_requested + i.blocks_loaded,
                i.blocks_stored,
                i.seconds.io_wait,
                i.peak_resident_bytes as f64 / 1048576.0
            );
        }
    }
    println!("\nload average at end: {}", load());
}
