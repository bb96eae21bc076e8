//! The `run` subcommand (the default): data → model → NTK tiles of the first n_s examples → MEMDET with
//! nested log-dets → FLODANCE fit → estimate of ℓ_n at the full dataset size, with an ensemble interval;
//! optionally the exact ℓ_N for comparison (`--exact-n`), a JSON report and an SVG plot.

use crate::cli::RunArgs;
use crate::linalg::{Assume, Checkpoint, LogDet, MemdetOptions, TileSource};
use crate::ntk::NtkTiles;
use crate::pipeline::fit::{calibrated_and_warnings, check_window, estimate_options};
use crate::pipeline::inputs::{
    budget_split, check_scratch_dir, kernel_identity, kernel_meta, memory_split, prepare, Prepared,
};
use crate::pipeline::logdet::{checkpoint_for, memdet_recorded};
use crate::pipeline::ranks::{agreed, is_follower};
use crate::progress::Progress;
use crate::report::fit::{EstimateJson, FitJson};
use crate::report::plot::plot_fit;
use crate::report::run::{
    process_peak_rss, ExactJson, MemoryJson, RunReport, SampleJson, TimingsJson,
};
use crate::report::{check_outputs, write_json};
use crate::scaling::{estimate, nested_logdets};
use crate::{Error, Result};
use std::time::Instant;

/// The run's inputs, loaded and checked before any kernel work.
struct SetUp {
    opts: crate::scaling::EstimateOptions,
    max_mem: u64,
    feature_mem: u64,
    memdet_mem: u64,
    prepared: Prepared,
    target_n: usize,
    load_s: f64,
    tiles: NtkTiles,
}

/// Distributed factorisations of this run (label, report), for the JSON; empty for single-process runs.
type DistLog = Vec<(&'static str, serde_json::Value)>;

/// Execute `run`.
pub fn run(args: &RunArgs, progress: &dyn Progress) -> Result<()> {
    let t0 = Instant::now();
    let ns = args.n_sample;
    let SetUp {
        opts,
        max_mem,
        feature_mem,
        memdet_mem,
        prepared,
        target_n,
        load_s,
        tiles,
    } = agreed(set_up(args, progress, t0))?;
    let granule = tiles.granule();
    let target_m = target_n * granule;
    if target_m > tiles.num_params() && !is_follower() {
        crate::progress::notice(&format!(
            "warning: the target kernel (n = {target_n}, m = {target_m}) exceeds p = {} parameters: K_n is singular \
             and ℓ_n is meaningless there (SPEC §5); the extrapolation is reported anyway",
            tiles.num_params()
        ));
    }
    let checkpoint = checkpoint_for(
        &args.ckpt,
        Some("sample"),
        kernel_identity(&prepared, &args.md, ns, &args.kernel),
    );
    let mut dist_log = DistLog::new();
    let factored = factor(
        &tiles,
        args,
        memdet_mem,
        checkpoint,
        progress,
        ("sample", &mut dist_log),
    )?;
    if is_follower() {
        // Rank 0 fits; the followers join the agreement on it and the factorisation of K_N.
        agreed(Ok(()))?;
        tiles.clear_features();
        if let Some(n) = args.exact_n {
            exact_factor(&prepared, n, args, progress, &mut dist_log)?;
        }
        return Ok(());
    }
    let fitted_nested = nested_logdets(&factored.pivots_logabs, &factored.pivot_signs, granule)
        .and_then(|nested| match nested.signs.iter().position(|&s| s < 0.0) {
            Some(k) => Err(Error::Input(format!(
                "det K_{} is negative: the kernel is not positive definite",
                k + 1
            ))),
            None => Ok(nested),
        })
        .and_then(|nested| {
            let t_fit = Instant::now();
            progress.start("fit", 1);
            let est = estimate(&nested.points, &opts, target_n)?;
            progress.finish();
            Ok((nested, est, t_fit.elapsed().as_secs_f64()))
        });
    let (nested, est, fit_s) = agreed(fitted_nested)?;
    let fitted = &est.fit;

    let stats = tiles.stats();
    // K_N's features have their own budget: free the sample's before forming it.
    tiles.clear_features();
    let exact = match args.exact_n {
        Some(n) => Some(exact_logdet(
            &prepared,
            n,
            args,
            progress,
            &mut dist_log,
            |x| fitted.predict(x),
        )?),
        None => None,
    };
    let report = RunReport {
        estimate: EstimateJson::from_estimate(&est),
        fit: FitJson::from_estimate(&est),
        nested: nested.points.clone(),
        kernel: kernel_meta(&prepared, &tiles, ns),
        sample: SampleJson {
            n: ns,
            m: tiles.dim(),
            order: args.md.order.as_str().to_string(),
            seed: args.md.seed,
        },
        exact: exact.clone(),
        timings: TimingsJson {
            load: load_s,
            features: stats.feature_seconds,
            contractions: stats.contract_seconds,
            factor: (factored.info.seconds.total - stats.feature_seconds - stats.contract_seconds)
                .max(0.0),
            fit: fit_s,
            total: t0.elapsed().as_secs_f64(),
        },
        memory: MemoryJson {
            max_mem,
            memdet_peak_resident: factored.info.peak_resident_bytes,
            feature_budget: feature_mem,
            feature_bytes_per_example: stats.feature_bytes_per_example,
            process_peak_rss: process_peak_rss(),
        },
        memdet: factored.info.clone(),
    };
    // The result goes to stdout first, so a failing write at the end loses nothing.
    print_summary(&report, &prepared);
    for (label, r) in &dist_log {
        let slowest = |key: &str| {
            r[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_f64())
                .fold(0.0, f64::max)
        };
        println!(
            "  ranks      {label}: grid {} ({} ranks), block {}; formation {:.1} s, factorisation {:.1} s \
             ({:.1} GFLOP/s) on the slowest rank",
            r["grid"].as_str().unwrap_or("?"),
            r["ranks"],
            r["block_size"],
            slowest("formation_seconds"),
            slowest("factor_seconds"),
            r["factor_gflops"].as_f64().unwrap_or(f64::NAN)
        );
    }
    print!("{}", calibrated_and_warnings(&est));
    if let Some(path) = &args.plot {
        // The exact nested ℓ_k beyond the sample, when --exact-n computed them, ending at ℓ_N.
        let exact_points: Vec<(usize, f64)> = exact
            .iter()
            .flat_map(|e| e.nested.iter().copied().filter(|p| p.0 > ns))
            .collect();
        plot_fit(path, &nested.points, fitted, target_n, &exact_points)?;
    }
    if let Some(path) = &args.json {
        write_json(path, &with_distributed(&report, &dist_log)?)?;
    }
    Ok(())
}

/// Check the arguments, load data and model, and build the sample's tile source (no kernel work yet).
fn set_up(args: &RunArgs, progress: &dyn Progress, t0: Instant) -> Result<SetUp> {
    let ns = args.n_sample;
    check_outputs(&[
        ("--json", args.json.as_deref()),
        ("--plot", args.plot.as_deref()),
    ])?;
    if args.fit.burn_in >= ns {
        return Err(Error::Usage(format!(
            "--burn-in {} must be smaller than --n-sample {ns} (the fit uses k in [burn-in, n-sample])",
            args.fit.burn_in
        )));
    }
    if let Some(exact_n) = args.exact_n.filter(|&n| n <= ns) {
        return Err(Error::Usage(format!(
            "--exact-n {exact_n} must exceed --n-sample {ns}"
        )));
    }
    let opts = estimate_options(&args.fit, args.md.seed);
    check_window(ns, &opts.fit)?;
    let (feature_mem, memdet_mem) = memory_split(&args.mem)?;
    let max_mem = feature_mem + memdet_mem;
    check_scratch_dir(&args.mem)?;
    let prepared = prepare(&args.md, ns.max(args.exact_n.unwrap_or(0)), progress)?;
    if ns == 0 || ns > prepared.order.len() {
        return Err(Error::Usage(format!(
            "--n-sample {ns}: the {} {} split has {} examples (choose 1..={})",
            prepared.dataset.name(),
            prepared.dataset.split().as_str(),
            prepared.order.len(),
            prepared.order.len()
        )));
    }
    let precision = args.kernel.precision;
    let (feature_mem, memdet_mem) =
        budget_split(&args.mem, prepared.resident_bytes_in(ns, precision))?;
    if let Some(exact_n) = args.exact_n.filter(|&n| n > prepared.order.len()) {
        return Err(Error::Usage(format!(
            "--exact-n {exact_n}: the {} {} split has {} examples",
            prepared.dataset.name(),
            prepared.dataset.split().as_str(),
            prepared.order.len()
        )));
    }
    let target_n = args.target_n.unwrap_or(prepared.dataset.len());
    let load_s = t0.elapsed().as_secs_f64();
    let tiles = prepared.tiles(ns, &args.kernel, feature_mem as usize)?;
    crate::pipeline::budget::check_kernel_minimum(
        &tiles,
        crate::pipeline::budget::Beside::Memdet(None),
        &args.mem.max_mem,
        crate::pipeline::budget::FeatureShare::of(&args.mem.feature_mem),
        (feature_mem, memdet_mem),
        prepared.resident_bytes_in(ns, precision),
    )?;
    // `--exact-n N`'s kernel too, now, before the sample's work.
    if let Some(n) = args.exact_n {
        let outside = exact_outside(&prepared, n, args);
        crate::pipeline::budget::check_kernel_minimum(
            &tiles,
            crate::pipeline::budget::Beside::Memdet(Some(n * tiles.granule())),
            &args.mem.max_mem,
            crate::pipeline::budget::FeatureShare::of(&args.mem.feature_mem),
            budget_split(&args.mem, outside)?,
            outside,
        )?;
    }
    Ok(SetUp {
        opts,
        max_mem,
        feature_mem,
        memdet_mem,
        prepared,
        target_n,
        load_s,
        tiles,
    })
}

/// Factor the kernel of the sample with nested pivots (Cholesky, no pivoting): MEMDET, or under MPI the
/// distributed factorisation (whose report is logged under `label`; followers get an empty result).
fn factor(
    source: &NtkTiles,
    args: &RunArgs,
    max_mem: u64,
    checkpoint: Option<Checkpoint>,
    progress: &dyn Progress,
    (label, dist_log): (&'static str, &mut DistLog),
) -> Result<LogDet> {
    #[cfg(feature = "mpi")]
    if crate::pipeline::distributed::requested(&args.dist) {
        let Some((result, report)) =
            crate::pipeline::distributed::factor_for_run(source, &args.dist, max_mem)?
        else {
            return Ok(LogDet {
                logdet: f64::NAN,
                sign: 1.0,
                pivots_logabs: Vec::new(),
                pivot_signs: Vec::new(),
                info: Default::default(),
            });
        };
        dist_log.push((label, report));
        return Ok(result);
    }
    let _ = (label, dist_log);
    let opts = MemdetOptions {
        assume: Assume::Spd,
        num_blocks: args.mem.num_blocks,
        max_mem: Some(max_mem),
        scratch_dir: args.mem.scratch_dir.clone(),
        nested: true,
        checkpoint,
        ..MemdetOptions::default()
    };
    memdet_recorded(source, &opts, progress)
}

/// What lives outside the plan while K_N is factored: the data, the model, N inputs, and the sample's
/// inputs (its tile source stays alive for the report).
fn exact_outside(prepared: &Prepared, n: usize, args: &RunArgs) -> u64 {
    let precision = args.kernel.precision;
    prepared.resident_bytes_in(n, precision) + prepared.input_bytes(args.n_sample, precision)
}

/// `--exact-n N`'s kernel: form and factor K_N (tiles streamed into MEMDET under the memory limit, or
/// distributed under MPI); returns the factorisation, the tile source and the seconds taken.
fn exact_factor(
    prepared: &Prepared,
    n: usize,
    args: &RunArgs,
    progress: &dyn Progress,
    dist_log: &mut DistLog,
) -> Result<(LogDet, NtkTiles, f64)> {
    let t0 = Instant::now();
    let outside = exact_outside(prepared, n, args);
    let tiles = agreed(
        budget_split(&args.mem, outside).and_then(|(feature_mem, memdet_mem)| {
            let tiles = prepared.tiles(n, &args.kernel, feature_mem as usize)?;
            crate::pipeline::budget::check_kernel_minimum(
                &tiles,
                crate::pipeline::budget::Beside::Memdet(None),
                &args.mem.max_mem,
                crate::pipeline::budget::FeatureShare::of(&args.mem.feature_mem),
                (feature_mem, memdet_mem),
                outside,
            )?;
            Ok((tiles, memdet_mem))
        }),
    );
    let (tiles, memdet_mem) = tiles?;
    let checkpoint = checkpoint_for(
        &args.ckpt,
        Some("exact-n"),
        kernel_identity(prepared, &args.md, n, &args.kernel),
    );
    let result = factor(
        &tiles,
        args,
        memdet_mem,
        checkpoint,
        progress,
        ("exact", dist_log),
    )?;
    Ok((result, tiles, t0.elapsed().as_secs_f64()))
}

/// `--exact-n N`: form and factor K_N exactly and compare with the fit's prediction.
fn exact_logdet(
    prepared: &Prepared,
    n: usize,
    args: &RunArgs,
    progress: &dyn Progress,
    dist_log: &mut DistLog,
    predict: impl Fn(f64) -> f64,
) -> Result<ExactJson> {
    let (result, tiles, seconds) = exact_factor(prepared, n, args, progress, dist_log)?;
    let nested = nested_logdets(&result.pivots_logabs, &result.pivot_signs, tiles.granule())?;
    let stats = tiles.stats();
    let predicted = predict(n as f64);
    let err = (predicted - result.logdet).abs();
    Ok(ExactJson {
        n,
        logdet: result.logdet,
        sign: result.sign,
        predicted,
        relative_error: err / result.logdet.abs(),
        error_per_eigenvalue: err / tiles.dim() as f64,
        seconds,
        features_seconds: stats.feature_seconds,
        contractions_seconds: stats.contract_seconds,
        nested: nested.points,
    })
}

/// The report as JSON, with the distributed factorisations' `grid`, `ranks` and `distributed: {sample,
/// exact}` (per-rank formation and factorisation seconds, GFLOP/s, BLAS, features shared) when there were
/// any.
fn with_distributed(report: &RunReport, dist_log: &DistLog) -> Result<serde_json::Value> {
    let mut doc = serde_json::to_value(report)
        .map_err(|e| Error::Internal(format!("cannot serialise the run report: {e}")))?;
    if let Some((_, first)) = dist_log.first() {
        doc["grid"] = first["grid"].clone();
        doc["ranks"] = first["ranks"].clone();
        doc["distributed"] = dist_log
            .iter()
            .map(|(label, r)| (label.to_string(), r.clone()))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    Ok(doc)
}

/// The short terminal table.
fn print_summary(r: &RunReport, prepared: &Prepared) {
    let k = &r.kernel;
    let t = &r.timings;
    let (ns, ls) = r.nested.last().copied().unwrap_or((0, f64::NAN));
    println!("FLODANCE estimate of log det of the empirical NTK");
    println!(
        "  model      {} ({}), p = {}",
        k["model"].as_str().unwrap_or("?"),
        prepared.model.network.arch,
        k["p"]
    );
    println!(
        "  data       {} ({}), n = {} examples, d = {}",
        prepared.dataset.name(),
        prepared.dataset.split().as_str(),
        prepared.dataset.len(),
        k["d"]
    );
    println!(
        "  kernel     outputs {}, scale {}, precision {}",
        k["outputs"].as_str().unwrap_or("?"),
        k["scale"],
        k["precision"]
    );
    println!(
        "  sample     n_s = {ns}, m_s = {}, fit window k in [{}, {}], q = {}, alpha = {}",
        r.sample.m, r.fit.n0, r.fit.ns, r.fit.q, r.fit.alpha
    );
    println!("  l_{ns:<8} {ls:.10e} (exact, from the factorisation)");
    println!(
        "  l_{:<8} {:.10e}  sensitivity [{:.10e}, {:.10e}] ({} refits)",
        r.estimate.n, r.estimate.logdet, r.estimate.low, r.estimate.high, r.fit.ensemble
    );
    if let Some(e) = &r.exact {
        println!(
            "  exact l_{} = {:.10e}; the fit predicts {:.10e}: relative error {:.3e} ({:.3} %), {:.3e} per eigenvalue",
            e.n, e.logdet, e.predicted, e.relative_error, 100.0 * e.relative_error, e.error_per_eigenvalue
        );
    }
    println!(
        "  time       {:.1} s total: load {:.1} s, features {:.1} s, contractions {:.1} s, factor {:.1} s, fit {:.2} s",
        t.total, t.load, t.features, t.contractions, t.factor, t.fit
    );
    println!(
        "  memory     peak RSS {:.0} MiB (limit {:.0} MiB; MEMDET peak {:.0} MiB)",
        r.memory.process_peak_rss.unwrap_or(0) as f64 / 1048576.0,
        r.memory.max_mem as f64 / 1048576.0,
        r.memory.memdet_peak_resident as f64 / 1048576.0
    );
}
