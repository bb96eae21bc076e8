//! The exact empirical NTK `K[(i,c),(j,c')] = J_c(x_i) · J_c'(x_j) / s`, computed tile by tile with
//! structured derivatives (SPEC §1) and handed to the linear algebra through [`tiles::NtkTiles`].
//!
//! - [`backward`]: a hand-written batched reverse pass (one backward over `n·d` rows gives every layer's
//!   output gradient for every example and logit at once; conv data gradients are `conv2d`s with the flipped
//!   kernel);
//! - [`features`]: per-block features: explicit per-example weight gradients (route A), spatial factors
//!   (route B), dense-layer factors (Hadamard-of-Grams rule);
//! - [`contract`]: the per-layer tile rules, accumulated in f64 (in f32 for `--precision f32`);
//! - [`tiles`]: `NtkTiles: TileSource` with a byte-budgeted feature cache;
//! - [`layout`], [`hand_products`], [`matvec`]: matrix-free products `J W`, `Jᵀ V` and
//!   `K V = J (Jᵀ V) / s` (forward-mode tangent pass, reverse pass seeded with V, on the hand-written
//!   engine), for the statistics; [`tangent`], [`pullback`]: the same on candle's graph (networks the
//!   hand-written engine does not plan, and the benchmark's baseline);
//! - [`wire`]: features packed into one flat buffer, for sending them between MPI ranks;
//! - [`brute`]: the reference oracle (one autograd backward per example and logit), for tests and benchmarks.

pub mod backward;
pub mod brute;
pub mod contract;
pub mod features;
pub mod hand_products;
pub mod layout;
pub mod matvec;
pub mod planes;
pub mod pullback;
pub mod tangent;
pub mod tiles;
pub mod wire;

pub use matvec::{MatvecPass, NtkOperator};
pub use tiles::NtkTiles;

use crate::{Error, Result};
use serde::Serialize;

/// Which network outputs the kernel is taken of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outputs {
    /// All d logits: m = n·d, row = example·d + class (the paper's kernel).
    Full,
    /// The kernel of Σ_c f_c (n×n).
    Sum,
    /// Σ_c J_c J_cᵀ (n×n).
    Trace,
    /// One logit K (n×n).
    Logit(usize),
    /// The d−1 logit contrasts: rows `Uᵀ f` with U the Helmert basis of the complement of the all-ones
    /// vector (see [`centering_basis`]); m = n·(d−1) and `K_c = (I_n ⊗ Uᵀ) K (I_n ⊗ U)` (SPEC §1).
    Centered,
}

/// The orthonormal basis U (d × (d−1), row-major) of the complement of the all-ones vector used by
/// `--outputs centered`: Helmert contrasts, column k (k = 1..d−1) = (1, …, 1, −k, 0, …, 0) / √(k(k+1)) with k
/// ones. Softmax ignores a common shift of the logits, so this drops exactly the direction training leaves
/// undetermined.
pub fn centering_basis(d: usize) -> Vec<f64> {
    let cols = d.saturating_sub(1);
    let mut u = vec![0.0f64; d * cols];
    for k in 1..=cols {
        let norm = ((k * (k + 1)) as f64).sqrt();
        for i in 0..k {
            u[i * cols + (k - 1)] = 1.0 / norm;
        }
        u[k * cols + (k - 1)] = -(k as f64) / norm;
    }
    u
}

/// The scale s in `J Jᵀ / s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scale {
    /// s = sqrt(p) (the paper's choice, default).
    SqrtP,
    /// s = 1.
    None,
    /// s = p.
    P,
}

/// Floating-point precision of kernel formation. In every precision the tiles handed to the linear algebra
/// are f64 and MEMDET factors them in f64: the precision says how the kernel's entries are *formed*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Forward, backward and contractions in f64 (the reference).
    F64,
    /// f32 throughout, as the paper's "direct f32 formation": forward and backward passes in f32, the
    /// per-example features in f32, and every contraction an f32 GEMM with f32 accumulation (the `gemm`
    /// crate's f32 kernels); each finished kernel block is widened to f64 (and divided by s in f64).
    F32,
    /// f32 forward and backward passes, f64 accumulation: the f32 features are widened and contracted in
    /// f64 (what `f32` was before), so only the rounding of the derivatives enters the kernel.
    #[serde(rename = "f32-f64acc")]
    #[value(name = "f32-f64acc")]
    F32F64Acc,
}

impl Precision {
    /// The candle dtype the forward and backward passes run in.
    pub fn pass_dtype(self) -> candle_core::DType {
        match self {
            Precision::F64 => candle_core::DType::F64,
            Precision::F32 | Precision::F32F64Acc => candle_core::DType::F32,
        }
    }

    /// Whether features are formed and contracted with f32 accumulation.
    pub fn accumulates_in_f32(self) -> bool {
        self == Precision::F32
    }

    /// The `--precision` value.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F64 => "f64",
            Precision::F32 => "f32",
            Precision::F32F64Acc => "f32-f64acc",
        }
    }

    /// What checkpoints record as the kernel's precision. `f32-f64acc` keeps the `F32` that the hybrid was
    /// recorded under when it was called `f32`, so its old checkpoints still resume; the f32-throughout
    /// kernel has a new identity, so it never resumes a factorisation of the hybrid's kernel.
    pub fn identity(self) -> &'static str {
        match self {
            Precision::F64 => "F64",
            Precision::F32 => "F32 (f32 accumulation)",
            Precision::F32F64Acc => "F32",
        }
    }
}

/// What kernel to form.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KernelSpec {
    /// Which outputs.
    pub outputs: Outputs,
    /// Which scale.
    pub scale: Scale,
    /// Which precision.
    pub precision: Precision,
}

impl Default for KernelSpec {
    fn default() -> Self {
        Self {
            outputs: Outputs::Full,
            scale: Scale::SqrtP,
            precision: Precision::F64,
        }
    }
}

impl KernelSpec {
    /// Parse the CLI's `--outputs`, `--scale`, `--precision` strings.
    pub fn parse(outputs: &str, scale: &str, precision: &str) -> Result<Self> {
        let outputs = match outputs {
            "full" => Outputs::Full,
            "sum" => Outputs::Sum,
            "trace" => Outputs::Trace,
            "centered" => Outputs::Centered,
            s => match s.strip_prefix("logit:").map(str::parse::<usize>) {
                Some(Ok(k)) => Outputs::Logit(k),
                _ => {
                    return Err(Error::Usage(format!(
                        "--outputs {s}: expected full, centered, sum, trace or logit:K (K a class index)"
                    )))
                }
            },
        };
        let scale = match scale {
            "sqrt-p" => Scale::SqrtP,
            "none" => Scale::None,
            "p" => Scale::P,
            s => {
                return Err(Error::Usage(format!(
                    "--scale {s}: expected sqrt-p, none or p"
                )))
            }
        };
        let precision = match precision {
            "f64" => Precision::F64,
            "f32" => Precision::F32,
            "f32-f64acc" => Precision::F32F64Acc,
            s => {
                return Err(Error::Usage(format!(
                    "--precision {s}: expected f64, f32 or f32-f64acc"
                )))
            }
        };
        Ok(Self {
            outputs,
            scale,
            precision,
        })
    }

    /// Kernel rows per example: d for `full`, d − 1 for `centered`, 1 otherwise.
    pub fn rows_per_example(&self, num_logits: usize) -> usize {
        match self.outputs {
            Outputs::Full => num_logits,
            Outputs::Centered => num_logits.saturating_sub(1),
            _ => 1,
        }
    }

    /// The divisor s for a network with p parameters.
    pub fn divisor(&self, num_params: usize) -> f64 {
        match self.scale {
            Scale::SqrtP => (num_params as f64).sqrt(),
            Scale::None => 1.0,
            Scale::P => num_params as f64,
        }
    }

    /// Human-readable `--outputs` value.
    pub fn outputs_name(&self) -> String {
        match self.outputs {
            Outputs::Full => "full".into(),
            Outputs::Sum => "sum".into(),
            Outputs::Trace => "trace".into(),
            Outputs::Centered => "centered".into(),
            Outputs::Logit(k) => format!("logit:{k}"),
        }
    }
}
