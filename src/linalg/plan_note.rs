//! The plan MEMDET prints before it starts: blocks, scratch bytes against the free space, resident memory
//! against the budget, the factorisation's FLOPs and, from a short GEMM calibration on this machine, the
//! time they should take.

use super::budget::BlockPlan;
use super::memdet::MemdetOptions;
use faer::{Accum, Mat, Par};
use std::time::Instant;

/// Matrices from this order on get a calibrated time estimate (smaller ones factor in about a second).
const CALIBRATE_FROM: usize = 4096;

/// Order of the calibration GEMM (2·n³ = 34 MFLOP, a few milliseconds).
const CALIBRATION_N: usize = 256;

/// GFLOP/s of this machine's f64 GEMM now: the best of three 256³ products with all threads.
pub fn calibrate_gflops() -> f64 {
    let n = CALIBRATION_N;
    let a = Mat::<f64>::from_fn(n, n, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0);
    let mut c = Mat::<f64>::zeros(n, n);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        super::gemm::matmul(
            c.as_mut(),
            Accum::Replace,
            a.as_ref(),
            a.as_ref(),
            1.0,
            Par::rayon(0),
        );
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best.max(1e-9) / 1e9
}

/// Human-readable seconds: `42 s`, `3.5 min`, `2.1 h`, `1.5 days`.
pub fn duration(s: f64) -> String {
    match s {
        s if s < 90.0 => format!("{s:.0} s"),
        s if s < 5400.0 => format!("{:.1} min", s / 60.0),
        s if s < 2.0 * 86400.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} days", s / 86400.0),
    }
}

/// The plan line for a run with `plan` and `opts`, `done` block columns already complete (a resume), and
/// the source's calibrated estimate of the time to form the remaining tiles, if it made one.
pub fn describe(
    plan: &BlockPlan,
    opts: &MemdetOptions,
    done: usize,
    forming: Option<&(f64, String)>,
) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let ldlt = opts.assume == super::Assume::Sym;
    let mut text = format!(
        "plan: m = {}, {} block{} of {} rows",
        plan.m,
        plan.num_blocks,
        if plan.num_blocks == 1 { "" } else { "s" },
        plan.block_size
    );
    if done > 0 {
        text += &format!(" (resuming after {done} complete block columns)");
    }
    if plan.num_blocks > 1 {
        let dir = opts
            .checkpoint
            .as_ref()
            .map(|c| c.dir.clone())
            .or_else(|| opts.scratch_dir.clone())
            .unwrap_or_else(std::env::temp_dir);
        let free = super::scratch::free_bytes(&dir).map_or("free space unknown".to_string(), |f| {
            format!("{:.2} GiB free", gib(f))
        });
        text += &format!(
            "; scratch {:.2} GiB in {} ({free})",
            gib(plan.scratch_bytes()),
            dir.display()
        );
    }
    text += &format!("; resident tiles {:.1} MiB", mib(plan.resident_bytes(ldlt)));
    if let Some(max) = opts.max_mem {
        text += &format!(" of the {:.1} MiB MEMDET budget", mib(max));
    }
    let flops = (plan.m as f64).powi(3) / 3.0;
    if plan.m >= CALIBRATE_FROM {
        let gflops = calibrate_gflops();
        text += &format!(
            "; factorisation {flops:.2e} FLOP (m^3/3), about {} at {gflops:.1} GFLOP/s (GEMM calibrated just now)",
            duration(flops / (gflops * 1e9))
        );
    } else {
        text += &format!("; factorisation {flops:.2e} FLOP (m^3/3), about a second or less");
    }
    text += &match forming {
        Some((seconds, how)) => format!(
            "; forming the tiles about {} (calibrated just now: {how})",
            duration(*seconds)
        ),
        None => "; forming the tiles is timed as it runs (see the eta)".to_string(),
    };
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_pick_a_readable_unit() {
        assert_eq!(duration(42.0), "42 s");
        assert_eq!(duration(210.0), "3.5 min");
        assert_eq!(duration(3.0 * 3600.0), "3.0 h");
        assert_eq!(duration(3.0 * 86400.0), "3.0 days");
    }
}
