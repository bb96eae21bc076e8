//! The `logdet` subcommand: exact log|det| of a matrix (`--matrix K.npy`) or of an NTK (`--model …`, wired
//! by the NTK path through [`factor_and_report`]) with MEMDET under a memory limit.

use crate::cli::LogdetArgs;
use crate::linalg::{
    memdet, parse_size, Checkpoint, LogDet, MemdetOptions, NpySource, Shift, TileSource, Triangle,
};
use crate::ntk::NtkTiles;
use crate::pipeline::ranks::{agreed, is_follower};
use crate::progress::Progress;
use crate::report::logdet::LogdetReport;
use crate::report::{check_outputs, write_json};
use crate::{Error, Result};

/// Execute `logdet`.
pub fn run(args: &LogdetArgs, progress: &dyn Progress) -> Result<()> {
    agreed(check(args))?;
    match (&args.matrix, &args.md.model) {
        (Some(path), _) => {
            let opened = NpySource::open(path, args.triangle.unwrap_or(Triangle::Full))
                .and_then(|source| Ok((source, matrix_identity(path, args)?)));
            let (source, identity) = agreed(opened)?;
            let report = factor_and_report(&source, None, args, None, identity, progress)?;
            write_report(args, &report)
        }
        (None, _) => factor_ntk(args, progress),
    }
}

/// Everything about `args` that can be checked before any work.
fn check(args: &LogdetArgs) -> Result<()> {
    check_outputs(&[("--json", args.json.as_deref())])?;
    if args.nested == Some(Some(0)) {
        return Err(Error::Usage(
            "--nested 0: D (rows per nested step) must be at least 1; give --nested alone for the granule"
                .into(),
        ));
    }
    memdet_options(args)?;
    crate::pipeline::inputs::check_scratch_dir(&args.mem)?;
    match (&args.matrix, &args.md.model) {
        (Some(_), Some(_)) => Err(Error::Usage(
            "give either --matrix or --model, not both".into(),
        )),
        (None, None) => Err(Error::Usage(
            "logdet needs --matrix K.npy (or --model … --data … --n N)".into(),
        )),
        _ => Ok(()),
    }
}

/// `logdet --model … --data … --n N`: factor the NTK of the first N examples, its tiles computed on demand
/// and streamed into MEMDET (the kernel is never stored). `--feature-mem` (default half of `--max-mem`) goes
/// to cached NTK features, the rest to MEMDET.
fn factor_ntk(args: &LogdetArgs, progress: &dyn Progress) -> Result<()> {
    let md = &args.md;
    let n = args.n.unwrap_or(0);
    let set_up = || -> Result<_> {
        if md.data.name.is_none() || args.n.is_none() {
            return Err(Error::Usage(
                "logdet --model needs --data NAME and --n N as well".into(),
            ));
        }
        if args.triangle.is_some() {
            return Err(Error::Usage(
                "--triangle is for --matrix; an NTK is formed symmetric".into(),
            ));
        }
        crate::pipeline::inputs::memory_split(&args.mem)?;
        let prepared = crate::pipeline::inputs::prepare(md, n, progress)?;
        let outside =
            prepared.resident_bytes_in(n.min(prepared.order.len()), args.kernel.precision);
        let (feature_mem, memdet_mem) = crate::pipeline::inputs::budget_split(&args.mem, outside)?;
        let tiles = prepared.tiles(n, &args.kernel, feature_mem as usize)?;
        crate::pipeline::budget::check_kernel_minimum(
            &tiles,
            crate::pipeline::budget::Beside::Memdet(None),
            &args.mem.max_mem,
            crate::pipeline::budget::FeatureShare::of(&args.mem.feature_mem),
            (feature_mem, memdet_mem),
            outside,
        )?;
        Ok((prepared, tiles, memdet_mem))
    };
    let (prepared, tiles, memdet_mem) = agreed(set_up())?;
    let mut memdet_args = args.clone();
    memdet_args.mem.max_mem = memdet_mem.to_string();
    let t0 = std::time::Instant::now();
    let meta = crate::pipeline::inputs::kernel_meta(&prepared, &tiles, n);
    let identity = crate::pipeline::inputs::kernel_identity(&prepared, md, n, &args.kernel);
    let mut report = factor_and_report(
        &tiles,
        Some(&tiles),
        &memdet_args,
        Some(meta),
        identity,
        progress,
    )?;
    if is_follower() {
        return Ok(()); // rank 0 alone reports
    }
    let stats = tiles.stats();
    // The tile-forming times are known only now.
    report["kernel_stats"] = serde_json::json!(stats);
    println!(
        "kernel: n = {n}, d = {}, p = {}, outputs {}; forming tiles took {:.2} s (features {:.2} s, contractions {:.2} s) of {:.2} s",
        tiles.num_logits(),
        tiles.num_params(),
        tiles.spec().outputs_name(),
        stats.feature_seconds + stats.contract_seconds,
        stats.feature_seconds,
        stats.contract_seconds,
        t0.elapsed().as_secs_f64()
    );
    write_report(args, &report)
}

/// Write `--json`, if asked for.
fn write_report(args: &LogdetArgs, report: &serde_json::Value) -> Result<()> {
    if is_follower() {
        return Ok(()); // rank 0 alone writes
    }
    match &args.json {
        Some(path) => write_json(path, report),
        None => Ok(()),
    }
}

/// The MEMDET options that `args` ask for.
pub fn memdet_options(args: &LogdetArgs) -> Result<MemdetOptions> {
    let max_mem = parse_size(&args.mem.max_mem)?;
    let scratch_cap = args.scratch_cap.as_deref().map(parse_size).transpose()?;
    let shift = if args.shift == 0.0 {
        Shift::None
    } else {
        Shift::Scalar(args.shift)
    };
    let assume = args.assume;
    // Nested log-dets need the unpivoted factorisation; otherwise `sym` pivots (Bunch–Kaufman).
    let nested = args.nested.is_some();
    Ok(MemdetOptions {
        assume,
        num_blocks: args.mem.num_blocks,
        max_mem: Some(max_mem),
        scratch_dir: args.mem.scratch_dir.clone(),
        scale: args.scale_by,
        shift,
        nested,
        pivoting: assume == crate::linalg::Assume::Sym && !nested,
        scratch_cap,
        interrupt: None,
        checkpoint: None,
    })
}

/// What a checkpoint of `--matrix` must match on resume: the file (absolute path, size, modification
/// time) and the triangle read.
fn matrix_identity(path: &std::path::Path, args: &LogdetArgs) -> Result<Vec<(String, String)>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot stat", path, e))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(vec![
        ("matrix".into(), absolute.display().to_string()),
        ("matrix_bytes".into(), meta.len().to_string()),
        ("matrix_modified_ns".into(), modified.to_string()),
        (
            "triangle".into(),
            format!("{:?}", args.triangle.unwrap_or(Triangle::Full)),
        ),
    ])
}

/// The checkpoint `ckpt` asks for (in `dir`, or `dir/sub` when one command factors several matrices).
pub fn checkpoint_for(
    ckpt: &crate::cli::CheckpointArgs,
    sub: Option<&str>,
    identity: Vec<(String, String)>,
) -> Option<Checkpoint> {
    ckpt.checkpoint.as_ref().map(|dir| Checkpoint {
        dir: sub.map_or_else(|| dir.clone(), |s| dir.join(s)),
        resume: ckpt.resume,
        identity,
    })
}

/// Run MEMDET, noting in the provenance when part of the result came from a checkpoint.
pub fn memdet_recorded(
    source: &dyn TileSource,
    opts: &MemdetOptions,
    progress: &dyn Progress,
) -> Result<LogDet> {
    let result = memdet(source, opts, progress)?;
    if result.info.resumed_columns > 0 {
        crate::report::provenance::record_resumed();
    }
    Ok(result)
}

/// Run MEMDET on `source` (`ntk` when it is an NTK) as `args` say, print log|det|, sign and a summary on
/// stdout, and return the `--json` document (with `kernel_meta`'s keys merged in at the top level) for the
/// caller to write. Under MPI, the distributed factorisation instead (rank 0 alone prints).
pub fn factor_and_report(
    source: &dyn TileSource,
    ntk: Option<&NtkTiles>,
    args: &LogdetArgs,
    kernel_meta: Option<serde_json::Value>,
    identity: Vec<(String, String)>,
    progress: &dyn Progress,
) -> Result<serde_json::Value> {
    #[cfg(feature = "mpi")]
    if crate::pipeline::distributed::requested(&args.dist) {
        return crate::pipeline::distributed::factor_and_report(source, ntk, args, kernel_meta);
    }
    #[cfg(not(feature = "mpi"))]
    let _ = ntk;
    let mut opts = memdet_options(args)?;
    opts.checkpoint = checkpoint_for(&args.ckpt, None, identity);
    let nested = args.nested.map(|d| d.unwrap_or(source.granule()));
    if let Some(d) = nested.filter(|&d| d == 0 || d > source.dim()) {
        return Err(Error::Usage(format!(
            "--nested {d}: D must be between 1 and the matrix order {}",
            source.dim()
        )));
    }
    let result =
        memdet_recorded(source, &opts, progress).map_err(|e| explain_zero_pivot(e, nested))?;
    for warning in &result.info.warnings {
        crate::progress::notice(&format!("warning: {warning}"));
    }
    let report = LogdetReport::new(
        &result,
        opts.assume.name(),
        args.scale_by,
        args.shift,
        nested,
    );
    print_result(&result, &report);
    report.to_json(kernel_meta)
}

/// A zero LDLᵀ pivot under `--nested`: say why the factorisation ran without pivoting.
fn explain_zero_pivot(err: Error, nested: Option<usize>) -> Error {
    match (&err, nested) {
        (Error::ZeroPivot { .. }, Some(_)) => Error::Input(format!(
            "{err}; --nested asks for the log-dets of the leading blocks, which must be factored in order, \
             without pivoting: a singular leading block ends them here"
        )),
        _ => err,
    }
}

/// The human-readable result on stdout.
fn print_result(result: &LogDet, report: &LogdetReport) {
    let i = &result.info;
    println!("log|det| = {:.17e}", result.logdet);
    println!("sign     = {}", if result.sign < 0.0 { "-1" } else { "+1" });
    println!(
        "m = {}, assume = {}, {} blocks of {} rows; {:.2} s ({:.1} GFLOP/s), source {:.2} s, factor {:.2} s, update {:.2} s, I/O wait {:.2} s; \
         tiles requested {}, blocks loaded/stored {}/{}, scratch {:.1} MiB, peak resident {:.1} MiB",
        i.m,
        report.assume,
        i.num_blocks,
        i.block_size,
        i.seconds.total,
        i.gflops,
        i.seconds.source,
        i.seconds.factor,
        i.seconds.update,
        i.seconds.io_wait,
        i.tiles_requested,
        i.blocks_loaded,
        i.blocks_stored,
        i.scratch_bytes as f64 / 1048576.0,
        i.peak_resident_bytes as f64 / 1048576.0
    );
    if let Some(nested) = &report.nested {
        println!("nested log-dets (granule {}):", nested.granule);
        println!("{:>8} {:>10} {:>26} {:>5}", "k", "rows", "logdet", "sign");
        for l in &nested.logdets {
            println!(
                "{:>8} {:>10} {:>26.17e} {:>5}",
                l.k,
                l.rows,
                l.logdet,
                if l.sign < 0.0 { "-1" } else { "+1" }
            );
        }
    }
}
