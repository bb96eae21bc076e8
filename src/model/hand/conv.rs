//! Convolution over a channel-major batch `(C, N, H, W)`: the whole batch's patch matrix (one row per
//! `(c, a, b)` of a group, one column per `(n, oy, ox)`) and one GEMM per group, so each product has the
//! batch's `N·U` columns; 1×1 stride-1 convolutions use the input itself as the patch matrix, and depthwise
//! convolutions run as direct loops over channels. Backward: `dW = dY · colsᵀ`, `dcols = Wᵀ · dY`, then
//! col2im (the adjoint of im2col) onto the input gradient.

use super::plan::ConvShape;
use super::product::{product, Operand};
use super::real::{resize_exact, Real};
use rayon::prelude::*;

/// Output columns `ox` whose input column `ox·s + b − p` lies inside a row of width `w`.
fn valid_range(out: usize, s: usize, b: usize, p: usize, w: usize) -> std::ops::Range<usize> {
    let lo = if p > b { (p - b).div_ceil(s) } else { 0 };
    let hi = if w + p > b {
        ((w + p - b - 1) / s + 1).min(out)
    } else {
        0
    };
    lo.min(hi)..hi
}

/// Row `r` of the patch matrix of group `group` for the examples `ex` of the batch `x` (C_in, n, H, W):
/// `row` holds ex.len()·U values, example after example; entries outside the image are 0.
pub fn patch_row<T: Real>(
    x: &[T],
    g: &ConvShape,
    n: usize,
    group: usize,
    r: usize,
    ex: std::ops::Range<usize>,
    row: &mut [T],
) {
    let (k, s, p) = (g.k, g.stride, g.padding);
    let (plane, u) = (g.h * g.w, g.positions());
    let (c, a, b) = (r / (k * k), (r / k) % k, r % k);
    let src = &x[(group * g.c_in_group() + c) * n * plane..][..n * plane];
    if s == 1 && g.out_h == g.h && g.out_w == g.w {
        for (i, e) in ex.enumerate() {
            let img = &src[e * plane..][..plane];
            shifted_plane(
                img,
                g.h,
                g.w,
                a as isize - p as isize,
                b as isize - p as isize,
                &mut row[i * u..][..u],
            );
        }
        return;
    }
    let xs = valid_range(g.out_w, s, b, p, g.w);
    for (i, e) in ex.enumerate() {
        let img = &src[e * plane..][..plane];
        for oy in 0..g.out_h {
            let out = &mut row[i * u + oy * g.out_w..][..g.out_w];
            let iy = (oy * s + a).checked_sub(p).filter(|&iy| iy < g.h);
            let Some(iy) = iy else {
                out.fill(T::ZERO);
                continue;
            };
            out[..xs.start].fill(T::ZERO);
            out[xs.end..].fill(T::ZERO);
            let line = &img[iy * g.w..][..g.w];
            if s == 1 {
                let from = xs.start + b - p;
                out[xs.clone()].copy_from_slice(&line[from..from + xs.len()]);
            } else {
                let from = xs.start * s + b - p;
                let strided = line[from..].iter().step_by(s);
                out[xs.clone()]
                    .iter_mut()
                    .zip(strided)
                    .for_each(|(o, v)| *o = *v);
            }
        }
    }
}

/// `out[y·w + x] = img[(y + dy)·w + x + dx]`, 0 outside the `h × w` image: one patch-matrix row of a
/// stride-1 "same" convolution for one example, as one contiguous copy (the rows' shifted runs are
/// adjacent in memory) followed by zeroing the columns that wrapped around and the rows outside.
fn shifted_plane<T: Real>(img: &[T], h: usize, w: usize, dy: isize, dx: isize, out: &mut [T]) {
    let (hi, wi) = (h as isize, w as isize);
    let (lo_row, hi_row) = ((-dy).clamp(0, hi) as usize, (hi - dy).clamp(0, hi) as usize);
    out[..lo_row * w].fill(T::ZERO);
    out[hi_row.max(lo_row) * w..h * w].fill(T::ZERO);
    if hi_row <= lo_row {
        return;
    }
    let (start, end) = (lo_row * w, hi_row * w);
    // Source of out[start]: it may lie one run before the image (dx < 0) or its end past it (dx > 0).
    let from = start as isize + dy * wi + dx;
    let (first, last) = (from.max(0), (from + (end - start) as isize).min(hi * wi));
    let skip = (first - from) as usize;
    let len = (last - first) as usize;
    out[start..start + skip].fill(T::ZERO);
    out[start + skip..start + skip + len].copy_from_slice(&img[first as usize..last as usize]);
    out[start + skip + len..end].fill(T::ZERO);
    let zero = if dx < 0 {
        0..(-dx).min(wi) as usize
    } else {
        (wi - dx).max(0) as usize..w
    };
    if !zero.is_empty() {
        for y in lo_row..hi_row {
            out[y * w + zero.start..y * w + zero.end].fill(T::ZERO);
        }
    }
}

/// The patch matrix of group `group` of the batch `x` (C_in, N, H, W) into `cols`
/// (patch_len × N·U, row-major); entries outside the image are 0.
pub fn im2col<T: Real>(x: &[T], g: &ConvShape, n: usize, group: usize, cols: &mut [T]) {
    let nu = n * g.positions();
    cols[..g.patch_len() * nu]
        .par_chunks_mut(nu)
        .enumerate()
        .for_each(|(r, row)| patch_row(x, g, n, group, r, 0..n, row));
}

/// Adds channel `c` (of its group) of a patch-matrix gradient `cols` (rows of `width` values: `count`
/// examples' U positions each) onto that channel's `count` planes in `dst` (count × H × W): one channel of
/// col2im.
pub fn scatter_channel<T: Real>(
    cols: &[T],
    width: usize,
    g: &ConvShape,
    c: usize,
    count: usize,
    dst: &mut [T],
) {
    let (k, s, p) = (g.k, g.stride, g.padding);
    let (plane, u) = (g.h * g.w, g.positions());
    for a in 0..k {
        for b in 0..k {
            let row = &cols[((c * k + a) * k + b) * width..][..width];
            let xs = valid_range(g.out_w, s, b, p, g.w);
            for ex in 0..count {
                let img = &mut dst[ex * plane..][..plane];
                for oy in 0..g.out_h {
                    let Some(iy) = (oy * s + a).checked_sub(p).filter(|&iy| iy < g.h) else {
                        continue;
                    };
                    let src = &row[ex * u + oy * g.out_w..][..g.out_w];
                    let line = &mut img[iy * g.w..][..g.w];
                    if s == 1 {
                        let to = &mut line[xs.start + b - p..][..xs.len()];
                        to.iter_mut()
                            .zip(&src[xs.clone()])
                            .for_each(|(d, v)| *d += *v);
                    } else {
                        let from = xs.start * s + b - p;
                        let strided = line[from..].iter_mut().step_by(s);
                        strided.zip(&src[xs.clone()]).for_each(|(d, v)| *d += *v);
                    }
                }
            }
        }
    }
}

/// col2im: scatter the patch-matrix gradient `cols` of group `group` onto the channels of that group in
/// `dx` (C_in, N, H, W), replacing them or adding to them (`add`).
pub fn col2im<T: Real>(cols: &[T], g: &ConvShape, n: usize, group: usize, dx: &mut [T], add: bool) {
    let (plane, nu, cg) = (g.h * g.w, n * g.positions(), g.c_in_group());
    let c0 = group * cg;
    dx[c0 * n * plane..(c0 + cg) * n * plane]
        .par_chunks_mut(n * plane)
        .enumerate()
        .for_each(|(c, dst)| {
            if !add {
                dst.fill(T::ZERO);
            }
            scatter_channel(cols, nu, g, c, n, dst);
        });
}

/// `v` at least `len` long (grown exactly, never shrunk).
pub(super) fn at_least<T: Real>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        resize_exact(v, len);
    }
}

/// Reused buffers of the convolutions (patch matrix and its gradient), each sized for the largest use of
/// it: the patch matrix by eval-mode forwards (and a backward without saved patches), its gradient by
/// input gradients.
#[derive(Default)]
pub struct ConvScratch<T> {
    cols: Vec<T>,
    dcols: Vec<T>,
    small: Vec<T>,
}

impl<T: Real> ConvScratch<T> {
    /// Values held (allocated capacities), for [`super::HandPass::held_bytes`].
    pub fn held_values(&self) -> usize {
        self.cols.capacity() + self.dcols.capacity() + self.small.capacity()
    }
}

/// y (C_out, N, OH, OW) = conv(x) + bias for the batch of `n` examples. With `keep`, the patch matrices of
/// every group are left there (groups × patch_len × N·U) for [`backward`] to reuse instead of recomputing.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Real>(
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    g: &ConvShape,
    n: usize,
    scratch: &mut ConvScratch<T>,
    keep: Option<&mut Vec<T>>,
    y: &mut [T],
) {
    let nu = n * g.positions();
    let mut keep = keep;
    if g.is_depthwise() {
        depthwise_forward(x, weight, g, n, y);
    } else {
        let (kg, cog) = (g.patch_len(), g.c_out_group());
        for group in 0..g.groups {
            let w = Operand::new(&weight[group * cog * kg..], cog, kg);
            let out = &mut y[group * cog * nu..][..cog * nu];
            if g.is_pointwise() {
                let cols = Operand::new(&x[group * kg * nu..], kg, nu);
                product(out, w, cols, false);
            } else {
                let cols = match keep.as_mut() {
                    Some(saved) => {
                        resize_exact(saved, g.groups * kg * nu);
                        &mut saved[group * kg * nu..][..kg * nu]
                    }
                    None => {
                        at_least(&mut scratch.cols, kg * nu);
                        &mut scratch.cols[..kg * nu]
                    }
                };
                im2col(x, g, n, group, cols);
                product(out, w, Operand::new(cols, kg, nu), false);
            }
        }
    }
    if let Some(bias) = bias {
        y[..g.c_out * nu]
            .par_chunks_mut(nu)
            .zip(bias)
            .for_each(|(row, &b)| row.iter_mut().for_each(|v| *v += b));
    }
}

/// The patch matrix (K × N·U) of a one-group convolution's input `x`: `x` itself for a 1×1 stride-1
/// convolution, else its im2col in `cols`.
fn patch_matrix<'a, T: Real>(x: &'a [T], g: &ConvShape, n: usize, cols: &'a mut Vec<T>) -> &'a [T] {
    let len = g.patch_len() * n * g.positions();
    if g.is_pointwise() {
        return &x[..len];
    }
    at_least(cols, len);
    im2col(x, g, n, 0, cols);
    &cols[..len]
}

/// The convolutions (no bias) of `x` (C_in, N, H, W) with `sets` weight sets stacked in `weights`
/// (sets × C_out × K, one group, not depthwise), all from one patch matrix of `x`: `block` sets at a time
/// into `tmp` (grown to block·C_out × N·U), each block handed to `each(first_set, values)` with the
/// block's sets one after another, `(C_out, N, OH, OW)` each. What the tangent pass needs for its
/// q parameter directions: one im2col and q/block taller GEMMs instead of q of each.
#[allow(clippy::too_many_arguments)]
pub fn forward_sets<T: Real>(
    x: &[T],
    weights: &[T],
    sets: usize,
    block: usize,
    g: &ConvShape,
    n: usize,
    scratch: &mut ConvScratch<T>,
    tmp: &mut Vec<T>,
    mut each: impl FnMut(usize, &[T]),
) {
    debug_assert!(g.groups == 1 && !g.is_depthwise());
    let (nu, kg, co) = (n * g.positions(), g.patch_len(), g.c_out);
    let cols = patch_matrix(x, g, n, &mut scratch.cols);
    let block = block.clamp(1, sets.max(1));
    at_least(tmp, block * co * nu);
    for first in (0..sets).step_by(block) {
        let b = block.min(sets - first);
        let out = &mut tmp[..b * co * nu];
        let w = Operand::new(&weights[first * co * kg..], b * co, kg);
        product(out, w, Operand::new(cols, kg, nu), false);
        each(first, out);
    }
}

/// The weight gradients of `sets` output gradients of a convolution (one group, not depthwise) against
/// one patch matrix of `x` (C_in, N, H, W): `block` sets at a time, `fill(first, dy)` writes the block's
/// output gradients one set after another, `(C_out, N, OH, OW)` each, into `dy` (grown in `gathered`), and
/// `each(first, dw)` receives their weight gradients, `C_out × K` per set one after another. What the
/// NTK's `Jᵀ V` needs for its q vectors: one im2col and q/block wider GEMMs instead of q of each.
#[allow(clippy::too_many_arguments)]
pub fn weight_grad_sets<T: Real>(
    x: &[T],
    sets: usize,
    block: usize,
    g: &ConvShape,
    n: usize,
    scratch: &mut ConvScratch<T>,
    gathered: &mut Vec<T>,
    mut fill: impl FnMut(usize, &mut [T]),
    mut each: impl FnMut(usize, &[T]),
) {
    debug_assert!(g.groups == 1 && !g.is_depthwise());
    let (nu, kg, co) = (n * g.positions(), g.patch_len(), g.c_out);
    let cols = patch_matrix(x, g, n, &mut scratch.cols);
    let block = block.clamp(1, sets.max(1));
    at_least(gathered, block * co * nu);
    at_least(&mut scratch.dcols, block * co * kg);
    for first in (0..sets).step_by(block) {
        let b = block.min(sets - first);
        let dy = &mut gathered[..b * co * nu];
        fill(first, dy);
        // dW (b·C_out × K) = dy · colsᵀ: with the block's b·C_out rows the product is tall enough that
        // no transposed copy (as in `weight_grad`) is needed.
        let dw = &mut scratch.dcols[..b * co * kg];
        product(
            dw,
            Operand::new(dy, b * co, nu),
            Operand::new(cols, kg, nu).t(),
            false,
        );
        each(first, dw);
    }
}

/// Gradients of a convolution: `dw` (same layout as the weight) and `dbias` replaced, and, when `dx` is
/// given, the input gradient replaced or added to (`add`). `saved`: the patch matrices [`forward`] kept.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    x: &[T],
    weight: &[T],
    dy: &[T],
    g: &ConvShape,
    n: usize,
    saved: Option<&[T]>,
    scratch: &mut ConvScratch<T>,
    dw: &mut [T],
    dbias: Option<&mut [T]>,
    dx: Option<(&mut [T], bool)>,
) {
    let nu = n * g.positions();
    if let Some(db) = dbias {
        bias_grad(dy, g.c_out, nu, db);
    }
    if g.is_depthwise() {
        depthwise_backward(x, weight, dy, g, n, dw, dx);
        return;
    }
    let (kg, cog) = (g.patch_len(), g.c_out_group());
    let mut dx = dx;
    for group in 0..g.groups {
        let dy_g = Operand::new(&dy[group * cog * nu..], cog, nu);
        let w = Operand::new(&weight[group * cog * kg..], cog, kg);
        let dw_g = &mut dw[group * cog * kg..][..cog * kg];
        if g.is_pointwise() {
            let x_g = Operand::new(&x[group * kg * nu..], kg, nu);
            weight_grad(x_g, dy_g, &mut scratch.small, dw_g);
            if let Some((dx, add)) = dx.as_mut() {
                product(&mut dx[group * kg * nu..][..kg * nu], w.t(), dy_g, *add);
            }
        } else {
            let cols = match saved {
                Some(s) if s.len() >= g.groups * kg * nu => &s[group * kg * nu..][..kg * nu],
                _ => {
                    at_least(&mut scratch.cols, kg * nu);
                    im2col(x, g, n, group, &mut scratch.cols);
                    &scratch.cols[..kg * nu]
                }
            };
            weight_grad(Operand::new(cols, kg, nu), dy_g, &mut scratch.small, dw_g);
            if let Some((dx, add)) = dx.as_mut() {
                at_least(&mut scratch.dcols, kg * nu);
                product(&mut scratch.dcols[..kg * nu], w.t(), dy_g, false);
                col2im(&scratch.dcols, g, n, group, dx, *add);
            }
        }
    }
}

/// The bias gradient `db` (replaced) of the output gradient `dy` (`c_out` rows of `nu` values): row sums,
/// accumulated in f64.
pub fn bias_grad<T: Real>(dy: &[T], c_out: usize, nu: usize, db: &mut [T]) {
    db[..c_out].par_iter_mut().enumerate().for_each(|(o, d)| {
        *d = T::from_f64(dy[o * nu..(o + 1) * nu].iter().map(|v| v.to_f64()).sum());
    });
}

/// dW (C_out/g × K_g) of one group from its patch matrix `cols` (K_g × N·U) and `dy` (C_out/g × N·U),
/// computed as dWᵀ = cols · dyᵀ (the long N·U dimension inside the product runs faster this way round)
/// into `small`, then transposed.
fn weight_grad<T: Real>(
    cols: Operand<'_, T>,
    dy: Operand<'_, T>,
    small: &mut Vec<T>,
    dw: &mut [T],
) {
    let (kg, cog) = (cols.rows(), dy.rows());
    if small.len() < kg * cog {
        resize_exact(small, kg * cog);
    }
    product(small, cols, dy.t(), false);
    transpose_into(small, kg, cog, dw);
}

/// `dst (cols × rows) = srcᵀ` for a row-major `rows × cols` source.
fn transpose_into<T: Real>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    for r in 0..rows {
        for c in 0..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// Depthwise forward: y[c] = Σ_ab w[c, a, b] · x[c] shifted, one channel per task.
fn depthwise_forward<T: Real>(x: &[T], weight: &[T], g: &ConvShape, n: usize, y: &mut [T]) {
    let (k, s, p) = (g.k, g.stride, g.padding);
    let (plane, u) = (g.h * g.w, g.positions());
    y[..g.c_out * n * u]
        .par_chunks_mut(n * u)
        .enumerate()
        .for_each(|(c, out)| {
            out.fill(T::ZERO);
            let wc = &weight[c * k * k..][..k * k];
            let src = &x[c * n * plane..][..n * plane];
            for ex in 0..n {
                let img = &src[ex * plane..][..plane];
                let o = &mut out[ex * u..][..u];
                for a in 0..k {
                    for b in 0..k {
                        let wv = wc[a * k + b];
                        let xs = valid_range(g.out_w, s, b, p, g.w);
                        for oy in 0..g.out_h {
                            let Some(iy) = (oy * s + a).checked_sub(p).filter(|&iy| iy < g.h)
                            else {
                                continue;
                            };
                            let line = &img[iy * g.w..][..g.w];
                            let orow = &mut o[oy * g.out_w..][..g.out_w];
                            for ox in xs.clone() {
                                orow[ox] += wv * line[ox * s + b - p];
                            }
                        }
                    }
                }
            }
        });
}

/// Depthwise backward: dw[c, a, b] = Σ dy[c]·x[c] shifted (accumulated in f64), dx[c] = Σ_ab w·dy shifted back.
fn depthwise_backward<T: Real>(
    x: &[T],
    weight: &[T],
    dy: &[T],
    g: &ConvShape,
    n: usize,
    dw: &mut [T],
    dx: Option<(&mut [T], bool)>,
) {
    let (k, s, p) = (g.k, g.stride, g.padding);
    let (plane, u) = (g.h * g.w, g.positions());
    let kernel_grad = |c: usize, dwc: &mut [T]| {
        let src = &x[c * n * plane..][..n * plane];
        let grad = &dy[c * n * u..][..n * u];
        for a in 0..k {
            for b in 0..k {
                let xs = valid_range(g.out_w, s, b, p, g.w);
                let mut acc = 0.0f64;
                for ex in 0..n {
                    for oy in 0..g.out_h {
                        let Some(iy) = (oy * s + a).checked_sub(p).filter(|&iy| iy < g.h) else {
                            continue;
                        };
                        let line = &src[ex * plane + iy * g.w..][..g.w];
                        let drow = &grad[ex * u + oy * g.out_w..][..g.out_w];
                        let mut part = T::ZERO;
                        for ox in xs.clone() {
                            part += drow[ox] * line[ox * s + b - p];
                        }
                        acc += part.to_f64();
                    }
                }
                dwc[a * k + b] = T::from_f64(acc);
            }
        }
    };
    dw[..g.c_out * k * k]
        .par_chunks_mut(k * k)
        .enumerate()
        .for_each(|(c, dwc)| kernel_grad(c, dwc));
    if let Some((dx, add)) = dx {
        depthwise_input_grad(weight, dy, g, n, dx, add);
    }
}

/// Depthwise input gradient: dx[c] = Σ_ab w[c, a, b] · dy[c] shifted back, replaced or added (`add`).
fn depthwise_input_grad<T: Real>(
    weight: &[T],
    dy: &[T],
    g: &ConvShape,
    n: usize,
    dx: &mut [T],
    add: bool,
) {
    let (k, s, p) = (g.k, g.stride, g.padding);
    let (plane, u) = (g.h * g.w, g.positions());
    dx[..g.c_in * n * plane]
        .par_chunks_mut(n * plane)
        .enumerate()
        .for_each(|(c, dst)| {
            if !add {
                dst.fill(T::ZERO);
            }
            let wc = &weight[c * k * k..][..k * k];
            let grad = &dy[c * n * u..][..n * u];
            for ex in 0..n {
                let img = &mut dst[ex * plane..][..plane];
                for a in 0..k {
                    for b in 0..k {
                        let wv = wc[a * k + b];
                        let xs = valid_range(g.out_w, s, b, p, g.w);
                        for oy in 0..g.out_h {
                            let Some(iy) = (oy * s + a).checked_sub(p).filter(|&iy| iy < g.h)
                            else {
                                continue;
                            };
                            let drow = &grad[ex * u + oy * g.out_w..][..g.out_w];
                            let line = &mut img[iy * g.w..][..g.w];
                            for ox in xs.clone() {
                                line[ox * s + b - p] += wv * drow[ox];
                            }
                        }
                    }
                }
            }
        });
}

/// The input gradient alone (no weight gradient) of `n` images' output gradients `dy` (C_out, n, OH, OW):
/// what the NTK's batched reverse pass needs, `n` being its number of rows.
pub fn input_grad<T: Real>(
    weight: &[T],
    dy: &[T],
    g: &ConvShape,
    n: usize,
    scratch: &mut ConvScratch<T>,
    dx: &mut [T],
    add: bool,
) {
    if g.is_depthwise() {
        depthwise_input_grad(weight, dy, g, n, dx, add);
        return;
    }
    let nu = n * g.positions();
    let (kg, cog) = (g.patch_len(), g.c_out_group());
    for group in 0..g.groups {
        let dy_g = Operand::new(&dy[group * cog * nu..], cog, nu);
        let w = Operand::new(&weight[group * cog * kg..], cog, kg);
        if g.is_pointwise() {
            product(&mut dx[group * kg * nu..][..kg * nu], w.t(), dy_g, add);
        } else {
            at_least(&mut scratch.dcols, kg * nu);
            product(&mut scratch.dcols[..kg * nu], w.t(), dy_g, false);
            col2im(&scratch.dcols, g, n, group, dx, add);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(
        c_in: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> ConvShape {
        ConvShape {
            c_in,
            h,
            w,
            c_out: 1,
            k,
            stride,
            padding,
            groups: 1,
            out_h: (h + 2 * padding - k) / stride + 1,
            out_w: (w + 2 * padding - k) / stride + 1,
        }
    }

    /// im2col equals the definition `cols[(c,a,b)][(e,oy,ox)] = x[c, e, oy·s + a − p, ox·s + b − p]` (0
    /// outside), and col2im is its adjoint: ⟨im2col(x), z⟩ = ⟨x, col2im(z)⟩.
    #[test]
    fn im2col_is_the_definition_and_col2im_its_adjoint() {
        for g in [
            shape(2, 5, 6, 3, 1, 1),
            shape(2, 6, 4, 5, 1, 2),
            shape(3, 7, 5, 3, 2, 1),
            shape(1, 4, 4, 3, 1, 0),
            shape(2, 3, 3, 5, 1, 2),
        ] {
            let n = 3;
            let (plane, u, kg) = (g.h * g.w, g.positions(), g.patch_len());
            let x: Vec<f64> = (0..g.c_in * n * plane)
                .map(|i| (i as f64 * 0.37).sin())
                .collect();
            let mut cols = vec![f64::NAN; kg * n * u];
            im2col(&x, &g, n, 0, &mut cols);
            for r in 0..kg {
                let (c, a, b) = (r / (g.k * g.k), (r / g.k) % g.k, r % g.k);
                for e in 0..n {
                    for oy in 0..g.out_h {
                        for ox in 0..g.out_w {
                            let iy = (oy * g.stride + a) as isize - g.padding as isize;
                            let ix = (ox * g.stride + b) as isize - g.padding as isize;
                            let inside =
                                (0..g.h as isize).contains(&iy) && (0..g.w as isize).contains(&ix);
                            let want = if inside {
                                x[(c * n + e) * plane + iy as usize * g.w + ix as usize]
                            } else {
                                0.0
                            };
                            assert_eq!(cols[r * n * u + e * u + oy * g.out_w + ox], want, "{g:?}");
                        }
                    }
                }
            }
            let z: Vec<f64> = (0..kg * n * u).map(|i| (i as f64 * 0.11).cos()).collect();
            let mut back = vec![0.0; x.len()];
            col2im(&z, &g, n, 0, &mut back, false);
            let lhs: f64 = cols.iter().zip(&z).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
            assert!(
                (lhs - rhs).abs() < 1e-12 * lhs.abs().max(1.0),
                "{g:?}: {lhs} vs {rhs}"
            );
        }
    }
}
