//! The data gradient of a convolution as one GEMM per row plus col2im, in the working precision:
//! `dP_r = G_rᵀ W` (U × C_in·k·k), scattered back onto the input grid. candle 0.11's CPU `conv2d` runs at a
//! few GFLOP/s here; faer's GEMM runs near peak.

use crate::linalg::gemm::matmul;
use crate::model::im2col::ConvGeometry;
use crate::Result;
use candle_core::{DType, Tensor, WithDType};
use faer::traits::ComplexField;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Gradient w.r.t. the input (rows, C_in, H, W) of an ungrouped conv with `weight` (C_out, C_in, k, k),
/// given the output gradient `g` (rows, C_out, Ho, Wo). F32 and F64 only.
pub fn conv2d_input_grad_gemm(
    weight: &Tensor,
    g: &Tensor,
    geometry: &ConvGeometry,
) -> Result<Tensor> {
    match g.dtype() {
        DType::F64 => typed::<f64>(weight, g, geometry),
        _ => typed::<f32>(
            &weight.to_dtype(DType::F32)?,
            &g.to_dtype(DType::F32)?,
            geometry,
        ),
    }
}

fn typed<T>(weight: &Tensor, g: &Tensor, geo: &ConvGeometry) -> Result<Tensor>
where
    T: WithDType + ComplexField + Copy + Default + From<f32> + std::ops::AddAssign + Send + Sync,
{
    let (rows, c_out, _, _) = g.dims4()?;
    let (u, kk, k) = (geo.positions(), geo.patch_len(), geo.k);
    let w: Vec<T> = weight.flatten_all()?.to_vec1::<T>()?;
    let gv: Vec<T> = g.contiguous()?.flatten_all()?.to_vec1::<T>()?;
    let in_len = geo.c_in * geo.h * geo.w;
    let mut out = vec![T::default(); rows * in_len];
    let wm = MatRef::from_row_major_slice(&w, c_out, kk);
    let ow = geo.out_w();
    out.par_chunks_mut(in_len).enumerate().for_each_init(
        || vec![T::default(); u * kk],
        |dp, (r, dx)| {
            let gr =
                MatRef::from_row_major_slice(&gv[r * c_out * u..(r + 1) * c_out * u], c_out, u);
            let dst = MatMut::from_row_major_slice_mut(dp.as_mut_slice(), u, kk);
            matmul(
                dst,
                Accum::Replace,
                gr.transpose(),
                wm,
                T::from_f64_impl(1.0),
                Par::Seq,
            );
            // col2im: scatter-add each patch entry back to its input pixel.
            for pos in 0..u {
                let (oy, ox) = (pos / ow, pos % ow);
                let row = &dp[pos * kk..(pos + 1) * kk];
                for ci in 0..geo.c_in {
                    for ky in 0..k {
                        let iy = (oy * geo.stride + ky) as isize - geo.padding as isize;
                        if iy < 0 || iy as usize >= geo.h {
                            continue;
                        }
                        let base = ci * geo.h * geo.w + iy as usize * geo.w;
                        for kx in 0..k {
                            let ix = (ox * geo.stride + kx) as isize - geo.padding as isize;
                            if ix >= 0 && (ix as usize) < geo.w {
                                dx[base + ix as usize] += row[(ci * k + ky) * k + kx];
                            }
                        }
                    }
                }
            }
        },
    );
    Ok(Tensor::from_vec(
        out,
        (rows, geo.c_in, geo.h, geo.w),
        &candle_core::Device::Cpu,
    )?)
}
