//! NTK features shared between ranks: each feature chunk is computed once, by one of the ranks whose
//! blocks need it, and sent to the others that need it, instead of every rank computing the features of
//! every example its block rows and columns touch (with a 1 × 2 grid, nearly all of them: twice the
//! work). The plan is a pure function of the layout, so every rank computes the same plan without talking.
//!
//! Sharing needs every rank's needed chunks to fit in its feature cache at once (they are held until the
//! rank's tiles are formed); when they do not, every rank forms its tiles on demand as single-process
//! MEMDET would (features recomputed where the cache is too small), and the report says so.

use crate::linalg::dist::{agree, grid_position, owned_blocks};
use crate::ntk::features::Features;
use crate::ntk::{wire, NtkTiles};
use crate::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::time::Instant;

/// Values per MPI message: 2^27 f64 (1 GiB), well inside MPI's `int` counts.
const PIECE: usize = 1 << 27;

/// What the sharing did on this rank.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ShareInfo {
    /// Whether features were shared (false: every rank formed its tiles on demand).
    pub shared: bool,
    /// Chunks this rank computed.
    pub computed_chunks: usize,
    /// Chunks this rank received from others.
    pub received_chunks: usize,
    /// Chunk copies this rank sent.
    pub sent_chunks: usize,
    /// Seconds computing and exchanging features.
    pub seconds: f64,
    /// Of those, seconds computing this rank's chunks.
    pub compute_seconds: f64,
    /// Of those, seconds waiting for the other ranks to finish computing theirs.
    pub wait_seconds: f64,
    /// Of those, seconds sending and receiving chunks (the exchange).
    pub exchange_seconds: f64,
    /// Cost of one chunk-pair contraction in chunk feature passes, measured on rank 0 (0 on one rank):
    /// how the plan weighed each rank's tiles against the chunks it computes.
    pub pair_cost: f64,
}

/// The sharing plan for a grid: which chunks each rank needs, and which rank computes each chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct SharePlan {
    /// `needs[r][c]`: rank r's blocks touch chunk c.
    pub needs: Vec<Vec<bool>>,
    /// The rank that computes chunk c (`None` when no rank needs it).
    pub owner: Vec<Option<usize>>,
}

/// The plan for `tiles` laid out in blocks of `nb` rows on a P × Q `grid`: every rank needs the chunks of
/// its owned blocks' rows and columns; each chunk goes to the rank needing it whose work so far is least,
/// which balances the formation. A rank's work starts at its tiles' contraction work, `pair_cost` chunk
/// feature passes per chunk pair (0: features alone are balanced), and grows by each chunk it computes;
/// chunk 0 goes to rank 0, which owns block (0, 0) on every grid (it may have computed it already, to
/// measure `pair_cost`).
pub fn plan(tiles: &NtkTiles, nb: usize, grid: (usize, usize), pair_cost: f64) -> SharePlan {
    use crate::linalg::TileSource;
    let ranks = grid.0 * grid.1;
    let chunks = tiles.num_chunks();
    let m = TileSource::dim(tiles);
    let range = |b: usize| b * nb..(b * nb + nb).min(m);
    let mut pairs = vec![0u64; ranks];
    let needs: Vec<Vec<bool>> = (0..ranks)
        .map(|r| {
            let mut need = vec![false; chunks];
            for (bi, bj) in owned_blocks(m, nb, grid, grid_position(r, grid)) {
                pairs[r] += tiles.fill_units(range(bi), range(bj));
                for b in [bi, bj] {
                    for c in tiles.chunks_of_rows(range(b)) {
                        need[c] = true;
                    }
                }
            }
            need
        })
        .collect();
    let mean_chunk =
        (0..chunks).map(|c| tiles.chunk_bytes(c)).sum::<usize>() as f64 / chunks.max(1) as f64;
    let mut load: Vec<f64> = pairs
        .iter()
        .map(|&p| pair_cost * p as f64 * mean_chunk)
        .collect();
    let owner = (0..chunks)
        .map(|c| {
            let best = if c == 0 && needs[0][0] {
                Some(0)
            } else {
                (0..ranks)
                    .filter(|&r| needs[r][c])
                    .min_by(|&a, &b| load[a].total_cmp(&load[b]))
            }?;
            load[best] += tiles.chunk_bytes(c) as f64;
            Some(best)
        })
        .collect();
    SharePlan { needs, owner }
}

/// Chunk 0's features (computed by rank 0) and the cost of one chunk-pair contraction in chunk feature
/// passes, measured on rank 0 from that chunk and broadcast, so that every rank computes the same plan. One
/// rank alone has nothing to balance (0).
fn measure_pair_cost(
    world: &SimpleCommunicator,
    tiles: &NtkTiles,
) -> Result<(Option<Features>, f64)> {
    if world.size() == 1 {
        return Ok((None, 0.0));
    }
    let measured = if world.rank() == 0 {
        let t0 = Instant::now();
        tiles.compute_chunk(0).map(|f| {
            let feature_seconds = t0.elapsed().as_secs_f64();
            let pair_seconds = tiles.time_pair(&f);
            (
                Some(f),
                pair_seconds / feature_seconds.max(f64::MIN_POSITIVE),
            )
        })
    } else {
        Ok((None, 0.0))
    };
    let (first, mut cost) = agree(world, measured)?;
    world.process_at_rank(0).broadcast_into(&mut cost);
    Ok((first, cost))
}

/// Compute this rank's chunks of the plan and exchange them, so that every rank's cache holds every chunk
/// its blocks need (a collective; a failure on any rank fails every rank).
pub fn share_features(
    world: &SimpleCommunicator,
    tiles: &NtkTiles,
    nb: usize,
    grid: (usize, usize),
) -> Result<ShareInfo> {
    let t0 = Instant::now();
    let me = world.rank() as usize;
    let plan = plan(tiles, nb, grid, 0.0);
    let bytes_needed = |r: usize| -> usize {
        (0..tiles.num_chunks())
            .filter(|&c| plan.needs[r][c])
            .map(|c| tiles.chunk_bytes(c))
            .sum()
    };
    // Every rank's needed chunks must fit its cache (the same budget on every rank; agreed all the same).
    let fits_here = i32::from(bytes_needed(me) <= tiles.feature_budget());
    let mut fits = 0;
    world.all_reduce_into(&fits_here, &mut fits, SystemOperation::min());
    if fits == 0 {
        return Ok(ShareInfo::default());
    }
    let mut info = ShareInfo {
        shared: true,
        ..ShareInfo::default()
    };
    // Phase 1: weigh each rank's tiles against its feature work (rank 0 measures the cost of a tile on
    // chunk 0), then every rank computes its own chunks, all ranks at once.
    let (mut first, pair_cost) = measure_pair_cost(world, tiles)?;
    let plan = self::plan(tiles, nb, grid, pair_cost);
    info.pair_cost = pair_cost;
    let mine: Vec<usize> = (0..plan.owner.len())
        .filter(|&c| plan.owner[c] == Some(me))
        .collect();
    let computed: Result<Vec<(usize, Features)>> = mine
        .iter()
        .map(|&c| match (c, first.take()) {
            (0, Some(f)) => Ok((0, f)),
            _ => Ok((c, tiles.compute_chunk(c)?)),
        })
        .collect();
    info.compute_seconds = t0.elapsed().as_secs_f64();
    let computed = agree(world, computed)?;
    info.wait_seconds = t0.elapsed().as_secs_f64() - info.compute_seconds;
    info.computed_chunks = mine.len();
    // Phase 2: every rank posts all its sends at once (immediate sends, in chunk order per destination),
    // then receives what it needs in chunk order, so both directions between two ranks move at the same
    // time; MPI's non-overtaking rule for one sender, receiver and tag matches every message. A local
    // failure is kept and agreed on at the end, so no rank leaves the exchange early.
    let outgoing: Vec<(usize, Vec<usize>, Envelope)> = computed
        .iter()
        .map(|(c, feats)| {
            let to = (0..plan.needs.len())
                .filter(|&r| r != me && plan.needs[r][*c])
                .collect();
            (*c, to, Envelope::of(feats))
        })
        .collect();
    let mut failure: Result<()> = Ok(());
    let mut received = Vec::new();
    mpi::request::scope(|scope| {
        let mut requests = Vec::new();
        for ((_, to, envelope), (_, feats)) in outgoing.iter().zip(&computed) {
            for &r in to {
                let dest = world.process_at_rank(r as i32);
                requests.push(dest.immediate_send(scope, &envelope.counts[..]));
                requests.push(dest.immediate_send(scope, &envelope.header[..]));
                for values in wire::values(feats) {
                    for piece in values.chunks(PIECE) {
                        requests.push(dest.immediate_send(scope, piece));
                    }
                }
                info.sent_chunks += 1;
            }
        }
        for (c, owner) in plan.owner.iter().enumerate() {
            match *owner {
                Some(owner) if owner != me && plan.needs[me][c] => {
                    received.push((c, receive(world, owner)));
                    info.received_chunks += 1;
                }
                _ => {}
            }
        }
        for request in requests {
            request.wait();
        }
    });
    for (c, feats) in received {
        if failure.is_ok() {
            failure = feats.and_then(|f| tiles.insert_chunk(c, f));
        }
    }
    for (c, feats) in computed {
        if plan.needs[me][c] && failure.is_ok() {
            failure = tiles.insert_chunk(c, feats);
        }
    }
    agree(world, failure)?;
    info.seconds = t0.elapsed().as_secs_f64();
    info.exchange_seconds = info.seconds - info.compute_seconds - info.wait_seconds;
    Ok(info)
}

/// What precedes a chunk's values on the wire: `counts` = (the header's length, the number of value
/// messages) as f64 (exact below 2^53, like the header's own sizes), then the header; the values follow
/// straight from the features (no packed copy), each array in pieces of at most [`PIECE`] values.
struct Envelope {
    counts: [f64; 2],
    header: Vec<f64>,
}

impl Envelope {
    fn of(feats: &Features) -> Self {
        let header = wire::header(feats);
        let messages: usize = wire::values(feats)
            .iter()
            .map(|v| v.len().div_ceil(PIECE))
            .sum();
        Self {
            counts: [header.len() as f64, messages as f64],
            header,
        }
    }
}

/// Receive what the immediate sends of [`share_features`] sent from rank `from`, straight into features of the header's sizes. Every
/// message is received even when the header cannot be read (then into scratch), so the sender never
/// waits on a receive that is not posted.
fn receive(world: &SimpleCommunicator, from: usize) -> Result<Features> {
    let src = world.process_at_rank(from as i32);
    let mut counts = [0.0f64; 2];
    src.receive_into(&mut counts[..]);
    let counts = counts.map(|v| v as u64);
    let mut header = vec![0.0f64; counts[0] as usize];
    src.receive_into(&mut header[..]);
    let mut feats = match wire::from_header(&header) {
        Ok(f) => f,
        Err(e) => {
            let mut scratch = vec![0.0f64; PIECE];
            for _ in 0..counts[1] {
                src.receive_into(&mut scratch[..]);
            }
            return Err(e);
        }
    };
    let mut messages = 0u64;
    for values in wire::values_mut(&mut feats) {
        for piece in values.chunks_mut(PIECE) {
            src.receive_into(piece);
            messages += 1;
        }
    }
    if messages != counts[1] {
        return Err(Error::Internal(format!(
            "features from rank {from}: {messages} value messages for a header announcing {}",
            counts[1]
        )));
    }
    Ok(feats)
}
