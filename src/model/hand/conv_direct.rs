//! Direct convolution of 3×3 stride-1 "same" convolutions (padding 1, one group) on AVX-512, for f32 and
//! f64: no patch matrix. The lowered path ([`super::conv_tiled`]) writes a 9·C_in × U patch matrix per
//! example and the GEMM then packs it again; here each thread copies its examples once into a zero-padded
//! tile (C × count × (H+2) × (W+2), a ninth of a patch matrix) and the kernels read the nine taps straight
//! out of it.
//!
//! - Forward ([`forward_tile`]): a register tile of 3 output segments (up to one vector of consecutive
//!   output positions on one row each) × 8 output channels, 24 vector accumulators; per input value
//!   (channel, tap) three unaligned loads and 24 FMAs against broadcast weights, packed in panels of 8
//!   channels ([`pack_panels`]). The same kernel computes the input gradient of a same convolution: a same
//!   convolution of the output gradient with the flipped, transposed kernel ([`pack_flipped_panels`]).
//! - Weight gradient ([`weight_grad_tile`]): per three output channels and one input channel, 3 × 9 vector
//!   accumulators over every position of the tile, reduced to scalars once per tile. Convolutions with 16
//!   or more input channels and output channels a multiple of the vector take theirs from
//!   [`super::conv_blocked::weight_grad_tile`] instead (measured faster; `conv_tiled` chooses).
//!
//! Lanes past a row's end are masked on every load that reaches an accumulator of the result and on every
//! store, so the padding's and the neighbouring rows' values never enter a result. Products are accumulated
//! in the element type, as the GEMM of the lowered path does; the sum order differs from it, so the two
//! agree to rounding (tested against the batch-wide path in [`super::conv_tiled`]).
//!
//! The kernels run only when the CPU has AVX-512 F ([`available`]) and [`set_enabled`] has not turned them
//! off (benchmarks time both paths in one process); otherwise the lowered path runs.

use super::plan::ConvShape;
use super::real::Real;
use rayon::prelude::*;
use std::any::TypeId;
use std::sync::atomic::{AtomicBool, Ordering};

/// Output channels per register tile (and per weight panel).
pub const PANEL: usize = 8;
/// Output segments per register tile.
const SEGMENTS: usize = 3;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turn the direct kernels on or off for the whole process (on by default; off runs the lowered path).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether this CPU runs the direct kernels (AVX-512 F) and they are enabled (these and
/// [`super::conv_blocked`]'s).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *CPU.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
            && ENABLED.load(Ordering::Relaxed)
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the direct kernels compute convolutions of shape `g` in element type `T` on this machine.
/// Rows narrower than three quarters of a vector leave too many lanes idle (ResNet9's 8×8 and 4×4 stages
/// in f32): the lowered path's GEMM runs those faster.
pub fn applies<T: Real>(g: &ConvShape) -> bool {
    let lanes = super::conv_blocked::lanes::<T>();
    if lanes == 0 {
        return false;
    }
    4 * g.w >= 3 * lanes
        && g.groups == 1
        && g.k == 3
        && g.stride == 1
        && g.padding == 1
        && g.out_h == g.h
        && g.out_w == g.w
        && available()
}

/// Values of the zero-padded copy of `count` examples of `channels` planes of `g`'s size, with one vector of
/// slack at the end (the last segment's loads may run past the last row; those lanes are masked).
pub fn padded_len(g: &ConvShape, channels: usize, count: usize) -> usize {
    channels * count * (g.h + 2) * (g.w + 2) + 16
}

/// Values of the weight panels of a convolution with `outputs` output channels and `inner` values per
/// output (C_in·9): whole panels of [`PANEL`] channels, the last one zero-filled.
pub fn panels_len(outputs: usize, inner: usize) -> usize {
    panels_len_of(outputs, inner, PANEL)
}

/// [`panels_len`] for panels of `width` outputs.
pub fn panels_len_of(outputs: usize, inner: usize, width: usize) -> usize {
    outputs.div_ceil(width) * width * inner
}

/// Copy the examples `ex` of `channels` planes (`src`: channels × n × H × W) into `dst` zero-padded by
/// one on every side (channels × ex.len() × (H+2) × (W+2)).
pub fn pad_tile<T: Real>(
    src: &[T],
    g: &ConvShape,
    channels: usize,
    n: usize,
    ex: std::ops::Range<usize>,
    dst: &mut [T],
) {
    let (h, w, wp) = (g.h, g.w, g.w + 2);
    let padded = (h + 2) * wp;
    let count = ex.len();
    for c in 0..channels {
        for (i, e) in ex.clone().enumerate() {
            let img = &src[(c * n + e) * h * w..][..h * w];
            let out = &mut dst[(c * count + i) * padded..][..padded];
            out[..wp].fill(T::ZERO);
            out[(h + 1) * wp..].fill(T::ZERO);
            for (y, line) in img.chunks_exact(w).enumerate() {
                let row = &mut out[(y + 1) * wp..][..wp];
                row[0] = T::ZERO;
                row[1..=w].copy_from_slice(line);
                row[w + 1] = T::ZERO;
            }
        }
    }
    dst[channels * count * padded..].fill(T::ZERO);
}

/// Pack `weight` (outputs × inner, row-major) into panels of [`PANEL`] outputs:
/// `panels[(q·inner + t)·PANEL + j] = weight[q·PANEL + j][t]`, zero past the last output.
pub fn pack_panels<T: Real>(weight: &[T], outputs: usize, inner: usize, panels: &mut [T]) {
    pack_panels_of(weight, outputs, inner, PANEL, panels);
}

/// [`pack_panels`] with panels of `width` outputs (the channel-blocked kernels' vectors of outputs).
pub fn pack_panels_of<T: Real>(
    weight: &[T],
    outputs: usize,
    inner: usize,
    width: usize,
    panels: &mut [T],
) {
    // In parallel over the panels: every pass repacks its weights per call, and a serial copy of a large
    // layer's (2.4 MB for ResNet9's 256 → 256 in f32) would idle the other threads.
    let panels = &mut panels[..outputs.div_ceil(width) * inner * width];
    panels
        .par_chunks_mut(inner * width)
        .enumerate()
        .for_each(|(q, panel)| {
            for t in 0..inner {
                for j in 0..width {
                    let o = q * width + j;
                    panel[t * width + j] = if o < outputs {
                        weight[o * inner + t]
                    } else {
                        T::ZERO
                    };
                }
            }
        });
}

/// The panels ([`pack_panels`]) of the flipped, transposed kernel of `g` (whose forward is `g`'s input
/// gradient: C_in outputs, inner values (o, a, b) over C_out·9):
/// `flipped[c][(o·3 + a)·3 + b] = weight[o][c][2−a][2−b]`.
pub fn pack_flipped_panels<T: Real>(weight: &[T], g: &ConvShape, panels: &mut [T]) {
    pack_flipped_panels_of(weight, g, PANEL, panels);
}

/// [`pack_flipped_panels`] with panels of `width` outputs.
pub fn pack_flipped_panels_of<T: Real>(
    weight: &[T],
    g: &ConvShape,
    width: usize,
    panels: &mut [T],
) {
    let (ci, co) = (g.c_in, g.c_out);
    let inner = co * 9;
    let panels = &mut panels[..ci.div_ceil(width) * inner * width];
    panels
        .par_chunks_mut(inner * width)
        .enumerate()
        .for_each(|(q, panel)| {
            for o in 0..co {
                for tap in 0..9 {
                    let t = o * 9 + tap;
                    for j in 0..width {
                        let c = q * width + j;
                        panel[t * width + j] = if c < ci {
                            weight[(o * ci + c) * 9 + 8 - tap]
                        } else {
                            T::ZERO
                        };
                    }
                }
            }
        });
}

/// One run of up to a vector's width of consecutive output positions on one row.
#[derive(Clone, Copy, Default)]
struct Segment {
    /// Offset of its first position's top-left tap in the padded tile (channel 0).
    src: usize,
    /// Offset of its first position in an output channel (from the tile's first example).
    dst: usize,
    /// Lanes that hold positions (low bits).
    mask: u16,
}

/// The segments of `count` examples of `g`'s plane, row after row, `lanes` positions each (the last of a
/// row shorter).
fn segments(g: &ConvShape, count: usize, lanes: usize) -> Vec<Segment> {
    let (h, w, wp) = (g.h, g.w, g.w + 2);
    let mut out = Vec::with_capacity(count * h * w.div_ceil(lanes));
    for e in 0..count {
        for y in 0..h {
            for x0 in (0..w).step_by(lanes) {
                let len = (w - x0).min(lanes);
                out.push(Segment {
                    src: (e * (h + 2) + y) * wp + x0,
                    dst: e * h * w + y * w + x0,
                    mask: ((1u32 << len) - 1) as u16,
                });
            }
        }
    }
    out
}

/// Reinterpret a slice of `T` as a slice of `U` when they are the same type.
pub(super) fn same_type<T: 'static, U: 'static>(s: &[T]) -> Option<&[U]> {
    // SAFETY: T and U are the same type, so the slice is one of U.
    (TypeId::of::<T>() == TypeId::of::<U>())
        .then(|| unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<U>(), s.len()) })
}

/// The output `y` of [`forward_tile`]: channels of `stride` values, the tile's first position at `first`.
pub struct Out<T> {
    /// Start of the output (channel 0, example 0).
    pub ptr: *mut T,
    /// Values per output channel (n·U of the whole batch).
    pub stride: usize,
    /// Offset of the tile's first example in a channel.
    pub first: usize,
    /// Add to the output instead of replacing it.
    pub add: bool,
}

/// `y` (outputs × positions of the tile) = conv(padded, panels) (+ bias): the direct forward of one tile
/// of `count` examples, `padded` from [`pad_tile`] (`inputs` channels), `panels` from [`pack_panels`]
/// (`outputs` channels, inner `inputs`·9).
///
/// # Safety
/// `y.ptr` must be valid for writes of every (channel < outputs, tile position) of `y`, and no other
/// thread may touch those values; [`applies`] must hold for `T` and `g`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn forward_tile<T: Real>(
    padded: &[T],
    g: &ConvShape,
    inputs: usize,
    outputs: usize,
    count: usize,
    panels: &[T],
    bias: Option<&[T]>,
    y: &Out<T>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: AVX-512 F is present (`applies`); the caller guarantees the output.
        let done = unsafe {
            forward_as::<T, f32>(padded, g, inputs, outputs, count, panels, bias, y, 16)
                || forward_as::<T, f64>(padded, g, inputs, outputs, count, panels, bias, y, 8)
        };
        if done {
            return;
        }
    }
    let _ = (padded, g, inputs, outputs, count, panels, bias, y);
    unreachable!("direct convolution without AVX-512 F or for another element type");
}

/// Adds to `dw` (C_out × C_in·9, row-major) the weight gradient of one tile of `count` examples: `padded`
/// the tile's input from [`pad_tile`], `dy` the whole batch's output gradient (C_out × n·U), the tile's
/// first position at `first` in each of its channels.
pub fn weight_grad_tile<T: Real>(
    padded: &[T],
    dy: &[T],
    first: usize,
    g: &ConvShape,
    n: usize,
    count: usize,
    dw: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    {
        let nu = n * g.positions();
        let chan = count * (g.h + 2) * (g.w + 2);
        let (ci, co) = (g.c_in, g.c_out);
        assert!(dy.len() >= co * nu && dw.len() >= co * ci * 9 && padded.len() >= ci * chan);
        // SAFETY: AVX-512 F is present (`applies`, the caller's check); bounds asserted above.
        let done = unsafe {
            weight_grad_as::<T, f32>(padded, dy, nu, first, g, count, dw, 16)
                || weight_grad_as::<T, f64>(padded, dy, nu, first, g, count, dw, 8)
        };
        if done {
            return;
        }
    }
    let _ = (padded, dy, first, g, n, count, dw);
    unreachable!("direct convolution without AVX-512 F or for another element type");
}

/// [`forward_tile`] in element type `U` with `lanes` lanes when `T` is `U` (false otherwise).
///
/// # Safety
/// As [`forward_tile`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn forward_as<T: Real, U: x86::Lanes>(
    padded: &[T],
    g: &ConvShape,
    inputs: usize,
    outputs: usize,
    count: usize,
    panels: &[T],
    bias: Option<&[T]>,
    y: &Out<T>,
    lanes: usize,
) -> bool {
    let (Some(p), Some(w)) = (same_type::<T, U>(padded), same_type::<T, U>(panels)) else {
        return false;
    };
    let bias = bias.and_then(same_type::<T, U>);
    let y = Out {
        ptr: y.ptr.cast::<U>(),
        stride: y.stride,
        first: y.first,
        add: y.add,
    };
    let segs = segments(g, count, lanes);
    let chan = count * (g.h + 2) * (g.w + 2);
    // SAFETY: the caller's.
    unsafe { x86::forward::<U>(p, &segs, chan, g.w + 2, inputs, outputs, w, bias, &y) };
    true
}

/// [`weight_grad_tile`] in element type `U` with `lanes` lanes when `T` is `U` (false otherwise).
///
/// # Safety
/// AVX-512 F must be present; the slices must hold what [`weight_grad_tile`] asserts.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn weight_grad_as<T: Real, U: x86::Lanes + std::ops::AddAssign>(
    padded: &[T],
    dy: &[T],
    nu: usize,
    first: usize,
    g: &ConvShape,
    count: usize,
    dw: &mut [T],
    lanes: usize,
) -> bool {
    let (Some(p), Some(dy), Some(dw)) = (
        same_type::<T, U>(padded),
        same_type::<T, U>(dy),
        same_type_mut::<T, U>(dw),
    ) else {
        return false;
    };
    let segs = segments(g, count, lanes);
    let per_example = g.h * g.w.div_ceil(lanes);
    let chan = count * (g.h + 2) * (g.w + 2);
    let (ci, co, wp) = (g.c_in, g.c_out, g.w + 2);
    // SAFETY: the caller's.
    unsafe { x86::weight_grad::<U>(p, dy, nu, first, &segs, per_example, chan, wp, ci, co, dw) };
    true
}

/// [`same_type`] for a mutable slice.
pub(super) fn same_type_mut<T: 'static, U: 'static>(s: &mut [T]) -> Option<&mut [U]> {
    // SAFETY: T and U are the same type, so the slice is one of U.
    (TypeId::of::<T>() == TypeId::of::<U>())
        .then(|| unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<U>(), s.len()) })
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::{Out, Segment, PANEL, SEGMENTS};

    /// Output channels per register tile of the weight gradient (3 × 9 accumulators).
    const OUTS: usize = 3;
    use std::arch::x86_64::*;

    /// The vector operations the kernels need, for f32 (16 lanes) and f64 (8 lanes).
    pub trait Lanes: Copy + 'static {
        /// One vector.
        type V: Copy;
        /// Zero vector.
        unsafe fn zero() -> Self::V;
        /// Every lane `v`.
        unsafe fn splat(v: Self) -> Self::V;
        /// Lanes in `m` loaded from `p`, the others 0.
        unsafe fn load(p: *const Self, m: u16) -> Self::V;
        /// `a·b + c`.
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
        /// `a + b`.
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
        /// Lanes in `m` stored to `p`.
        unsafe fn store(p: *mut Self, m: u16, v: Self::V);
        /// Sum of the lanes.
        unsafe fn sum(v: Self::V) -> Self;
    }

    /// `impl Lanes` for one element type from its AVX-512 intrinsics (`$mask` converts the u16 lane mask).
    macro_rules! lanes {
        ($t:ty, $v:ty, $mask:ty, $zero:ident, $set1:ident, $load:ident, $fma:ident, $add:ident,
         $store:ident, $sum:ident) => {
            impl Lanes for $t {
                type V = $v;
                #[inline]
                #[target_feature(enable = "avx512f")]
                unsafe fn zero() -> $v {
                    $zero()
                }
                #[inline]
                #[target_feature(enable = "avx512f")]
                unsafe fn splat(v: $t) -> $v {
                    $set1(v)
                }
                #[inline]
                #[target_feature(enable = "avx512f")]
                unsafe fn load(p: *const $t, m: u16) -> $v {
                    unsafe { $load(m as $mask, p) }
                }
                #[inline]
                #[target_feature(enable = "avx512f")]
                unsafe fn fma(a: $v, b: $v, c: $v) -> $v {
                    $fma(a, b, c)
                }
                #[inline]
                #[target_feature(enable = "avx512f")]
                unsafe fn add(a: $v, b: $v) -> $v {
                    $add(a, b)
                }
                #[inline]
                #[target_feature(enable = "avx512f")]
                unsafe fn store(p: *mut $t, m: u16, v: $v) {
                    unsafe { $store(p, m as $mask, v) }
                }
                #[inline]
                #[target_feature(enable = "avx512f")]
                unsafe fn sum(v: $v) -> $t {
                    $sum(v)
                }
            }
        };
    }

    lanes!(
        f32,
        __m512,
        u16,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_maskz_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_mask_storeu_ps,
        _mm512_reduce_add_ps
    );
    lanes!(
        f64,
        __m512d,
        u8,
        _mm512_setzero_pd,
        _mm512_set1_pd,
        _mm512_maskz_loadu_pd,
        _mm512_fmadd_pd,
        _mm512_add_pd,
        _mm512_mask_storeu_pd,
        _mm512_reduce_add_pd
    );

    /// See [`super::forward_tile`]; `chan` values per padded input channel, `wp` the padded row length.
    /// (The register tile is indexed `acc[segment][channel]` in both loops, hence the range loops.)
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward<T: Lanes>(
        padded: &[T],
        segs: &[Segment],
        chan: usize,
        wp: usize,
        inputs: usize,
        outputs: usize,
        panels: &[T],
        bias: Option<&[T]>,
        y: &Out<T>,
    ) {
        let inner = inputs * 9;
        let taps: [usize; 9] = std::array::from_fn(|t| (t / 3) * wp + t % 3);
        for q in 0..outputs.div_ceil(PANEL) {
            let panel = &panels[q * inner * PANEL..][..inner * PANEL];
            let live = (outputs - q * PANEL).min(PANEL);
            for group in segs.chunks(SEGMENTS) {
                let mut s = [Segment::default(); SEGMENTS];
                s[..group.len()].copy_from_slice(group);
                let mut acc = [[unsafe { T::zero() }; PANEL]; SEGMENTS];
                for c in 0..inputs {
                    let base = padded[c * chan..].as_ptr();
                    let wc = panel[c * 9 * PANEL..].as_ptr();
                    for (t, &off) in taps.iter().enumerate() {
                        // Lanes past a row's end hold other positions' sums and are never stored, so
                        // the loads need no mask (they stay inside `padded`'s slack).
                        let v: [T::V; SEGMENTS] = std::array::from_fn(|i| unsafe {
                            T::load(base.add(s[i].src + off), !0)
                        });
                        let w = unsafe { wc.add(t * PANEL) };
                        for j in 0..PANEL {
                            let b = unsafe { T::splat(*w.add(j)) };
                            for i in 0..SEGMENTS {
                                acc[i][j] = unsafe { T::fma(v[i], b, acc[i][j]) };
                            }
                        }
                    }
                }
                for (j, o) in (q * PANEL..q * PANEL + live).enumerate() {
                    let b = bias.map(|b| b[o]);
                    for i in 0..SEGMENTS {
                        let p = unsafe { y.ptr.add(o * y.stride + y.first + s[i].dst) };
                        let mut v = acc[i][j];
                        if let Some(b) = b {
                            v = unsafe { T::add(v, T::splat(b)) };
                        }
                        if y.add {
                            v = unsafe { T::add(v, T::load(p, s[i].mask)) };
                        }
                        unsafe { T::store(p, s[i].mask, v) };
                    }
                }
            }
        }
    }

    /// See [`super::weight_grad_tile`]; `nu` values per channel of `dy`, `first` the tile's offset in them.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_grad<T: Lanes + std::ops::AddAssign>(
        padded: &[T],
        dy: &[T],
        nu: usize,
        first: usize,
        segs: &[Segment],
        per_example: usize,
        chan: usize,
        wp: usize,
        inputs: usize,
        outputs: usize,
        dw: &mut [T],
    ) {
        let taps: [usize; 9] = std::array::from_fn(|t| (t / 3) * wp + t % 3);
        // One example at a time, so that the three rows of `dy` and the input channel a register tile
        // streams stay in L1 (a tile of several examples spills it).
        for example in segs.chunks(per_example) {
            for o in (0..outputs).step_by(OUTS) {
                let live = (outputs - o).min(OUTS);
                // A short last group reads its last channel's row again and keeps one result of it.
                let d: [*const T; OUTS] =
                    std::array::from_fn(|r| dy[(o + r.min(live - 1)) * nu + first..].as_ptr());
                for c in 0..inputs {
                    let base = padded[c * chan..].as_ptr();
                    let mut acc = [[unsafe { T::zero() }; 9]; OUTS];
                    for s in example {
                        let g: [T::V; OUTS] =
                            std::array::from_fn(|r| unsafe { T::load(d[r].add(s.dst), s.mask) });
                        for (t, &off) in taps.iter().enumerate() {
                            let v = unsafe { T::load(base.add(s.src + off), s.mask) };
                            for r in 0..OUTS {
                                acc[r][t] = unsafe { T::fma(g[r], v, acc[r][t]) };
                            }
                        }
                    }
                    for (r, row) in acc.iter().enumerate().take(live) {
                        let out = &mut dw[((o + r) * inputs + c) * 9..][..9];
                        for (d, &v) in out.iter_mut().zip(row) {
                            *d += unsafe { T::sum(v) };
                        }
                    }
                }
            }
        }
    }
}
