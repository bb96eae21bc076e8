//! One block column of MEMDET's left-looking schedule (see `memdet.rs`): first touch of its tiles from the
//! source, updates with factor tiles prefetched from scratch by a reader thread, the pivot-block
//! factorisation, and write-behind of the finished tiles by a writer thread.

use super::budget::BlockPlan;
use super::checkpoint::LdltState;
use super::factor::{factor_pivot, schur_pivot_value, solve_lower, Assume};
use super::gemm::{matmul, matmul_lower};
use super::growth::{GrowthMonitor, Remedy};
use super::memdet::{MemdetOptions, PhaseSeconds, Shift};
use super::pivots::Pivots;
use super::scratch::ScratchStore;
use super::tile::TileSource;
use super::tile_buf::{Ledger, Tile};
use crate::progress::Progress;
use crate::{Error, Result};
use faer::{Accum, Par};
use rayon::prelude::*;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::Instant;

/// Number of prefetch buffers circulating between the reader thread and the compute thread.
const PREFETCH_BUFFERS: usize = 2;

/// State carried across the block columns of one MEMDET run.
pub(crate) struct ColumnRun<'a> {
    source: &'a dyn TileSource,
    opts: &'a MemdetOptions,
    plan: BlockPlan,
    scratch: Option<&'a ScratchStore>,
    ledger: Arc<Ledger>,
    /// log|pivot| per row.
    pub logabs: Vec<f64>,
    /// sign(pivot) per row.
    pub signs: Vec<f64>,
    /// B and P of each finished pivot block (LDLᵀ only).
    pivots: Vec<Pivots>,
    /// Pivot magnitude per row (for the near-singular warning).
    pub magnitudes: Vec<f64>,
    /// Largest |a_ii| of the diagonal tiles requested so far (after t and D).
    pub max_diag: f64,
    /// Element growth of the factorisation so far (LDLᵀ only).
    pub growth: GrowthMonitor,
    /// `(|L||B||Lᵀ|)_rr` contributions of the finished off-diagonal tiles of the current column.
    weights: Vec<f64>,
    /// Time per phase so far.
    pub seconds: PhaseSeconds,
    /// Tiles requested from the source so far.
    pub tiles_requested: u64,
}

impl<'a> ColumnRun<'a> {
    /// Prepare a run; the per-row vectors are accounted in `ledger`.
    pub fn new(
        source: &'a dyn TileSource,
        opts: &'a MemdetOptions,
        plan: BlockPlan,
        scratch: Option<&'a ScratchStore>,
        ledger: Arc<Ledger>,
    ) -> Self {
        ledger.add(8 * 4 * plan.m as u64);
        Self {
            source,
            opts,
            plan,
            scratch,
            ledger,
            logabs: vec![0.0; plan.m],
            signs: vec![1.0; plan.m],
            pivots: Vec::new(),
            magnitudes: vec![0.0; plan.m],
            max_diag: 0.0,
            growth: GrowthMonitor::default(),
            weights: Vec::new(),
            seconds: PhaseSeconds::default(),
            tiles_requested: 0,
        }
    }

    /// Continue a checkpointed run: the pivots of its complete columns (rows `0..logabs.len()`), the
    /// LDLᵀ state (pivot blocks and growth monitor; `None` for Cholesky) and the source requests made so far.
    pub fn restore(
        &mut self,
        logabs: &[f64],
        signs: &[f64],
        ldlt: Option<&LdltState>,
        tiles_requested: u64,
    ) -> Result<()> {
        let rows = logabs.len();
        if rows > self.plan.m || signs.len() != rows {
            return Err(Error::Input(format!(
                "the checkpoint holds {rows} pivots for a matrix of order {}",
                self.plan.m
            )));
        }
        let sym = self.opts.assume == Assume::Sym;
        match (sym, ldlt) {
            (true, Some(state)) => {
                let (pivots, growth) = state.restore();
                let covered: usize = pivots.iter().map(|p| p.diag.len()).sum();
                if covered != rows {
                    return Err(Error::Input(format!(
                        "the checkpoint's LDLᵀ pivot blocks cover {covered} rows, its pivots {rows}"
                    )));
                }
                self.pivots = pivots;
                self.growth = growth;
            }
            (false, None) => {}
            (true, None) if rows == 0 => {}
            _ => {
                return Err(Error::Input(
                    "the checkpoint's factorisation (LDLᵀ or Cholesky) is not this run's".into(),
                ))
            }
        }
        self.logabs[..rows].copy_from_slice(logabs);
        self.signs[..rows].copy_from_slice(signs);
        self.tiles_requested = tiles_requested;
        Ok(())
    }

    /// Restore the pivot magnitudes of the rows a checkpoint holds and the largest |a_ii| it had seen, so
    /// that the near-singular warning of a resumed run is the uninterrupted run's.
    pub fn restore_magnitudes(&mut self, magnitudes: &[f64], max_diag: f64) -> Result<()> {
        let rows = magnitudes.len();
        if rows > self.plan.m {
            return Err(Error::Input(format!(
                "the checkpoint holds {rows} pivot magnitudes for a matrix of order {}",
                self.plan.m
            )));
        }
        self.magnitudes[..rows].copy_from_slice(magnitudes);
        self.max_diag = max_diag;
        Ok(())
    }

    /// What a checkpoint must keep of an LDLᵀ run besides the per-row pivots (`None` for Cholesky).
    pub fn ldlt_state(&self) -> Option<LdltState> {
        (self.opts.assume == Assume::Sym).then(|| LdltState::of(&self.pivots, &self.growth))
    }

    /// The per-row pivot logs and signs.
    pub fn into_pivots(self) -> (Vec<f64>, Vec<f64>) {
        (self.logabs, self.signs)
    }

    fn check_interrupt(&self) -> Result<()> {
        crate::signals::check_with(self.opts.interrupt.as_deref())
    }

    /// Request tile (i, j) from the source, check it is finite, and apply t and the shift.
    fn load_source(&mut self, i: usize, j: usize, progress: &dyn Progress) -> Result<Tile> {
        let t = Instant::now();
        let (rows, cols) = (self.plan.range(i), self.plan.range(j));
        let mut tile = Tile::new(rows.len(), cols.len(), &self.ledger);
        self.source
            .fill_reporting(rows.clone(), cols.clone(), tile.mat_mut(), &|u| {
                progress.advance(u)
            })?;
        self.tiles_requested += 1;
        let nr = rows.len();
        if let Some(pos) = first_non_finite(tile.data()) {
            let value = tile.data()[pos];
            return Err(Error::NonFinite {
                value,
                row: rows.start + pos % nr,
                col: cols.start + pos / nr,
                rows,
                cols,
            });
        }
        let scale = self.opts.scale;
        if scale != 1.0 {
            tile.data_mut().par_iter_mut().for_each(|v| *v *= scale);
        }
        if i == j {
            // Diagonal tiles: only the lower triangle is used from here on (the input is symmetric).
            let mut a = tile.mat_mut();
            for c in 0..nr {
                a[(c, c)] += match &self.opts.shift {
                    Shift::None => 0.0,
                    Shift::Scalar(s) => *s,
                    Shift::Diagonal(v) => v[rows.start + c],
                };
                self.max_diag = self.max_diag.max(a[(c, c)].abs());
            }
        }
        if self.opts.assume == Assume::Sym {
            self.growth.add_tile(tile.data(), i != j);
        }
        self.seconds.source += t.elapsed().as_secs_f64();
        Ok(tile)
    }

    /// Process block column j: load, update, factor, store.
    pub fn column(&mut self, j: usize, progress: &dyn Progress) -> Result<()> {
        let n = self.plan.num_blocks;
        let mut pending = Vec::with_capacity(j + 1);
        for i in 0..=j {
            self.check_interrupt()?;
            if i == 1 {
                kill_point("source", j);
            }
            pending.push(self.load_source(i, j, progress)?);
        }
        let scratch = self.scratch;
        let store = j + 1 < n;
        let b = self.plan.block_size;
        let ledger = Arc::clone(&self.ledger);
        self.weights = vec![0.0; self.plan.len(j)];
        std::thread::scope(|s| -> Result<()> {
            let (tile_tx, tile_rx) = sync_channel::<Result<Tile>>(1);
            let (free_tx, free_rx) = channel::<Tile>();
            if j > 0 {
                let scratch = scratch
                    .ok_or_else(|| Error::Internal("no scratch store for n_b > 1".into()))?;
                for _ in 0..PREFETCH_BUFFERS {
                    let _ = free_tx.send(Tile::with_capacity(0, 0, b * b, &ledger));
                }
                s.spawn(move || read_ahead(scratch, j, free_rx, tile_tx));
            }
            let (w_tx, w_rx) = channel::<(usize, Arc<Tile>)>();
            let writer = match (store, scratch) {
                (true, Some(scratch)) => Some(s.spawn(move || write_behind(scratch, j, w_rx))),
                _ => None,
            };
            let mut temp = (self.opts.assume == Assume::Sym && j > 0)
                .then(|| Tile::with_capacity(0, 0, b * self.plan.len(j), &ledger));
            let mut finished: Vec<Arc<Tile>> = Vec::with_capacity(j + 1);
            for (i, mut c) in pending.into_iter().enumerate() {
                if i < j {
                    self.finish_off_diagonal(i, &mut c, &finished, &tile_rx, &free_tx)?;
                    if i == 1 {
                        kill_point("update", j);
                    }
                } else {
                    self.finish_diagonal(j, &mut c, &finished, temp.as_mut())?;
                }
                let c = Arc::new(c);
                if writer.is_some() {
                    w_tx.send((i, Arc::clone(&c)))
                        .map_err(|_| Error::Internal("scratch writer stopped early".into()))?;
                }
                finished.push(c);
                progress.advance(i as u64 + 1);
            }
            drop(w_tx);
            drop(temp.take());
            if let Some(writer) = writer {
                let t = Instant::now();
                let written = writer
                    .join()
                    .map_err(|_| Error::Internal("scratch writer panicked".into()))?;
                self.seconds.io_wait += t.elapsed().as_secs_f64();
                written?;
            }
            Ok(())
        })
    }

    /// Wait for the next prefetched tile from the reader thread.
    fn next_tile(&mut self, rx: &Receiver<Result<Tile>>) -> Result<Tile> {
        let t = Instant::now();
        let tile = rx
            .recv()
            .map_err(|_| Error::Internal("scratch reader stopped early".into()))?;
        self.seconds.io_wait += t.elapsed().as_secs_f64();
        tile
    }

    /// Tile (i, j), i < j: `C_i -= Σ_{k<i} (D_k⁻¹ U_ki)ᵀ C_k`, then `C_i ← L_ii⁻¹ C_i`.
    fn finish_off_diagonal(
        &mut self,
        i: usize,
        c: &mut Tile,
        finished: &[Arc<Tile>],
        rx: &Receiver<Result<Tile>>,
        free: &Sender<Tile>,
    ) -> Result<()> {
        let par = Par::rayon(0);
        for (k, ck) in finished.iter().enumerate().take(i) {
            self.check_interrupt()?;
            let mut u = self.next_tile(rx)?;
            let t = Instant::now();
            if let Some(p) = self.pivots.get(k) {
                p.apply_inverse(u.mat_mut());
            }
            matmul(
                c.mat_mut(),
                Accum::Add,
                u.mat().transpose(),
                ck.mat(),
                -1.0,
                par,
            );
            self.seconds.update += t.elapsed().as_secs_f64();
            let _ = free.send(u);
        }
        self.check_interrupt()?;
        let l = self.next_tile(rx)?;
        let t = Instant::now();
        if let Some(p) = self.pivots.get(i) {
            p.permute_rows(c.mat_mut());
        }
        solve_lower(l.mat(), self.opts.assume, c.mat_mut());
        if let Some(p) = self.pivots.get(i) {
            // Row r of the factor gains Σ |l|ᵀ|B_i||l| over this tile's column r (l = B_i⁻¹ u).
            let nr = c.nrows();
            let added: Vec<f64> = c
                .data()
                .par_chunks(nr.max(1))
                .map(|u| p.growth_of_column(u))
                .collect();
            for (w, a) in self.weights.iter_mut().zip(added) {
                *w += a;
            }
        }
        self.seconds.update += t.elapsed().as_secs_f64();
        let _ = free.send(l);
        Ok(())
    }

    /// Tile (j, j): `C_j -= Σ_k C_kᵀ D_k⁻¹ C_k` (lower triangle), then factor it.
    fn finish_diagonal(
        &mut self,
        j: usize,
        c: &mut Tile,
        finished: &[Arc<Tile>],
        mut temp: Option<&mut Tile>,
    ) -> Result<()> {
        self.update_diagonal(c, finished, temp.as_deref_mut())?;
        self.check_interrupt()?;
        let t = Instant::now();
        let rows = self.plan.range(j);
        let outcome = factor_pivot(
            c.mat_mut(),
            self.opts.assume,
            self.opts.pivoting,
            rows.start,
        );
        self.seconds.factor += t.elapsed().as_secs_f64();
        let f = match outcome {
            Ok(f) => f,
            Err(Error::NotPositiveDefinite { index, .. }) => {
                // faer has overwritten the block: rebuild it (one more source request, on this error path
                // only) and eliminate its leading part to report the failing pivot's value.
                let mut fresh = self.load_source(j, j, &crate::progress::Silent)?;
                self.update_diagonal(&mut fresh, finished, temp)?;
                let value = schur_pivot_value(fresh.mat_mut(), index - rows.start);
                return Err(Error::NotPositiveDefinite {
                    index,
                    value,
                    sym_pivoted: !self.opts.nested,
                });
            }
            Err(Error::Singular { index, value }) if j + 1 < self.plan.num_blocks => {
                return Err(Error::Unstable(format!(
                    "the leading {} rows are singular (pivoted LDL^T found a pivot of {value:e} at row {index}) \
                     and pivoting is confined to blocks of {} rows, so the factorisation cannot continue; \
                     use fewer blocks (--num-blocks 1, or a larger --max-mem) so that pivoting covers the \
                     whole matrix",
                    rows.end,
                    self.plan.block_size
                )));
            }
            Err(e) => return Err(e),
        };
        self.logabs[rows.clone()].copy_from_slice(&f.logabs);
        self.signs[rows.clone()].copy_from_slice(&f.signs);
        self.magnitudes[rows.clone()].copy_from_slice(&f.magnitudes);
        if self.opts.assume == Assume::Sym {
            let within = f.pivots.growth_within(c.mat());
            for (pos, w) in within.iter().enumerate() {
                let orig = f.pivots.original_row(pos);
                self.growth
                    .add_row(w + self.weights[orig], rows.start + orig);
            }
            let remedy = if self.opts.nested || !self.opts.pivoting {
                Remedy::DropNested
            } else if self.plan.num_blocks > 1 {
                Remedy::FewerBlocks(self.plan.block_size)
            } else {
                Remedy::Shift
            };
            self.growth.check(rows.end, remedy)?;
            self.pivots.push(f.pivots);
        }
        Ok(())
    }

    /// `C_j -= Σ_k C_kᵀ D_k⁻¹ C_k` on the lower triangle (the upper one is left stale and never read).
    fn update_diagonal(
        &mut self,
        c: &mut Tile,
        finished: &[Arc<Tile>],
        mut temp: Option<&mut Tile>,
    ) -> Result<()> {
        let par = Par::rayon(0);
        for (k, ck) in finished.iter().enumerate() {
            self.check_interrupt()?;
            let t = Instant::now();
            let rhs = match (self.pivots.get(k), temp.as_deref_mut()) {
                (Some(p), Some(tmp)) => {
                    tmp.reshape(ck.nrows(), ck.ncols())?;
                    tmp.data_mut().copy_from_slice(ck.data());
                    p.apply_inverse(tmp.mat_mut());
                    tmp.mat()
                }
                _ => ck.mat(),
            };
            matmul_lower(c.mat_mut(), ck.mat().transpose(), rhs, -1.0, par);
            self.seconds.update += t.elapsed().as_secs_f64();
        }
        Ok(())
    }
}

/// Testing aid for the resume tests: with `NTK_PIPELINE_TEST_KILL_AT=PHASE:J` in the environment the process
/// kills itself with SIGKILL at that point of block column J: `source` after the column's first source tile
/// (in the middle of tile formation), `update` after its second tile's updates (in the middle of the
/// factorisation). A real SIGKILL at a known instant, so the tests need no timing.
fn kill_point(phase: &str, j: usize) {
    static AT: std::sync::OnceLock<Option<(String, usize)>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        let v = std::env::var("NTK_PIPELINE_TEST_KILL_AT").ok()?;
        let (p, col) = v.split_once(':')?;
        Some((p.to_string(), col.parse().ok()?))
    });
    if at.as_ref().is_some_and(|(p, col)| p == phase && *col == j) {
        // SAFETY: raising a signal on our own process.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}

/// Index of the first NaN or ±Inf in `data`, searched with all rayon threads.
fn first_non_finite(data: &[f64]) -> Option<usize> {
    const CHUNK: usize = 1 << 15;
    let chunk = data
        .par_chunks(CHUNK)
        .position_first(|c| c.iter().any(|v| !v.is_finite()))?;
    let start = chunk * CHUNK;
    data[start..]
        .iter()
        .position(|v| !v.is_finite())
        .map(|p| start + p)
}

/// Reader thread: read the factor tiles of columns 0..j in storage order into free buffers.
fn read_ahead(
    scratch: &ScratchStore,
    j: usize,
    free: Receiver<Tile>,
    out: SyncSender<Result<Tile>>,
) {
    for i in 0..j {
        for k in 0..=i {
            let Ok(mut buf) = free.recv() else { return };
            let result = scratch.read(k, i, &mut buf).map(|()| buf);
            let failed = result.is_err();
            if out.send(result).is_err() || failed {
                return;
            }
        }
    }
}

/// Writer thread: store the finished tiles of column j; keeps draining after an error, returns the first.
fn write_behind(scratch: &ScratchStore, j: usize, rx: Receiver<(usize, Arc<Tile>)>) -> Result<()> {
    let mut first_error = None;
    for (i, tile) in rx {
        if first_error.is_none() {
            if let Err(e) = scratch.write(i, j, &tile) {
                first_error = Some(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
