//! Shared set-up of the NTK subcommands: load the dataset and the model, order the sample, and build the
//! kernel's tile source for the first n examples.

use crate::cli::{DataArgs, KernelArgs, MemArgs, ModelDataArgs};
use crate::data::{self, DataOptions, Dataset, Split};
use crate::model::load::{load_model, LoadedModel};
use crate::ntk::{KernelSpec, NtkTiles};
use crate::{Error, Result};
use candle_core::Tensor;

/// A loaded model and dataset with the sample order.
pub struct Prepared {
    /// The model.
    pub model: LoadedModel,
    /// The dataset split.
    pub dataset: Dataset,
    /// Example indices in sample order (dataset order, or a seeded permutation).
    pub order: Vec<usize>,
    /// sha256 of the model file.
    pub model_sha256: String,
    /// sha256 of the dataset split's content (see `report::provenance`).
    pub data_sha256: String,
}

/// Load the data and model that `md` names (a download, if asked for, reports through `progress`). Of the
/// images, only those of the first `examples` examples of the sample order are kept in memory (all when
/// `examples` is at least the split's size): a run on n examples holds n images, not the whole split.
pub fn prepare(
    md: &ModelDataArgs,
    examples: usize,
    progress: &dyn crate::progress::Progress,
) -> Result<Prepared> {
    let mut order = Vec::new();
    let mut keep = |len: usize| -> Result<Vec<usize>> {
        order = data::sample_order(len, md.order.as_str(), md.seed)?;
        Ok(order[..examples.min(len)].to_vec())
    };
    let dataset = load_data_with(&md.data, md.split, progress, Some(&mut keep))?;
    let model = load_model(
        md.model()?,
        md.arch.as_deref(),
        md.width,
        Some(dataset.image_shape()),
        Some(dataset.num_classes()),
    )?;
    let model_sha256 = crate::report::provenance::record_model(&model.source)?;
    let data_sha256 = crate::report::provenance::record_dataset(&dataset);
    Ok(Prepared {
        model,
        dataset,
        order,
        model_sha256,
        data_sha256,
    })
}

/// Load the `split` of the dataset that `data` names (downloading it if asked and needed).
pub fn load_data(
    data: &DataArgs,
    split: Split,
    progress: &dyn crate::progress::Progress,
) -> Result<Dataset> {
    load_data_with(data, split, progress, None)
}

/// [`load_data`], keeping only the pixels of the examples `keep` chooses when given (`data::load_kept`).
pub fn load_data_with(
    data: &DataArgs,
    split: Split,
    progress: &dyn crate::progress::Progress,
    keep: Option<data::Keep>,
) -> Result<Dataset> {
    if let Some(dir) = data.data_dir.as_deref().filter(|d| !d.is_dir()) {
        return Err(Error::Usage(format!(
            "--data-dir {}: no such directory (it is searched first for --data {}); fix the path or drop \
             the option",
            dir.display(),
            data.name()?
        )));
    }
    let opts = DataOptions {
        split,
        data_dir: data.data_dir.clone(),
        download: data.download,
    };
    let locations = data::Locations::from_env();
    match keep {
        Some(keep) => data::load_kept(data.name()?, &opts, &locations, progress, keep),
        None => data::load_with(data.name()?, &opts, &locations, progress),
    }
}

impl Prepared {
    /// The test-time transformed inputs of the first `n` examples of the sample, (n, C, H, W) f32.
    pub fn inputs(&self, n: usize) -> Result<Tensor> {
        self.check_n(n)?;
        self.dataset
            .images(&self.order[..n], self.model.network.input_shape)
    }

    /// `n` must be 1..=the number of examples in the sample.
    fn check_n(&self, n: usize) -> Result<()> {
        if n == 0 || n > self.order.len() {
            return Err(Error::Usage(format!(
                "--n {n}: the {} {} split has {} examples (choose 1..={})",
                self.dataset.name(),
                self.dataset.split().as_str(),
                self.order.len(),
                self.order.len()
            )));
        }
        Ok(())
    }

    /// [`Prepared::inputs`] as f64, normalised in f64 and never rounded to f32 (for f64 kernels).
    pub fn inputs_f64(&self, n: usize) -> Result<Tensor> {
        self.check_n(n)?;
        self.dataset
            .images_f64(&self.order[..n], self.model.network.input_shape)
    }

    /// The inputs in the kernel's precision: f64 end to end for f64 kernels, f32 for f32 ones.
    pub fn inputs_in(&self, n: usize, precision: crate::ntk::Precision) -> Result<Tensor> {
        match precision {
            crate::ntk::Precision::F64 => self.inputs_f64(n),
            crate::ntk::Precision::F32 | crate::ntk::Precision::F32F64Acc => self.inputs(n),
        }
    }

    /// The NTK of the first `n` examples as a tile source within `feature_budget` bytes: 3/4 for cached
    /// features, the rest for the forward/backward working set (at most a third of the cache's share).
    /// In f64 precision the inputs are f64 end to end (normalised in f64 with the exact constants); in f32
    /// they are f32. Warns on stderr when m = n·d exceeds p (the kernel is then singular, SPEC §5).
    pub fn tiles(&self, n: usize, kernel: &KernelArgs, feature_budget: usize) -> Result<NtkTiles> {
        let spec = KernelSpec {
            outputs: kernel.outputs,
            scale: kernel.scale,
            precision: kernel.precision,
        };
        self.tiles_for(n, spec, feature_budget)
    }

    /// [`Prepared::tiles`] for a kernel spec (the same 3/4 split of `feature_budget`).
    pub fn tiles_for(&self, n: usize, spec: KernelSpec, feature_budget: usize) -> Result<NtkTiles> {
        let cache = feature_budget - feature_budget / 4;
        let inputs = self.inputs_in(n, spec.precision)?;
        let mut tiles = NtkTiles::new(&self.model.network, inputs, spec, cache)?;
        // A working set larger than its quarter (one example's of a large network) comes out of the cache.
        if tiles.working_bytes() > feature_budget / 4 {
            tiles.limit_cache(feature_budget.saturating_sub(tiles.working_bytes()));
        }
        warn_if_singular(&tiles);
        Ok(tiles)
    }
}

/// What a checkpoint of the NTK of the first `n` examples must match on resume: the model file's sha256,
/// the architecture, the data's content, the sample order and the kernel's definition.
pub fn kernel_identity(
    prepared: &Prepared,
    md: &ModelDataArgs,
    n: usize,
    kernel: &KernelArgs,
) -> Vec<(String, String)> {
    use sha2::Digest;
    let mut order = sha2::Sha256::new();
    for &i in prepared.order.iter().take(n) {
        order.update((i as u64).to_le_bytes());
    }
    let net = &prepared.model.network;
    [
        ("model_sha256", prepared.model_sha256.clone()),
        ("arch", net.arch.clone()),
        ("input_shape", format!("{:?}", net.input_shape)),
        ("data", prepared.dataset.name().to_string()),
        ("split", prepared.dataset.split().as_str().to_string()),
        ("data_sha256", prepared.data_sha256.clone()),
        ("order", format!("{} (seed {})", md.order.as_str(), md.seed)),
        ("sample_sha256", format!("{:x}", order.finalize())),
        ("n", n.to_string()),
        ("outputs", format!("{:?}", kernel.outputs)),
        ("kernel_scale", format!("{:?}", kernel.scale)),
        ("precision", kernel.precision.identity().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A fixed allowance for what no plan counts: the binary and its libraries, thread stacks, allocator slack.
pub const BASELINE_BYTES: u64 = 40 << 20;

impl Prepared {
    /// Bytes that live for the whole run outside MEMDET's plan and the feature cache, for a kernel on `n`
    /// examples: the dataset split in memory (raw pixels + labels), the model (f32 weights and the f64 copy
    /// the kernel is formed with), the n transformed inputs (f32) and [`BASELINE_BYTES`].
    pub fn resident_bytes(&self, n: usize) -> u64 {
        self.resident_bytes_in(n, crate::ntk::Precision::F64)
    }

    /// [`Prepared::resident_bytes`] with the inputs in `precision` (8 bytes a value in f64, 4 in f32):
    /// the dataset as held (the used examples' pixels, every label, the kept index), the sample order, the
    /// model (f32 weights and the f64 copy the kernel is formed with), the inputs and [`BASELINE_BYTES`].
    pub fn resident_bytes_in(&self, n: usize, precision: crate::ntk::Precision) -> u64 {
        let data = self.dataset.resident_bytes() + 8 * self.order.capacity() as u64;
        let model = self.model.network.num_params() as u64 * 12;
        data + model + self.input_bytes(n, precision) + BASELINE_BYTES
    }

    /// Bytes of the transformed inputs of `n` examples in `precision` (8 bytes a value in f64, 4 in f32).
    pub fn input_bytes(&self, n: usize, precision: crate::ntk::Precision) -> u64 {
        let [c, h, w] = self.model.network.input_shape;
        let value = match precision {
            crate::ntk::Precision::F64 => 8,
            crate::ntk::Precision::F32 | crate::ntk::Precision::F32F64Acc => 4,
        };
        n as u64 * (c * h * w) as u64 * value
    }
}

/// The `(features, memdet)` shares of what `--max-mem` leaves after `outside` bytes (what lives outside the
/// plan, e.g. [`Prepared::resident_bytes`] plus in-memory kernels): half each by default; with
/// `--feature-mem F` the features get F exactly and MEMDET the rest. Refused before any work when too
/// little is left.
pub fn budget_split(mem: &MemArgs, outside: u64) -> Result<(u64, u64)> {
    let total = crate::linalg::parse_size(&mem.max_mem)?;
    // The least that a plan can use: a few MiB of tiles and features (the real floor of a kernel, two
    // examples' features and MEMDET's smallest plan, is checked once its tile source exists:
    // `budget::check_kernel_minimum`).
    let least = 4 << 20;
    if total < outside + least {
        return Err(Error::Budget(format!(
            "--max-mem {} cannot hold what the run keeps outside MEMDET's tiles and the feature cache ({:.1} MiB: \
             dataset, model, inputs, in-memory kernels and {} MiB for the binary and threads) plus a minimal plan; \
             it needs at least {:.0} MiB",
            mem.max_mem,
            outside as f64 / 1048576.0,
            BASELINE_BYTES >> 20,
            ((outside + least) as f64 / 1048576.0).ceil()
        )));
    }
    let (features, _) = memory_split(mem)?;
    let left = total - outside;
    if mem.feature_mem.is_none() {
        return Ok((left / 2, left - left / 2));
    }
    // A given `--feature-mem` is the feature share itself; MEMDET gets what is left of the budget.
    if features >= left {
        return Err(Error::Budget(format!(
            "--feature-mem {} leaves nothing of --max-mem {} for MEMDET: {:.1} MiB live outside the plan \
             (dataset, model, inputs, in-memory kernels and {} MiB for the binary and threads), so at most \
             {:.0} MiB are left for the features and MEMDET together; lower --feature-mem or raise --max-mem",
            mem.feature_mem.as_deref().unwrap_or_default(),
            mem.max_mem,
            outside as f64 / 1048576.0,
            BASELINE_BYTES >> 20,
            (left as f64 / 1048576.0).floor()
        )));
    }
    Ok((features, left - features))
}

/// `--max-mem` split between cached NTK features and MEMDET, in bytes: `(features, memdet)`. The features
/// get `--feature-mem` when given, else half.
pub fn memory_split(mem: &MemArgs) -> Result<(u64, u64)> {
    let total = crate::linalg::parse_size(&mem.max_mem)?;
    let features = match &mem.feature_mem {
        Some(f) => crate::linalg::parse_size(f)?,
        None => total / 2,
    };
    if features == 0 || features >= total {
        return Err(Error::Usage(format!(
            "--feature-mem {} must be more than 0 and less than --max-mem {}",
            mem.feature_mem.as_deref().unwrap_or("(half)"),
            mem.max_mem
        )));
    }
    Ok((features, total - features))
}

/// Check before any work that `--scratch-dir`, when given, is a directory MEMDET can create its private
/// scratch directory in (the same test MEMDET makes later, made first).
pub fn check_scratch_dir(mem: &MemArgs) -> Result<()> {
    let Some(dir) = &mem.scratch_dir else {
        return Ok(());
    };
    if !dir.is_dir() {
        return Err(Error::Scratch(format!(
            "--scratch-dir {}: no such directory; create it or choose another",
            dir.display()
        )));
    }
    tempfile::Builder::new()
        .prefix("ntk-memdet-probe-")
        .tempdir_in(dir)
        .map(drop)
        .map_err(|e| {
            Error::Scratch(format!(
                "--scratch-dir {}: cannot create a directory there ({e}); choose a writable directory",
                dir.display()
            ))
        })
}

/// Print a warning when the kernel's order m exceeds the number of parameters p (rank K ≤ p).
pub fn warn_if_singular(tiles: &NtkTiles) {
    use crate::linalg::TileSource;
    let (m, p) = (tiles.dim(), tiles.num_params());
    if m > p && !crate::pipeline::ranks::is_follower() {
        crate::progress::notice(&format!(
            "warning: the kernel has order m = {m} but the network only p = {p} parameters: K has rank <= p, \
             so it is singular and its log-determinant is meaningless (SPEC §5); use fewer examples or a larger model"
        ));
    }
}

/// Kernel metadata for JSON reports.
pub fn kernel_meta(prepared: &Prepared, tiles: &NtkTiles, n: usize) -> serde_json::Value {
    use crate::linalg::TileSource;
    serde_json::json!({
        "model": prepared.model.source.display().to_string(),
        "arch": prepared.model.network.arch,
        "data": prepared.dataset.name(),
        "split": prepared.dataset.split().as_str(),
        "n": n,
        "d": tiles.num_logits(),
        "p": tiles.num_params(),
        "m": tiles.dim(),
        "outputs": tiles.spec().outputs_name(),
        "scale": tiles.spec().scale,
        "precision": tiles.spec().precision,
        "kernel_stats": tiles.stats(),
    })
}

/// The upper-triangle tiles of `source`'s kernel in feature-friendly order, each either on the diagonal
/// (rows == cols) or strictly above it, covering the upper triangle exactly once. Tiles are `piece` rows
/// (rounded to whole examples) square when every example's features fit in the feature cache ("held");
/// otherwise the columns go in panels of `held` examples ([`NtkTiles::held_examples`]) and the rows above
/// each panel stream past it in `piece`-row pieces, so features are recomputed as little as possible.
pub fn upper_tile_plan(
    source: &NtkTiles,
    held_examples: usize,
    piece: usize,
) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    use crate::linalg::TileSource;
    let m = source.dim();
    let g = source.granule();
    let piece = (piece / g).max(1) * g;
    let held = held_examples.max(1) * g;
    let panel = if held >= m { piece } else { held };
    let mut plan = Vec::new();
    for c0 in (0..m).step_by(panel) {
        let c1 = (c0 + panel).min(m);
        for r0 in (0..c0).step_by(piece) {
            plan.push((r0..(r0 + piece).min(c0), c0..c1));
        }
        for a in (c0..c1).step_by(piece) {
            for b in (a..c1).step_by(piece) {
                plan.push((a..(a + piece).min(c1), b..(b + piece).min(c1)));
            }
        }
    }
    plan
}

/// The whole kernel as a dense symmetric matrix: the tiles of [`upper_tile_plan`] (512-row pieces) are
/// computed (with a progress bar) and mirrored. 8·m² bytes: for kernels that fit in memory.
pub fn dense_kernel(
    source: &NtkTiles,
    progress: &dyn crate::progress::Progress,
) -> Result<faer::Mat<f64>> {
    use crate::linalg::TileSource;
    let m = source.dim();
    let plan = upper_tile_plan(source, source.held_examples(), 512);
    let mut k = faer::Mat::<f64>::zeros(m, m);
    progress.start("NTK tiles", plan.len() as u64);
    for (rows, cols) in plan {
        let tile = k
            .as_mut()
            .submatrix_mut(rows.start, cols.start, rows.len(), cols.len());
        source.fill(rows, cols, tile)?;
        progress.advance(1);
    }
    progress.finish();
    for c in 0..m {
        for r in (c + 1)..m {
            k[(r, c)] = k[(c, r)];
        }
    }
    Ok(k)
}
