//! im2col: the patch matrix of one example for a convolution, in the weight's (C_in, kh, kw) column order,
//! and a convolution forward pass built on it (one faer GEMM per example; candle 0.11's CPU `conv2d` runs at
//! a few GFLOP/s on this machine).

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
}

/// Write the patch matrix P (U × C_in·k·k, row-major) of one example `x` (C_in × H × W, row-major) into `out`.
/// `P[u, (ci·k + ky)·k + kx] = x[ci, oy·s + ky − p, ox·s + kx − p]` (zero outside), u = oy·W_out + ox.
pub fn im2col(x: &[f64], g: &ConvGeometry, out: &mut [f64]) {
    debug_assert_eq!(x.len(), g.c_in * g.h * g.w);
    im2col_generic(x, g, out)
}

/// Ungrouped conv forward `y = W ∗ x (+ b)` via im2col and one GEMM per example, for tensors that do not
/// need autograd. `x` is (n, C_in, H, W), `weight` (C_out, C_in, k, k); F32 and F64.
pub fn conv2d_gemm(
    x: &candle_core::Tensor,
    weight: &candle_core::Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<candle_core::Tensor> {
    use candle_core::DType;
    match x.dtype() {
        DType::F64 => conv2d_typed::<f64>(x, weight, stride, padding),
        DType::F32 => conv2d_typed::<f32>(x, weight, stride, padding),
        _ => x.conv2d(weight, padding, stride, 1, 1),
    }
}

fn conv2d_typed<T>(
    x: &candle_core::Tensor,
    weight: &candle_core::Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<candle_core::Tensor>
where
    T: candle_core::WithDType
        + faer::traits::ComplexField
        + Copy
        + Default
        + From<f32>
        + Send
        + Sync,
{
    use crate::linalg::gemm::matmul;
    use faer::{Accum, MatMut, MatRef, Par};
    use rayon::prelude::*;
    let (n, c_in, h, w) = x.dims4()?;
    let (c_out, _, k, _) = weight.dims4()?;
    let g = ConvGeometry {
        c_in,
        h,
        w,
        k,
        stride,
        padding,
    };
    let (u, kk) = (g.positions(), g.patch_len());
    let xv: Vec<T> = x.contiguous()?.flatten_all()?.to_vec1::<T>()?;
    let wv: Vec<T> = weight.to_dtype(x.dtype())?.flatten_all()?.to_vec1::<T>()?;
    let wm = MatRef::from_row_major_slice(&wv, c_out, kk);
    let in_len = c_in * h * w;
    let mut out = vec![T::default(); n * c_out * u];
    out.par_chunks_mut(c_out * u).enumerate().for_each_init(
        || vec![T::default(); u * kk],
        |patches, (e, y)| {
            im2col_generic(&xv[e * in_len..(e + 1) * in_len], &g, patches);
            let p = MatRef::from_row_major_slice(patches.as_slice(), u, kk);
            let dst = MatMut::from_row_major_slice_mut(y, c_out, u);
            matmul(
                dst,
                Accum::Replace,
                wm,
                p.transpose(),
                T::from_f64_impl(1.0),
                Par::Seq,
            );
        },
    );
    candle_core::Tensor::from_vec(out, (n, c_out, g.out_h(), g.out_w()), x.device())
}

/// [`im2col`] for any copyable element type.
fn im2col_generic<T: Copy + Default>(x: &[T], g: &ConvGeometry, out: &mut [T]) {
    let (oh, ow, k) = (g.out_h(), g.out_w(), g.k);
    let len = g.patch_len();
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut out[(oy * ow + ox) * len..(oy * ow + ox + 1) * len];
            for ci in 0..g.c_in {
                let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
                for ky in 0..k {
                    let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                    for kx in 0..k {
                        let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                        let inside =
                            iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w;
                        row[(ci * k + ky) * k + kx] = if inside {
                            plane[iy as usize * g.w + ix as usize]
                        } else {
                            T::default()
                        };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_match_direct_convolution() {
        // A conv computed from patches must equal the direct sum for stride 2, padding 1.
        let g = ConvGeometry {
            c_in: 2,
            h: 5,
            w: 4,
            k: 3,
            stride: 2,
            padding: 1,
        };
        let x: Vec<f64> = (0..g.c_in * g.h * g.w)
            .map(|v| (v as f64 * 0.37).sin())
            .collect();
        let wt: Vec<f64> = (0..g.patch_len())
            .map(|v| (v as f64 * 0.11).cos())
            .collect();
        let mut p = vec![0.0; g.positions() * g.patch_len()];
        im2col(&x, &g, &mut p);
        for oy in 0..g.out_h() {
            for ox in 0..g.out_w() {
                let u = oy * g.out_w() + ox;
                let via_patch: f64 = (0..g.patch_len())
                    .map(|q| p[u * g.patch_len() + q] * wt[q])
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
}
