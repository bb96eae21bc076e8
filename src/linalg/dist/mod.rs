//! Distributed exact log-determinant (feature `mpi`): the matrix is laid out 2-D block-cyclically on a P × Q
//! BLACS grid, every rank asks its own [`TileSource`] only for the blocks it owns, and ScaLAPACK's `pdpotrf`
//! factors it. ln det and the nested ℓ_k come from the diagonal of the distributed factor (without pivoting,
//! the factor of a leading block is the leading block of the factor, as in MEMDET), reduced to rank 0. The
//! matrix is never gathered on one rank.
//!
//! Failure on any rank is a failure of the job: every local error (a tile that cannot be read, a NaN or Inf,
//! a budget that does not hold) is agreed on with one all-reduce before the factorisation, so no rank is left
//! waiting in a collective; the lowest failing rank prints its message, the others fail silently
//! ([`Error::Reported`]).

pub mod scalapack;

use crate::linalg::TileSource;
use crate::{Error, Result};
use faer::Mat;
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use scalapack::Grid;
use std::time::Instant;

/// Settings of a distributed factorisation.
#[derive(Debug, Clone)]
pub struct DistOptions {
    /// Process grid P × Q (P·Q must equal the number of ranks).
    pub grid: (usize, usize),
    /// Block size (a multiple of the source's granule).
    pub block_size: usize,
    /// Resident bytes allowed per rank (its share of the matrix plus `reserved`).
    pub max_mem: u64,
    /// Bytes per rank the source itself needs (e.g. an NTK feature cache), counted against `max_mem`.
    pub reserved: u64,
    /// M = scale·A + shift·I.
    pub scale: f64,
    /// The diagonal shift.
    pub shift: f64,
    /// Seconds this rank already spent forming its share before the call (e.g. computing and exchanging
    /// NTK features), added to its reported formation time.
    pub prior_formation_seconds: f64,
}

/// The result on rank 0 (other ranks get `None`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DistLogDet {
    /// ln det.
    pub logdet: f64,
    /// Always +1 (Cholesky).
    pub sign: f64,
    /// ln |pivot| per row (2 ln L_ii), for nested log-dets.
    #[serde(skip)]
    pub pivots_logabs: Vec<f64>,
    /// Matrix order.
    pub m: usize,
    /// "PxQ".
    pub grid: String,
    /// Number of ranks.
    pub ranks: usize,
    /// Block size.
    pub block_size: usize,
    /// Per rank: seconds spent forming (reading) its tiles.
    pub formation_seconds: Vec<f64>,
    /// Per rank: seconds in pdpotrf.
    pub factor_seconds: Vec<f64>,
    /// m³/3 / (slowest rank's pdpotrf seconds) / 1e9.
    pub factor_gflops: f64,
    /// Per rank: bytes of its local share of the matrix.
    pub local_bytes: Vec<u64>,
    /// The BLAS library rank 0 has mapped.
    pub blas: String,
}

/// The squarest P × Q with P ≤ Q and P·Q = `ranks`.
pub fn squarest_grid(ranks: usize) -> (usize, usize) {
    let mut p = (ranks as f64).sqrt().floor() as usize;
    while p > 1 && ranks % p != 0 {
        p -= 1;
    }
    let p = p.max(1);
    (p, ranks / p)
}

/// Parse `--grid PxQ`.
pub fn parse_grid(s: &str) -> Result<(usize, usize)> {
    let parsed = s
        .split_once(['x', 'X'])
        .and_then(|(p, q)| Some((p.trim().parse().ok()?, q.trim().parse().ok()?)));
    match parsed {
        Some((p, q)) if p >= 1 && q >= 1 => Ok((p, q)),
        _ => Err(Error::Usage(format!("--grid {s}: expected PxQ, e.g. 2x2"))),
    }
}

thread_local! {
    /// The MPI environment of this process (MPI is used from the main thread only).
    static UNIVERSE: std::cell::RefCell<Option<mpi::environment::Universe>> = const { std::cell::RefCell::new(None) };
}

/// The communicator of this job, MPI initialised on first use (once per process); [`finalize`] ends it.
pub fn world() -> Result<SimpleCommunicator> {
    UNIVERSE.with(|u| {
        let mut u = u.borrow_mut();
        if let Some(universe) = u.as_ref() {
            return Ok(universe.world());
        }
        let universe = mpi::initialize()
            .ok_or_else(|| Error::Internal("MPI could not be initialised".into()))?;
        let world = universe.world();
        *u = Some(universe);
        Ok(world)
    })
}

/// True once this process has started MPI (a distributed command is running).
pub fn is_active() -> bool {
    UNIVERSE.with(|u| u.borrow().is_some())
}

/// True on every rank but 0 of an MPI job (false when MPI was not started).
pub fn is_follower() -> bool {
    UNIVERSE.with(|u| u.borrow().as_ref().is_some_and(|u| u.world().rank() != 0))
}

/// Finalize MPI if it was started (the binary calls this before it exits, on success and on error): a
/// barrier first, so every rank has finished its output before any exits.
pub fn finalize() {
    UNIVERSE.with(|u| {
        if let Some(universe) = u.borrow_mut().take() {
            universe.world().barrier();
        }
    });
}

/// Ranks of this job on this node, from the launcher's environment (Open MPI's
/// `OMPI_COMM_WORLD_LOCAL_SIZE`, MPICH/Hydra's `MPI_LOCALNRANKS`), if it says.
pub fn local_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .filter(|&n| n >= 1)
}

/// Ask OpenBLAS, when it is the BLAS this process mapped, to use `threads` threads in ScaLAPACK's local
/// BLAS calls (found at run time, so a build against another BLAS still links); false when there is no
/// OpenBLAS.
pub fn set_blas_threads(threads: usize) -> bool {
    // SAFETY: dlsym with RTLD_DEFAULT only looks a name up in the loaded objects.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"openblas_set_num_threads".as_ptr()) };
    if sym.is_null() {
        return false;
    }
    // SAFETY: OpenBLAS declares `void openblas_set_num_threads(int)`.
    let set: extern "C" fn(std::os::raw::c_int) = unsafe { std::mem::transmute(sym) };
    set(threads.clamp(1, 1 << 16) as std::os::raw::c_int);
    true
}

/// Agree on failure across ranks (a collective: every rank must call it at the same point): if any rank
/// has `Err`, every rank returns an error; the lowest failing rank returns its own (to be printed), the
/// others [`Error::Reported`] with its exit code.
pub fn agree<T>(world: &SimpleCommunicator, local: Result<T>) -> Result<T> {
    let mine: i32 = if local.is_err() {
        world.rank()
    } else {
        i32::MAX
    };
    let mut first = i32::MAX;
    world.all_reduce_into(&mine, &mut first, SystemOperation::min());
    if first == i32::MAX {
        return local;
    }
    let mut code: i32 = match &local {
        Err(e) if first == world.rank() => e.exit_code(),
        _ => 0,
    };
    world.process_at_rank(first).broadcast_into(&mut code);
    match local {
        Err(e) if first == world.rank() => Err(e),
        _ => Err(Error::Reported(code)),
    }
}

/// The blocks `(I, J)`, I ≥ J, of the lower triangle of an m × m matrix in blocks of `nb` that grid position
/// `(row, col)` of a P × Q grid owns in the 2-D block-cyclic layout (block row I on grid row I mod P, block
/// column J on grid column J mod Q), column by column.
pub fn owned_blocks(
    m: usize,
    nb: usize,
    (p, q): (usize, usize),
    (row, col): (usize, usize),
) -> impl Iterator<Item = (usize, usize)> {
    let blocks = m.div_ceil(nb.max(1));
    (0..blocks)
        .filter(move |bj| bj % q == col)
        .flat_map(move |bj| {
            (bj..blocks)
                .filter(move |bi| bi % p == row)
                .map(move |bi| (bi, bj))
        })
}

/// The grid position of `rank` on a P × Q grid: BLACS's row-major order (`blacs_gridinit` with "R").
pub fn grid_position(rank: usize, (_p, q): (usize, usize)) -> (usize, usize) {
    (rank / q, rank % q)
}

/// Check before any work, on every rank, that the grid matches the job, that the block size is a multiple
/// of the granule and that this rank's block-cyclic share of an m × m matrix plus `opts.reserved` fits in
/// `opts.max_mem` (a collective: the job fails as one, with the lowest failing rank's message). Returns
/// the local share's (rows, columns).
pub fn check_plan(m: usize, granule: usize, opts: &DistOptions) -> Result<(usize, usize)> {
    let world = &world()?;
    let ranks = world.size() as usize;
    let nb = opts.block_size;
    let (p, q) = opts.grid;
    let plan = if p * q != ranks {
        Err(Error::Usage(format!(
            "--grid {p}x{q} needs {} ranks, the job has {ranks}",
            p * q
        )))
    } else if nb == 0 || nb % granule.max(1) != 0 {
        Err(Error::Usage(format!(
            "--block-size {nb} must be a positive multiple of the source's granule {granule} (blocks never split \
             an example's logits)"
        )))
    } else {
        Ok(())
    };
    agree(world, plan)?;
    let (myrow, mycol) = grid_position(world.rank() as usize, (p, q));
    let locr = Grid::numroc(m, nb, myrow, p);
    let locc = Grid::numroc(m, nb, mycol, q);
    let local_bytes = (locr * locc * 8) as u64;
    let budget = if local_bytes + opts.reserved > opts.max_mem {
        let need =
            ((m * m * 8) as f64 / opts.max_mem.saturating_sub(opts.reserved).max(1) as f64).ceil();
        Err(Error::Usage(format!(
            "the {m}x{m} matrix needs {:.1} MiB on rank {} (its block-cyclic share) plus {:.1} MiB for the source, \
             over --max-mem {:.1} MiB per rank: at this budget the matrix needs at least {need} ranks",
            local_bytes as f64 / 1048576.0,
            world.rank(),
            opts.reserved as f64 / 1048576.0,
            opts.max_mem as f64 / 1048576.0
        )))
    } else {
        Ok(())
    };
    agree(world, budget)?;
    Ok((locr, locc))
}

/// Factor `source` (symmetric positive definite) on the process grid and return ln det on rank 0.
pub fn distributed_cholesky(
    source: &dyn TileSource,
    opts: &DistOptions,
) -> Result<Option<DistLogDet>> {
    let world = &world()?;
    let ranks = world.size() as usize;
    let m = source.dim();
    let nb = opts.block_size;
    let (p, q) = opts.grid;
    let (locr, locc) = check_plan(m, source.granule(), opts)?;
    let local_bytes = (locr * locc * 8) as u64;
    let grid = Grid::new(p, q);
    let placed = if (grid.myrow, grid.mycol) == grid_position(world.rank() as usize, (p, q)) {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "BLACS placed rank {} at grid position ({}, {}), not in row-major order as planned",
            world.rank(),
            grid.myrow,
            grid.mycol
        )))
    };
    agree(world, placed)?;

    let t0 = Instant::now();
    let mut local = vec![0.0f64; locr.max(1) * locc];
    let filled = fill_local(
        source,
        &grid,
        (m, nb, locr.max(1)),
        (opts.scale, opts.shift),
        &mut local,
    );
    agree(world, filled)?;
    let formation = opts.prior_formation_seconds + t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let info = grid.pdpotrf_lower(m, nb, &mut local, locr.max(1));
    let factor = t1.elapsed().as_secs_f64();
    // info is the same on every rank (pdpotrf broadcasts it), so all ranks return here together and rank
    // 0 alone reports it.
    let status = match info {
        0 => Ok(()),
        k if k > 0 => Err(Error::Input(format!(
            "matrix is not positive definite: the leading minor of order {k} is not, so the pivot of row {} \
             (0-based) is <= 0 (ScaLAPACK pdpotrf on grid {p}x{q}); add a diagonal shift with --shift",
            k - 1
        ))),
        k => Err(Error::Internal(format!("pdpotrf: illegal argument {}", -k))),
    };
    if world.rank() == 0 {
        status?;
    } else if status.is_err() {
        return Err(Error::Reported(2));
    }

    // The diagonal of L, as per-row 2 ln L_ii, summed onto rank 0 (each entry is owned by exactly one rank).
    let mut diag = vec![0.0f64; m];
    for b in (0..m.div_ceil(nb)).filter(|b| b % p == grid.myrow && b % q == grid.mycol) {
        let (lr0, lc0) = ((b / p) * nb, (b / q) * nb);
        for i in 0..nb.min(m - b * nb) {
            let lii = local[(lr0 + i) + (lc0 + i) * locr.max(1)];
            diag[b * nb + i] = 2.0 * lii.ln();
        }
    }
    let root = world.process_at_rank(0);
    let times = [formation, factor, local_bytes as f64];
    if world.rank() == 0 {
        let mut total = vec![0.0f64; m];
        root.reduce_into_root(&diag[..], &mut total[..], SystemOperation::sum());
        let mut all = vec![0.0f64; 3 * ranks];
        root.gather_into_root(&times[..], &mut all[..]);
        let slowest = (0..ranks).map(|r| all[3 * r + 1]).fold(0.0, f64::max);
        Ok(Some(DistLogDet {
            logdet: {
                let mut sum = crate::linalg::memdet::NeumaierSum::default();
                total.iter().for_each(|&v| sum.add(v));
                sum.value()
            },
            sign: 1.0,
            pivots_logabs: total,
            m,
            grid: format!("{p}x{q}"),
            ranks,
            block_size: nb,
            formation_seconds: (0..ranks).map(|r| all[3 * r]).collect(),
            factor_seconds: (0..ranks).map(|r| all[3 * r + 1]).collect(),
            factor_gflops: (m as f64).powi(3) / 3.0 / slowest.max(1e-12) / 1e9,
            local_bytes: (0..ranks).map(|r| all[3 * r + 2] as u64).collect(),
            blas: scalapack::blas_in_use(),
        }))
    } else {
        root.reduce_into(&diag[..], SystemOperation::sum());
        root.gather_into(&times[..]);
        Ok(None)
    }
}

/// Fill this rank's lower-triangle blocks of `scale·A + shift·I` from the source: block (I, J), I ≥ J, as the
/// transpose of the source's tile (J, I) (sources are asked only for tiles with row block ≤ column block,
/// as MEMDET asks). A non-finite value is an error naming the tile.
fn fill_local(
    source: &dyn TileSource,
    grid: &Grid,
    (m, nb, lld): (usize, usize, usize),
    (scale, shift): (f64, f64),
    local: &mut [f64],
) -> Result<()> {
    let (p, q) = (grid.nprow, grid.npcol);
    for (bi, bj) in owned_blocks(m, nb, (p, q), (grid.myrow, grid.mycol)) {
        let rows = bi * nb..(bi * nb + nb).min(m);
        let cols = bj * nb..(bj * nb + nb).min(m);
        let mut tile = Mat::<f64>::zeros(cols.len(), rows.len());
        source.fill(cols.clone(), rows.clone(), tile.as_mut())?;
        let (lr0, lc0) = ((bi / p) * nb, (bj / q) * nb);
        for c in 0..cols.len() {
            for r in 0..rows.len() {
                let v = tile[(c, r)];
                if !v.is_finite() {
                    return Err(Error::Input(format!(
                        "non-finite value {v} at ({}, {}) in tile rows {cols:?} x cols {rows:?}",
                        cols.start + c,
                        rows.start + r
                    )));
                }
                let diagonal = rows.start + r == cols.start + c;
                local[(lr0 + r) + (lc0 + c) * lld] = scale * v + if diagonal { shift } else { 0.0 };
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids() {
        assert_eq!(squarest_grid(1), (1, 1));
        assert_eq!(squarest_grid(2), (1, 2));
        assert_eq!(squarest_grid(4), (2, 2));
        assert_eq!(squarest_grid(6), (2, 3));
        assert_eq!(squarest_grid(7), (1, 7));
        assert_eq!(parse_grid("2x3").unwrap(), (2, 3));
        assert!(parse_grid("2").is_err() && parse_grid("0x2").is_err());
    }
}
