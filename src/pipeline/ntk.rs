//! The `ntk` subcommand: the dense NTK of the first n examples written to `.npy` (f64, C order,
//! example-major rows `example·d + class`, the scale applied), plus optional JSON metadata.

use crate::cli::NtkArgs;
use crate::linalg::npy_write::write_npy_f64;
use crate::pipeline::inputs::{dense_kernel, kernel_meta, prepare};
use crate::progress::Progress;
use crate::report::{check_outputs, write_json};
use crate::{Error, Result};
use std::time::Instant;

/// Largest kernel order `ntk` will hold in memory (8·m² bytes; 16384 → 2 GiB).
pub const MAX_DENSE_ORDER: usize = 16384;

/// Execute `ntk`.
pub fn run(args: &NtkArgs, progress: &dyn Progress) -> Result<()> {
    let t0 = Instant::now();
    check_outputs(&[
        ("--out", Some(args.out.as_path())),
        ("--json", args.json.as_deref()),
    ])?;
    let prepared = prepare(&args.md, args.n, progress)?;
    let max_mem = crate::linalg::parse_size(&args.mem.max_mem)?;
    let spec = crate::ntk::KernelSpec {
        outputs: args.kernel.outputs,
        scale: args.kernel.scale,
        precision: args.kernel.precision,
    };
    let rows = spec.rows_per_example(prepared.model.network.num_outputs()?);
    let m = args.n * rows;
    if args.n == 0 || args.n > prepared.order.len() {
        // Out of range: the same message as every NTK subcommand.
        prepared.inputs(args.n)?;
    }
    if m > MAX_DENSE_ORDER {
        return Err(Error::Usage(format!(
            "the kernel would be {m}x{m} ({:.1} GiB); `ntk --out` writes dense kernels up to order {MAX_DENSE_ORDER}. \
             Use `logdet --model …` to factor larger kernels without storing them",
            (m * m * 8) as f64 / (1u64 << 30) as f64
        )));
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    let dense = 8 * (m as u64) * (m as u64);
    // Outside the kernel and the features: data, model, inputs, binary (see `Prepared::resident_bytes`).
    let outside = dense + prepared.resident_bytes_in(args.n, args.kernel.precision);
    if outside >= max_mem {
        return Err(Error::Budget(format!(
            "the {m}x{m} kernel needs {:.1} MiB in memory and the data, model, inputs and binary {:.1} MiB, but \
             --max-mem is {:.1} MiB; raise --max-mem or lower --n",
            mib(dense),
            mib(outside - dense),
            mib(max_mem)
        )));
    }
    let features = max_mem - outside;
    let tiles = prepared.tiles(args.n, &args.kernel, features as usize)?;
    crate::pipeline::budget::check_kernel_minimum(
        &tiles,
        crate::pipeline::budget::Beside::Nothing,
        &args.mem.max_mem,
        crate::pipeline::budget::FeatureShare::All,
        (features, 0),
        outside,
    )?;
    let k = dense_kernel(&tiles, progress)?;
    write_npy_f64(&args.out, k.as_ref())?;
    let wall = t0.elapsed().as_secs_f64();
    let mut meta = kernel_meta(&prepared, &tiles, args.n);
    meta["wall_s"] = serde_json::json!(wall);
    meta["out"] = serde_json::json!(args.out.display().to_string());
    if let Some(path) = &args.json {
        write_json(path, &meta)?;
    }
    let stats = tiles.stats();
    println!(
        "wrote {} ({m}x{m} f64, n = {}, d = {}, p = {}, outputs {}, scale {:?}); {:.2} s (features {:.2} s, contractions {:.2} s)",
        args.out.display(),
        args.n,
        tiles.num_logits(),
        tiles.num_params(),
        tiles.spec().outputs_name(),
        tiles.spec().scale,
        wall,
        stats.feature_seconds,
        stats.contract_seconds
    );
    Ok(())
}
