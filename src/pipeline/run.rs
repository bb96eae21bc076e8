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

/// Execute `run`.
pub fn run(args: &RunArgs, progress: &dyn Progress) -> Result<()> {
    let t0 = Instant::now();
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
        None,
        &args.mem.max_mem,
        crate::pipeline::budget::FeatureShare::of(&args.mem.feature_mem),
        (feature_mem, memdet_mem),
        prepared.resident_bytes_in(ns, precision),
        true,
    )?;
    // `--exact-n N`'s kernel too, now, before the sample's work.
    if let Some(n) = args.exact_n {
        let outside = exact_outside(&prepared, n, args);
        crate::pipeline::budget::check_kernel_minimum(
            &tiles,
            Some(n * tiles.granule()),
            &args.mem.max_mem,
            crate::pipeline::budget::FeatureShare::of(&args.mem.feature_mem),
            budget_split(&args.mem, outside)?,
            outside,
            true,
        )?;
    }
    let granule = tiles.granule();
    let target_m = target_n * granule;
    if target_m > tiles.num_params() {
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
    let factored = factor(&tiles, args, memdet_mem, checkpoint, progress)?;
    let nested = nested_logdets(&factored.pivots_logabs, &factored.pivot_signs, granule)?;
    if let Some(k) = nested.signs.iter().position(|&s| s < 0.0) {
        return Err(Error::Input(format!(
            "det K_{} is negative: the kernel is not positive definite",
            k + 1
        )));
    }

    let t_fit = Instant::now();
    progress.start("fit", 1);
    let est = estimate(&nested.points, &opts, target_n)?;
    progress.finish();
    let fitted = &est.fit;
    let fit_s = t_fit.elapsed().as_secs_f64();

    let stats = tiles.stats();
    // K_N's features have their own budget: free the sample's before forming it.
    tiles.clear_features();
    let exact = match args.exact_n {
        Some(n) => Some(exact_logdet(&prepared, n, args, progress, |x| {
            fitted.predict(x)
        })?),
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
        write_json(path, &report)?;
    }
    Ok(())
}

/// Factor the kernel of the sample with nested pivots (Cholesky, no pivoting).
fn factor(
    source: &dyn TileSource,
    args: &RunArgs,
    max_mem: u64,
    checkpoint: Option<Checkpoint>,
    progress: &dyn Progress,
) -> Result<LogDet> {
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

/// `--exact-n N`: form and factor K_N exactly (tiles streamed into MEMDET under the memory limit) and compare.
fn exact_logdet(
    prepared: &Prepared,
    n: usize,
    args: &RunArgs,
    progress: &dyn Progress,
    predict: impl Fn(f64) -> f64,
) -> Result<ExactJson> {
    let t0 = Instant::now();
    let outside = exact_outside(prepared, n, args);
    let (feature_mem, memdet_mem) = budget_split(&args.mem, outside)?;
    let tiles: NtkTiles = prepared.tiles(n, &args.kernel, feature_mem as usize)?;
    crate::pipeline::budget::check_kernel_minimum(
        &tiles,
        None,
        &args.mem.max_mem,
        crate::pipeline::budget::FeatureShare::of(&args.mem.feature_mem),
        (feature_mem, memdet_mem),
        outside,
        true,
    )?;
    let checkpoint = checkpoint_for(
        &args.ckpt,
        Some("exact-n"),
        kernel_identity(prepared, &args.md, n, &args.kernel),
    );
    let result = factor(&tiles, args, memdet_mem, checkpoint, progress)?;
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
        seconds: t0.elapsed().as_secs_f64(),
        features_seconds: stats.feature_seconds,
        contractions_seconds: stats.contract_seconds,
        nested: nested.points,
    })
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
