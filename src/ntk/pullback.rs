//! `Jᵀ V`: the parameter gradients of the seeded logits, from the batched reverse pass
//! ([`crate::ntk::backward::backward`]) seeded with V.
//!
//! With q seed vectors the reverse pass runs on `n·q` rows, row `i·q + t` seeded with example i's part of
//! vector t; each parametrised layer's output gradient is then contracted with its input over the examples
//! (never per example): conv weights as the weight gradient of a convolution with q·C_out output channels
//! (`Σ_i G_{i,t} P_iᵀ`, one GEMM per image), linear weights `Σ_i g_{i,t} a_iᵀ`, biases `Σ_{i,u} g`,
//! BatchNorm γ `Σ_{i,u} g·x̂` and β `Σ_{i,u} g`.

use crate::model::conv::weight_grad;
use crate::model::im2col::ConvGeometry;
use crate::model::{Network, Op};
use crate::ntk::backward::backward;
use crate::ntk::layout::ParamLayout;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use faer::MatMut;

/// Add `Σ_i J(x_i)ᵀ seed_{i,t}` to column t of `out` (p × q) for every t, given the forward cache of n
/// examples and `seed` (n·q, d) whose row `i·q + t` is example i's part of seed vector t.
pub fn vjp_params(
    network: &Network,
    layout: &ParamLayout,
    cache: &[Tensor],
    seed: Tensor,
    q: usize,
    mut out: MatMut<'_, f64>,
) -> Result<()> {
    backward(network, cache, seed, q, |node, g| {
        let p = layout
            .of(node)
            .ok_or_else(|| Error::Internal(format!("no parameter layout for node {node}")))?;
        let x = &cache[network.nodes[node].inputs[0]];
        let n = x.dim(0)?;
        let g = g.to_dtype(DType::F64)?;
        let mut add = |at: usize, len: usize, t: usize, values: &[f64]| {
            for (e, v) in values.iter().enumerate().take(len) {
                out[(at + e, t)] += v;
            }
        };
        match &network.nodes[node].op {
            Op::Conv2d(c) => {
                let (c_out, c_in_g, k, _) = c.weight.dims4()?;
                let (ho, wo) = (g.dim(2)?, g.dim(3)?);
                let u = ho * wo;
                let groups = c.groups;
                let cog = c_out / groups;
                let g5 = g.reshape((n, q, c_out, u))?;
                let x64 = x.to_dtype(DType::F64)?;
                let plen = c_in_g * k * k;
                for grp in 0..groups {
                    let xg = x64.narrow(1, grp * c_in_g, c_in_g)?.contiguous()?;
                    let geometry = ConvGeometry {
                        c_in: c_in_g,
                        h: x.dim(2)?,
                        w: x.dim(3)?,
                        k,
                        stride: c.stride,
                        padding: c.padding,
                    };
                    let gg = g5.narrow(2, grp * cog, cog)?.contiguous()?;
                    let dw = weight_grad(
                        &xg.flatten_all()?.to_vec1::<f64>()?,
                        &gg.flatten_all()?.to_vec1::<f64>()?,
                        q * cog,
                        &geometry,
                    );
                    for t in 0..q {
                        let rows = &dw[t * cog * plen..(t + 1) * cog * plen];
                        add(p.weight + grp * cog * plen, cog * plen, t, rows);
                    }
                }
                if let Some(at) = p.bias {
                    let sums = g5.sum(3)?.sum(0)?.to_vec2::<f64>()?;
                    for (t, row) in sums.iter().enumerate() {
                        add(at, c_out, t, row);
                    }
                }
            }
            Op::Linear(l) => {
                let (o, i) = l.weight.dims2()?;
                let g3 = g.reshape((n, q, o))?;
                let a = x.to_dtype(DType::F64)?;
                // (q, o, n) · (n, i) → (q, o, i)
                let gt = g3.permute((1, 2, 0))?.contiguous()?;
                let dw = gt.broadcast_matmul(&a)?.flatten_all()?.to_vec1::<f64>()?;
                for t in 0..q {
                    add(p.weight, o * i, t, &dw[t * o * i..(t + 1) * o * i]);
                }
                if let Some(at) = p.bias {
                    let sums = g3.sum(0)?.to_vec2::<f64>()?;
                    for (t, row) in sums.iter().enumerate() {
                        add(at, o, t, row);
                    }
                }
            }
            Op::BatchNorm2d(bn) => {
                let ch = bn.weight.elem_count();
                let xhat = bn.normalise(x)?.to_dtype(DType::F64)?;
                let (h, w) = (x.dim(2)?, x.dim(3)?);
                let g5 = g.reshape((n, q, ch, h * w))?;
                let xh = xhat.reshape((n, 1, ch, h * w))?;
                let gamma = g5.broadcast_mul(&xh)?.sum(3)?.sum(0)?.to_vec2::<f64>()?;
                for (t, row) in gamma.iter().enumerate() {
                    add(p.weight, ch, t, row);
                }
                if let Some(at) = p.bias {
                    let beta = g5.sum(3)?.sum(0)?.to_vec2::<f64>()?;
                    for (t, row) in beta.iter().enumerate() {
                        add(at, ch, t, row);
                    }
                }
            }
            other => {
                return Err(Error::Internal(format!(
                    "reverse pass visited parameter-free layer {}",
                    other.kind()
                )))
            }
        }
        Ok(())
    })
}
