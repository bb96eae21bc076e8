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
    let (ow, k, len) = (g.out_w(), g.k, g.patch_len());
    for oy in 0..g.out_h() {
        for ox in 0..ow {
            let row = &mut out[(oy * ow + ox) * len..][..len];
            for c in 0..g.c_in {
                let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
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
    let (k, p, oh, ow) = (g.k, g.positions(), g.out_h(), g.out_w());
    for c in 0..g.c_in {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for a in 0..k {
            for b in 0..k {
                let row = &mut cols[((c * k + a) * k + b) * p..][..p];
                for oy in 0..oh {
                    let dst = &mut row[oy * ow..(oy + 1) * ow];
                    match g.source(oy, a, g.h) {
                        None => dst.fill(T::default()),
                        Some(iy) => {
                            let src = &plane[iy * g.w..(iy + 1) * g.w];
                            for (ox, d) in dst.iter_mut().enumerate() {
                                *d = g.source(ox, b, g.w).map_or(T::default(), |ix| src[ix]);
                            }
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

    const G: ConvGeometry = ConvGeometry {
        c_in: 2,
        h: 5,
        w: 4,
        k: 3,
        stride: 2,
        padding: 1,
    };

    fn input() -> Vec<f64> {
        (0..G.input_len())
            .map(|v| (v as f64 * 0.37).sin())
            .collect()
    }

    #[test]
    fn patches_match_direct_convolution() {
        // A conv computed from patches must equal the direct sum for stride 2, padding 1.
        let x = input();
        let wt: Vec<f64> = (0..G.patch_len())
            .map(|v| (v as f64 * 0.11).cos())
            .collect();
        let mut p = vec![0.0; G.positions() * G.patch_len()];
        patch_rows(&x, &G, &mut p);
        for oy in 0..G.out_h() {
            for ox in 0..G.out_w() {
                let u = oy * G.out_w() + ox;
                let via_patch: f64 = (0..G.patch_len())
                    .map(|q| p[u * G.patch_len() + q] * wt[q])
                    .sum();
                let mut direct = 0.0;
                for ci in 0..2 {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let iy = (oy * 2 + ky) as isize - 1;
                            let ix = (ox * 2 + kx) as isize - 1;
                            if iy >= 0 && ix >= 0 && iy < 5 && ix < 4 {
                                direct += x[ci * 20 + iy as usize * 4 + ix as usize]
                                    * wt[(ci * 3 + ky) * 3 + kx];
                            }
                        }
                    }
                }
                assert!((via_patch - direct).abs() < 1e-14);
            }
        }
    }

    #[test]
    fn columns_are_the_transpose_of_rows_and_col2im_is_their_adjoint() {
        let x = input();
        let (u, len) = (G.positions(), G.patch_len());
        let mut rows = vec![0.0; u * len];
        let mut cols = vec![0.0; len * u];
        patch_rows(&x, &G, &mut rows);
        im2col(&x, &G, &mut cols);
        for i in 0..u {
            for q in 0..len {
                assert_eq!(rows[i * len + q], cols[q * u + i]);
            }
        }
        // <im2col(x), c> = <x, col2im(c)> for any c.
        let c: Vec<f64> = (0..len * u).map(|v| (v as f64 * 0.23).cos()).collect();
        let mut back = vec![0.0; G.input_len()];
        col2im(&c, &G, &mut back);
        let lhs: f64 = cols.iter().zip(&c).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert!(
            (lhs - rhs).abs() <= 1e-13 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }
}
