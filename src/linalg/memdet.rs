//! MEMDET: the exact log-determinant of a symmetric `M = t·A + D` under a memory limit (SPEC §2).
//!
//! Schedule (left-looking by block column, "column in RAM"): for each block column j, the tiles (i, j),
//! i ≤ j, are requested from the source exactly once, then finished top to bottom:
//! `C_i -= Σ_{k<i} U_kiᵀ D_k⁻¹ C_k` followed by `C_i ← L_ii⁻¹ C_i` (i < j), and the diagonal tile
//! `C_j -= Σ_k C_kᵀ D_k⁻¹ C_k` is factored (Cholesky or LDLᵀ). The finished tiles of column j are written
//! behind to the scratch store; column j + 1 then re-reads the factor tiles of columns 0..=j in storage order
//! (a sequential scan, prefetched by a reader thread). Loads from scratch: (n−1)n(n+1)/6 tiles; stores:
//! n(n−1)/2 tiles; source requests: n(n+1)/2 tiles (for n = n_b blocks).
//!
//! Only tiles (I, J) with I ≤ J are requested, and of the diagonal tiles only the lower triangle is used:
//! the source must be symmetric (an `.npy` source checks that both triangles agree, or uses the one that
//! `Triangle` names).
//!
//! `sym` (LDLᵀ) is backward stable or refuses. Without nested log-dets each pivot block is factored by
//! Bunch–Kaufman with rook pivoting (`P S Pᵀ = L B Lᵀ`); with one block that is the whole matrix, a
//! backward-stable factorisation. With more blocks pivoting cannot cross block boundaries, and with nested
//! log-dets there is none at all, so in every `sym` run the element growth
//! `g = max_r (|L||B||Lᵀ|)_rr / ‖A‖_F` is measured (cheaply, from the factor tiles as they are finished;
//! see `growth.rs`) and the run stops with [`Error::Unstable`] once g exceeds [`GROWTH_LIMIT`] on the leading
//! rows factored so far (Cholesky of an SPD matrix has g ≤ 1).

use super::budget::{self, BlockPlan};
use super::checkpoint::{Checkpoint, PivotState, Session};
use super::column::ColumnRun;
use super::factor::Assume;
pub use super::growth::GROWTH_LIMIT;
use super::scratch::{check_free_space, ScratchStore};
use super::tile::TileSource;
use super::tile_buf::Ledger;
use crate::progress::Progress;
use crate::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// A pivot is near-singular (and warned about) when its magnitude is at most this fraction of the largest
/// |diagonal entry| of M: the log-determinant then depends strongly on rounding in that direction.
pub const NEAR_SINGULAR: f64 = 1e-12;

/// The diagonal part D of `M = t·A + D`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Shift {
    /// D = 0.
    #[default]
    None,
    /// D = s·I.
    Scalar(f64),
    /// D = diag(values), one value per row.
    Diagonal(Vec<f64>),
}

/// How to run MEMDET.
#[derive(Debug, Clone)]
pub struct MemdetOptions {
    /// Cholesky (`Spd`) or LDLᵀ (`Sym`).
    pub assume: Assume,
    /// Blocks per side n_b (overrides the plan from `max_mem`).
    pub num_blocks: Option<usize>,
    /// Resident memory limit in bytes (picks n_b if `num_blocks` is None; checked otherwise).
    pub max_mem: Option<u64>,
    /// Parent directory of the scratch store (default: the OS temp dir).
    pub scratch_dir: Option<PathBuf>,
    /// The factor t in `M = t·A + D`.
    pub scale: f64,
    /// The diagonal shift D.
    pub shift: Shift,
    /// Keep per-row pivots meaningful for nested log-dets (forbids pivoting).
    pub nested: bool,
    /// Bunch–Kaufman (rook) pivoting inside pivot blocks (`Sym` only, not with `nested`).
    pub pivoting: bool,
    /// Cap on scratch bytes (tests use it to simulate a full disk).
    pub scratch_cap: Option<u64>,
    /// An extra interrupt flag polled between tile operations (besides the Ctrl-C flag).
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Keep the factor tiles and a manifest in a directory after every block column, to resume after a kill.
    pub checkpoint: Option<Checkpoint>,
}

impl Default for MemdetOptions {
    fn default() -> Self {
        Self {
            assume: Assume::Spd,
            num_blocks: None,
            max_mem: None,
            scratch_dir: None,
            scale: 1.0,
            shift: Shift::None,
            nested: true,
            pivoting: false,
            scratch_cap: None,
            interrupt: None,
            checkpoint: None,
        }
    }
}

/// Wall time per phase of a MEMDET run, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseSeconds {
    /// Requesting tiles from the source (first touch), checking them and applying t and D.
    pub source: f64,
    /// Factoring pivot blocks.
    pub factor: f64,
    /// Schur-complement updates (GEMMs) and triangular solves.
    pub update: f64,
    /// Waiting for scratch reads (prefetch not ready) and for write-behind to drain.
    pub io_wait: f64,
    /// The whole run.
    pub total: f64,
}

/// What a MEMDET run did and how fast.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemdetInfo {
    /// Matrix order m.
    pub m: usize,
    /// Blocks per side n_b.
    pub num_blocks: usize,
    /// Rows per block b.
    pub block_size: usize,
    /// Tiles (I ≤ J) requested from the source (each exactly once).
    pub tiles_requested: u64,
    /// Tiles read back from the scratch store.
    pub blocks_loaded: u64,
    /// Tiles written to the scratch store.
    pub blocks_stored: u64,
    /// Bytes read from the scratch store.
    pub bytes_read: u64,
    /// Bytes written to the scratch store.
    pub bytes_written: u64,
    /// Wall time per phase.
    pub seconds: PhaseSeconds,
    /// (m³ − r³)/3 / total seconds / 1e9, r the rows a resumed checkpoint had already factored (0 for a
    /// fresh run): the flop rate of the work this run did.
    pub gflops: f64,
    /// Peak bytes held in tile buffers and per-row vectors.
    pub peak_resident_bytes: u64,
    /// The plan's bound on resident bytes.
    pub planned_resident_bytes: u64,
    /// Size of the scratch store at its largest (bytes).
    pub scratch_bytes: u64,
    /// True when pivot blocks were factored with Bunch–Kaufman pivoting (per-row pivots are then not
    /// nested log-dets).
    pub pivoted: bool,
    /// `sym` only: the element growth `max_r (|L||B||Lᵀ|)_rr / ‖A‖_F` (at most [`GROWTH_LIMIT`]).
    pub growth: Option<f64>,
    /// Warnings about the result (near-singular pivots), also printed by the CLI.
    pub warnings: Vec<String>,
    /// Block columns taken from a checkpoint (`--resume`) instead of computed in this run.
    pub resumed_columns: usize,
}

/// The result of MEMDET: log|det M|, its sign, per-row pivots (for nested log-dets) and run statistics.
#[derive(Debug, Clone)]
pub struct LogDet {
    /// log|det M| (natural log).
    pub logdet: f64,
    /// sign(det M): +1 or −1.
    pub sign: f64,
    /// log|pivot_i| per row; prefix sums are the log-dets of leading principal blocks.
    pub pivots_logabs: Vec<f64>,
    /// sign(pivot_i) per row.
    pub pivot_signs: Vec<f64>,
    /// Run statistics.
    pub info: MemdetInfo,
}

/// One nested log-determinant: of the leading `rows × rows` block, `rows = k·d`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NestedLogdet {
    /// Number of granules k.
    pub k: usize,
    /// Rows of the leading block (k·d).
    pub rows: usize,
    /// log|det| of the leading block.
    pub logdet: f64,
    /// Its sign.
    pub sign: f64,
}

impl LogDet {
    /// Nested log-dets ℓ_k of the leading k·d rows, k = 1..=⌊m/d⌋, from the per-row pivots.
    pub fn nested(&self, d: usize) -> Vec<NestedLogdet> {
        let d = d.max(1);
        let mut out = Vec::with_capacity(self.pivots_logabs.len() / d);
        let mut sum = NeumaierSum::default();
        let mut sign = 1.0;
        for (row, (l, s)) in self.pivots_logabs.iter().zip(&self.pivot_signs).enumerate() {
            sum.add(*l);
            sign *= s;
            if (row + 1) % d == 0 {
                out.push(NestedLogdet {
                    k: (row + 1) / d,
                    rows: row + 1,
                    logdet: sum.value(),
                    sign,
                });
            }
        }
        out
    }
}

/// Compensated (Neumaier) summation, so that m pivot logs sum to full f64 accuracy.
#[derive(Debug, Default, Clone, Copy)]
pub struct NeumaierSum {
    sum: f64,
    comp: f64,
}

impl NeumaierSum {
    /// Add one term.
    pub fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.comp += (self.sum - t) + x;
        } else {
            self.comp += (x - t) + self.sum;
        }
        self.sum = t;
    }

    /// The compensated sum.
    pub fn value(&self) -> f64 {
        self.sum + self.comp
    }
}

/// Check options against the matrix order m.
fn validate(opts: &MemdetOptions, m: usize) -> Result<()> {
    if !opts.scale.is_finite() {
        return Err(Error::Usage(format!(
            "the scale t = {} must be finite",
            opts.scale
        )));
    }
    match &opts.shift {
        Shift::None => {}
        Shift::Scalar(s) if !s.is_finite() => {
            return Err(Error::Usage(format!("the shift {s} must be finite")))
        }
        Shift::Scalar(_) => {}
        Shift::Diagonal(v) => {
            if v.len() != m {
                return Err(Error::Usage(format!(
                    "the diagonal shift has {} values for a {m}x{m} matrix",
                    v.len()
                )));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::Usage(format!(
                    "the diagonal shift is {} at row {i}; it must be finite",
                    v[i]
                )));
            }
        }
    }
    if opts.pivoting {
        if opts.assume == Assume::Spd {
            return Err(Error::Usage("pivoting applies to --assume sym only".into()));
        }
        if opts.nested {
            return Err(Error::Usage(
                "Bunch–Kaufman pivoting breaks nested log-dets; do not combine pivoting with nested".into(),
            ));
        }
    }
    Ok(())
}

/// The warning for pivots of magnitude at most [`NEAR_SINGULAR`] × the largest |diagonal entry|, if any.
fn near_singular_warning(magnitudes: &[f64], max_diag: f64) -> Option<String> {
    let limit = NEAR_SINGULAR * max_diag;
    let small: Vec<(usize, f64)> = magnitudes
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, v)| *v <= limit)
        .collect();
    let (row, smallest) = small.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1))?;
    Some(format!(
        "{} pivot(s) are near-singular (|pivot| <= {NEAR_SINGULAR:e} x the largest |diagonal entry| \
         {max_diag:.3e}); the smallest is {smallest:.3e} at row {row}: the log-determinant is sensitive to \
         rounding in those directions",
        small.len()
    ))
}

/// FLOPs of factoring an m × m matrix whose leading `resumed` rows were factored before (by a run this
/// one resumes): m³/3 − resumed³/3, the leading-order count of the remaining columns.
fn factored_flops(m: usize, resumed: usize) -> f64 {
    ((m as f64).powi(3) - (resumed as f64).powi(3)) / 3.0
}

/// What a checkpoint of this run must match on resume: the caller's identity, the tool version, the
/// matrix order, the factorisation, t, D and the block plan.
fn identity(c: &Checkpoint, opts: &MemdetOptions, plan: &BlockPlan) -> BTreeMap<String, String> {
    let mut id: BTreeMap<String, String> = c.identity.iter().cloned().collect();
    let shift = match &opts.shift {
        Shift::None => "none".to_string(),
        Shift::Scalar(s) => format!("scalar {s:e} (bits {:016x})", s.to_bits()),
        Shift::Diagonal(v) => {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            v.iter().for_each(|x| h.update(x.to_bits().to_le_bytes()));
            format!("diagonal sha256 {:x}", h.finalize())
        }
    };
    let entries = [
        ("tool_version", env!("CARGO_PKG_VERSION").to_string()),
        ("m", plan.m.to_string()),
        ("assume", opts.assume.name().to_string()),
        ("num_blocks", plan.num_blocks.to_string()),
        ("block_size", plan.block_size.to_string()),
        (
            "scale_t",
            format!("{:e} (bits {:016x})", opts.scale, opts.scale.to_bits()),
        ),
        ("shift", shift),
        // Parallel reductions may group sums differently with another thread count, so a resume must
        // run on as many threads as the run it continues for its result to be bitwise the same.
        ("threads", rayon::current_num_threads().to_string()),
    ];
    for (k, v) in entries {
        id.insert(k.to_string(), v);
    }
    id
}

/// The scratch store: the checkpoint's persistent tile file (its complete columns kept), or a private
/// temporary one; either way after checking the disk has room for the tiles still to be written.
fn open_scratch(
    opts: &MemdetOptions,
    plan: BlockPlan,
    session: Option<&Session>,
    done: usize,
) -> Result<ScratchStore> {
    let total = plan.scratch_bytes();
    match session {
        Some(s) => {
            let store = ScratchStore::open_checkpoint(s.dir(), plan, opts.scratch_cap, done > 0)?;
            let have = store.bytes_before_column(done);
            let len = std::fs::metadata(s.dir().join(super::checkpoint::TILES_NAME))
                .map(|m| m.len())
                .unwrap_or(0);
            if len < have {
                return Err(Error::Input(format!(
                    "the checkpoint in {} says {done} block columns are complete, but its tile file holds only {len} of \
                     their {have} bytes; it was damaged, remove the directory and start afresh",
                    s.dir().display()
                )));
            }
            check_free_space(s.dir(), total.saturating_sub(have.max(len)))?;
            Ok(store)
        }
        None => {
            let parent = opts.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
            check_free_space(&parent, total)?;
            ScratchStore::create(Some(&parent), plan, opts.scratch_cap)
        }
    }
}

/// Compute log|det(t·A + D)| and its sign with at most the planned number of blocks in RAM.
pub fn memdet(
    source: &dyn TileSource,
    opts: &MemdetOptions,
    progress: &dyn Progress,
) -> Result<LogDet> {
    let start = Instant::now();
    let m = source.dim();
    validate(opts, m)?;
    let ldlt = opts.assume == Assume::Sym;
    let plan: BlockPlan = budget::plan(m, source.granule(), opts.num_blocks, opts.max_mem, ldlt)?;
    let n = plan.num_blocks;
    let mut session = opts
        .checkpoint
        .as_ref()
        .map(|c| Session::open(c, identity(c, opts, &plan), n))
        .transpose()?;
    let done = session.as_ref().map_or(0, |s| s.manifest().columns_done);
    let scratch = if n > 1 && done < n {
        Some(open_scratch(opts, plan, session.as_ref(), done)?)
    } else {
        None
    };
    let ledger = Arc::new(Ledger::default());
    let mut run = ColumnRun::new(source, opts, plan, scratch.as_ref(), Arc::clone(&ledger));
    if let Some(s) = &session {
        let (logabs, signs) = s.manifest().pivots();
        let (magnitudes, max_diag) = s.manifest().magnitudes();
        let ldlt_state = s.manifest().ldlt.as_ref();
        run.restore(&logabs, &signs, ldlt_state, s.manifest().tiles_requested)?;
        run.restore_magnitudes(&magnitudes, max_diag)?;
    }
    // Progress units: each tile's source parts (an NTK's chunk pairs) plus one per update it receives.
    let units = |j: usize| -> u64 {
        (0..=j)
            .map(|i| source.fill_units(plan.range(i), plan.range(j)) + i as u64 + 1)
            .sum()
    };
    let total_units: u64 = (0..n).map(units).sum();
    let source_units: u64 = (done..n)
        .flat_map(|j| (0..=j).map(move |i| (i, j)))
        .map(|(i, j)| source.fill_units(plan.range(i), plan.range(j)))
        .sum();
    let forming = source.calibrate_fill(source_units)?;
    progress.note(&super::plan_note::describe(
        &plan,
        opts,
        done,
        forming.as_ref(),
    ));
    progress.start("memdet", total_units);
    progress.advance((0..done).map(units).sum());
    let outcome = (done..n).try_for_each(|j| {
        run.column(j, progress)?;
        match (&mut session, &scratch) {
            (Some(s), store) => {
                if let Some(store) = store {
                    store.sync()?;
                }
                let rows = plan.range(j).end;
                let state = PivotState {
                    logabs: &run.logabs,
                    signs: &run.signs,
                    magnitudes: &run.magnitudes,
                    max_diag: run.max_diag,
                    ldlt: run.ldlt_state(),
                };
                s.commit(j + 1, rows, &state, run.tiles_requested)
            }
            _ => Ok(()),
        }
    });
    progress.finish();
    outcome?;
    if let Some(s) = &session {
        s.finish();
    }

    let mut sum = NeumaierSum::default();
    let mut sign = 1.0;
    for (l, s) in run.logabs.iter().zip(&run.signs) {
        sum.add(*l);
        sign *= s;
    }
    let logdet = sum.value();
    if !logdet.is_finite() {
        return Err(Error::Internal(format!(
            "log-determinant is {logdet} although every pivot was finite and non-zero"
        )));
    }
    let total = start.elapsed().as_secs_f64();
    let mut seconds = run.seconds.clone();
    seconds.total = total;
    let (loaded, stored, read, written) = scratch.as_ref().map_or((0, 0, 0, 0), |s| {
        (
            s.tiles_read(),
            s.tiles_written(),
            s.bytes_read(),
            s.bytes_written(),
        )
    });
    let resumed_rows = if done == 0 {
        0
    } else {
        plan.range(done - 1).end
    };
    let growth = ldlt.then(|| run.growth.growth());
    let warnings = near_singular_warning(&run.magnitudes, run.max_diag)
        .into_iter()
        .collect();
    let info = MemdetInfo {
        m,
        num_blocks: n,
        block_size: plan.block_size,
        tiles_requested: run.tiles_requested,
        blocks_loaded: loaded,
        blocks_stored: stored,
        bytes_read: read,
        bytes_written: written,
        seconds,
        gflops: factored_flops(m, resumed_rows) / total / 1e9,
        peak_resident_bytes: ledger.peak(),
        planned_resident_bytes: plan.resident_bytes(ldlt),
        scratch_bytes: written,
        pivoted: opts.pivoting,
        growth,
        warnings,
        resumed_columns: done,
    };
    let (pivots_logabs, pivot_signs) = run.into_pivots();
    Ok(LogDet {
        logdet,
        sign,
        pivots_logabs,
        pivot_signs,
        info,
    })
}
