//! [`NtkTiles`] chunk by chunk: which feature chunks hold which kernel rows, computing a chunk without
//! caching it, and caching a chunk computed elsewhere (the distributed formation computes each chunk on one
//! rank and sends it to the others that need it).

use super::cached::Cached;
use super::{Features, NtkTiles};
use crate::ntk::contract::contract;
use crate::ntk::features::compute;
use crate::{Error, Result};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

impl NtkTiles {
    /// Examples per feature chunk (the last chunk may hold fewer).
    pub fn chunk_examples(&self) -> usize {
        self.chunk
    }

    /// Number of feature chunks.
    pub fn num_chunks(&self) -> usize {
        self.num_examples().div_ceil(self.chunk)
    }

    /// The chunks that hold the examples of kernel rows `rows`.
    pub fn chunks_of_rows(&self, rows: Range<usize>) -> Range<usize> {
        let g = self.rows_per_example();
        if rows.is_empty() {
            return 0..0;
        }
        rows.start / g / self.chunk..(rows.end.div_ceil(g) - 1) / self.chunk + 1
    }

    /// Bytes of the features of chunk `c` as computed and sent between ranks (f64 arrays; the cache holds
    /// half as many for `--precision f32`, but a rank holds its computed and received chunks in f64 until
    /// they are cached, so this is what must fit).
    pub fn chunk_bytes(&self, c: usize) -> usize {
        let start = c * self.chunk;
        self.chunk.min(self.num_examples().saturating_sub(start)) * self.plan.bytes_per_example
    }

    /// The cache's byte budget.
    pub fn feature_budget(&self) -> usize {
        self.cache.lock().map(|c| c.budget).unwrap_or(0)
    }

    /// Compute the features of chunk `c` now (counted in [`NtkStats`]) without caching them.
    pub fn compute_chunk(&self, c: usize) -> Result<Features> {
        let start = c * self.chunk;
        if start >= self.num_examples() {
            return Err(Error::Internal(format!(
                "feature chunk {c} is past the last of {}",
                self.num_chunks()
            )));
        }
        let len = self.chunk.min(self.num_examples() - start);
        let t0 = Instant::now();
        // The pass's buffers come from the one process-wide slot (`features::HandWorkspace::take_kept`):
        // sources alive side by side (compare's kernels) never hold more than one workspace between them,
        // the one the working set counts.
        let feats = compute(
            &self.network,
            &self.plan,
            &self.inputs.narrow(0, start, len)?,
            &self.spec,
            self.micro,
        )?;
        if let Ok(mut s) = self.stats.lock() {
            s.feature_seconds += t0.elapsed().as_secs_f64();
            s.feature_blocks_computed += 1;
        }
        Ok(feats)
    }

    /// Seconds of one chunk-pair contraction of `feats` with themselves in the kernel's precision (the
    /// result is dropped): what one tile of a chunk-sized block costs, to weigh tile work against feature
    /// work.
    pub fn time_pair(&self, feats: &Features) -> f64 {
        let (rows, all) = (feats.n * self.plan.rows, 0..feats.n);
        if self.spec.precision.accumulates_in_f32() {
            let narrow = feats.narrow();
            let mut block = faer::Mat::<f32>::zeros(rows, rows);
            let t0 = Instant::now();
            contract(
                &self.plan,
                &narrow,
                all.clone(),
                &narrow,
                all,
                block.as_mut(),
            );
            t0.elapsed().as_secs_f64()
        } else {
            let mut block = faer::Mat::<f64>::zeros(rows, rows);
            let t0 = Instant::now();
            contract(&self.plan, feats, all.clone(), feats, all, block.as_mut());
            t0.elapsed().as_secs_f64()
        }
    }

    /// Put `feats`, the features of chunk `c` computed elsewhere (another process), into the cache as if
    /// computed here; the least recently used chunks make room as usual. Refused when they do not have
    /// chunk `c`'s examples.
    pub fn insert_chunk(&self, c: usize, feats: Features) -> Result<()> {
        let expected = self
            .chunk
            .min(self.num_examples().saturating_sub(c * self.chunk));
        if feats.n != expected || feats.rows != self.plan.rows || expected == 0 {
            return Err(Error::Internal(format!(
                "features for chunk {c} hold {} examples of {} rows; the chunk has {expected} of {}",
                feats.n, feats.rows, self.plan.rows
            )));
        }
        self.cache_insert(c, feats);
        Ok(())
    }

    /// Add chunk `c`'s features to the cache in the kernel's precision (narrowed to f32 for `f32`), evicting
    /// the least recently used first to stay in budget, so a narrowed chunk's f64 original and its copy are
    /// never held on top of a full cache. Returns the cached chunk. (The narrowing runs outside the lock:
    /// it uses the thread pool.)
    pub(super) fn cache_insert(&self, c: usize, feats: Features) -> Arc<Cached> {
        let precision = self.spec.precision;
        let bytes = Cached::bytes_of(&feats, precision);
        if let Ok(mut cache) = self.cache.lock() {
            if let Some(pos) = cache.entries.iter().position(|(k, _)| *k == c) {
                let (_, old) = cache.entries.remove(pos);
                cache.bytes -= old.bytes();
            }
            while !cache.entries.is_empty() && cache.bytes + bytes > cache.budget {
                let (_, old) = cache.entries.remove(0);
                cache.bytes -= old.bytes();
            }
            // Reserved now, held once the entry is pushed below (`bytes` is exactly its size).
            cache.bytes += bytes;
        }
        let t0 = Instant::now();
        let cached = Arc::new(Cached::of(feats, precision));
        if let Ok(mut s) = self.stats.lock() {
            // Narrowing to f32 is part of preparing the features.
            s.feature_seconds += t0.elapsed().as_secs_f64();
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.entries.push((c, cached.clone()));
        }
        cached
    }
}
