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

/// Fresh, seeded parameters drawn as PyTorch initialises them (plain tensors, no autograd): for benchmarks,
/// demos and tests that need a network of a given architecture but not trained weights.
pub struct SeededParams {
    rng: rand_chacha::ChaCha8Rng,
}

impl SeededParams {
    /// A source seeded with `seed` (same seed, same weights, on every machine).
    pub fn new(seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl ParamSource for SeededParams {
    fn tensor(&mut self, _name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let len: usize = shape.iter().product();
        let values = init_values(init, len, &mut self.rng);
        let t = Tensor::from_vec(values, shape, &candle_core::Device::Cpu)?;
        Ok(t.to_dtype(candle_core::DType::F32)?)
    }
}

/// The `len` values of a fresh parameter under `init`, drawn from `rng`: the one PyTorch-style
/// initialisation, shared by [`SeededParams`] and the training source so that a seed gives the same
/// weights whatever the tensor type. Uniform draws are made in f64 (one 64-bit draw per value) and rounded
/// to the tensor's type afterwards.
pub fn init_values(init: Init, len: usize, rng: &mut impl rand::Rng) -> Vec<f64> {
    match init {
        // Kaiming-uniform with a = sqrt(5): gain sqrt(2 / (1 + 5)), bound gain·sqrt(3 / fan_in) = 1/sqrt(fan_in);
        // the default bias bound is the same 1/sqrt(fan_in).
        Init::KaimingUniform { fan_in } | Init::BiasUniform { fan_in } => {
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            (0..len).map(|_| rng.gen_range(-bound..bound)).collect()
        }
        Init::Ones => vec![1.0; len],
        Init::Zeros => vec![0.0; len],
    }
}
