//! The `stats` subcommand: trace, Frobenius norm, effective rank and alignments of the NTK (SPEC §6),
//! exact in one streamed pass over the tiles (each upper-triangle tile formed once and dropped), or
//! matrix-free from NTK–vector products with the trace estimators (`--estimate`).

use crate::cli::{MemArgs, StatsArgs};
use crate::estimators::kernel_stats::{
    label_targets, probe_columns, KernelStatistics, TargetTerms,
};
use crate::estimators::one_sided::{one_sided, Side};
use crate::estimators::operator::LinearOp;
use crate::estimators::tile_moments::stream_moments;
use crate::estimators::trace::{hutchinson, hutchpp, kernel_alignment, Estimated, TraceMoments};
use crate::linalg::TileSource;
use crate::model::load::load_model;
use crate::ntk::{KernelSpec, NtkOperator, NtkTiles};
use crate::pipeline::budget;
use crate::pipeline::inputs::{
    budget_split, kernel_meta, memory_split, prepare, upper_tile_plan, Prepared,
};
pub use crate::pipeline::stats_options::ESTIMATORS;
use crate::pipeline::stats_options::{parse_methods, parse_probes};
use crate::progress::Progress;
use crate::report::stats::{table, AgainstStats, EstimateRow, ExactStats, StatsReport};
use crate::report::{check_outputs, write_json};
use crate::{Error, Result};
use faer::Mat;
use std::time::Instant;

/// Execute `stats`.
pub fn run(args: &StatsArgs, progress: &dyn Progress) -> Result<()> {
    // Every check that can be made before the work.
    check_outputs(&[("--json", args.json.as_deref())])?;
    let methods = parse_methods(args.estimate.as_deref())?;
    let probes = parse_probes(&args.probes)?;
    // Fewest probes giving a standard error: 2 iid samples (Hutchinson), 2 residual probes after a
    // one-probe sketch (Hutch++), 3 probes for the jackknife over probe pairs (one-sided tr K²).
    for method in &methods {
        let least = match *method {
            "hutchinson" => 2,
            "hutchpp" => 4,
            _ => 3,
        };
        if let Some(&s) = probes.iter().find(|&&s| s < least) {
            return Err(Error::Usage(format!(
                "--probes {s}: {method} needs at least {least} probes for a standard error"
            )));
        }
    }
    let spec = KernelSpec {
        outputs: args.kernel.outputs,
        scale: args.kernel.scale,
        precision: args.kernel.precision,
    };
    let mem = MemArgs {
        max_mem: args.max_mem.clone(),
        num_blocks: None,
        scratch_dir: None,
        feature_mem: args.feature_mem.clone(),
    };
    memory_split(&mem)?;
    let prepared = prepare(&args.md, args.n, progress)?;
    let inputs = prepared.inputs_in(args.n, args.kernel.precision)?;
    let against = match &args.against {
        Some(path) => Some(load_model(
            path,
            args.against_arch.as_deref(),
            args.md.width,
            Some(prepared.dataset.image_shape()),
            Some(prepared.dataset.num_classes()),
        )?),
        None => None,
    };
    let outside = budget::stats_outside(
        &prepared,
        args.n,
        &spec,
        against.as_ref().map(|a| a.network.num_params()),
    )?;
    let (feature_mem, rest_mem) = budget_split(&mem, outside)?;
    let labels: Vec<usize> = prepared.order[..args.n]
        .iter()
        .map(|&i| prepared.dataset.labels()[i] as usize)
        .collect();

    let kernels = against.as_ref().map_or(1, |_| 2);
    let tiles = prepared.tiles(args.n, &args.kernel, feature_mem as usize / kernels)?;
    // The operator(s) and the estimators' own buffers share what the features leave: one part per
    // operator and one for the estimators, each at least what an operator keeps to (an operator is cheap
    // to build: one forward of one example). Checked with the features' floor, before any work.
    let parts = 1 + kernels as u64;
    let share = rest_mem / parts;
    let mut estimators = 0;
    if !methods.is_empty() {
        for network in
            std::iter::once(&prepared.model.network).chain(against.iter().map(|a| &a.network))
        {
            let op = NtkOperator::new(network, inputs.clone(), spec, share as usize)?;
            estimators = estimators.max(parts * op.min_memory() as u64);
        }
    }
    budget::check_kernel_minimum(
        &tiles,
        budget::Beside::Stats {
            kernels: kernels as u64,
            estimators,
        },
        &args.max_mem,
        budget::FeatureShare::of(&args.feature_mem),
        (feature_mem, rest_mem),
        outside,
    )?;
    let m = tiles.dim();
    let rows = tiles.rows_per_example();
    let y = label_targets(&labels, tiles.num_logits(), rows);
    if tiles.spec().outputs == crate::ntk::Outputs::Full
        && prepared.dataset.num_classes() != tiles.num_logits()
    {
        return Err(Error::Usage(format!(
            "the network has {} logits but the dataset {} classes: the one-hot targets need one logit per class",
            tiles.num_logits(),
            prepared.dataset.num_classes()
        )));
    }
    let x = probe_columns(y.as_ref());

    let exact = if methods.is_empty() || args.exact {
        let second = match &against {
            Some(model) => {
                // The cache's 3/4 of this kernel's half, as `Prepared::tiles` gives the first, less a
                // working set larger than the other quarter.
                let half = feature_mem as usize / 2;
                let mut t = NtkTiles::new(&model.network, inputs.clone(), spec, half / 4 * 3)?;
                if t.working_bytes() > half / 4 {
                    t.limit_cache(half.saturating_sub(t.working_bytes()));
                }
                Some(t)
            }
            None => None,
        };
        Some(exact_pass(
            &tiles,
            second.as_ref(),
            args,
            x.as_ref(),
            y.as_ref(),
            rest_mem,
            progress,
        )?)
    } else {
        None
    };
    tiles.clear_features();
    drop(tiles);

    let mut report = StatsReport {
        kernel: kernel_meta_for(&prepared, args, spec)?,
        n: args.n,
        m,
        target_terms: None,
        target_products: 0,
        target_seconds: 0.0,
        exact,
        estimates: Vec::new(),
    };
    if !methods.is_empty() {
        let op = NtkOperator::new(
            &prepared.model.network,
            inputs.clone(),
            spec,
            share as usize,
        )?;
        let op2 = match &against {
            Some(model) => Some(NtkOperator::new(
                &model.network,
                inputs.clone(),
                spec,
                share as usize,
            )?),
            None => None,
        };
        if let Some(op2) = &op2 {
            if op2.order() != m {
                return Err(Error::Usage(format!(
                    "--against: its kernel has order {} but the first model's has {m}; both models need the same number of logits",
                    op2.order()
                )));
            }
        }
        // The alignment numerators: K [1, Y], exact.
        let t = Instant::now();
        progress.start("NTK products K [1, Y]", 1);
        let mut kx = Mat::<f64>::zeros(m, x.ncols());
        op.apply(x.as_ref(), kx.as_mut())?;
        progress.finish();
        let terms = TargetTerms::new(kx.as_ref(), y.as_ref());
        report.target_terms = Some(terms);
        report.target_products = x.ncols();
        report.target_seconds = t.elapsed().as_secs_f64();
        for &s in &probes {
            for (k, method) in methods.iter().enumerate() {
                let mut row = estimate(
                    &op,
                    method,
                    s,
                    args.md.seed,
                    share as usize,
                    &terms,
                    progress,
                )?;
                if k == 0 {
                    if let (Some(op2), Some(path)) = (&op2, &args.against) {
                        row.against =
                            Some(against_estimate(&op, op2, s, args.md.seed, path, progress)?);
                    }
                }
                if let Some(e) = &report.exact {
                    row.speedup_vs_exact = Some(e.seconds / row.seconds);
                    row.relative_error = Some(relative_errors(&row.statistics, &e.statistics));
                }
                report.estimates.push(row);
            }
        }
    }
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    print!("{}", table(&report));
    Ok(())
}

fn kernel_meta_for(
    prepared: &Prepared,
    args: &StatsArgs,
    spec: KernelSpec,
) -> Result<serde_json::Value> {
    // Metadata from a one-example tile source (cheap; the real one is gone by now).
    let tiles = NtkTiles::new(&prepared.model.network, prepared.inputs(1)?, spec, 1)?;
    let mut meta = kernel_meta(prepared, &tiles, args.n);
    meta["m"] = serde_json::json!(args.n * tiles.rows_per_example());
    meta["against"] = serde_json::json!(args.against);
    if let Some(obj) = meta.as_object_mut() {
        obj.remove("kernel_stats");
    }
    Ok(meta)
}

/// The exact statistics in one pass over the upper-triangle tiles, with tiles of at most a quarter of
/// the non-feature memory each (two kernels: each gets half of that).
fn exact_pass(
    tiles: &NtkTiles,
    second: Option<&NtkTiles>,
    args: &StatsArgs,
    x: faer::MatRef<'_, f64>,
    y: faer::MatRef<'_, f64>,
    rest_mem: u64,
    progress: &dyn Progress,
) -> Result<ExactStats> {
    let t0 = Instant::now();
    let g = tiles.granule();
    let held = second.map_or(tiles.held_examples(), |b| {
        tiles.held_examples().min(b.held_examples())
    });
    let kernels = if second.is_some() { 2 } else { 1 };
    let m = tiles.dim();
    // A tile is at most piece × panel values (piece × piece when every example's features stay cached);
    // keep it (and its product scratch) within a quarter of the memory left.
    let budget_values = (rest_mem as usize / 4 / 8 / kernels).max(g * g);
    let piece = if held * g >= m {
        (budget_values as f64).sqrt() as usize
    } else {
        budget_values / (held * g).max(g)
    }
    .clamp(g, 512);
    let plan = upper_tile_plan(tiles, held, piece);
    let moments = stream_moments(
        tiles,
        second.map(|b| b as &dyn TileSource),
        x,
        &plan,
        progress,
    )?;
    let terms = TargetTerms::new(moments.kx.as_ref(), y);
    let statistics = KernelStatistics::new(
        Estimated::exact(moments.trace),
        Estimated::exact(moments.frob_sq),
        &terms,
    );
    let per_example_trace: Vec<f64> = moments.diag.chunks(g).map(|c| c.iter().sum()).collect();
    let against = match (&moments.cross, &args.against) {
        (Some(c), Some(path)) => Some(AgainstStats {
            model: path.clone(),
            alignment: Estimated::exact(c.inner / (moments.frob_sq.sqrt() * c.frob_sq.sqrt())),
            inner: Estimated::exact(c.inner),
            trace_other: Estimated::exact(c.trace),
            frobenius_other: Estimated::exact(c.frob_sq.sqrt()),
        }),
        _ => None,
    };
    Ok(ExactStats {
        statistics,
        frobenius_sq: moments.frob_sq,
        per_example_trace,
        against,
        tiles: moments.tiles,
        seconds: t0.elapsed().as_secs_f64(),
        kernel_stats: serde_json::json!(tiles.stats()),
    })
}

/// One estimator at one probe count.
fn estimate(
    op: &NtkOperator,
    method: &str,
    probes: usize,
    seed: u64,
    memory: usize,
    terms: &TargetTerms,
    progress: &dyn Progress,
) -> Result<EstimateRow> {
    let t = Instant::now();
    progress.start(&format!("{method}, {probes} probes"), 1);
    let moments: TraceMoments = match method {
        "hutchinson" => hutchinson(op, probes, seed)?,
        "hutchpp" => hutchpp(op, probes, seed)?,
        "one-sided-reverse" => one_sided(op, Side::Reverse, probes, seed, memory)?,
        "one-sided-forward" => one_sided(op, Side::Forward, probes, seed, memory)?,
        other => return Err(Error::Internal(format!("unknown estimator {other}"))),
    };
    progress.finish();
    Ok(EstimateRow {
        method: method.to_string(),
        probes,
        seed,
        statistics: KernelStatistics::new(moments.trace, moments.trace_sq, terms),
        frobenius_sq: moments.trace_sq,
        products: moments.products,
        reverse_products: moments.reverse_products,
        forward_products: moments.forward_products,
        seconds: t.elapsed().as_secs_f64(),
        speedup_vs_exact: None,
        relative_error: None,
        against: None,
    })
}

/// A(K, K2) by Hutchinson on both kernels with the same probes ([`kernel_alignment`]).
fn against_estimate(
    op: &NtkOperator,
    op2: &NtkOperator,
    probes: usize,
    seed: u64,
    path: &str,
    progress: &dyn Progress,
) -> Result<AgainstStats> {
    progress.start(&format!("kernel-kernel alignment, {probes} probes"), 1);
    let a = kernel_alignment(op, op2, probes, seed)?;
    progress.finish();
    Ok(AgainstStats {
        model: path.to_string(),
        alignment: a.alignment,
        inner: a.inner,
        trace_other: a.trace_other,
        frobenius_other: a.frobenius_other,
    })
}

/// |estimate − exact| / |exact| for each statistic.
fn relative_errors(est: &KernelStatistics, exact: &KernelStatistics) -> serde_json::Value {
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    serde_json::json!({
        "trace": rel(est.trace.value, exact.trace.value),
        "frobenius": rel(est.frobenius.value, exact.frobenius.value),
        "effective_rank": rel(est.effective_rank.value, exact.effective_rank.value),
        "alignment": rel(est.alignment.value, exact.alignment.value),
        "centred_alignment": match (&est.centred_alignment, &exact.centred_alignment) {
            (Some(a), Some(b)) => serde_json::json!(rel(a.value, b.value)),
            _ => serde_json::Value::Null,
        },
    })
}
