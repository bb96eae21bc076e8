//! Where architecture builders get their parameter tensors from: loaded weights (with shape checks) or fresh
//! random initialisation for training. Builders ask by full tensor name and expected shape.

use crate::Result;
use candle_core::Tensor;

/// How a fresh parameter is initialised when training from scratch (PyTorch's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Kaiming-uniform with a = sqrt(5) on fan-in (PyTorch's default for conv and linear weights).
    KaimingUniform {
        /// Fan-in of the layer.
        fan_in: usize,
    },
    /// Uniform(−1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default for conv and linear biases).
    BiasUniform {
        /// Fan-in of the layer.
        fan_in: usize,
    },
    /// All ones (BatchNorm γ and running variance).
    Ones,
    /// All zeros (BatchNorm β and running mean).
    Zeros,
}

/// A provider of named tensors for architecture builders.
pub trait ParamSource {
    /// The tensor called `name` with exactly `shape`; `init` says how to create it when training from scratch.
    /// Loading sources record missing or mis-shaped names instead of failing at once, so one error can list them all.
    fn tensor(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor>;
}
