//! `logdet` under MPI (feature `mpi`): the distributed factorisation of `linalg::dist` in place of MEMDET,
//! with the same output on rank 0 alone (stdout and `--json`, plus the grid, the ranks and per-rank times).

use crate::cli::LogdetArgs;
use crate::linalg::dist::{distributed_cholesky, parse_grid, squarest_grid, world, DistOptions};
use crate::linalg::{parse_size, TileSource};
use crate::{Error, Result};
use mpi::topology::Communicator;

/// Default block-cyclic block size (rounded up to the source's granule).
pub const DEFAULT_BLOCK: usize = 256;

/// Whether this `logdet` runs distributed: `--grid` was given, or the job has more than one rank (Open MPI,
/// MPICH/Slurm environment variables), so MPI is not started for a plain run.
pub fn requested(args: &LogdetArgs) -> bool {
    let ranks = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .filter_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .max()
        .unwrap_or(1);
    args.grid.is_some() || ranks > 1
}

/// Factor `source` on the process grid; rank 0 prints the result and returns the JSON document (the other
/// ranks return null and write nothing).
pub fn factor_and_report(
    source: &dyn TileSource,
    args: &LogdetArgs,
    kernel_meta: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    if args.assume != crate::linalg::Assume::Spd {
        return Err(Error::Usage(
            "the distributed factorisation is a Cholesky (ScaLAPACK pdpotrf): use --assume spd"
                .into(),
        ));
    }
    let world = world()?;
    let grid = match &args.grid {
        Some(g) => parse_grid(g)?,
        None => squarest_grid(world.size() as usize),
    };
    let g = source.granule();
    let opts = DistOptions {
        grid,
        block_size: args.block_size.unwrap_or(DEFAULT_BLOCK.div_ceil(g) * g),
        max_mem: parse_size(&args.mem.max_mem)?,
        reserved: 0,
        scale: args.scale_by,
        shift: args.shift,
    };
    let nested = args.nested.map(|d| d.unwrap_or(g));
    let Some(result) = distributed_cholesky(source, &opts)? else {
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
