//! The layer set: each [`Op`] with its eval-mode forward pass and its named parameters.

use candle_core::{DType, Result, Tensor, D};

/// 2-D convolution, weight (C_out, C_in / groups, k, k), PyTorch semantics.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// Kernel, (C_out, C_in / groups, k, k).
    pub weight: Tensor,
    /// Optional bias, (C_out).
    pub bias: Option<Tensor>,
    /// Stride (same in both directions).
    pub stride: usize,
    /// Zero padding (same on all sides).
    pub padding: usize,
    /// Number of groups (C_in for depthwise).
    pub groups: usize,
}

/// Fully connected layer y = x Wᵀ + b, weight (out, in).
#[derive(Debug, Clone)]
pub struct Linear {
    /// Weight, (out, in).
    pub weight: Tensor,
    /// Optional bias, (out).
    pub bias: Option<Tensor>,
}

/// Eval-mode BatchNorm over channels of a (batch, C, H, W) input.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    /// Scale γ, (C).
    pub weight: Tensor,
    /// Shift β, (C).
    pub bias: Tensor,
    /// Running mean, (C).
    pub running_mean: Tensor,
    /// Running variance, (C).
    pub running_var: Tensor,
    /// ε added to the variance.
    pub eps: f64,
}

impl BatchNorm2d {
    /// Per-channel (scale, shift) of the eval-mode affine map y = scale·x + shift, each shaped (1, C, 1, 1).
    pub fn affine(&self) -> Result<(Tensor, Tensor)> {
        let inv_std = (self.running_var.affine(1.0, self.eps)?).sqrt()?.recip()?;
        let scale = (&self.weight * &inv_std)?;
        let shift = (&self.bias - (&self.running_mean * &scale)?)?;
        let c = scale.elem_count();
        Ok((scale.reshape((1, c, 1, 1))?, shift.reshape((1, c, 1, 1))?))
    }

    /// The normalised input x̂ = (x − mean) / sqrt(var + ε), the factor multiplying γ.
    pub fn normalise(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.running_mean.elem_count();
        let mean = self.running_mean.reshape((1, c, 1, 1))?;
        let inv_std = self
            .running_var
            .affine(1.0, self.eps)?
            .sqrt()?
            .recip()?
            .reshape((1, c, 1, 1))?;
        x.broadcast_sub(&mean)?.broadcast_mul(&inv_std)
    }
}

/// One operation of a [`crate::model::Network`].
#[derive(Debug, Clone)]
pub enum Op {
    /// The network input (node 0 only).
    Input,
    /// 2-D convolution.
    Conv2d(Conv2d),
    /// Fully connected layer on (batch, features).
    Linear(Linear),
    /// Eval-mode batch normalisation.
    BatchNorm2d(BatchNorm2d),
    /// max(x, 0).
    Relu,
    /// tanh(x).
    Tanh,
    /// GELU with the exact erf form (PyTorch's default).
    Gelu,
    /// Max pooling, square window.
    MaxPool2d {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Average pooling, square window, no padding.
    AvgPool2d {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Adaptive average pooling to a fixed output size (only sizes dividing the input are supported).
    AdaptiveAvgPool2d {
        /// Output [H, W].
        output: [usize; 2],
    },
    /// (batch, …) → (batch, features).
    Flatten,
    /// Identity in eval mode.
    Dropout,
    /// Sum of all inputs (residual connections).
    Add,
}

impl Op {
    /// Short name of the operation, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv2d(_) => "conv2d",
            Op::Linear(_) => "linear",
            Op::BatchNorm2d(_) => "batchnorm2d",
            Op::Relu => "relu",
            Op::Tanh => "tanh",
            Op::Gelu => "gelu",
            Op::MaxPool2d { .. } => "maxpool2d",
            Op::AvgPool2d { .. } => "avgpool2d",
            Op::AdaptiveAvgPool2d { .. } => "adaptiveavgpool2d",
            Op::Flatten => "flatten",
            Op::Dropout => "dropout",
            Op::Add => "add",
        }
    }

    /// Eval-mode forward pass of this op on its inputs.
    pub fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        match self {
            Op::Input | Op::Dropout => Ok(x.clone()),
            Op::Conv2d(c) => {
                // Without autograd (evaluation, NTK features) the im2col + GEMM conv is several times
                // faster; under autograd candle's own op is kept, so brute-force NTK references stay
                // independent of our convolution code.
                let y = if !x.track_op() && !c.weight.track_op() {
                    crate::model::conv::conv2d(x, &c.weight, c.stride, c.padding, c.groups)?
                } else {
                    x.conv2d(&c.weight, c.padding, c.stride, 1, c.groups)?
                };
                match &c.bias {
                    Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
                    None => Ok(y),
                }
            }
            Op::Linear(l) => {
                let y = x.matmul(&l.weight.t()?)?;
                match &l.bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            Op::BatchNorm2d(bn) => {
                let (scale, shift) = bn.affine()?;
                x.broadcast_mul(&scale)?.broadcast_add(&shift)
            }
            Op::Relu => x.relu(),
            Op::Tanh => x.tanh(),
            Op::Gelu => x.gelu_erf(),
            Op::MaxPool2d { kernel, stride } => x.max_pool2d_with_stride(*kernel, *stride),
            Op::AvgPool2d { kernel, stride } => x.avg_pool2d_with_stride(*kernel, *stride),
            Op::AdaptiveAvgPool2d { output } => {
                let (h, w) = (x.dim(2)?, x.dim(3)?);
                let (kh, kw) = (h / output[0], w / output[1]);
                x.avg_pool2d_with_stride((kh, kw), (kh, kw))
            }
            Op::Flatten => x.flatten_from(1),
            Op::Add => {
                let mut y = x.clone();
                for other in &inputs[1..] {
                    y = (y + *other)?;
                }
                Ok(y)
            }
        }
    }

    /// Trainable parameters as (name suffix, tensor): `weight`, `bias`.
    pub fn parameters(&self) -> Vec<(&'static str, &Tensor)> {
        match self {
            Op::Conv2d(c) => {
                let mut p = vec![("weight", &c.weight)];
                if let Some(b) = &c.bias {
                    p.push(("bias", b));
                }
                p
            }
            Op::Linear(l) => {
                let mut p = vec![("weight", &l.weight)];
                if let Some(b) = &l.bias {
                    p.push(("bias", b));
                }
                p
            }
            Op::BatchNorm2d(bn) => vec![("weight", &bn.weight), ("bias", &bn.bias)],
            _ => vec![],
        }
    }

    /// Non-trainable buffers as (name suffix, tensor): BatchNorm running statistics.
    pub fn buffers(&self) -> Vec<(&'static str, &Tensor)> {
        match self {
            Op::BatchNorm2d(bn) => vec![
                ("running_mean", &bn.running_mean),
                ("running_var", &bn.running_var),
            ],
            _ => vec![],
        }
    }

    /// A copy with all tensors converted to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Op> {
        let conv = |t: &Tensor| t.to_dtype(dtype);
        let conv_opt = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_dtype(dtype)).transpose();
        Ok(match self {
            Op::Conv2d(c) => Op::Conv2d(Conv2d {
                weight: conv(&c.weight)?,
                bias: conv_opt(&c.bias)?,
                ..c.clone()
            }),
            Op::Linear(l) => Op::Linear(Linear {
                weight: conv(&l.weight)?,
                bias: conv_opt(&l.bias)?,
            }),
            Op::BatchNorm2d(bn) => Op::BatchNorm2d(BatchNorm2d {
                weight: conv(&bn.weight)?,
                bias: conv(&bn.bias)?,
                running_mean: conv(&bn.running_mean)?,
                running_var: conv(&bn.running_var)?,
                eps: bn.eps,
            }),
            other => other.clone(),
        })
    }
}

/// Softmax cross-entropy helper used by training and evaluation: index of the largest logit per row.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}
