//! The forward-mode (tangent) pass: `J W`, the directional derivatives of the logits of n examples along q
//! parameter directions at once, without forming J.
//!
//! The primal pass runs once on the n examples ([`Network::forward_cached`]); tangents live on `n·q` rows,
//! row `i·q + t` carrying direction t for example i (the layout of the batched reverse pass). Each node's
//! tangent is `∂op/∂input · (input tangent) + ∂op/∂θ_node · w_t`, written out per layer:
//! - conv: `conv(ẋ, W) + conv(x, Ẇ_t) + ḃ_t` (for an ungrouped conv the q kernels `Ẇ_t` are stacked as
//!   q·C_out output channels, so the parameter part is one convolution);
//! - linear: `ẋ Wᵀ + x Ẇ_tᵀ + ḃ_t`; eval-mode BatchNorm: `scale·ẋ + γ̇_t x̂ + β̇_t`;
//! - ReLU, tanh, GELU: the derivative at the primal input times `ẋ`; max-pool: `ẋ` at the first maximum of
//!   each window (PyTorch's tie rule, as in the reverse pass); average pools, flatten, dropout and residual
//!   add are linear and applied to the tangents as they are.
//!
//! Nodes that do not depend on any parameter have a zero tangent and are skipped.

use crate::model::{Network, Op};
use crate::ntk::backward::{first_max_masks, repeat_rows};
use crate::ntk::layout::{NodeParams, ParamLayout};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use faer::MatRef;

/// Output tangents `(n·q, d)` of the examples `x` (n, C, H, W) along the q columns of `w` (p × q, θ in
/// `layout`'s order); row `i·q + t` is `J(x_i) w_t`. `x` and the network share one dtype; `w` is converted.
pub fn jvp(
    network: &Network,
    layout: &ParamLayout,
    x: &Tensor,
    w: MatRef<'_, f64>,
) -> Result<Tensor> {
    if w.nrows() != layout.total {
        return Err(Error::Internal(format!(
            "tangent pass: direction has {} rows for {} parameters",
            w.nrows(),
            layout.total
        )));
    }
    let q = w.ncols();
    let cache = network.forward_cached(x)?;
    let n = x.dim(0)?;
    let mut tangents: Vec<Option<Tensor>> = vec![None; network.nodes.len()];
    for (k, node) in network.nodes.iter().enumerate().skip(1) {
        let inputs: Vec<Option<&Tensor>> =
            node.inputs.iter().map(|&j| tangents[j].as_ref()).collect();
        let params = layout.of(k);
        if params.is_none() && inputs.iter().all(Option::is_none) {
            continue;
        }
        let primal_in = &cache[node.inputs[0]];
        let t =
            tangent(&node.op, primal_in, &cache[k], &inputs, params, w, q, n).map_err(
                |e| match e {
                    Error::Candle(err) => Error::Model(format!(
                        "NTK tangent pass of `{}` ({}): {err}",
                        node.name,
                        node.op.kind()
                    )),
                    other => other,
                },
            )?;
        tangents[k] = t;
    }
    let d = cache[network.output()].dim(1)?;
    match tangents.pop().flatten() {
        Some(t) => Ok(t),
        None => Ok(Tensor::zeros((n * q, d), x.dtype(), &Device::Cpu)?),
    }
}

/// The q parameter directions of one tensor: rows `at..at + len` of `w`, as a tensor (q, shape…).
fn directions(w: MatRef<'_, f64>, at: usize, shape: &[usize], like: &Tensor) -> Result<Tensor> {
    let len: usize = shape.iter().product();
    let q = w.ncols();
    let mut v = Vec::with_capacity(q * len);
    for t in 0..q {
        v.extend((at..at + len).map(|r| w[(r, t)]));
    }
    let mut dims = vec![q];
    dims.extend_from_slice(shape);
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(like.dtype())?)
}

/// `ẋ ⊙ f'(x)` with the n-row derivative `deriv` repeated over the q directions (None stays None).
fn scaled(dx: Option<&Tensor>, deriv: &Tensor, q: usize) -> Result<Option<Tensor>> {
    match dx {
        Some(dx) => Ok(Some((dx * repeat_rows(deriv, q)?)?)),
        None => Ok(None),
    }
}

/// The tangent of one node. `inputs` are the input tangents (None = zero), `x`/`y` the primal input and
/// output of the node on n examples.
#[allow(clippy::too_many_arguments)]
fn tangent(
    op: &Op,
    x: &Tensor,
    y: &Tensor,
    inputs: &[Option<&Tensor>],
    params: Option<&NodeParams>,
    w: MatRef<'_, f64>,
    q: usize,
    n: usize,
) -> Result<Option<Tensor>> {
    let dx = inputs.first().copied().flatten();
    let sum = |a: Option<Tensor>, b: Option<Tensor>| -> Result<Option<Tensor>> {
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some((a + b)?),
            (a, b) => a.or(b),
        })
    };
    Ok(match op {
        Op::Input => None,
        Op::Dropout => dx.cloned(),
        Op::Add => {
            let mut acc: Option<Tensor> = None;
            for t in inputs.iter().flatten() {
                acc = sum(acc, Some((*t).clone()))?;
            }
            acc
        }
        Op::Conv2d(c) => {
            let through = dx
                .map(|dx| crate::model::conv::conv2d(dx, &c.weight, c.stride, c.padding, c.groups))
                .transpose()?;
            let own = match params {
                Some(p) => {
                    let dw = directions(w, p.weight, &p.weight_shape, x)?;
                    let (c_out, c_in_g, k, _) = c.weight.dims4()?;
                    let stacked = if c.groups == 1 {
                        let wq = dw.reshape((q * c_out, c_in_g, k, k))?;
                        crate::model::conv::conv2d(x, &wq, c.stride, c.padding, 1)?
                    } else {
                        let per: Vec<Tensor> = (0..q)
                            .map(|t| {
                                crate::model::conv::conv2d(
                                    x,
                                    &dw.get(t)?,
                                    c.stride,
                                    c.padding,
                                    c.groups,
                                )
                            })
                            .collect::<candle_core::Result<_>>()?;
                        Tensor::cat(&per, 1)?
                    };
                    let (ho, wo) = (stacked.dim(2)?, stacked.dim(3)?);
                    let mut own = stacked.reshape((n, q, c_out, ho, wo))?;
                    if let Some(at) = p.bias {
                        let db = directions(w, at, &[c_out], x)?.reshape((1, q, c_out, 1, 1))?;
                        own = own.broadcast_add(&db)?;
                    }
                    Some(own.reshape((n * q, c_out, ho, wo))?)
                }
                None => None,
            };
            sum(through, own)?
        }
        Op::Linear(l) => {
            let through = dx.map(|dx| dx.matmul(&l.weight.t()?)).transpose()?;
            let own = match params {
                Some(p) => {
                    let (out, inp) = l.weight.dims2()?;
                    let dw =
                        directions(w, p.weight, &p.weight_shape, x)?.reshape((q * out, inp))?;
                    let mut own = x.matmul(&dw.t()?)?;
                    if let Some(at) = p.bias {
                        let db = directions(w, at, &[out], x)?.reshape((1, q * out))?;
                        own = own.broadcast_add(&db)?;
                    }
                    Some(own.reshape((n * q, out))?)
                }
                None => None,
            };
            sum(through, own)?
        }
        Op::BatchNorm2d(bn) => {
            let (scale, _) = bn.affine()?;
            let through = dx.map(|dx| dx.broadcast_mul(&scale)).transpose()?;
            let own = match params {
                Some(p) => {
                    let ch = bn.weight.elem_count();
                    let xhat = bn.normalise(x)?;
                    let (h, wd) = (x.dim(2)?, x.dim(3)?);
                    let dg = directions(w, p.weight, &[ch], x)?.reshape((1, q, ch, 1, 1))?;
                    let mut own = xhat.unsqueeze(1)?.broadcast_mul(&dg)?;
                    if let Some(at) = p.bias {
                        let db = directions(w, at, &[ch], x)?.reshape((1, q, ch, 1, 1))?;
                        own = own.broadcast_add(&db)?;
                    }
                    Some(own.reshape((n * q, ch, h, wd))?)
                }
                None => None,
            };
            sum(through, own)?
        }
        Op::Relu => {
            let mask = y.gt(0.0)?.to_dtype(y.dtype())?;
            scaled(dx, &mask, q)?
        }
        Op::Tanh => {
            let deriv = (1.0 - y.sqr()?)?;
            scaled(dx, &deriv, q)?
        }
        Op::Gelu => {
            // d/dx [x Φ(x)] = Φ(x) + x φ(x), as in the reverse pass.
            let cdf = ((x / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5;
            let pdf = (x.sqr()? * -0.5)?.exp()? * (1.0 / (2.0 * std::f64::consts::PI).sqrt());
            let deriv = (cdf? + (x * pdf?)?)?;
            scaled(dx, &deriv, q)?
        }
        Op::MaxPool2d { kernel, stride } => {
            if kernel != stride {
                return Err(Error::Model(format!(
                    "max-pool kernel {kernel} != stride {stride} (overlapping windows)"
                )));
            }
            let k = *kernel;
            let masks = repeat_rows(&first_max_masks(x, y, k)?, q)?;
            match dx {
                Some(dx) => {
                    let (rows, c, ho, wo) = (dx.dim(0)?, dx.dim(1)?, y.dim(2)?, y.dim(3)?);
                    let win = dx
                        .narrow(2, 0, ho * k)?
                        .narrow(3, 0, wo * k)?
                        .reshape((rows, c, ho, k, wo, k))?;
                    Some((win * masks)?.sum(5)?.sum(3)?)
                }
                None => None,
            }
        }
        Op::AvgPool2d { .. } | Op::AdaptiveAvgPool2d { .. } | Op::Flatten => {
            dx.map(|dx| op.forward(&[dx])).transpose()?
        }
    })
}
