//! [`NtkTiles`]: the empirical NTK of a network on n examples as a [`TileSource`], computed on demand.
//!
//! Examples are grouped into feature blocks ("chunks") of an eighth of the feature budget; a tile request is
//! answered chunk pair by chunk pair from cached features (least recently used chunks are evicted when the
//! budget is exceeded), so the kernel itself is never stored.
//!
//! When the tile's features do not all fit, the chunk pairs are scheduled like an out-of-core matrix product:
//! the column chunks are taken in groups that fill the cache but for two chunks, and for each group the row
//! chunks are streamed past it, those already cached first. Every pair touches the group's chunks, so they stay
//! the most recently used and only streamed chunks are evicted. Features are then computed about
//! `n + n²/(2·held)` times for a whole kernel, where `held` is the number of examples a group holds, instead of
//! `n²/chunk` with a plain row-by-row sweep.
//!
//! Chunks are sized on the f64 bytes of their features (a chunk is computed in f64 arrays); with
//! `--precision f32` the cache holds them as f32, half those bytes, and contracts them in f32 ([`cached`]).

use crate::linalg::TileSource;
use crate::model::Network;
use crate::ntk::features::{Features, LayerPlan};
use crate::ntk::{KernelSpec, Outputs};
use crate::{Error, Result};
use cached::{contract_cached, Cached};
use candle_core::{DType, Tensor};
use faer::{Mat, MatMut};
use serde::Serialize;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub mod cached;
mod chunks;
pub mod working;

/// Time and work spent forming the kernel so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NtkStats {
    /// Seconds in forward/backward passes and feature extraction.
    pub feature_seconds: f64,
    /// Seconds in tile contractions.
    pub contract_seconds: f64,
    /// Feature blocks computed (including recomputations after eviction).
    pub feature_blocks_computed: usize,
    /// Tiles requested.
    pub tiles: usize,
    /// Examples per feature block.
    pub chunk_examples: usize,
    /// Bytes of features per example.
    pub feature_bytes_per_example: usize,
}

/// Chunks per feature budget: the budget holds this many chunks.
const CHUNKS_PER_BUDGET: usize = 8;

/// The examples are split into at least this many chunks (when there are as many examples), so that even a
/// single-tile kernel reports progress chunk pair by chunk pair.
const MIN_CHUNKS: usize = 16;

/// LRU cache of feature chunks under a byte budget.
struct FeatureCache {
    entries: Vec<(usize, Arc<Cached>)>,
    bytes: usize,
    budget: usize,
}

/// The exact empirical NTK `J Jᵀ / s` of `network` on the rows of `inputs`, as a tile source.
pub struct NtkTiles {
    network: Network,
    plan: LayerPlan,
    inputs: Tensor,
    spec: KernelSpec,
    logits: usize,
    params: usize,
    divisor: f64,
    chunk: usize,
    micro: usize,
    /// Bytes the hand-written pass's working set needs for one example (0 for candle's pass).
    least_working: usize,
    /// Bytes of the hand-written pass's working set at `micro` (0 for candle's pass).
    working: usize,
    cache: Mutex<FeatureCache>,
    stats: Mutex<NtkStats>,
}

impl Drop for NtkTiles {
    /// A dropped source frees the kept feature workspace ([`crate::ntk::features::release_kept`]): what
    /// runs after the kernel does not sit beside an idle one.
    fn drop(&mut self) {
        crate::ntk::features::release_kept();
    }
}

impl NtkTiles {
    /// The NTK of `network` on `inputs` (n, C, H, W) for `spec`, with at most `feature_budget` bytes of
    /// cached features (at least one example's features are always held).
    pub fn new(
        network: &Network,
        inputs: Tensor,
        spec: KernelSpec,
        feature_budget: usize,
    ) -> Result<Self> {
        let dtype = spec.precision.pass_dtype();
        crate::ntk::backward::check_supported(network)?;
        let network = network.to_dtype(dtype)?;
        let n = inputs.dim(0)?;
        if n == 0 {
            return Err(Error::Usage("the kernel needs at least one example".into()));
        }
        let probe = inputs.narrow(0, 0, 1)?.to_dtype(dtype)?;
        let cache = network.forward_cached(&probe)?;
        let logits = cache[network.output()].dim(1)?;
        if let Outputs::Logit(k) = spec.outputs {
            if k >= logits {
                return Err(Error::Usage(format!(
                    "--outputs logit:{k}: the network has only {logits} logits"
                )));
            }
        }
        if spec.outputs == Outputs::Centered && logits < 2 {
            return Err(Error::Usage(
                "--outputs centered needs a network with at least 2 logits".into(),
            ));
        }
        let rows = match spec.outputs {
            Outputs::Full | Outputs::Trace => logits,
            Outputs::Centered => logits - 1,
            Outputs::Sum | Outputs::Logit(_) => 1,
        };
        let plan = LayerPlan::new(&network, &probe, rows)?;
        // At least MIN_CHUNKS chunks, so that progress (one unit per chunk pair) moves during a tile.
        let chunk = (feature_budget / (CHUNKS_PER_BUDGET * plan.bytes_per_example).max(1))
            .clamp(1, n)
            .min(n.div_ceil(MIN_CHUNKS));
        // The forward/backward working set of a micro-batch: at most a third of the cache's budget and
        // 256 MiB (callers bounding the whole process give the cache 3/4 of their share, see
        // `pipeline::inputs::Prepared::tiles`). The hand-written pass (f64 kernels of the layers it
        // implements, what `features::compute` runs then) is counted buffer by buffer; candle's pass is
        // estimated as three times its activations per row.
        let working = (feature_budget / 3).min(256 << 20);
        let hand = match dtype {
            DType::F64 => crate::model::hand::Plan::new(&network).ok(),
            _ => None,
        };
        let (micro, least_working, used) = match &hand {
            Some(h) => {
                let micro = working::hand_micro(h, &network, &plan, chunk, logits, working);
                (
                    micro,
                    working::hand_working_bytes(h, &network, &plan, 1, 1, logits),
                    working::hand_working_bytes(h, &network, &plan, chunk, micro, logits),
                )
            }
            None => {
                let act_bytes: usize = cache.iter().map(|t| t.elem_count() * 8).sum();
                let micro = (working / (3 * act_bytes * rows).max(1)).clamp(1, working::MOST_MICRO);
                (micro, 0, 0)
            }
        };
        let params = network.num_params();
        let stats = NtkStats {
            chunk_examples: chunk,
            feature_bytes_per_example: plan.bytes_per_example,
            ..Default::default()
        };
        Ok(Self {
            divisor: spec.divisor(params),
            network,
            plan,
            inputs,
            spec,
            logits,
            params,
            chunk,
            micro,
            least_working,
            working: used,
            cache: Mutex::new(FeatureCache {
                entries: Vec::new(),
                bytes: 0,
                budget: feature_budget,
            }),
            stats: Mutex::new(stats),
        })
    }

    /// The least feature budget (the `feature_budget` of [`NtkTiles::new`]) the source keeps to: a
    /// contraction holds two chunks of at least one example each. (The forward/backward working set is
    /// apart: see [`NtkTiles::working_bytes`].)
    pub fn min_feature_budget(&self) -> usize {
        2 * self.plan.bytes_per_example
    }

    /// Bytes of the hand-written feature pass's working set at the micro-batch chosen (counted by
    /// `working::hand_working_bytes`; 0 for candle's pass, whose working set is estimated only).
    pub fn working_bytes(&self) -> usize {
        self.working
    }

    /// [`NtkTiles::working_bytes`] for one example at a time: the least working set.
    pub fn least_working_bytes(&self) -> usize {
        self.least_working
    }

    /// Cache at most `budget` bytes of features instead (at least one example's), with chunks no larger
    /// than an eighth of it: for a caller whose share must also hold a working set larger than the third
    /// of the budget it was planned with. Call before any tile is requested.
    pub fn limit_cache(&mut self, budget: usize) {
        let per = self.plan.bytes_per_example.max(1);
        let budget = budget.max(per);
        self.chunk = self.chunk.min((budget / (CHUNKS_PER_BUDGET * per)).max(1));
        if let Ok(mut cache) = self.cache.lock() {
            cache.budget = budget;
        }
        if let Ok(mut stats) = self.stats.lock() {
            stats.chunk_examples = self.chunk;
        }
    }

    /// Examples per forward/reverse pass of the features.
    pub fn micro_examples(&self) -> usize {
        self.micro
    }

    /// Number of examples n.
    pub fn num_examples(&self) -> usize {
        self.inputs.dims()[0]
    }

    /// Number of logits d of the network.
    pub fn num_logits(&self) -> usize {
        self.logits
    }

    /// Number of trainable parameters p.
    pub fn num_params(&self) -> usize {
        self.params
    }

    /// The kernel's definition.
    pub fn spec(&self) -> &KernelSpec {
        &self.spec
    }

    /// Kernel rows per example (d for `full`, 1 otherwise).
    pub fn rows_per_example(&self) -> usize {
        self.spec.rows_per_example(self.logits)
    }

    /// Time and work spent so far.
    pub fn stats(&self) -> NtkStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Features of chunk `c`, from the cache or computed now.
    fn features(&self, c: usize) -> Result<Arc<Cached>> {
        if let Ok(mut cache) = self.cache.lock() {
            if let Some(pos) = cache.entries.iter().position(|(k, _)| *k == c) {
                let entry = cache.entries.remove(pos);
                let found = entry.1.clone();
                cache.entries.push(entry);
                return Ok(found);
            }
        }
        let feats = self.compute_chunk(c)?;
        Ok(self.cache_insert(c, feats))
    }

    /// Bytes of one example's features as cached: half of `LayerPlan::bytes_per_example` for f32.
    fn cached_bytes_per_example(&self) -> usize {
        if self.spec.precision.accumulates_in_f32() {
            self.plan.bytes_per_example / 2
        } else {
            self.plan.bytes_per_example
        }
    }

    /// Column chunks held together while row chunks stream past them: the cache's capacity in chunks but two
    /// (one for the streamed chunk, one of slack for a shorter last chunk), at least one.
    fn group_chunks(&self) -> usize {
        let chunk_bytes = (self.chunk * self.cached_bytes_per_example()).max(1);
        let budget = self.cache.lock().map(|c| c.budget).unwrap_or(0);
        (budget / chunk_bytes).saturating_sub(2).max(1)
    }

    /// Examples whose features can stay cached while others stream past them (see the module docs).
    pub fn held_examples(&self) -> usize {
        (self.group_chunks() * self.chunk).min(self.num_examples())
    }

    /// Drop every cached feature block (their memory is freed once no tile request holds them).
    pub fn clear_features(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.entries.clear();
            cache.bytes = 0;
        }
    }

    /// Whether chunk `c`'s features are cached now.
    fn is_cached(&self, c: usize) -> bool {
        self.cache
            .lock()
            .map(|cache| cache.entries.iter().any(|(k, _)| *k == c))
            .unwrap_or(false)
    }

    /// The chunks overlapping examples `ex`, each with its local example range and its offset in `ex`.
    fn chunk_parts(&self, ex: &Range<usize>) -> Vec<(usize, Range<usize>, usize)> {
        let mut parts = Vec::new();
        let mut e = ex.start;
        while e < ex.end {
            let c = e / self.chunk;
            let end = ((c + 1) * self.chunk).min(ex.end);
            parts.push((c, e - c * self.chunk..end - c * self.chunk, e - ex.start));
            e = end;
        }
        parts
    }
}

impl TileSource for NtkTiles {
    fn dim(&self) -> usize {
        self.num_examples() * self.rows_per_example()
    }

    fn granule(&self) -> usize {
        self.rows_per_example()
    }

    fn fill(&self, rows: Range<usize>, cols: Range<usize>, out: MatMut<'_, f64>) -> Result<()> {
        self.fill_reporting(rows, cols, out, &|_| {})
    }

    /// Times chunk 0's features (kept in the cache: the first tile uses them) and one contraction pair of
    /// chunk 0 with itself, then extrapolates: `units` chunk pairs, and the feature passes of every
    /// example, about `n + n²/(2·held)` of them when the features do not all stay cached (module docs).
    fn calibrate_fill(&self, units: u64) -> Result<Option<(f64, String)>> {
        let n = self.num_examples();
        let len = self.chunk.min(n);
        let t0 = Instant::now();
        let f = self.features(0)?;
        let feature_s = t0.elapsed().as_secs_f64();
        crate::signals::check()?;
        let rf = self.plan.rows;
        let mut block = Mat::<f64>::zeros(len * rf, len * rf);
        let t1 = Instant::now();
        contract_cached(&self.plan, &f, 0..len, &f, 0..len, block.as_mut())?;
        let pair_s = t1.elapsed().as_secs_f64();
        let held = self.held_examples().max(1) as f64;
        let nf = n as f64;
        let passes = if held >= nf {
            nf
        } else {
            nf + nf * nf / (2.0 * held)
        };
        let seconds = feature_s / len as f64 * passes + pair_s * units as f64;
        let note = format!(
            "features of one chunk of {len} examples {feature_s:.3} s, one contraction pair {pair_s:.3} s, \
             for {passes:.0} example feature passes and {units} pairs"
        );
        Ok(Some((seconds, note)))
    }

    fn fill_units(&self, rows: Range<usize>, cols: Range<usize>) -> u64 {
        let g = self.rows_per_example();
        let ex_rows = rows.start / g..rows.end.div_ceil(g);
        let ex_cols = cols.start / g..cols.end.div_ceil(g);
        let diagonal = rows == cols;
        let row_parts = self.chunk_parts(&ex_rows);
        let col_parts = self.chunk_parts(&ex_cols);
        let mut pairs = 0;
        for (ca, _, _) in &row_parts {
            for (cb, _, _) in &col_parts {
                if !(diagonal && cb < ca) {
                    pairs += 1;
                }
            }
        }
        pairs
    }

    /// Reports one unit per chunk pair contracted (each may take minutes for a large network).
    fn fill_reporting(
        &self,
        rows: Range<usize>,
        cols: Range<usize>,
        mut out: MatMut<'_, f64>,
        done: &dyn Fn(u64),
    ) -> Result<()> {
        let g = self.rows_per_example();
        let rf = self.plan.rows;
        let ex_rows = rows.start / g..rows.end.div_ceil(g);
        let ex_cols = cols.start / g..cols.end.div_ceil(g);
        let (row_skip, col_skip) = (
            rows.start - ex_rows.start * g,
            cols.start - ex_cols.start * g,
        );
        // A tile on the diagonal (rows == cols) is symmetric: compute chunk pairs with cb >= ca only and
        // mirror the rest below.
        let diagonal = rows == cols;
        let row_parts = self.chunk_parts(&ex_rows);
        let col_parts = self.chunk_parts(&ex_cols);
        for group in col_parts.chunks(self.group_chunks()) {
            // Row chunks already cached first, so the group's arrival evicts as little as possible.
            let mut rows_order: Vec<&(usize, Range<usize>, usize)> = row_parts.iter().collect();
            rows_order.sort_by_key(|(ca, _, _)| !self.is_cached(*ca));
            for (ca, ia, oa) in rows_order {
                let (ca, oa) = (*ca, *oa);
                if diagonal && group.iter().all(|(cb, _, _)| *cb < ca) {
                    continue;
                }
                let fa = self.features(ca)?;
                for (cb, jb, ob) in group {
                    let (cb, ob) = (*cb, *ob);
                    if diagonal && cb < ca {
                        continue;
                    }
                    crate::signals::check()?;
                    let fb = self.features(cb)?;
                    let t0 = Instant::now();
                    let mut block = Mat::<f64>::zeros(ia.len() * rf, jb.len() * rf);
                    contract_cached(&self.plan, &fa, ia.clone(), &fb, jb.clone(), block.as_mut())?;
                    let block = if self.spec.outputs == Outputs::Trace {
                        trace_reduce(&block, rf)
                    } else {
                        block
                    };
                    // Copy the part of this block that lies inside the requested tile.
                    for bc in 0..block.ncols() {
                        let Some(oc) = (ob * g + bc)
                            .checked_sub(col_skip)
                            .filter(|&c| c < cols.len())
                        else {
                            continue;
                        };
                        for br in 0..block.nrows() {
                            let Some(or) = (oa * g + br)
                                .checked_sub(row_skip)
                                .filter(|&r| r < rows.len())
                            else {
                                continue;
                            };
                            out[(or, oc)] = block[(br, bc)] / self.divisor;
                        }
                    }
                    if let Ok(mut s) = self.stats.lock() {
                        s.contract_seconds += t0.elapsed().as_secs_f64();
                    }
                    done(1);
                }
            }
        }
        if diagonal {
            let (g0, ch) = (ex_rows.start, self.chunk);
            for c in 0..cols.len() {
                for r in (c + 1)..rows.len() {
                    // Entry (r, c) below the diagonal belongs to chunk pair (chunk(r), chunk(c)); it was skipped
                    // exactly when chunk(c) < chunk(r).
                    let (er, ec) = (g0 + (r + row_skip) / g, g0 + (c + col_skip) / g);
                    if ec / ch < er / ch {
                        out[(r, c)] = out[(c, r)];
                    }
                }
            }
        }
        if let Ok(mut s) = self.stats.lock() {
            s.tiles += 1;
        }
        for c in 0..cols.len() {
            for r in 0..rows.len() {
                let v = out[(r, c)];
                if !v.is_finite() {
                    return Err(Error::NonFinite {
                        value: v,
                        row: rows.start + r,
                        col: cols.start + c,
                        rows: rows.clone(),
                        cols: cols.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Sum the diagonal (c == c') entries of each d×d block: the `trace` kernel.
fn trace_reduce(block: &Mat<f64>, d: usize) -> Mat<f64> {
    let (ni, nj) = (block.nrows() / d, block.ncols() / d);
    Mat::from_fn(ni, nj, |i, j| {
        (0..d).map(|c| block[(i * d + c, j * d + c)]).sum()
    })
}
