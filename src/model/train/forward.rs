//! Train-mode forward pass: like `Network::forward_cached`, but BatchNorm normalises with the batch's own
//! statistics (and reports them so the running statistics can be updated) and convolutions use the
//! fast-backward convolution of [`crate::model::conv`].

use crate::model::conv;
use crate::model::{Network, Op};
use crate::{Error, Result};
use candle_core::Tensor;

/// Batch statistics of one BatchNorm node, detached from the graph.
#[derive(Debug, Clone)]
pub struct BatchStats {
    /// Index of the BatchNorm node in `network.nodes`.
    pub node: usize,
    /// Per-channel mean over (batch, H, W), shape (C).
    pub mean: Tensor,
    /// Per-channel unbiased variance (divisor n − 1, n = batch·H·W), shape (C): what PyTorch puts in the
    /// running variance.
    pub var_unbiased: Tensor,
}

/// Train-mode BatchNorm: y = γ (x − μ_B) / sqrt(σ²_B + ε) + β with the biased batch variance σ²_B.
/// Returns y and the batch statistics (mean, unbiased variance), detached.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, h, w) = x.dims4()?;
    let count = n * h * w;
    if count < 2 {
        return Err(Error::Usage(format!(
            "train-mode BatchNorm needs at least 2 values per channel, got batch {n} of {h}x{w}; use a larger batch"
        )));
    }
    let mean = x.mean_keepdim((0, 2, 3))?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
    let inv_std = var.affine(1.0, eps)?.sqrt()?.recip()?;
    let y = centred
        .broadcast_mul(&inv_std)?
        .broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
        .broadcast_add(&beta.reshape((1, c, 1, 1))?)?;
    let unbiased = var
        .detach()
        .reshape(c)?
        .affine(count as f64 / (count - 1) as f64, 0.0)?;
    Ok((y, mean.detach().reshape(c)?, unbiased))
}

/// Which convolution the train-mode forward uses (its backward pass differs; the values agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvMode {
    /// [`conv::conv2d`]: im2col + GEMM forward and backward.
    #[default]
    Fast,
    /// candle's `conv2d` and its autograd (input gradient through `conv_transpose2d`), for comparison.
    Candle,
}

/// Train-mode forward pass; returns the logits and the batch statistics of every BatchNorm node.
/// Dropout nodes are the identity (the layer set carries no drop probability).
pub fn forward_train(
    network: &Network,
    x: &Tensor,
    mode: ConvMode,
) -> Result<(Tensor, Vec<BatchStats>)> {
    let [c, h, w] = network.input_shape;
    if x.rank() != 4 || x.dims()[1..] != [c, h, w] {
        return Err(Error::Input(format!(
            "network `{}` expects input (batch, {c}, {h}, {w}), got {:?}",
            network.arch,
            x.dims()
        )));
    }
    let mut outs: Vec<Tensor> = Vec::with_capacity(network.nodes.len());
    let mut stats = Vec::new();
    for (i, node) in network.nodes.iter().enumerate() {
        let inputs: Vec<&Tensor> = node.inputs.iter().map(|&j| &outs[j]).collect();
        let wrap = |e: candle_core::Error| {
            Error::Model(format!(
                "train forward of node `{}` ({}): {e}",
                node.name,
                node.op.kind()
            ))
        };
        let out = match &node.op {
            Op::Input => x.clone(),
            Op::Conv2d(conv) => {
                let y = match mode {
                    ConvMode::Fast => conv::conv2d(
                        inputs[0],
                        &conv.weight,
                        conv.stride,
                        conv.padding,
                        conv.groups,
                    ),
                    ConvMode::Candle => {
                        inputs[0].conv2d(&conv.weight, conv.padding, conv.stride, 1, conv.groups)
                    }
                }
                .map_err(wrap)?;
                match &conv.bias {
                    Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?,
                    None => y,
                }
            }
            Op::BatchNorm2d(bn) => {
                let (y, mean, var_unbiased) =
                    batch_norm_train(inputs[0], &bn.weight, &bn.bias, bn.eps)?;
                stats.push(BatchStats {
                    node: i,
                    mean,
                    var_unbiased,
                });
                y
            }
            Op::MaxPool2d { kernel, stride } if kernel == stride => {
                window_max(inputs[0], *kernel).map_err(wrap)?
            }
            op => op.forward(&inputs).map_err(wrap)?,
        };
        outs.push(out);
    }
    let logits = outs
        .pop()
        .ok_or_else(|| Error::Internal("empty network".into()))?;
    Ok((logits, stats))
}

/// Max pooling over non-overlapping k×k windows as a reshape and two max reductions, so that candle's
/// autograd gives the window's gradient to its maximum. (candle 0.11's own `max_pool2d` backward scales it
/// by (number of maxima)/k², a quarter of the true gradient for a 2×2 window with one maximum; the
/// hand-written pass and `tests/train_hand.rs` found it.)
fn window_max(x: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / k, w / k);
    x.narrow(2, 0, oh * k)?
        .narrow(3, 0, ow * k)?
        .reshape((n, c, oh, k, ow, k))?
        .max(5)?
        .max(3)
}
