//! `logdet` and `run` under MPI (feature `mpi`): the distributed factorisation of `linalg::dist` in place of
//! MEMDET, with the same output on rank 0 alone (stdout, `--json`, `--plot`), plus the grid, the ranks and
//! per-rank times. An NTK's features are computed once over the ranks and shared ([`share`]).
//!
//! Every rank runs the same command. Checks that hold or fail alike on every rank run everywhere, and the
//! steps where one rank can fail alone (reading its files, forming its tiles, rank 0's fit) are agreed on
//! with [`crate::pipeline::ranks::agreed`], so the job fails as one, with one message.

pub mod refuse;
pub mod share;

use crate::cli::{Cli, Command, DistArgs, LogdetArgs};
use crate::linalg::dist::{
    check_plan, distributed_cholesky, parse_grid, squarest_grid, world, DistLogDet, DistOptions,
};
use crate::linalg::{parse_size, LogDet, MemdetInfo, PhaseSeconds, TileSource};
use crate::ntk::NtkTiles;
use crate::Result;
use mpi::topology::Communicator;

/// Default block-cyclic block size (rounded up to the source's granule).
pub const DEFAULT_BLOCK: usize = 256;

/// The number of ranks of the job, from the launcher's environment (Open MPI, MPICH/Slurm), without
/// starting MPI; 1 outside mpirun/srun.
pub fn job_size() -> usize {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .filter_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .max()
        .unwrap_or(1)
}

/// Whether a `logdet` or `run` with these options runs distributed: `--grid` was given, or the job has
/// more than one rank, so MPI is not started for a plain run.
pub fn requested(dist: &DistArgs) -> bool {
    dist.grid.is_some() || job_size() > 1
}

/// Start a distributed command, before any work: when the job has more than one rank (or `--grid` is
/// given), set one compute thread per core this rank has (`--threads`, else the node's cores over its
/// ranks: rayon, candle and OpenBLAS alike, so that ranks do not oversubscribe the cores), start MPI and
/// refuse, once for the job, what the distributed path does not do ([`refuse::check`]). Returns the
/// thread count for the global pool, if one is to be set.
pub fn begin(cli: &Cli) -> Result<Option<usize>> {
    let dist = match &cli.command {
        Command::Logdet(args) => Some(&args.dist),
        Command::Run(args) => Some(&args.dist),
        _ => None,
    };
    if !(job_size() > 1 || dist.is_some_and(requested)) {
        return Ok(cli.threads);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let local = crate::linalg::dist::local_ranks().unwrap_or(1);
    let threads = cli.threads.unwrap_or((cores / local).max(1));
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Before MPI or any pool starts a thread: candle sizes its own pool from this on first use.
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    }
    let world = world()?;
    crate::linalg::dist::set_blas_threads(threads);
    crate::linalg::dist::agree(&world, refuse::check(&cli.command))?;
    Ok(Some(threads))
}

/// The default block size: [`DEFAULT_BLOCK`], or less where that would leave fewer than 16 block rows per
/// grid row or column (a lower triangle dealt out in few blocks leaves the ranks unevenly loaded, and
/// forming an NTK's tiles costs far more than factoring them), rounded up to the granule.
pub fn default_block(m: usize, granule: usize, (p, q): (usize, usize)) -> usize {
    let g = granule.max(1);
    DEFAULT_BLOCK
        .min(m.div_ceil(16 * p.max(q)).max(1))
        .div_ceil(g)
        * g
}

/// The default block size for an NTK: one feature chunk of examples, so that every tile is one chunk pair,
/// the granularity single-process MEMDET contracts at (measured here on resnet9: half-chunk tiles made
/// the contractions 3.5 times slower per pair). Only where that leaves fewer than 2 blocks per grid row
/// or column is it the chunk's 1/k.
pub fn ntk_block(tiles: &NtkTiles, (p, q): (usize, usize)) -> usize {
    let (g, chunk) = (tiles.granule(), tiles.chunk_examples().max(1));
    let want = 2 * p.max(q);
    let k = (1..=chunk)
        .find(|k| tiles.num_examples().div_ceil(chunk.div_ceil(*k)) >= want)
        .unwrap_or(chunk);
    chunk.div_ceil(k) * g
}

/// The distributed options for `source` (`ntk` when it is an NTK) as `dist` asks (default grid: the
/// squarest for the job; default block: [`ntk_block`] for an NTK, else [`default_block`]).
fn options(
    source: &dyn TileSource,
    ntk: Option<&NtkTiles>,
    dist: &DistArgs,
    max_mem: u64,
    (scale, shift): (f64, f64),
) -> Result<DistOptions> {
    let world = world()?;
    let grid = match &dist.grid {
        Some(g) => parse_grid(g)?,
        None => squarest_grid(world.size() as usize),
    };
    Ok(DistOptions {
        grid,
        block_size: dist.block_size.unwrap_or_else(|| match ntk {
            Some(tiles) => ntk_block(tiles, grid),
            None => default_block(source.dim(), source.granule(), grid),
        }),
        max_mem,
        reserved: 0,
        scale,
        shift,
        prior_formation_seconds: 0.0,
    })
}

/// Factor `source` on the grid; with `ntk`, the NTK's features are first computed once over the ranks and
/// shared (their time counts as formation). Rank 0 gets the result and, for an NTK, what the sharing did.
fn factor(
    source: &dyn TileSource,
    ntk: Option<&NtkTiles>,
    mut opts: DistOptions,
) -> Result<Option<(DistLogDet, Option<share::ShareInfo>)>> {
    check_plan(source.dim(), source.granule(), &opts)?;
    let shared = match ntk {
        Some(tiles) => Some(share::share_features(
            &world()?,
            tiles,
            opts.block_size,
            opts.grid,
        )?),
        None => None,
    };
    opts.prior_formation_seconds = shared.as_ref().map_or(0.0, |s| s.seconds);
    Ok(distributed_cholesky(source, &opts)?.map(|r| (r, shared)))
}

/// `run`'s factorisation of an NTK (the sample, or K_N for `--exact-n`) on the grid, within `max_mem`
/// bytes per rank. Rank 0 gets the result as MEMDET's [`LogDet`] (Cholesky: every pivot sign +1; the
/// info's block size is the block-cyclic one, its seconds rank 0's) and the distributed report for the
/// JSON; the other ranks get `None`.
pub fn factor_for_run(
    tiles: &NtkTiles,
    dist: &DistArgs,
    max_mem: u64,
) -> Result<Option<(LogDet, serde_json::Value)>> {
    let opts = options(tiles, Some(tiles), dist, max_mem, (1.0, 0.0))?;
    let Some((result, shared)) = factor(tiles, Some(tiles), opts)? else {
        return Ok(None);
    };
    let (formation, factorisation) = (result.formation_seconds[0], result.factor_seconds[0]);
    let info = MemdetInfo {
        m: result.m,
        num_blocks: result.m.div_ceil(result.block_size),
        block_size: result.block_size,
        seconds: PhaseSeconds {
            source: formation,
            factor: factorisation,
            total: formation + factorisation,
            ..PhaseSeconds::default()
        },
        gflops: result.factor_gflops,
        peak_resident_bytes: result.local_bytes[0],
        planned_resident_bytes: result.local_bytes[0],
        ..MemdetInfo::default()
    };
    let mut report = serde_json::json!(result);
    report["features_shared"] = serde_json::json!(shared);
    let logdet = LogDet {
        logdet: result.logdet,
        sign: 1.0,
        pivot_signs: vec![1.0; result.pivots_logabs.len()],
        pivots_logabs: result.pivots_logabs,
        info,
    };
    Ok(Some((logdet, report)))
}

/// Factor `source` (with `ntk` when it is an NTK) on the process grid for `logdet`; rank 0 prints the
/// result and returns the JSON document (the other ranks return null and write nothing).
pub fn factor_and_report(
    source: &dyn TileSource,
    ntk: Option<&NtkTiles>,
    args: &LogdetArgs,
    kernel_meta: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let opts = options(
        source,
        ntk,
        &args.dist,
        parse_size(&args.mem.max_mem)?,
        (args.scale_by, args.shift),
    )?;
    let g = source.granule();
    let nested = args.nested.map(|d| d.unwrap_or(g));
    let Some((result, shared)) = factor(source, ntk, opts)? else {
        return Ok(serde_json::Value::Null);
    };
    let nested_json = nested.map(|d| {
        let mut sum = crate::linalg::memdet::NeumaierSum::default();
        let logdets: Vec<serde_json::Value> = result
            .pivots_logabs
            .iter()
            .enumerate()
            .filter_map(|(row, &l)| {
                sum.add(l);
                ((row + 1) % d == 0).then(|| {
                    serde_json::json!({"k": (row + 1) / d, "rows": row + 1, "logdet": sum.value(), "sign": 1.0})
                })
            })
            .collect();
        serde_json::json!({"granule": d, "logdets": logdets})
    });
    println!("log|det| = {:.17e}", result.logdet);
    println!("sign     = +1");
    print_distributed(&result);
    if let Some(n) = &nested_json {
        for l in n["logdets"].as_array().into_iter().flatten() {
            println!(
                "{:>8} {:>10} {:>26.17e} {:>5}",
                l["k"],
                l["rows"],
                l["logdet"].as_f64().unwrap_or(f64::NAN),
                "+1"
            );
        }
    }
    let mut doc = serde_json::json!({
        "logdet": result.logdet,
        "sign": 1.0,
        "m": result.m,
        "assume": "spd",
        "num_blocks": result.m.div_ceil(result.block_size),
        "block_size": result.block_size,
        "scale_by": args.scale_by,
        "shift": args.shift,
        "grid": result.grid,
        "ranks": result.ranks,
        "info": result,
    });
    if let Some(shared) = shared {
        doc["info"]["features_shared"] = serde_json::json!(shared);
    }
    if let Some(n) = nested_json {
        doc["nested"] = n;
    }
    if let (Some(serde_json::Value::Object(extra)), serde_json::Value::Object(obj)) =
        (kernel_meta, &mut doc)
    {
        for (k, v) in extra {
            obj.entry(k).or_insert(v);
        }
    }
    Ok(doc)
}

/// One line on the distributed factorisation: grid, block, slowest rank's times, GFLOP/s, BLAS.
pub fn print_distributed(result: &DistLogDet) {
    println!(
        "m = {}, distributed Cholesky (ScaLAPACK pdpotrf) on grid {} ({} ranks), block {}; formation {:.2} s, \
         factorisation {:.2} s ({:.1} GFLOP/s) on the slowest rank; BLAS {}",
        result.m,
        result.grid,
        result.ranks,
        result.block_size,
        result.formation_seconds.iter().copied().fold(0.0, f64::max),
        result.factor_seconds.iter().copied().fold(0.0, f64::max),
        result.factor_gflops,
        result.blas
    );
}
