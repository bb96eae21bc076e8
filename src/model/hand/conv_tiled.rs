//! Train-mode convolution in tiles of a few examples, for lowered one-group convolutions (not 1×1 stride 1,
//! not depthwise): each tile's patch matrix (patch_len × examples·U) is built, multiplied and dropped while it
//! sits in a core's cache, and the backward pass rebuilds it instead of reading a saved copy. The batch-wide
//! path of [`super::conv`] writes the whole batch's patch matrix to memory and reads it back (75 MB for the
//! 32×32 stage of ResNet9 w = 32 at batch 64, and the same again for its gradient), which made those
//! convolutions memory-bound.
//!
//! Parallelism: each rayon thread takes an equal run of consecutive tiles with its own buffers and runs
//! single-threaded GEMMs on them. The weight gradient is one partial sum per thread, added in thread order,
//! so the result is deterministic for a given thread count.
//!
//! Input gradient: for a stride-1 "same" convolution (odd k, padding (k − 1)/2) it is itself a same
//! convolution of the output gradient with the flipped, transposed kernel ([`flip_into`]), so each tile
//! runs one C_in × (C_out·k²) by (C_out·k²) × U product on the patch matrix of `dy` and writes `dx` directly.
//! Otherwise (strided convolutions) the patch gradient Wᵀ·dy (inner dimension only C_out) is formed per tile
//! and scattered back (col2im).
//!
//! 3×3 stride-1 same convolutions run on the direct kernels of [`super::conv_direct`] where they apply
//! (AVX-512 F, rows wide enough): per tile, the padded input (and padded output gradient), no patch matrix.
//! Narrower 3×3 convolutions of stride 1 or 2 run on the channel-blocked kernels of
//! [`super::conv_blocked`] where they apply (forward, weight gradient, and the stride-1 input gradient).
//!
//! Scratch: per thread, one tile's patch matrix, the patch matrix of its output gradient or its patch
//! gradient (when the input needs one) and a C_out × K weight-gradient partial, and one flipped kernel
//! shared by the threads ([`TileScratch::held_values`], counted by [`super::Plan::train_bytes`]).

use super::conv::{at_least, patch_row, scatter_channel};
use super::conv_blocked as blocked;
use super::conv_direct as direct;
use super::plan::ConvShape;
use super::real::Real;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::ops::Range;

/// A tile's patch matrix is kept at or below this many bytes (one example per tile at least).
pub const TILE_BYTES: usize = 1 << 20;

/// Examples per tile for a batch of `n`: as many as fit [`TILE_BYTES`], but no more than an equal share of
/// the batch per thread (so every thread has work).
pub fn tile_examples<T>(g: &ConvShape, n: usize, threads: usize) -> usize {
    let per_example = g.patch_len() * g.positions() * std::mem::size_of::<T>();
    let share = n.div_ceil(threads.max(1)).max(1);
    (TILE_BYTES / per_example.max(1)).clamp(1, share)
}

/// Examples per tile of the direct kernels ([`direct`]): as many as keep the padded input and output
/// gradient of a tile within [`TILE_BYTES`] (they are a ninth of a patch matrix, so tiles are larger and
/// the weight gradient's per-tile reductions fewer), at most an equal share of the batch per thread.
fn direct_tile_examples<T>(g: &ConvShape, n: usize, threads: usize) -> usize {
    let per_example = (g.c_in + g.c_out) * (g.h + 2) * (g.w + 2) * std::mem::size_of::<T>();
    let share = n.div_ceil(threads.max(1)).max(1);
    (TILE_BYTES / per_example.max(1)).clamp(1, share)
}

/// Examples per tile of `g`'s input gradient: [`direct_tile_examples`] when the direct or channel-blocked
/// kernels run it, else [`tile_examples`].
fn tile_for<T: Real>(g: &ConvShape, n: usize, threads: usize) -> usize {
    if direct::applies::<T>(g) || blocked::input_grad_applies::<T>(g) {
        direct_tile_examples::<T>(g, n, threads)
    } else {
        tile_examples::<T>(g, n, threads)
    }
}

/// The example ranges of thread `t` of `threads`: consecutive tiles of `tile` examples, the batch's
/// tiles split into equal runs.
fn tiles_of(t: usize, threads: usize, n: usize, tile: usize) -> impl Iterator<Item = Range<usize>> {
    let count = n.div_ceil(tile);
    let per = count.div_ceil(threads);
    let (first, last) = ((t * per).min(count), ((t + 1) * per).min(count));
    (first..last).map(move |i| i * tile..((i + 1) * tile).min(n))
}

/// One thread's buffers.
#[derive(Default)]
struct ThreadTile<T> {
    cols: Vec<T>,
    dcols: Vec<T>,
    dw: Vec<T>,
    /// A tile's output gradient as vectors of output channels (the channel-blocked weight gradient).
    dyt: Vec<T>,
}

/// Per-thread buffers of the tiled convolutions, each grown (exactly) to its largest use.
#[derive(Default)]
pub struct TileScratch<T> {
    threads: Vec<ThreadTile<T>>,
    /// The flipped, transposed kernel of the last same convolution's input gradient.
    flipped: Vec<T>,
}

/// Whether the input gradient of `g` is a stride-1 same convolution of the output gradient (stride 1, odd
/// k, padding (k − 1)/2, so the output has the input's size).
pub fn transposes_to_same(g: &ConvShape) -> bool {
    g.stride == 1 && 2 * g.padding + 1 == g.k && g.out_h == g.h && g.out_w == g.w
}

/// The convolution whose forward pass is the input gradient of the same convolution `g`: C_out inputs,
/// C_in outputs, the same size, kernel and padding.
fn transposed(g: &ConvShape) -> ConvShape {
    ConvShape {
        c_in: g.c_out,
        c_out: g.c_in,
        ..*g
    }
}

/// `flipped` (C_in × C_out·k·k, row-major) = the kernel of [`transposed`]`(g)`:
/// `flipped[c][o][a][b] = weight[o][c][k−1−a][k−1−b]`. Then
/// `dx[c, y, x] = Σ_{o,a,b} weight[o,c,a,b]·dy[o, y−a+p, x−b+p] = Σ_{o,a,b} flipped[c,o,a,b]·dy[o, y+a−p, x+b−p]`
/// (with 2p = k − 1), a same convolution of `dy`; and `dw[o,c,a,b] = Σ x[c, y, x]·dy[o, y−a'+p, x−b'+p]`
/// with (a', b') = (k−1−a, k−1−b), so `x · patch(dy)ᵀ` is the weight gradient in the flipped layout.
/// The map is an involution: flipping the flipped kernel with [`transposed`]`(g)` gives `weight` back.
pub fn flip_into<T: Real>(weight: &[T], g: &ConvShape, flipped: &mut [T]) {
    let (k, ci, co) = (g.k, g.c_in, g.c_out);
    let kk = k * k;
    // In parallel over the input channels (every pass flips its weights per call).
    flipped[..ci * co * kk]
        .par_chunks_mut(co * kk)
        .enumerate()
        .for_each(|(c, out)| {
            for o in 0..co {
                let src = &weight[(o * ci + c) * kk..][..kk];
                let dst = &mut out[o * kk..][..kk];
                for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = *s;
                }
            }
        });
}

/// Values of one thread's input-gradient buffer for a tile of `tile` examples of `g`: the patch matrix of
/// `dy` (same convolutions) or the patch gradient (the others).
fn dcols_len<T: Real>(g: &ConvShape, tile: usize) -> usize {
    if direct::applies::<T>(g) || blocked::input_grad_applies::<T>(g) {
        return direct::padded_len(g, g.c_out, tile);
    }
    let rows = if transposes_to_same(g) {
        transposed(g).patch_len()
    } else {
        g.patch_len()
    };
    rows * g.positions() * tile
}

impl<T: Real> TileScratch<T> {
    /// Values held (allocated capacities), for [`super::HandPass::held_bytes`].
    pub fn held_values(&self) -> usize {
        self.threads
            .iter()
            .map(|t| t.cols.capacity() + t.dcols.capacity() + t.dw.capacity() + t.dyt.capacity())
            .sum::<usize>()
            + self.flipped.capacity()
    }

    fn for_threads(&mut self) -> &mut [ThreadTile<T>] {
        self.parts().0
    }

    /// One buffer set per rayon thread of the current pool, and the flipped kernel.
    fn parts(&mut self) -> (&mut [ThreadTile<T>], &[T]) {
        let threads = rayon::current_num_threads();
        if self.threads.len() < threads {
            self.threads.resize_with(threads, ThreadTile::default);
        }
        (&mut self.threads[..threads], &self.flipped)
    }
}

/// A pointer the threads write through, each to its own tiles' columns (see the SAFETY notes).
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
// SAFETY: the threads given a `Shared` write to disjoint elements (different examples' columns).
unsafe impl<T: Send> Send for Shared<T> {}
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The pointer (a method, so closures capture the whole `Shared`, not its raw field).
    fn at(&self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }
}

/// The patch matrix of the examples `ex` of the batch `x` (C_in, n, H, W) into `cols`
/// (patch_len × ex.len()·U, row-major).
fn patch_tile<T: Real>(x: &[T], g: &ConvShape, n: usize, ex: Range<usize>, cols: &mut [T]) {
    let width = ex.len() * g.positions();
    for (r, row) in cols[..g.patch_len() * width].chunks_mut(width).enumerate() {
        patch_row(x, g, n, 0, r, ex.clone(), row);
    }
}

/// `y` (C_out, n, OH, OW) = conv(x) + bias, tile by tile.
pub fn forward<T: Real>(
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    g: &ConvShape,
    n: usize,
    scratch: &mut TileScratch<T>,
    y: &mut [T],
) {
    debug_assert!(g.groups == 1 && !g.is_pointwise() && !g.is_depthwise());
    let (kg, co, u) = (g.patch_len(), g.c_out, g.positions());
    let nu = n * u;
    assert!(y.len() >= co * nu && weight.len() >= co * kg);
    let out = Shared(y.as_mut_ptr());
    let on_blocked = blocked::applies::<T>(g);
    if direct::applies::<T>(g) || on_blocked {
        let width = panel_width::<T>(g);
        at_least(&mut scratch.flipped, direct::panels_len_of(co, kg, width));
        direct::pack_panels_of(weight, co, kg, width, &mut scratch.flipped);
        let (threads, panels) = scratch.parts();
        let count = threads.len();
        let tile = direct_tile_examples::<T>(g, n, count);
        threads.par_iter_mut().enumerate().for_each(|(t, s)| {
            at_least(&mut s.cols, direct::padded_len(g, g.c_in, tile));
            for ex in tiles_of(t, count, n, tile) {
                direct::pad_tile(x, g, g.c_in, n, ex.clone(), &mut s.cols);
                let y = direct::Out {
                    ptr: out.at(0),
                    stride: nu,
                    first: ex.start * u,
                    add: false,
                };
                // SAFETY: `applies` holds; the tile's columns of every output channel lie inside `y`
                // (asserted above) and only this tile writes them (tiles are disjoint example ranges).
                unsafe {
                    if on_blocked {
                        blocked::forward_tile(&s.cols, g, g.c_in, co, ex.len(), panels, bias, &y);
                    } else {
                        direct::forward_tile(&s.cols, g, g.c_in, co, ex.len(), panels, bias, &y);
                    }
                }
            }
        });
        return;
    }
    let threads = scratch.for_threads();
    let count = threads.len();
    let tile = tile_examples::<T>(g, n, count);
    let w = MatRef::from_row_major_slice(&weight[..co * kg], co, kg);
    threads.par_iter_mut().enumerate().for_each(|(t, s)| {
        at_least(&mut s.cols, kg * tile * u);
        for ex in tiles_of(t, count, n, tile) {
            let cu = ex.len() * u;
            patch_tile(x, g, n, ex.clone(), &mut s.cols);
            let cols = MatRef::from_row_major_slice(&s.cols[..kg * cu], kg, cu);
            // SAFETY: rows 0..co, columns ex·U of the row-major (co × nu) `y` are in bounds (asserted
            // above), and only this tile writes them: tiles are disjoint example ranges.
            let dst =
                unsafe { MatMut::from_raw_parts_mut(out.at(ex.start * u), co, cu, nu as isize, 1) };
            crate::linalg::gemm::matmul(dst, Accum::Replace, w, cols, T::from(1.0), Par::Seq);
            if let Some(bias) = bias {
                for (o, &b) in bias.iter().enumerate().take(co) {
                    // SAFETY: as above, row o's columns of this tile.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(out.at(o * nu + ex.start * u), cu)
                    };
                    row.iter_mut().for_each(|v| *v += b);
                }
            }
        }
    });
}

/// The weight gradient `dw` (C_out × K, replaced) and, when `dx` is given, the input gradient (replaced,
/// or added to with `add`) of the output gradient `dy` (C_out, n, OH, OW), tile by tile. The bias
/// gradient is the caller's (a row sum of `dy`).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    x: &[T],
    weight: &[T],
    dy: &[T],
    g: &ConvShape,
    n: usize,
    scratch: &mut TileScratch<T>,
    dw: &mut [T],
    dx: Option<(&mut [T], bool)>,
) {
    gradients(Some((x, dw)), weight, dy, g, n, scratch, dx);
}

/// The input gradient alone of `rows` output gradients `dy` (C_out, rows, OH, OW) into `dx` (replaced, or
/// added to with `add`), tile by tile: the NTK's batched reverse pass, whose `rows · patch_len · U` patch
/// gradient would otherwise be written to memory whole (235 MB in f64 for 130 rows of ResNet9 w = 32's
/// 28×28 stage).
pub fn input_grad<T: Real>(
    weight: &[T],
    dy: &[T],
    g: &ConvShape,
    rows: usize,
    scratch: &mut TileScratch<T>,
    dx: &mut [T],
    add: bool,
) {
    gradients(None, weight, dy, g, rows, scratch, Some((dx, add)));
}

/// [`backward`] with the weight gradient optional (`wgrad`: the input `x` and `dw`).
fn gradients<T: Real>(
    wgrad: Option<(&[T], &mut [T])>,
    weight: &[T],
    dy: &[T],
    g: &ConvShape,
    n: usize,
    scratch: &mut TileScratch<T>,
    dx: Option<(&mut [T], bool)>,
) {
    debug_assert!(g.groups == 1 && !g.is_pointwise() && !g.is_depthwise());
    let (kg, co, u, plane) = (g.patch_len(), g.c_out, g.positions(), g.h * g.w);
    let nu = n * u;
    assert!(dy.len() >= co * nu);
    let (x, dw) = match wgrad {
        Some((x, dw)) => {
            assert!(dw.len() >= co * kg && x.len() >= g.c_in * n * plane);
            (Some(x), Some(dw))
        }
        None => (None, None),
    };
    if direct::applies::<T>(g) {
        padded_gradients(Kernels::Direct, x.zip(dw), weight, dy, g, n, scratch, dx);
        return;
    }
    if blocked::applies::<T>(g) {
        padded_gradients(Kernels::Blocked, x.zip(dw), weight, dy, g, n, scratch, dx);
        return;
    }
    lowered_gradients(x.zip(dw), weight, dy, g, n, scratch, dx);
}

/// [`gradients`] on the patch matrices (of `x` or `dy`) and the GEMM.
fn lowered_gradients<T: Real>(
    wgrad: Option<(&[T], &mut [T])>,
    weight: &[T],
    dy: &[T],
    g: &ConvShape,
    n: usize,
    scratch: &mut TileScratch<T>,
    dx: Option<(&mut [T], bool)>,
) {
    let (kg, co, u, plane) = (g.patch_len(), g.c_out, g.positions(), g.h * g.w);
    let nu = n * u;
    let (x, dw) = match wgrad {
        Some((x, dw)) => (Some(x), Some(dw)),
        None => (None, None),
    };
    // A same convolution whose input takes a gradient runs both products on the patch matrix of `dy`
    // (see the module docs); otherwise the weight gradient reads the patch matrix of `x`.
    let same = dx.is_some() && transposes_to_same(g);
    let gt = transposed(g);
    if same {
        at_least(&mut scratch.flipped, g.c_in * gt.patch_len());
        flip_into(weight, g, &mut scratch.flipped);
    }
    let (threads, flipped) = scratch.parts();
    let count = threads.len();
    let tile = tile_examples::<T>(g, n, count);
    let w = MatRef::from_row_major_slice(&weight[..co * kg], co, kg);
    let (wt_rows, kt) = (if same { g.c_in } else { 0 }, gt.patch_len());
    let wt = MatRef::from_row_major_slice(&flipped[..wt_rows * kt], wt_rows, kt);
    let dy_all = MatRef::from_row_major_slice(&dy[..co * nu], co, nu);
    let (dx_ptr, add) = match dx {
        Some((dx, add)) => {
            assert!(dx.len() >= g.c_in * n * plane);
            (Some(Shared(dx.as_mut_ptr())), add)
        }
        None => (None, false),
    };
    threads.par_iter_mut().enumerate().for_each(|(t, s)| {
        if x.is_some() {
            if !same {
                at_least(&mut s.cols, kg * tile * u);
            }
            at_least(&mut s.dw, co * kg);
            s.dw[..co * kg].fill(T::ZERO);
        }
        if dx_ptr.is_some() {
            at_least(&mut s.dcols, dcols_len::<T>(g, tile));
        }
        for ex in tiles_of(t, count, n, tile) {
            let cu = ex.len() * u;
            let dy_tile = dy_all.subcols(ex.start * u, cu);
            if same {
                patch_tile(dy, &gt, n, ex.clone(), &mut s.dcols);
                let dy_cols = MatRef::from_row_major_slice(&s.dcols[..kt * cu], kt, cu);
                if let Some(x) = x {
                    // The flipped weight gradient, C_in × (C_out·k²): x's rows of these examples times
                    // the patch matrix of dy, transposed (unflipped into `dw` after the loop).
                    let x_tile =
                        MatRef::from_row_major_slice(&x[..g.c_in * n * plane], g.c_in, n * plane)
                            .subcols(ex.start * plane, cu);
                    let dw_t = MatMut::from_row_major_slice_mut(&mut s.dw[..co * kg], g.c_in, kt);
                    let one = T::from(1.0);
                    crate::linalg::gemm::matmul(
                        dw_t,
                        Accum::Add,
                        x_tile,
                        dy_cols.transpose(),
                        one,
                        Par::Seq,
                    );
                }
                let dx = dx_ptr.expect("a same route has an input gradient");
                // SAFETY: rows 0..C_in, columns ex·U of the row-major (C_in × n·U) `dx` (U = H·W) are in
                // bounds (asserted above), and only this tile touches them: tiles are disjoint example ranges.
                let dst = unsafe {
                    MatMut::from_raw_parts_mut(dx.at(ex.start * u), g.c_in, cu, nu as isize, 1)
                };
                let accum = if add { Accum::Add } else { Accum::Replace };
                crate::linalg::gemm::matmul(dst, accum, wt, dy_cols, T::from(1.0), Par::Seq);
                continue;
            }
            if let Some(x) = x {
                patch_tile(x, g, n, ex.clone(), &mut s.cols);
                let cols = MatRef::from_row_major_slice(&s.cols[..kg * cu], kg, cu);
                let dw_t = MatMut::from_row_major_slice_mut(&mut s.dw[..co * kg], co, kg);
                crate::linalg::gemm::matmul(
                    dw_t,
                    Accum::Add,
                    dy_tile,
                    cols.transpose(),
                    T::from(1.0),
                    Par::Seq,
                );
            }
            let Some(dx) = dx_ptr else { continue };
            let dcols = MatMut::from_row_major_slice_mut(&mut s.dcols[..kg * cu], kg, cu);
            crate::linalg::gemm::matmul(
                dcols,
                Accum::Replace,
                w.transpose(),
                dy_tile,
                T::from(1.0),
                Par::Seq,
            );
            for c in 0..g.c_in {
                // SAFETY: channel c's planes of the examples `ex` lie inside `dx` (asserted above), and
                // only this tile touches them: tiles are disjoint example ranges.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        dx.at((c * n + ex.start) * plane),
                        ex.len() * plane,
                    )
                };
                if !add {
                    dst.fill(T::ZERO);
                }
                scatter_channel(&s.dcols[..kg * cu], cu, g, c, ex.len(), dst);
            }
        }
    });
    let Some(dw) = dw else { return };
    let sum = thread_sum(threads, co * kg);
    if same {
        // The partials hold the kernel of the transposed convolution's layout: flip it back.
        flip_into(sum, &gt, &mut dw[..co * kg]);
    } else {
        dw[..co * kg].copy_from_slice(sum);
    }
}

/// The threads' weight-gradient partials (`len` values each) added in thread order into the first's.
fn thread_sum<T: Real>(threads: &mut [ThreadTile<T>], len: usize) -> &[T] {
    let (first, rest) = threads.split_first_mut().expect("at least one thread");
    for s in rest {
        first.dw[..len]
            .iter_mut()
            .zip(&s.dw)
            .for_each(|(d, &v)| *d += v);
    }
    &first.dw[..len]
}

/// Which family of padded-tile kernels runs a convolution.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernels {
    /// [`direct`]: vectors over positions.
    Direct,
    /// [`blocked`]: vectors over output channels.
    Blocked,
}

/// [`gradients`] by the padded-tile kernels of `kind` (which must apply to `g`): per tile, the weight
/// gradient from the padded input and `dy` (the channel-blocked kernel's from `dy` transposed to vectors of
/// output channels, [`direct_dw_is_blocked`]), and the input gradient as the forward of the padded `dy`
/// with the flipped, transposed kernel; the input gradient of a strided convolution by
/// [`lowered_gradients`] after.
#[allow(clippy::too_many_arguments)]
fn padded_gradients<T: Real>(
    kind: Kernels,
    wgrad: Option<(&[T], &mut [T])>,
    weight: &[T],
    dy: &[T],
    g: &ConvShape,
    n: usize,
    scratch: &mut TileScratch<T>,
    dx: Option<(&mut [T], bool)>,
) {
    let (kg, co, ci, plane) = (g.patch_len(), g.c_out, g.c_in, g.h * g.w);
    let (x, dw) = match wgrad {
        Some((x, dw)) => (Some(x), Some(dw)),
        None => (None, None),
    };
    let here = kind == Kernels::Direct || blocked::input_grad_applies::<T>(g);
    let (here, later) = match dx {
        Some(dx) if here => (Some(dx), None),
        other => (None, other),
    };
    let (dx_ptr, add) = match here {
        Some((dx, add)) => (Some(Shared(dx.as_mut_ptr())), add),
        None => (None, false),
    };
    let blocked_dw = kind == Kernels::Blocked || direct_dw_is_blocked::<T>(g);
    if dx_ptr.is_some() {
        let width = match kind {
            Kernels::Direct => direct::PANEL,
            Kernels::Blocked => blocked::lanes::<T>(),
        };
        at_least(
            &mut scratch.flipped,
            direct::panels_len_of(ci, co * 9, width),
        );
        direct::pack_flipped_panels_of(weight, g, width, &mut scratch.flipped);
    }
    if x.is_some() || dx_ptr.is_some() {
        let (threads, panels) = scratch.parts();
        let count = threads.len();
        let tile = direct_tile_examples::<T>(g, n, count);
        threads.par_iter_mut().enumerate().for_each(|(t, s)| {
            if x.is_some() {
                at_least(&mut s.cols, direct::padded_len(g, ci, tile));
                if blocked_dw {
                    at_least(&mut s.dyt, blocked::transposed_len(g, tile));
                }
                at_least(&mut s.dw, co * kg);
                s.dw[..co * kg].fill(T::ZERO);
            }
            if dx_ptr.is_some() {
                at_least(&mut s.dcols, direct::padded_len(g, co, tile));
            }
            for ex in tiles_of(t, count, n, tile) {
                if let Some(x) = x {
                    direct::pad_tile(x, g, ci, n, ex.clone(), &mut s.cols);
                    let first = ex.start * g.positions();
                    if blocked_dw {
                        let (dyt, dw) = (&mut s.dyt, &mut s.dw);
                        blocked::weight_grad_tile(&s.cols, dy, first, g, n, ex.len(), dyt, dw);
                    } else {
                        direct::weight_grad_tile(&s.cols, dy, first, g, n, ex.len(), &mut s.dw);
                    }
                }
                let Some(dx) = dx_ptr else { continue };
                direct::pad_tile(dy, g, co, n, ex.clone(), &mut s.dcols);
                let out = direct::Out {
                    ptr: dx.at(0),
                    stride: n * plane,
                    first: ex.start * plane,
                    add,
                };
                let (padded, count) = (&s.dcols, ex.len());
                // SAFETY: the kernels apply (the caller's check, `input_grad_applies` for the blocked
                // ones); the tile's planes of every input channel lie inside `dx` (asserted by the caller)
                // and only this tile touches them (tiles are disjoint example ranges).
                unsafe {
                    match kind {
                        Kernels::Direct => {
                            direct::forward_tile(padded, g, co, ci, count, panels, None, &out)
                        }
                        Kernels::Blocked => {
                            blocked::forward_tile(padded, g, co, ci, count, panels, None, &out)
                        }
                    }
                }
            }
        });
        if let Some(dw) = dw {
            let sum = thread_sum(threads, co * kg);
            if blocked_dw {
                blocked::unblock_weight_grad(sum, g, &mut dw[..co * kg]);
            } else {
                dw[..co * kg].copy_from_slice(sum);
            }
        }
    }
    if later.is_some() {
        lowered_gradients(None, weight, dy, g, n, scratch, later);
    }
}

/// Whether the direct kernels' convolution `g` takes its weight gradient from the channel-blocked kernel
/// ([`blocked::weight_grad_tile`]): where that applies and `g` has at least 16 input channels (with 3, the
/// stem's, its register tile of two input channels is half idle and the direct kernel's is faster:
/// 4.8 against 3.6 ms for ResNet9's stem at batch 64 in f32; 32 → 32 at 32×32 measured 16.7 against
/// 25.0 ms for the whole backward, 64 → 64 at 16×16 12.6 against 24.5).
fn direct_dw_is_blocked<T: Real>(g: &ConvShape) -> bool {
    blocked::weight_grad_applies::<T>(g) && g.c_in >= 16
}

/// Vectors of output channels per weight panel of `g`'s forward: [`direct::PANEL`] for the direct kernels,
/// the vector width for the channel-blocked ones.
fn panel_width<T: Real>(g: &ConvShape) -> usize {
    if blocked::applies::<T>(g) {
        blocked::lanes::<T>()
    } else {
        direct::PANEL
    }
}

/// Values a [`TileScratch`] holds after train-mode steps (forward and backward) at batches of at most
/// `n` on `threads` threads through the tiled convolutions `convs` (each with whether its input takes a
/// gradient), and nothing else: every thread's buffers are sized for a full tile (tiles grow with the
/// batch, so the largest batch sets them).
pub fn held_values_after_step<T: Real>(
    convs: impl Iterator<Item = (ConvShape, bool)>,
    n: usize,
    threads: usize,
) -> usize {
    let (mut cols, mut dcols, mut dw, mut dyt, mut flipped) = (0, 0, 0, 0, 0);
    for (g, with_dx) in convs {
        dw = dw.max(g.c_out * g.patch_len());
        if blocked::applies::<T>(&g) {
            let tile = direct_tile_examples::<T>(&g, n, threads);
            cols = cols.max(direct::padded_len(&g, g.c_in, tile));
            dyt = dyt.max(blocked::transposed_len(&g, tile));
            flipped = flipped.max(g.c_out * g.patch_len());
            if with_dx {
                let tile = tile_for::<T>(&g, n, threads);
                dcols = dcols.max(dcols_len::<T>(&g, tile));
                flipped = flipped.max(flipped_len::<T>(&g));
            }
            continue;
        }
        let tile = tile_for::<T>(&g, n, threads);
        if direct::applies::<T>(&g) {
            cols = cols.max(direct::padded_len(&g, g.c_in, tile));
            if direct_dw_is_blocked::<T>(&g) {
                dyt = dyt.max(blocked::transposed_len(&g, tile));
            }
            flipped = flipped.max(direct::panels_len(g.c_out, g.patch_len()));
        } else {
            cols = cols.max(g.patch_len() * g.positions() * tile);
        }
        if with_dx {
            dcols = dcols.max(dcols_len::<T>(&g, tile));
            flipped = flipped.max(flipped_len::<T>(&g));
        }
    }
    threads * (cols + dcols + dw + dyt) + flipped
}

/// Values of the flipped kernel of `g`'s input gradient (0 when it is not a same convolution).
fn flipped_len<T: Real>(g: &ConvShape) -> usize {
    if direct::applies::<T>(g) {
        direct::panels_len(g.c_in, g.c_out * 9)
    } else if blocked::input_grad_applies::<T>(g) {
        direct::panels_len_of(g.c_in, g.c_out * 9, blocked::lanes::<T>())
    } else if transposes_to_same(g) {
        g.c_in * g.c_out * g.k * g.k
    } else {
        0
    }
}

/// Values a [`TileScratch`] holds after [`input_grad`] ran on at most `rows` rows through the
/// convolutions `convs` on `threads` threads (and nothing else ran).
pub fn held_values_after_input_grads<T: Real>(
    convs: &[ConvShape],
    rows: usize,
    threads: usize,
) -> usize {
    let tile = |g: &ConvShape| dcols_len::<T>(g, tile_for::<T>(g, rows, threads));
    threads * convs.iter().map(tile).max().unwrap_or(0)
        + convs.iter().map(flipped_len::<T>).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::conv::{self, ConvScratch};
    use super::*;

    fn shape(c_in: usize, h: usize, w: usize, c_out: usize, k: usize, stride: usize) -> ConvShape {
        let padding = k / 2;
        ConvShape {
            c_in,
            h,
            w,
            c_out,
            k,
            stride,
            padding,
            groups: 1,
            out_h: (h + 2 * padding - k) / stride + 1,
            out_w: (w + 2 * padding - k) / stride + 1,
        }
    }

    fn values(len: usize, seed: u64) -> Vec<f64> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// The tiled pass equals the batch-wide one on `threads` threads (tiles of one example and a short last
    /// run when the patch matrix is large, an uneven last tile when it is small).
    fn equals_batch_wide(g: ConvShape, n: usize, threads: usize) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (kg, nu) = (g.patch_len(), n * g.positions());
            let x = values(g.c_in * n * g.h * g.w, 1);
            let weight = values(g.c_out * kg, 2);
            let bias = values(g.c_out, 3);
            let dy = values(g.c_out * nu, 4);
            let (mut y0, mut y1) = (vec![0.0; g.c_out * nu], vec![0.0; g.c_out * nu]);
            let mut batch = ConvScratch::default();
            conv::forward(&x, &weight, Some(&bias), &g, n, &mut batch, None, &mut y0);
            let mut tiles = TileScratch::default();
            forward(&x, &weight, Some(&bias), &g, n, &mut tiles, &mut y1);
            assert!(
                max_diff(&y0, &y1) < 1e-13,
                "forward {g:?} n {n} threads {threads}"
            );
            for add in [false, true] {
                let base = values(g.c_in * n * g.h * g.w, 5);
                let (mut dw0, mut dw1) = (vec![0.0; g.c_out * kg], vec![0.0; g.c_out * kg]);
                let (mut dx0, mut dx1) = (base.clone(), base);
                let mut db = vec![0.0; g.c_out];
                let dx = Some((&mut dx0[..], add));
                conv::backward(
                    &x,
                    &weight,
                    &dy,
                    &g,
                    n,
                    None,
                    &mut batch,
                    &mut dw0,
                    Some(&mut db),
                    dx,
                );
                backward(
                    &x,
                    &weight,
                    &dy,
                    &g,
                    n,
                    &mut tiles,
                    &mut dw1,
                    Some((&mut dx1, add)),
                );
                assert!(
                    max_diff(&dw0, &dw1) < 1e-12,
                    "dw {g:?} n {n} threads {threads}"
                );
                assert!(max_diff(&dx0, &dx1) < 1e-13, "dx {g:?} n {n} add {add}");
                // Without an input gradient the weight gradient takes the other route (x's patches).
                let mut dw2 = vec![0.0; g.c_out * kg];
                backward(&x, &weight, &dy, &g, n, &mut tiles, &mut dw2, None);
                assert!(max_diff(&dw0, &dw2) < 1e-12, "dw alone {g:?} n {n}");
            }
            let held = held_values_after_step::<f64>([(g, true)].into_iter(), n, threads);
            assert_eq!(tiles.held_values(), held);
            let base = values(g.c_in * n * g.h * g.w, 6);
            let (mut dx0, mut dx1) = (base.clone(), base);
            conv::input_grad(&weight, &dy, &g, n, &mut batch, &mut dx0, true);
            let mut alone = TileScratch::default();
            input_grad(&weight, &dy, &g, n, &mut alone, &mut dx1, true);
            assert!(max_diff(&dx0, &dx1) < 1e-13, "input_grad {g:?} n {n}");
            let held = held_values_after_input_grads::<f64>(&[g], n, threads);
            assert_eq!(alone.held_values(), held);
        });
    }

    /// In f32 (16 lanes: rows of 16 + 12 and of 13) the direct kernels agree with the batch-wide lowered
    /// convolution to f32 rounding (both accumulate in f32, in different orders).
    #[test]
    fn direct_f32_equals_the_batch_wide_convolution() {
        // The channel-blocked kernels: rows of 8 (two per register tile) at stride 1 and 2, stride 2 onto
        // rows of 16.
        let blocked_shapes = [
            shape(16, 8, 8, 16, 3, 1),
            shape(16, 6, 8, 32, 3, 1),
            shape(3, 32, 32, 16, 3, 2),
            shape(8, 16, 16, 32, 3, 2),
        ];
        if direct::available() {
            assert!(blocked_shapes.iter().all(blocked::applies::<f32>));
            assert!(direct_dw_is_blocked::<f32>(&shape(16, 4, 28, 16, 3, 1)));
        }
        // The direct kernels, the last with the channel-blocked weight gradient.
        for g in [
            shape(6, 4, 28, 11, 3, 1),
            shape(3, 5, 13, 8, 3, 1),
            shape(16, 4, 28, 16, 3, 1),
        ]
        .into_iter()
        .chain(blocked_shapes)
        {
            let n = 5;
            let (kg, nu) = (g.patch_len(), n * g.positions());
            let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
            let x = f(values(g.c_in * n * g.h * g.w, 1));
            let weight = f(values(g.c_out * kg, 2));
            let dy = f(values(g.c_out * nu, 4));
            let rel = |a: &[f32], b: &[f32]| {
                let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
            };
            let (mut y0, mut y1) = (vec![0f32; g.c_out * nu], vec![0f32; g.c_out * nu]);
            let mut batch = ConvScratch::default();
            conv::forward(&x, &weight, None, &g, n, &mut batch, None, &mut y0);
            let mut tiles = TileScratch::default();
            forward(&x, &weight, None, &g, n, &mut tiles, &mut y1);
            assert!(rel(&y1, &y0) < 1e-5, "forward {g:?}");
            let (mut dw0, mut dw1) = (vec![0f32; g.c_out * kg], vec![0f32; g.c_out * kg]);
            let (mut dx0, mut dx1) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            let dx = Some((&mut dx0[..], false));
            conv::backward(
                &x, &weight, &dy, &g, n, None, &mut batch, &mut dw0, None, dx,
            );
            backward(
                &x,
                &weight,
                &dy,
                &g,
                n,
                &mut tiles,
                &mut dw1,
                Some((&mut dx1, false)),
            );
            assert!(rel(&dw1, &dw0) < 1e-5, "dw {g:?}");
            assert!(rel(&dx1, &dx0) < 1e-5, "dx {g:?}");
        }
    }

    #[test]
    fn tiles_equal_the_batch_wide_convolution() {
        // 144 × 1024 f64 values per example exceed TILE_BYTES: one example per tile.
        let big = shape(16, 32, 32, 8, 3, 1);
        assert_eq!(tile_examples::<f64>(&big, 5, 2), 1);
        equals_batch_wide(big, 5, 2);
        // The direct kernels (on AVX-512 machines): f64 rows of 8 lanes + 1 (W = 17), output channels that
        // leave a short panel and a short weight-gradient group (10), odd input channels, tiles of several
        // examples.
        // The last one takes its weight gradient from the channel-blocked kernel.
        let direct_shapes = [
            shape(13, 5, 17, 10, 3, 1),
            shape(5, 9, 6, 3, 3, 1),
            shape(16, 5, 17, 8, 3, 1),
        ];
        if direct::available() {
            assert!(direct_shapes.iter().all(direct::applies::<f64>));
            assert!(direct_dw_is_blocked::<f64>(&direct_shapes[2]));
        }
        for g in direct_shapes {
            for threads in [1, 2] {
                equals_batch_wide(g, 7, threads);
            }
        }
        // The channel-blocked kernels (f64, 8 lanes; stride-1 rows of 8 or more are the direct kernels'):
        // stride 2 onto rows of 8 and of 16 (two register tiles per row), odd input channels (the input
        // gradient is the lowered path's).
        let blocked_shapes = [
            shape(5, 8, 16, 16, 3, 2),
            shape(3, 6, 16, 8, 3, 2),
            shape(4, 4, 32, 8, 3, 2),
        ];
        if direct::available() {
            assert!(blocked_shapes.iter().all(blocked::applies::<f64>));
        }
        for g in blocked_shapes {
            for threads in [1, 2] {
                equals_batch_wide(g, 7, threads);
            }
        }
        for threads in [1, 2, 3] {
            // Same convolutions (input gradient through the flipped kernel), 3×3 and 5×5, C_in ≠ C_out.
            equals_batch_wide(shape(3, 7, 5, 4, 3, 1), 5, threads);
            equals_batch_wide(shape(4, 6, 6, 2, 5, 1), 3, threads);
            equals_batch_wide(shape(3, 7, 5, 4, 3, 2), 5, threads);
            equals_batch_wide(shape(3, 6, 6, 4, 1, 2), 4, threads);
        }
    }
}
