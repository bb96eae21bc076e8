//! Channel-blocked direct convolution of 3×3 convolutions with padding 1 and stride 1 or 2 whose output
//! rows are too short for [`super::conv_direct`]'s vectors over positions (ResNet9's 8×8 and 4×4 stages and
//! its strided convolutions in f32, the 4×4 stage in f64), on AVX-512: vectors run over output channels
//! instead, so no lane idles however narrow the image.
//!
//! - Forward ([`forward_tile`]): a register tile of one vector of output channels (16 in f32, 8 in f64) ×
//!   as many consecutive output positions of one example (one or more whole output rows, or part of one),
//!   one accumulator per position; per input value (channel, tap) one vector load of the packed weights
//!   ([`super::conv_direct::pack_panels_of`]) and one FMA per position against the input value broadcast
//!   from the zero-padded tile ([`super::conv_direct::pad_tile`]). The register tile is then transposed
//!   through the accumulators' memory into the channel-major output. For a stride-1 convolution the same
//!   kernel on the padded output gradient with the flipped, transposed kernel is the input gradient.
//! - Weight gradient ([`weight_grad_tile`]): the tile's output gradient transposed once into vectors of
//!   output channels per position; per two input channels, 2 × 9 vector accumulators over every position
//!   of the tile, added into a blocked partial (vector of output channels per (input channel, tap)) that
//!   [`unblock_weight_grad`] turns into the weight's layout once per pass.
//!
//! Every lane of every vector is a real output channel (the shapes need a multiple of the vector width
//! of output channels, [`applies`]), and every broadcast reads a real padded input value, so no mask is
//! needed. Products accumulate in the element type in a different order from the lowered path's GEMM: the
//! two agree to rounding (tested against the batch-wide path in [`super::conv_tiled`]).

use super::conv_direct::{self as direct, same_type, same_type_mut};
use super::plan::ConvShape;
use super::real::Real;
use std::any::TypeId;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turn these kernels on or off for the whole process (on by default; off leaves their shapes to the
/// lowered path; [`direct::set_enabled`] turns both families off).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Input channels per register tile of the weight gradient (2 × 9 accumulators).
#[cfg(target_arch = "x86_64")]
const INPUTS: usize = 2;

/// Vector lanes of `T` (16 for f32, 8 for f64; 0 for another type).
pub fn lanes<T: 'static>() -> usize {
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        16
    } else if TypeId::of::<T>() == TypeId::of::<f64>() {
        8
    } else {
        0
    }
}

/// Output positions per register-tile row: whole output rows when they fit a vector, else a vector's
/// width of one row.
fn row_run(g: &ConvShape, lanes: usize) -> usize {
    g.out_w.min(lanes)
}

/// Whether the channel-blocked kernels compute `g` in `T` on this machine: 3×3, padding 1, stride 1 (a
/// "same" convolution, with input channels a multiple of the vector width, so its input gradient runs
/// here too) or 2, one group, output channels a multiple of the vector width, output rows that tile a
/// vector exactly (width 8 or 16 in f32, or a multiple of the vector), and only where
/// [`direct::applies`] does not. Rows of 4 (ResNet9's 4×4 stage) measured slower here than the lowered
/// path's GEMM (four rows per register tile: 7.4 against 5.9 ms for its f32 forward at batch 64), so
/// they stay lowered.
pub fn applies<T: Real>(g: &ConvShape) -> bool {
    let n = lanes::<T>();
    if n == 0 || direct::applies::<T>(g) || !direct::available() || !ENABLED.load(Ordering::Relaxed)
    {
        return false;
    }
    let run = row_run(g, n);
    let same = g.stride == 1 && g.out_h == g.h && g.out_w == g.w && g.c_in.is_multiple_of(n);
    g.k == 3
        && g.padding == 1
        && g.groups == 1
        && (same || g.stride == 2)
        && g.c_out.is_multiple_of(n)
        && run >= 8
        && n.is_multiple_of(run)
        && g.out_w.is_multiple_of(run)
        && g.positions().is_multiple_of(n)
}

/// Whether [`weight_grad_tile`] computes `g`'s weight gradient on this machine: 3×3, padding 1, stride 1
/// or 2, one group, output channels a multiple of the vector width (any row length: it walks positions one
/// by one). The direct kernels' same convolutions use it too: their own weight gradient, vectors over
/// positions, loads nine unaligned vectors per 27 FMAs and measured slower.
pub fn weight_grad_applies<T: Real>(g: &ConvShape) -> bool {
    let n = lanes::<T>();
    n > 0
        && direct::available()
        && ENABLED.load(Ordering::Relaxed)
        && g.k == 3
        && g.padding == 1
        && g.groups == 1
        && (g.stride == 1 || g.stride == 2)
        && g.c_out.is_multiple_of(n)
}

/// Whether the input gradient of `g` (which [`applies`]) runs here too: a stride-1 same convolution
/// (stride 2's input gradient is the lowered path's).
pub fn input_grad_applies<T: Real>(g: &ConvShape) -> bool {
    applies::<T>(g) && g.stride == 1
}

/// Values of one tile's output gradient transposed into vectors of output channels ([`weight_grad_tile`]).
pub fn transposed_len(g: &ConvShape, count: usize) -> usize {
    g.c_out * count * g.positions()
}

/// `y` = conv(padded, panels) (+ bias) for the `count` examples of a tile: `padded` from
/// [`direct::pad_tile`] (`inputs` channels of `g`'s input size), `panels` from
/// [`direct::pack_panels_of`] with the vector width (`outputs` channels, inner `inputs`·9). `g` gives the
/// sizes and stride (its channel counts are not read: the input gradient passes the transposed ones).
///
/// # Safety
/// `y.ptr` must be valid for writes of every (channel < outputs, tile position) of `y`, and no other
/// thread may touch those values; [`applies`] must hold for `T` and `g` (or its transposed shape).
#[allow(clippy::too_many_arguments)]
pub unsafe fn forward_tile<T: Real>(
    padded: &[T],
    g: &ConvShape,
    inputs: usize,
    outputs: usize,
    count: usize,
    panels: &[T],
    bias: Option<&[T]>,
    y: &direct::Out<T>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let n = lanes::<T>();
        let chan = count * (g.h + 2) * (g.w + 2);
        assert!(outputs.is_multiple_of(n) && padded.len() >= inputs * chan);
        assert!(panels.len() >= outputs * inputs * 9);
        // SAFETY: AVX-512 F is present (`applies`); the caller guarantees the output.
        let done = unsafe {
            forward_as::<T, f32>(padded, g, inputs, outputs, count, panels, bias, y)
                || forward_as::<T, f64>(padded, g, inputs, outputs, count, panels, bias, y)
        };
        if done {
            return;
        }
    }
    let _ = (padded, g, inputs, outputs, count, panels, bias, y);
    unreachable!("channel-blocked convolution without AVX-512 F or for another element type");
}

/// Adds to `blocked` (the weight gradient as vectors of output channels: `[(q·C_in + c)·9 + tap]·lanes +
/// j` for output channel q·lanes + j) the weight gradient of one tile of `count` examples: `padded` the
/// tile's input from [`direct::pad_tile`], `dy` the whole batch's output gradient (C_out × n·U), the
/// tile's first position at `first` in each channel; `transposed` holds [`transposed_len`] values of
/// scratch.
#[allow(clippy::too_many_arguments)]
pub fn weight_grad_tile<T: Real>(
    padded: &[T],
    dy: &[T],
    first: usize,
    g: &ConvShape,
    n: usize,
    count: usize,
    transposed: &mut [T],
    blocked: &mut [T],
) {
    let lanes = lanes::<T>();
    let (nu, p) = (n * g.positions(), count * g.positions());
    let (ci, co) = (g.c_in, g.c_out);
    assert!(dy.len() >= co * nu && first + p <= nu && blocked.len() >= co * ci * 9);
    assert!(padded.len() >= ci * count * (g.h + 2) * (g.w + 2));
    // dyᵀ of the tile, vector by vector: [(q·P + position)·lanes + j] = dy[q·lanes + j][first + position].
    let transposed = &mut transposed[..co * p];
    for q in 0..co / lanes {
        let block = &mut transposed[q * p * lanes..][..p * lanes];
        for j in 0..lanes {
            let row = &dy[(q * lanes + j) * nu + first..][..p];
            for (i, &v) in row.iter().enumerate() {
                block[i * lanes + j] = v;
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: AVX-512 F is present (`applies`, the caller's check); bounds asserted above.
        let done = unsafe {
            weight_grad_as::<T, f32>(padded, g, count, transposed, blocked)
                || weight_grad_as::<T, f64>(padded, g, count, transposed, blocked)
        };
        if done {
            return;
        }
    }
    unreachable!("channel-blocked convolution without AVX-512 F or for another element type");
}

/// `dw[o][c][tap]` (C_out × C_in·9) from the blocked weight gradient of [`weight_grad_tile`].
pub fn unblock_weight_grad<T: Real>(blocked: &[T], g: &ConvShape, dw: &mut [T]) {
    let lanes = lanes::<T>();
    let inner = g.c_in * 9;
    for o in 0..g.c_out {
        let (q, j) = (o / lanes, o % lanes);
        for t in 0..inner {
            dw[o * inner + t] = blocked[(q * inner + t) * lanes + j];
        }
    }
}

/// [`forward_tile`] in element type `U` when `T` is `U` (false otherwise), dispatched on the row run and
/// stride so that every position's offset is a constant.
///
/// # Safety
/// As [`forward_tile`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn forward_as<T: Real, U: direct::x86::Lanes + Real>(
    padded: &[T],
    g: &ConvShape,
    inputs: usize,
    outputs: usize,
    count: usize,
    panels: &[T],
    bias: Option<&[T]>,
    y: &direct::Out<T>,
) -> bool {
    let (Some(p), Some(w)) = (same_type::<T, U>(padded), same_type::<T, U>(panels)) else {
        return false;
    };
    let bias = bias.and_then(same_type::<T, U>);
    let y = direct::Out {
        ptr: y.ptr.cast::<U>(),
        stride: y.stride,
        first: y.first,
        add: y.add,
    };
    let tile = x86::Tile::of(p, g, count);
    let run = row_run(g, lanes::<U>());
    macro_rules! go {
        ($n:literal, $($run:literal),*) => {
            match (run, g.stride) {
                $(($run, 1) => x86::forward::<U, $n, $run, 1>(&tile, inputs, outputs, w, bias, &y),
                  ($run, 2) => x86::forward::<U, $n, $run, 2>(&tile, inputs, outputs, w, bias, &y),)*
                _ => unreachable!("row run {run}, stride {} outside `applies`", g.stride),
            }
        };
    }
    // SAFETY: the caller's.
    unsafe {
        if lanes::<U>() == 16 {
            go!(16, 8, 16)
        } else {
            go!(8, 8)
        }
    }
    true
}

/// [`weight_grad_tile`]'s products in element type `U` when `T` is `U` (false otherwise).
///
/// # Safety
/// AVX-512 F must be present; the slices must hold what [`weight_grad_tile`] asserts.
#[cfg(target_arch = "x86_64")]
unsafe fn weight_grad_as<T: Real, U: direct::x86::Lanes + Real>(
    padded: &[T],
    g: &ConvShape,
    count: usize,
    transposed: &[T],
    blocked: &mut [T],
) -> bool {
    let (Some(p), Some(dyt)) = (same_type::<T, U>(padded), same_type::<T, U>(transposed)) else {
        return false;
    };
    let Some(blocked) = same_type_mut::<T, U>(blocked) else {
        return false;
    };
    let tile = x86::Tile::of(p, g, count);
    // SAFETY: the caller's.
    unsafe {
        match (lanes::<U>(), g.stride) {
            (16, 1) => x86::weight_grad::<U, 16, 1>(&tile, dyt, g.c_in, g.c_out, blocked),
            (16, 2) => x86::weight_grad::<U, 16, 2>(&tile, dyt, g.c_in, g.c_out, blocked),
            (8, 1) => x86::weight_grad::<U, 8, 1>(&tile, dyt, g.c_in, g.c_out, blocked),
            (8, 2) => x86::weight_grad::<U, 8, 2>(&tile, dyt, g.c_in, g.c_out, blocked),
            _ => unreachable!("stride {} outside `applies`", g.stride),
        }
    }
    true
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::conv_direct::x86::Lanes;
    use super::super::conv_direct::Out;
    use super::super::plan::ConvShape;
    use super::super::real::Real;
    use super::INPUTS;

    /// A padded input tile and the output geometry the kernels walk.
    pub struct Tile<'a, T> {
        /// The padded tile (channels × count × (H+2) × (W+2)).
        pub padded: &'a [T],
        /// Values per padded channel (all the tile's examples).
        pub chan: usize,
        /// Values per padded plane of one example.
        pub plane: usize,
        /// Padded row length W + 2.
        pub wp: usize,
        /// Output row length.
        pub out_w: usize,
        /// Output positions per example.
        pub positions: usize,
        /// Examples in the tile.
        pub count: usize,
    }

    impl<'a, T> Tile<'a, T> {
        /// The tile of `count` examples of `g`'s input padded in `padded`.
        pub fn of(padded: &'a [T], g: &ConvShape, count: usize) -> Self {
            let plane = (g.h + 2) * (g.w + 2);
            Tile {
                padded,
                chan: count * plane,
                plane,
                wp: g.w + 2,
                out_w: g.out_w,
                positions: g.positions(),
                count,
            }
        }
    }

    /// See [`super::forward_tile`]: `N` lanes, register-tile rows of `L` positions (N/L rows), stride `S`.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn forward<T: Lanes + Real, const N: usize, const L: usize, const S: usize>(
        tile: &Tile<'_, T>,
        inputs: usize,
        outputs: usize,
        panels: &[T],
        bias: Option<&[T]>,
        y: &Out<T>,
    ) {
        let wp = tile.wp;
        let rows = N / L;
        // One panel of output channels at a time over the whole tile, so the panel stays in L2 while
        // every register tile of the tile's examples reads it.
        for q in 0..outputs / N {
            for (e, u0) in
                (0..tile.count).flat_map(|e| (0..tile.positions).step_by(N).map(move |u0| (e, u0)))
            {
                let (oy, ox) = (u0 / tile.out_w, u0 % tile.out_w);
                // Offset of each register-tile row's first position's top-left tap.
                let mut starts = [0usize; 16];
                for r in 0..rows {
                    starts[r] = e * tile.plane + (oy + r) * S * wp + ox * S;
                }
                {
                    let mut acc = [unsafe { <T as Lanes>::zero() }; N];
                    for c in 0..inputs {
                        let base = unsafe { tile.padded.as_ptr().add(c * tile.chan) };
                        let wc = unsafe { panels.as_ptr().add((q * inputs + c) * 9 * N) };
                        for a in 0..3 {
                            let line: [*const T; 16] = std::array::from_fn(|r| {
                                base.wrapping_add(starts[r.min(rows - 1)] + a * wp)
                            });
                            for b in 0..3 {
                                let w = unsafe { T::load(wc.add((a * 3 + b) * N), !0) };
                                for r in 0..rows {
                                    for i in 0..L {
                                        let v = unsafe { T::splat(*line[r].add(b + i * S)) };
                                        acc[r * L + i] = unsafe { T::fma(v, w, acc[r * L + i]) };
                                    }
                                }
                            }
                        }
                    }
                    // acc[position] holds N channels: through memory (the accumulators themselves stay
                    // in registers: their address is never taken), then out channel by channel.
                    let mut values = [T::ZERO; 256];
                    for (p, v) in acc.iter().enumerate() {
                        unsafe { T::store(values.as_mut_ptr().add(p * N), !0, *v) };
                    }
                    let values = values.as_ptr();
                    for j in 0..N {
                        let o = q * N + j;
                        let b = bias.map_or(T::ZERO, |b| b[o]);
                        let dst =
                            unsafe { y.ptr.add(o * y.stride + y.first + e * tile.positions + u0) };
                        for p in 0..N {
                            let v = unsafe { *values.add(p * N + j) } + b;
                            unsafe {
                                if y.add {
                                    *dst.add(p) += v;
                                } else {
                                    *dst.add(p) = v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// See [`super::weight_grad_tile`]: `dyt` the tile's transposed output gradient, `N` lanes, stride `S`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weight_grad<T: Lanes + Real, const N: usize, const S: usize>(
        tile: &Tile<'_, T>,
        dyt: &[T],
        inputs: usize,
        outputs: usize,
        blocked: &mut [T],
    ) {
        let (wp, p_all) = (tile.wp, tile.count * tile.positions);
        let out_h = tile.positions / tile.out_w;
        for q in 0..outputs / N {
            let d = unsafe { dyt.as_ptr().add(q * p_all * N) };
            for c0 in (0..inputs).step_by(INPUTS) {
                let live = (inputs - c0).min(INPUTS);
                // A short last group reads its last channel again and keeps one result of it.
                let bases: [*const T; INPUTS] = std::array::from_fn(|k| unsafe {
                    tile.padded.as_ptr().add((c0 + k.min(live - 1)) * tile.chan)
                });
                let mut acc = [[unsafe { <T as Lanes>::zero() }; 9]; INPUTS];
                let mut p = 0;
                for e in 0..tile.count {
                    for oy in 0..out_h {
                        for ox in 0..tile.out_w {
                            let g = unsafe { T::load(d.add(p * N), !0) };
                            let src = e * tile.plane + oy * S * wp + ox * S;
                            for (k, base) in bases.iter().enumerate() {
                                for a in 0..3 {
                                    let line = unsafe { base.add(src + a * wp) };
                                    for b in 0..3 {
                                        let v = unsafe { T::splat(*line.add(b)) };
                                        acc[k][a * 3 + b] =
                                            unsafe { T::fma(g, v, acc[k][a * 3 + b]) };
                                    }
                                }
                            }
                            p += 1;
                        }
                    }
                }
                for (k, taps) in acc.iter().enumerate().take(live) {
                    for (t, &v) in taps.iter().enumerate() {
                        let out = unsafe {
                            blocked
                                .as_mut_ptr()
                                .add(((q * inputs + c0 + k) * 9 + t) * N)
                        };
                        unsafe { T::store(out, !0, <T as Lanes>::add(T::load(out, !0), v)) };
                    }
                }
            }
        }
    }
}
