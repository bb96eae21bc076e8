//! NTK tile benchmark (run by hand: `cargo bench --bench ntk`). For the shipped resnet9 (or, if it is not
//! there, a seeded resnet9 of width 32: the cost does not depend on the weights) on the first n MNIST
//! training images at 3×32×32, prints seconds for features and contractions, the contraction's useful
//! GFLOP/s against the gemm crate's f64 GEMM (the kernel the contractions call) measured in the same run,
//! the FLOP saving of the structured contraction against the plain Jacobian contraction (2·m²·p), and the
//! speed-up over brute force measured at a small n.
//!
//! Environment: NTK_BENCH_N (default 200), NTK_BENCH_BRUTE_N (default 8).

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use ntk_pipeline::data::{self, DataOptions, Split};
use ntk_pipeline::linalg::TileSource;
use ntk_pipeline::model::{arch, load::load_model, Network, SeededParams};
use ntk_pipeline::ntk::features::{LayerPlan, Rule};
use ntk_pipeline::ntk::{brute, KernelSpec, NtkTiles, Outputs, Precision, Scale};
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// FLOPs of the structured contraction of the full n×n-example kernel (every tile, both triangles).
fn structured_flops(net: &Network, x: &candle_core::Tensor, rows: usize, n: usize) -> (f64, usize) {
    let probe = x
        .narrow(0, 0, 1)
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap();
    let plan = LayerPlan::new(
        &net.to_dtype(candle_core::DType::F64).unwrap(),
        &probe,
        rows,
    )
    .unwrap();
    let (nf, r) = (n as f64, rows as f64);
    let mut flops = 2.0 * (nf * r).powi(2) * plan.explicit_cols as f64;
    let mut route_b = 0;
    for layer in &plan.layers {
        match &layer.rule {
            Rule::ConvSpatial {
                geometry, c_out, ..
            } => {
                route_b += 1;
                let (u, kk, co) = (
                    geometry.positions() as f64,
                    geometry.patch_len() as f64,
                    *c_out as f64,
                );
                flops += nf * nf * (2.0 * u * u * kk + 2.0 * r * co * u * u + 2.0 * r * r * co * u);
            }
            Rule::Linear { .. } => {
                let node = &net.nodes[layer.node];
                let (o, i) = node.op.parameters()[0].1.dims2().unwrap();
                flops += 2.0 * (nf * r).powi(2) * o as f64 + 2.0 * nf * nf * i as f64;
            }
            _ => {}
        }
    }
    (flops, route_b)
}

/// f64 GEMM GFLOP/s of a 2048³ product `A·Aᵀ`, with faer's `matmul` (`ours = false`) or with the gemm-crate
/// wrapper the contractions use (`ours = true`).
fn gemm_gflops(ours: bool) -> f64 {
    let matmul = |c: faer::MatMut<'_, f64>, a: faer::MatRef<'_, f64>| {
        if ours {
            ntk_pipeline::linalg::gemm::matmul(
                c,
                Accum::Replace,
                a,
                a.transpose(),
                1.0,
                Par::rayon(0),
            )
        } else {
            matmul(c, Accum::Replace, a, a.transpose(), 1.0, Par::rayon(0))
        }
    };
    let n = 2048;
    let a = Mat::<f64>::from_fn(n, n, |i, j| ((i * 7 + j * 3) % 11) as f64);
    let mut c = Mat::<f64>::zeros(n, n);
    matmul(c.as_mut(), a.as_ref());
    let t = Instant::now();
    let reps = 3;
    for _ in 0..reps {
        matmul(c.as_mut(), a.as_ref());
    }
    2.0 * (n as f64).powi(3) * reps as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// f32 GEMM GFLOP/s of the same 2048³ product with the gemm-crate wrapper (what `--precision f32`
/// contracts with).
fn gemm32_gflops() -> f64 {
    let n = 2048;
    let a = Mat::<f32>::from_fn(n, n, |i, j| ((i * 7 + j * 3) % 11) as f32);
    let mut c = Mat::<f32>::zeros(n, n);
    let product = |c: faer::MatMut<'_, f32>| {
        ntk_pipeline::linalg::gemm::matmul(
            c,
            Accum::Replace,
            a.as_ref(),
            a.transpose(),
            1.0f32,
            Par::rayon(0),
        )
    };
    product(c.as_mut());
    let t = Instant::now();
    let reps = 3;
    for _ in 0..reps {
        product(c.as_mut());
    }
    2.0 * (n as f64).powi(3) * reps as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Seconds of the per-example feature pass (eval forward, batched reverse pass over the d logits, feature
/// extraction) on the first `nf` examples by the hand-written pass and by the candle pass it replaced,
/// interleaved (two runs each, the faster kept), at 2 examples per pass as `NtkTiles` picks for this model;
/// and the hand-written pass with its direct 3×3 convolutions turned off (the lowered path they replaced).
fn feature_pass_ratio(net: &Network, x: &candle_core::Tensor, nf: usize) {
    use ntk_pipeline::model::hand::conv_direct;
    use ntk_pipeline::ntk::features::{compute_with, FeaturePass};
    let net = net.to_dtype(candle_core::DType::F64).unwrap();
    let xs = x
        .narrow(0, 0, nf)
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap();
    let plan = LayerPlan::new(&net, &xs.narrow(0, 0, 1).unwrap(), 10).unwrap();
    let spec = KernelSpec {
        outputs: Outputs::Full,
        scale: Scale::SqrtP,
        precision: Precision::F64,
    };
    let (mut hand, mut lowered, mut candle) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for _ in 0..2 {
        for (pass, direct, best) in [
            (FeaturePass::Candle, true, &mut candle),
            (FeaturePass::Hand, false, &mut lowered),
            (FeaturePass::Hand, true, &mut hand),
        ] {
            conv_direct::set_enabled(direct);
            let t = Instant::now();
            compute_with(pass, &net, &plan, &xs, &spec, 2).expect("features");
            *best = best.min(t.elapsed().as_secs_f64());
        }
    }
    println!(
        "feature pass, {nf} examples: hand-written {hand:.2} s, candle {candle:.2} s: speed-up x{:.2}; hand-written with lowered convolutions only (direct kernels off{}) {lowered:.2} s: direct x{:.2}",
        candle / hand,
        if conv_direct::available() { "" } else { "; this CPU has no AVX-512 F, so both ran lowered" },
        lowered / hand
    );
}

fn main() {
    // As the binary does: candle otherwise reads /proc/cpuinfo on every matmul (pipeline::fix_candle_thread_count).
    ntk_pipeline::pipeline::fix_candle_thread_count(None);
    let n = env("NTK_BENCH_N", 200);
    let brute_n = env("NTK_BENCH_BRUTE_N", 8);
    let dataset = data::load(
        "mnist",
        &DataOptions {
            split: Split::Train,
            data_dir: None,
            download: false,
        },
    )
    .expect("the shipped MNIST in datasets/mnist");
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/resnet9-mnist.safetensors"
    );
    let (net, which) = match load_model(shipped, None, None, Some([3, 32, 32]), Some(10)) {
        Ok(m) => (m.network, "shipped resnet9-mnist"),
        Err(_) => (
            arch::build(
                "resnet9",
                Some(32),
                [3, 32, 32],
                10,
                &mut SeededParams::new(0),
            )
            .expect("resnet9"),
            "seeded resnet9 width 32 (shipped model not found)",
        ),
    };
    let idx: Vec<usize> = (0..n.max(brute_n)).collect();
    let x = dataset.images(&idx, [3, 32, 32]).expect("images");
    let p = net.num_params();
    println!(
        "model: {which}, p = {p}; data: first {n} MNIST training images; outputs full (d = 10)"
    );
    println!(
        "machine load: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let faer_gemm = gemm_gflops(false);
    let gemm = gemm_gflops(true);
    let gemm32 = gemm32_gflops();
    println!(
        "f32 GEMM (2048³, gemm crate) in this run: {gemm32:.1} GFLOP/s, x{:.2} the f64 rate",
        gemm32 / gemm
    );
    println!(
        "f64 GEMM (2048³) in this run: gemm crate (x86-v4, what the contractions use) {gemm:.1} GFLOP/s, faer {faer_gemm:.1} GFLOP/s; ratios below are against the gemm crate"
    );
    feature_pass_ratio(&net, &x, env("NTK_BENCH_FEATURES_N", 60).min(n));
    let (flops, route_b) = structured_flops(&net, &x, 10, n);
    let plain = 2.0 * (n as f64 * 10.0).powi(2) * p as f64;
    println!(
        "structured contraction: {:.3} TFLOP ({route_b} conv layers by route B) vs plain Jacobian contraction 2·m²·p = {:.3} TFLOP: saving {:.1}x",
        flops / 1e12,
        plain / 1e12,
        plain / flops
    );
    println!(
        "{:<10} {:>6} {:>12} {:>14} {:>14} {:>12} {:>10}",
        "prec", "n", "features s", "contract s", "GFLOP/s", "vs GEMM", "total s"
    );
    // f64, f32 throughout (f32 GEMMs) and the hybrid (f32 passes, f64 accumulation), in one run.
    let mut measured = Vec::new();
    for precision in [Precision::F64, Precision::F32, Precision::F32F64Acc] {
        let spec = KernelSpec {
            outputs: Outputs::Full,
            scale: Scale::SqrtP,
            precision,
        };
        let t = Instant::now();
        let tiles = NtkTiles::new(&net, x.narrow(0, 0, n).unwrap(), spec, 8 << 30).expect("tiles");
        let m = tiles.dim();
        let mut k = Mat::<f64>::zeros(m, m);
        tiles.fill(0..m, 0..m, k.as_mut()).expect("fill");
        let total = t.elapsed().as_secs_f64();
        let s = tiles.stats();
        let rate = flops / s.contract_seconds / 1e9;
        measured.push((precision, s.feature_seconds, s.contract_seconds, total));
        println!(
            "{:<10} {:>6} {:>12.2} {:>14.2} {:>14.1} {:>11.2}x {:>10.2}",
            precision.name(),
            n,
            s.feature_seconds,
            s.contract_seconds,
            rate,
            rate / gemm,
            total
        );
    }
    let (_, f0, c0, t0) = measured[0];
    for &(precision, f, c, t) in &measured[1..] {
        println!(
            "{} against f64 in this run: features x{:.2}, contractions x{:.2}, total x{:.2} (speed-ups)",
            precision.name(),
            f0 / f,
            c0 / c,
            t0 / t
        );
    }
    // Brute force vs ours at a small n (same kernel, f64).
    let spec = KernelSpec {
        outputs: Outputs::Full,
        scale: Scale::SqrtP,
        precision: Precision::F64,
    };
    let xs = x.narrow(0, 0, brute_n).unwrap();
    let t = Instant::now();
    let reference = brute::kernel(&net, &xs, &spec).expect("brute force");
    let brute_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let tiles = NtkTiles::new(&net, xs, spec, 8 << 30).expect("tiles");
    let m = tiles.dim();
    let mut k = Mat::<f64>::zeros(m, m);
    tiles.fill(0..m, 0..m, k.as_mut()).expect("fill");
    let ours_s = t.elapsed().as_secs_f64();
    let err = (&k - &reference).norm_l2() / reference.norm_l2();
    println!(
        "brute force (one autograd backward per example and logit) at n = {brute_n}: {brute_s:.2} s; ours {ours_s:.3} s: speed-up {:.1}x (relative difference {err:.1e})",
        brute_s / ours_s
    );
}
