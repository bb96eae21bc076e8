//! The `compare` subcommand: FLODANCE and the classical estimators side by side with the exact ln det K_n,
//! as in the paper's Table 2. The f64 kernel is formed once in memory and every method reads it through
//! the same `TileSource` interface (same precision, same order); each method's "forming" time is the time to
//! form what it needs (the full kernel, K_{n_s}, or the n diagonal blocks), measured separately.

use crate::cli::{CompareArgs, CompareMethod, KernelArgs};
use crate::estimators::{
    BlockDiagonal, Estimate, Estimator, LinearExtrapolation, PreconditionedSlq, PseudoNtk, Slq,
    SlqOptions, StoppedCholesky, StoppedCholeskyRule,
};
use crate::linalg::{Assume, DenseSource, MemdetOptions, TileSource};
use crate::ntk::{NtkTiles, Precision};
use crate::pipeline::fit::check_window;
use crate::pipeline::inputs::{
    budget_split, check_scratch_dir, dense_kernel, kernel_identity, kernel_meta, memory_split,
    prepare, Prepared,
};
use crate::pipeline::logdet::{checkpoint_for, memdet_recorded};
use crate::progress::Progress;
use crate::report::compare::{table, CompareReport, MethodRow};
use crate::report::run::process_peak_rss;
use crate::report::{check_outputs, write_json};
use crate::scaling::{fit, nested_logdets, FitOptions};
use crate::{Error, Result};
use faer::Mat;
use std::time::Instant;

/// Execute `compare`.
pub fn run(args: &CompareArgs, progress: &dyn Progress) -> Result<()> {
    check_outputs(&[("--json", args.json.as_deref())])?;
    let ns = args.n_sample.unwrap_or((args.n / 10).max(2));
    let n0 = args.burn_in.unwrap_or(ns / 5);
    if ns > args.n || n0 >= ns {
        return Err(Error::Usage(format!(
            "need burn-in < n-sample <= n (got {n0}, {ns}, {})",
            args.n
        )));
    }
    if args.methods.contains(&CompareMethod::Flodance) {
        let window = FitOptions {
            n0,
            q: args.q,
            ..FitOptions::default()
        };
        check_window(ns, &window)?;
    }
    memory_split(&args.mem)?;
    check_scratch_dir(&args.mem)?;
    let prepared = prepare(&args.md, args.n, progress)?;
    // Outside the split: the inputs, and the in-memory kernels K_n (twice with f32) and K_{n_s}.
    let d = prepared.model.network.num_outputs()?;
    let rows = crate::ntk::KernelSpec {
        outputs: args.kernel.outputs,
        scale: args.kernel.scale,
        precision: Precision::F64,
    }
    .rows_per_example(d) as u64;
    let dense = |n: usize| 8 * (n as u64 * rows).pow(2);
    // The f32 kernels (f32 throughout, f32-f64acc) are formed one after the other, each dropped after use.
    let any_f32 = args.methods.contains(&CompareMethod::F32)
        || args.methods.contains(&CompareMethod::F32F64Acc);
    let copies = 1 + u64::from(any_f32);
    let total = crate::linalg::parse_size(&args.mem.max_mem)?;
    let m = args.n as u64 * rows;
    if copies * dense(args.n) + dense(ns) > total {
        return Err(Error::Budget(format!(
            "compare holds the {m}x{m} kernel in memory ({:.1} MiB{}, plus {:.1} MiB for K_(n_s)) but --max-mem is {:.1} MiB; \
             raise --max-mem or lower --n",
            dense(args.n) as f64 / 1048576.0,
            if copies > 1 { ", twice with f32" } else { "" },
            dense(ns) as f64 / 1048576.0,
            total as f64 / 1048576.0
        )));
    }
    // Also outside: the f32 inputs of the f32 kernel, the K_(n_s) inputs while it is formed, a second copy
    // of the inputs for the matrix-free SLQ, and pslq's rank-r preconditioner (m x r, twice while built).
    // SLQ's operator and Krylov bases run after MEMDET and get half of MEMDET's share each.
    let n_used = args.n.min(prepared.order.len());
    let has = |method| u64::from(args.methods.contains(&method));
    let outside = prepared.resident_bytes(n_used)
        + u64::from(any_f32) * prepared.input_bytes(n_used, Precision::F32)
        + prepared.input_bytes(ns, Precision::F64)
        + has(CompareMethod::SlqMatvec) * prepared.input_bytes(n_used, Precision::F64)
        + has(CompareMethod::Pslq) * 2 * 8 * m * args.precond_rank as u64
        + copies * dense(args.n)
        + dense(ns);
    let (feature_mem, memdet_mem) = budget_split(&args.mem, outside)?;
    let f64_kernel = KernelArgs {
        precision: Precision::F64,
        ..args.kernel.clone()
    };

    // The reference kernel, formed once.
    let least = |tiles: &NtkTiles| {
        crate::pipeline::budget::check_kernel_minimum(
            tiles,
            crate::pipeline::budget::Beside::Memdet(None),
            &args.mem.max_mem,
            crate::pipeline::budget::FeatureShare::of(&args.mem.feature_mem),
            (feature_mem, memdet_mem),
            outside,
        )
    };
    let (k, tiles, form_s) = form_dense(
        &prepared,
        args.n,
        &f64_kernel,
        feature_mem,
        &least,
        progress,
    )?;
    // Free the features: the f32 kernel needs the memory, and block-diag's forming time is then honest.
    tiles.clear_features();
    let m = k.dim();
    let d = k.granule();
    let opts = memdet_options(args, memdet_mem);
    // Each factorisation has its own checkpoint (the in-memory kernels are formed again on resume).
    let checkpointed = |sub: &str, n: usize, kernel: &KernelArgs| MemdetOptions {
        checkpoint: checkpoint_for(
            &args.ckpt,
            Some(sub),
            kernel_identity(&prepared, &args.md, n, kernel),
        ),
        ..opts.clone()
    };
    let t = Instant::now();
    let exact = memdet_recorded(&k, &checkpointed("exact", args.n, &f64_kernel), progress)?;
    let exact_s = t.elapsed().as_secs_f64();
    let nested = nested_logdets(&exact.pivots_logabs, &exact.pivot_signs, d)?;
    let sample: Vec<(usize, f64)> = nested
        .points
        .iter()
        .copied()
        .filter(|p| p.0 <= ns)
        .collect();
    let reference = exact.logdet;

    // What the K_{n_s}-based methods cost: form and factor the leading n_s examples on their own.
    let (small, small_form_s) = {
        let t = Instant::now();
        let tiles_s = prepared.tiles(ns, &f64_kernel, feature_mem as usize)?;
        let s = dense_from(&tiles_s, progress)?;
        (s, t.elapsed().as_secs_f64())
    };
    let t = Instant::now();
    let small_factor = memdet_recorded(&small, &checkpointed("sample", ns, &f64_kernel), progress)?;
    let small_factor_s = t.elapsed().as_secs_f64();
    let drift = (small_factor.logdet - sample.last().map_or(f64::NAN, |p| p.1)).abs()
        / small_factor.logdet.abs();
    if drift > 1e-10 {
        crate::progress::notice(&format!("warning: ln det K_(n_s) formed separately differs from the nested value by {drift:.1e} (relative)"));
    }

    let mut rows = Vec::new();
    let row = |method: &str, estimates: &[Estimate], forming: f64, extra_est: f64| -> MethodRow {
        let r = estimates.len() as f64;
        let mean = estimates.iter().map(|e| e.logdet).sum::<f64>() / r;
        let std = (estimates.len() > 1).then(|| {
            (estimates
                .iter()
                .map(|e| (e.logdet - mean).powi(2))
                .sum::<f64>()
                / (r - 1.0))
                .sqrt()
        });
        MethodRow {
            method: method.to_string(),
            logdet: mean,
            std,
            relative_error_pct: 100.0 * (mean - reference) / reference.abs(),
            error_per_eigenvalue: (mean - reference).abs() / m as f64,
            seconds_forming: forming,
            seconds_estimating: estimates.iter().map(|e| e.seconds).sum::<f64>() / r + extra_est,
            matvecs: estimates.iter().map(|e| e.matvecs as f64).sum::<f64>() / r,
            process_peak_rss: process_peak_rss(),
            details: serde_json::json!(estimates.iter().map(|e| serde_json::json!({
                "logdet": e.logdet, "std_error": e.std_error, "matvecs": e.matvecs, "seconds": e.seconds, "details": e.details
            })).collect::<Vec<_>>()),
        }
    };
    let repeat = args.repeat.max(1);
    // SLQ's operator and its Krylov bases each get half of MEMDET's share (MEMDET is done by then).
    let slq_mem = memdet_mem as usize / 2;
    for &method in &args.methods {
        let r = match method {
            CompareMethod::Exact => {
                let e = Estimate {
                    logdet: exact.logdet,
                    std_error: None,
                    matvecs: 0,
                    seconds: exact_s,
                    details: serde_json::json!(exact.info),
                };
                row("exact", &[e], form_s, 0.0)
            }
            CompareMethod::Flodance => {
                let t = Instant::now();
                let fopts = FitOptions {
                    n0,
                    q: args.q,
                    r: 0,
                    alpha: 0.0,
                    ensemble: 20,
                    seed: args.md.seed,
                };
                let fitted = fit(&sample, &fopts)?;
                let (low, high) = fitted.interval(args.n as f64);
                let e = Estimate {
                    logdet: fitted.predict(args.n as f64),
                    std_error: None,
                    matvecs: 0,
                    seconds: t.elapsed().as_secs_f64(),
                    details: serde_json::json!({"n0": n0, "ns": ns, "q": args.q, "interval": [low, high]}),
                };
                row(
                    &format!("flodance({n0},{ns})"),
                    &[e],
                    small_form_s,
                    small_factor_s,
                )
            }
            CompareMethod::Linear => {
                let e = LinearExtrapolation {
                    n0,
                    target_n: args.n,
                }
                .estimate(&sample)?;
                row("linear", &[e], small_form_s, small_factor_s)
            }
            CompareMethod::StoppedCholesky => {
                let e = StoppedCholesky {
                    window: ns - n0,
                    target_n: args.n,
                    rule: StoppedCholeskyRule::Average,
                }
                .estimate(&sample)?;
                row("stopped-cholesky", &[e], small_form_s, small_factor_s)
            }
            CompareMethod::Slq | CompareMethod::SlqLarge => {
                let est: Vec<Estimate> = (0..repeat)
                    .map(|i| {
                        let seed = args.md.seed + i as u64;
                        let mut o = if method == CompareMethod::Slq {
                            SlqOptions::paper_table2(seed)
                        } else {
                            SlqOptions::paper_table1(seed)
                        };
                        o.memory_bytes = slq_mem;
                        Slq { options: o }.run(&k, progress)
                    })
                    .collect::<Result<_>>()?;
                row(&method.name(), &est, form_s, 0.0)
            }
            CompareMethod::SlqMatvec => {
                // SLQ with the same settings and seeds as `slq`, its products K·V from the matrix-free
                // NTK operator (no kernel formed), so its forming time is 0.
                let spec = crate::ntk::KernelSpec {
                    outputs: f64_kernel.outputs,
                    scale: f64_kernel.scale,
                    precision: f64_kernel.precision,
                };
                let op = crate::ntk::NtkOperator::new(
                    &prepared.model.network,
                    prepared.inputs_in(args.n, spec.precision)?,
                    spec,
                    slq_mem,
                )?;
                let est: Vec<Estimate> = (0..repeat)
                    .map(|i| {
                        let mut o = SlqOptions::paper_table2(args.md.seed + i as u64);
                        o.memory_bytes = slq_mem;
                        slq_matvec(&op, &o, progress)
                    })
                    .collect::<Result<_>>()?;
                row(&method.name(), &est, 0.0, 0.0)
            }
            CompareMethod::Pslq => {
                let est: Vec<Estimate> = (0..repeat)
                    .map(|i| {
                        let mut o = SlqOptions::paper_table2(args.md.seed + i as u64);
                        o.memory_bytes = slq_mem;
                        PreconditionedSlq::new(args.precond_rank, o).run(&k, progress)
                    })
                    .collect::<Result<_>>()?;
                row(&format!("pslq(r={})", args.precond_rank), &est, form_s, 0.0)
            }
            CompareMethod::BlockDiag => {
                // Forming only the diagonal blocks costs one feature pass per example (from a cold cache).
                let t = Instant::now();
                let mut block = Mat::<f64>::zeros(d, d);
                for i in 0..args.n {
                    tiles.fill(i * d..(i + 1) * d, i * d..(i + 1) * d, block.as_mut())?;
                }
                let form = t.elapsed().as_secs_f64();
                // Those features are not needed again (and the f32 kernel needs the memory).
                tiles.clear_features();
                let e = BlockDiagonal.run(&k, progress)?;
                row("block-diag", &[e], form, 0.0)
            }
            CompareMethod::PseudoNtk => {
                let e = PseudoNtk::default().run(&k, progress)?;
                row("pseudo-ntk", &[e], form_s, 0.0)
            }
            CompareMethod::F32 | CompareMethod::F32F64Acc => {
                let (precision, name) = if method == CompareMethod::F32 {
                    (Precision::F32, "f32 formation")
                } else {
                    (Precision::F32F64Acc, "f32-f64acc formation")
                };
                let f32_kernel = KernelArgs {
                    precision,
                    ..args.kernel.clone()
                };
                let (k32, _, form32) = form_dense(
                    &prepared,
                    args.n,
                    &f32_kernel,
                    feature_mem,
                    &least,
                    progress,
                )?;
                let t = Instant::now();
                let r = memdet_recorded(
                    &k32,
                    &checkpointed(precision.name(), args.n, &f32_kernel),
                    progress,
                )?;
                let e = Estimate {
                    logdet: r.logdet,
                    std_error: None,
                    matvecs: 0,
                    seconds: t.elapsed().as_secs_f64(),
                    details: serde_json::json!({"sign": r.sign}),
                };
                row(name, &[e], form32, 0.0)
            }
        };
        rows.push(r);
    }
    let report = CompareReport {
        kernel: kernel_meta(&prepared, &tiles, args.n),
        n: args.n,
        m,
        exact_logdet: reference,
        seconds_forming_kernel: form_s,
        nested: nested.points.clone(),
        methods: rows,
    };
    // The result goes to stdout first, so a failing write at the end loses nothing.
    print!("{}", table(&report));
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(())
}

/// SLQ on the matrix-free NTK operator.
fn slq_matvec(
    op: &crate::ntk::NtkOperator,
    options: &SlqOptions,
    progress: &dyn Progress,
) -> Result<Estimate> {
    let start = Instant::now();
    let out = crate::estimators::slq::slq_on(op, options, progress)?;
    Ok(Estimate {
        logdet: out.mean,
        std_error: out.std_error,
        matvecs: op.products(),
        seconds: start.elapsed().as_secs_f64(),
        details: serde_json::json!({
            "options": options,
            "probes": out.per_probe.len(),
            "mean_lanczos_steps": out.mean_steps,
            "ritz_min": out.ritz_range.0,
            "ritz_max": out.ritz_range.1,
            "matrix_free": true,
        }),
    })
}

fn memdet_options(args: &CompareArgs, memdet_mem: u64) -> MemdetOptions {
    MemdetOptions {
        assume: Assume::Spd,
        num_blocks: args.mem.num_blocks,
        max_mem: Some(memdet_mem),
        scratch_dir: args.mem.scratch_dir.clone(),
        nested: true,
        ..MemdetOptions::default()
    }
}

/// Form the kernel of the first n examples densely in memory, once its tile source passes `check`;
/// returns it, its tile source and the seconds.
fn form_dense(
    prepared: &Prepared,
    n: usize,
    kernel: &KernelArgs,
    feature_mem: u64,
    check: &dyn Fn(&NtkTiles) -> Result<()>,
    progress: &dyn Progress,
) -> Result<(DenseSource, NtkTiles, f64)> {
    let t = Instant::now();
    let tiles = prepared.tiles(n, kernel, feature_mem as usize)?;
    check(&tiles)?;
    let dense = dense_from(&tiles, progress)?;
    Ok((dense, tiles, t.elapsed().as_secs_f64()))
}

/// A dense in-memory copy of the kernel, as a tile source with the kernel's granule.
fn dense_from(source: &NtkTiles, progress: &dyn Progress) -> Result<DenseSource> {
    Ok(DenseSource::new(dense_kernel(source, progress)?).with_granule(source.granule()))
}
