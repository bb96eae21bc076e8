//! Lowering a convolution to matrix products: the geometry of one example's convolution, its patch matrix in
//! the two layouts the code needs, and col2im, the adjoint that scatters patch entries back onto the image.
//!
//! Patch entry `(c, a, b)` of output position `u = oy·W_out + ox` is `x[c, oy·s + a − p, ox·s + b − p]`
//! (zero outside the image), in the weight's `(C_in, k, k)` order, so a convolution is `W · columns`.

use std::ops::AddAssign;

/// Geometry of a square-kernel 2-D convolution on one example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub padding: usize,
}

impl ConvGeometry {
    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.padding - self.k) / self.stride + 1
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.padding - self.k) / self.stride + 1
    }

    /// Number of output positions U.
    pub fn positions(&self) -> usize {
        self.out_h() * self.out_w()
    }

    /// Patch length C_in·k·k.
    pub fn patch_len(&self) -> usize {
        self.c_in * self.k * self.k
    }

    /// Elements of one input example, C_in·H·W.
    pub fn input_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    /// The output indices `o` whose input index at kernel offset `a` lies inside an image of `size`
    /// (those for which [`Self::source`] is `Some`): one contiguous range, empty when there are none.
    fn valid_outputs(&self, a: usize, size: usize) -> std::ops::Range<usize> {
        let outs = (size + 2 * self.padding - self.k) / self.stride + 1;
        // o·s + a ≥ p  ⇔  o ≥ ⌈(p − a)/s⌉;  o·s + a − p < size  ⇔  o < ⌈(size + p − a)/s⌉.
        let lo = self.padding.saturating_sub(a).div_ceil(self.stride);
        let hi = (size + self.padding)
            .saturating_sub(a)
            .div_ceil(self.stride)
            .min(outs);
        lo.min(hi)..hi
    }

    /// Input row (or column) read by output index `o` at kernel offset `a`, if inside an image of `size`.
    fn source(&self, o: usize, a: usize, size: usize) -> Option<usize> {
        (o * self.stride + a)
            .checked_sub(self.padding)
            .filter(|&i| i < size)
    }
}

/// The patch matrix of one example `x` (C_in × H × W, row-major) with one row per output position:
/// `out` is U × C_in·k·k, row-major (the NTK keeps per-position patches as rows).
pub fn patch_rows<T: Copy + Default>(x: &[T], g: &ConvGeometry, out: &mut [T]) {
    debug_assert_eq!(x.len(), g.input_len());
    let hw = g.h * g.w;
    patch_rows_of(|c| &x[c * hw..(c + 1) * hw], g, out);
}

/// [`patch_rows`] of an example whose channel `c` is the H × W plane `plane(c)` (so the channels need not
/// be adjacent: a batch stored channel-major is read in place).
pub fn patch_rows_of<'a, T: Copy + Default + 'a>(
    plane: impl Fn(usize) -> &'a [T],
    g: &ConvGeometry,
    out: &mut [T],
) {
    let (ow, k, len) = (g.out_w(), g.k, g.patch_len());
    for c in 0..g.c_in {
        let plane = plane(c);
        for oy in 0..g.out_h() {
            for ox in 0..ow {
                let row = &mut out[(oy * ow + ox) * len..][..len];
                for a in 0..k {
                    let iy = g.source(oy, a, g.h);
                    for b in 0..k {
                        row[(c * k + a) * k + b] = match (iy, g.source(ox, b, g.w)) {
                            (Some(iy), Some(ix)) => plane[iy * g.w + ix],
                            _ => T::default(),
                        };
                    }
                }
            }
        }
    }
}

/// The patch matrix of one example with one column per output position: `cols` is C_in·k·k × U,
/// row-major, `cols[(c·k + a)·k + b, u]` (the transpose of [`patch_rows`], built row by row).
pub fn im2col<T: Copy + Default>(x: &[T], g: &ConvGeometry, cols: &mut [T]) {
    debug_assert_eq!(x.len(), g.input_len());
    let hw = g.h * g.w;
    im2col_of(|c| &x[c * hw..(c + 1) * hw], g, cols);
}

/// [`im2col`] of an example whose channel `c` is the H × W plane `plane(c)`. Each output row is a run of
/// zeros, a copy (stride 1) or a strided read of one input line, and zeros.
pub fn im2col_of<'a, T: Copy + Default + 'a>(
    plane: impl Fn(usize) -> &'a [T],
    g: &ConvGeometry,
    cols: &mut [T],
) {
    let (k, p, oh, ow, s) = (g.k, g.positions(), g.out_h(), g.out_w(), g.stride);
    for c in 0..g.c_in {
        let plane = plane(c);
        for a in 0..k {
            for b in 0..k {
                let row = &mut cols[((c * k + a) * k + b) * p..][..p];
                let xs = g.valid_outputs(b, g.w);
                for oy in 0..oh {
                    let dst = &mut row[oy * ow..(oy + 1) * ow];
                    let Some(iy) = g.source(oy, a, g.h) else {
                        dst.fill(T::default());
                        continue;
                    };
                    dst[..xs.start].fill(T::default());
                    dst[xs.end..].fill(T::default());
                    if xs.is_empty() {
                        continue;
                    }
                    let line = &plane[iy * g.w..(iy + 1) * g.w];
                    let from = xs.start * s + b - g.padding;
                    if s == 1 {
                        dst[xs.clone()].copy_from_slice(&line[from..from + xs.len()]);
                    } else {
                        for (d, v) in dst[xs.clone()]
                            .iter_mut()
                            .zip(line[from..].iter().step_by(s))
                        {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: `dx[c, iy, ix] += Σ` of the `cols` entries that were read from it.
/// `dx` (C_in × H × W) must be zeroed by the caller.
pub fn col2im<T: Copy + AddAssign>(cols: &[T], g: &ConvGeometry, dx: &mut [T]) {
    let (k, p, oh, ow) = (g.k, g.positions(), g.out_h(), g.out_w());
    for c in 0..g.c_in {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for a in 0..k {
            for b in 0..k {
                let row = &cols[((c * k + a) * k + b) * p..][..p];
                for oy in 0..oh {
                    let Some(iy) = g.source(oy, a, g.h) else {
                        continue;
                    };
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    for (ox, v) in row[oy * ow..(oy + 1) * ow].iter().enumerate() {
                        if let Some(ix) = g.source(ox, b, g.w) {
                            dst[ix] += *v;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strided and padded, stride 1 "same", a strided 1×1 shortcut, a wide kernel larger than the padding
    /// allows on a narrow image, and no padding.
    const GEOMETRIES: [ConvGeometry; 5] = [
        geometry(2, 5, 4, 3, 2, 1),
        geometry(3, 6, 7, 3, 1, 1),
        geometry(4, 7, 6, 1, 2, 0),
        geometry(2, 4, 3, 5, 1, 2),
        geometry(1, 6, 6, 3, 1, 0),
    ];

    const fn geometry(
        c_in: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> ConvGeometry {
        ConvGeometry {
            c_in,
            h,
            w,
            k,
            stride,
            padding,
        }
    }

    fn input(g: &ConvGeometry) -> Vec<f64> {
        (0..g.input_len())
            .map(|v| (v as f64 * 0.37).sin())
            .collect()
    }

    /// `x[c, oy·s + a − p, ox·s + b − p]`, 0 outside the image, by signed arithmetic.
    fn entry(
        x: &[f64],
        g: &ConvGeometry,
        c: usize,
        oy: usize,
        ox: usize,
        a: usize,
        b: usize,
    ) -> f64 {
        let iy = (oy * g.stride + a) as isize - g.padding as isize;
        let ix = (ox * g.stride + b) as isize - g.padding as isize;
        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
            return 0.0;
        }
        x[(c * g.h + iy as usize) * g.w + ix as usize]
    }

    #[test]
    fn patches_match_direct_convolution() {
        // A conv computed from patches must equal the direct sum.
        for g in GEOMETRIES {
            let x = input(&g);
            let wt: Vec<f64> = (0..g.patch_len())
                .map(|v| (v as f64 * 0.11).cos())
                .collect();
            let mut p = vec![f64::NAN; g.positions() * g.patch_len()];
            patch_rows(&x, &g, &mut p);
            for oy in 0..g.out_h() {
                for ox in 0..g.out_w() {
                    let u = oy * g.out_w() + ox;
                    let via_patch: f64 = (0..g.patch_len())
                        .map(|q| p[u * g.patch_len() + q] * wt[q])
                        .sum();
                    let mut direct = 0.0;
                    for c in 0..g.c_in {
                        for a in 0..g.k {
                            for b in 0..g.k {
                                direct +=
                                    entry(&x, &g, c, oy, ox, a, b) * wt[(c * g.k + a) * g.k + b];
                            }
                        }
                    }
                    assert!((via_patch - direct).abs() < 1e-14, "{g:?}");
                }
            }
        }
    }

    #[test]
    fn columns_are_the_definition_and_col2im_is_their_adjoint() {
        for g in GEOMETRIES {
            let x = input(&g);
            let (u, len) = (g.positions(), g.patch_len());
            let mut rows = vec![f64::NAN; u * len];
            let mut cols = vec![f64::NAN; len * u];
            patch_rows(&x, &g, &mut rows);
            im2col(&x, &g, &mut cols);
            for c in 0..g.c_in {
                for a in 0..g.k {
                    for b in 0..g.k {
                        let q = (c * g.k + a) * g.k + b;
                        for oy in 0..g.out_h() {
                            for ox in 0..g.out_w() {
                                let i = oy * g.out_w() + ox;
                                let want = entry(&x, &g, c, oy, ox, a, b);
                                assert_eq!(
                                    cols[q * u + i],
                                    want,
                                    "{g:?} column ({c},{a},{b}) at {i}"
                                );
                                assert_eq!(
                                    rows[i * len + q],
                                    want,
                                    "{g:?} row {i} at ({c},{a},{b})"
                                );
                            }
                        }
                    }
                }
            }
            // <im2col(x), c> = <x, col2im(c)> for any c.
            let c: Vec<f64> = (0..len * u).map(|v| (v as f64 * 0.23).cos()).collect();
            let mut back = vec![0.0; g.input_len()];
            col2im(&c, &g, &mut back);
            let lhs: f64 = cols.iter().zip(&c).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
            assert!(
                (lhs - rhs).abs() <= 1e-13 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
        }
    }
}
