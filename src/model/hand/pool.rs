//! Pooling over non-overlapping windows (max, average; adaptive average when the output divides the input)
//! and `Flatten`, on channel-major feature maps `(C, N, H, W)`: each `(c, n)` plane is one task.

use super::real::{put, Real};
use rayon::prelude::*;

/// Which pooling.
#[derive(Debug, Clone, Copy)]
pub enum Pool {
    /// Maximum over each window (the gradient goes to the first maximum, row-major).
    Max,
    /// Mean over each window.
    Mean,
}

/// Window geometry: input (h, w), window (kh, kw) equal to the stride; output (h/kh, w/kw).
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window height (= vertical stride).
    pub kh: usize,
    /// Window width (= horizontal stride).
    pub kw: usize,
}

impl Windows {
    fn out(&self) -> (usize, usize) {
        (self.h / self.kh, self.w / self.kw)
    }
}

/// y = pool(x) for every plane of `x` (planes of h·w values).
pub fn forward<T: Real>(pool: Pool, x: &[T], g: Windows, y: &mut [T]) {
    let (oh, ow) = g.out();
    let scale = T::from_f64(1.0 / (g.kh * g.kw) as f64);
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(g.h * g.w))
        .for_each(|(out, plane)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let window = (0..g.kh).flat_map(|a| {
                        let row = (oy * g.kh + a) * g.w + ox * g.kw;
                        plane[row..row + g.kw].iter().copied()
                    });
                    out[oy * ow + ox] = match pool {
                        Pool::Max => window
                            .reduce(|m, v| if v > m { v } else { m })
                            .unwrap_or_default(),
                        Pool::Mean => window.sum::<T>() * scale,
                    };
                }
            }
        });
}

/// dx from dy for every plane, replaced or added (`add`); `x`, `y` are the forward input and output.
pub fn backward<T: Real>(
    pool: Pool,
    x: &[T],
    y: &[T],
    dy: &[T],
    g: Windows,
    dx: &mut [T],
    add: bool,
) {
    let (oh, ow) = g.out();
    let (plane, out) = (g.h * g.w, oh * ow);
    dx.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(p, dplane)| {
            let o = p * out..(p + 1) * out;
            backward_plane(
                pool,
                &x[p * plane..][..plane],
                &y[o.clone()],
                &dy[o],
                g,
                dplane,
                add,
            );
        });
}

/// [`backward`] on one plane (input `plane`, output `y`, output gradient `dy`), on the calling thread.
pub fn backward_plane<T: Real>(
    pool: Pool,
    plane: &[T],
    y: &[T],
    dy: &[T],
    g: Windows,
    dplane: &mut [T],
    add: bool,
) {
    let (oh, ow) = g.out();
    let scale = T::from_f64(1.0 / (g.kh * g.kw) as f64);
    if !add {
        dplane.fill(T::ZERO);
    }
    for oy in 0..oh {
        for ox in 0..ow {
            let o = oy * ow + ox;
            let mut first = true;
            for a in 0..g.kh {
                for b in 0..g.kw {
                    let i = (oy * g.kh + a) * g.w + ox * g.kw + b;
                    match pool {
                        Pool::Mean => dplane[i] += dy[o] * scale,
                        Pool::Max => {
                            if first && plane[i] == y[o] {
                                dplane[i] += dy[o];
                                first = false;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The tangent of max-pooling on one plane: `dy[o] = dplane[first maximum of window o]`, the first
/// maximum (row-major) of the primal `plane` whose output is `y` (the tie rule of [`backward_plane`]).
pub fn max_tangent_plane<T: Real>(plane: &[T], y: &[T], dplane: &[T], g: Windows, dy: &mut [T]) {
    let (oh, ow) = g.out();
    for oy in 0..oh {
        for ox in 0..ow {
            let o = oy * ow + ox;
            let first = (0..g.kh)
                .flat_map(|a| (0..g.kw).map(move |b| (oy * g.kh + a) * g.w + ox * g.kw + b))
                .find(|&i| plane[i] == y[o]);
            dy[o] = first.map_or(T::ZERO, |i| dplane[i]);
        }
    }
}

/// Flatten a channel-major batch (C, N, F_c) into (N, C·F_c) rows in PyTorch's feature order.
pub fn flatten<T: Real>(x: &[T], c: usize, n: usize, per_channel: usize, y: &mut [T]) {
    y.par_chunks_mut(c * per_channel)
        .enumerate()
        .for_each(|(ex, row)| {
            for ch in 0..c {
                row[ch * per_channel..][..per_channel]
                    .copy_from_slice(&x[(ch * n + ex) * per_channel..][..per_channel]);
            }
        });
}

/// The adjoint of [`flatten`]: rows (N, C·F_c) back to (C, N, F_c), replaced or added (`add`).
pub fn unflatten<T: Real>(
    dy: &[T],
    c: usize,
    n: usize,
    per_channel: usize,
    dx: &mut [T],
    add: bool,
) {
    dx.par_chunks_mut(n * per_channel)
        .enumerate()
        .for_each(|(ch, block)| {
            for ex in 0..n {
                let src = &dy[ex * c * per_channel + ch * per_channel..][..per_channel];
                let dst = &mut block[ex * per_channel..][..per_channel];
                for (d, &s) in dst.iter_mut().zip(src) {
                    put(d, s, add);
                }
            }
        });
}
