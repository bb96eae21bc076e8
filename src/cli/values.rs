//! The value types of the command line: enums whose choices `--help` lists, and the `--outputs` parser.

use crate::ntk::Outputs;
use clap::builder::{PossibleValue, TypedValueParser};
use clap::ValueEnum;

/// The order in which examples enter the sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SampleOrder {
    /// The dataset's own order.
    Dataset,
    /// A permutation seeded by --seed.
    Random,
}

impl SampleOrder {
    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SampleOrder::Dataset => "dataset",
            SampleOrder::Random => "random",
        }
    }
}

/// Parses `--outputs` (full, centered, sum, trace, logit:K) and lists those choices in `--help`.
#[derive(Debug, Clone, Copy)]
pub struct OutputsParser;

impl TypedValueParser for OutputsParser {
    type Value = Outputs;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Outputs, clap::Error> {
        let text = value.to_string_lossy();
        let parsed = match text.as_ref() {
            "full" => Some(Outputs::Full),
            "centered" => Some(Outputs::Centered),
            "sum" => Some(Outputs::Sum),
            "trace" => Some(Outputs::Trace),
            s => s
                .strip_prefix("logit:")
                .and_then(|k| k.parse().ok())
                .map(Outputs::Logit),
        };
        parsed.ok_or_else(|| {
            let mut err = clap::Error::new(clap::error::ErrorKind::InvalidValue).with_cmd(cmd);
            use clap::error::{ContextKind, ContextValue};
            if let Some(arg) = arg {
                err.insert(
                    ContextKind::InvalidArg,
                    ContextValue::String(arg.to_string()),
                );
            }
            err.insert(
                ContextKind::InvalidValue,
                ContextValue::String(text.into_owned()),
            );
            err.insert(
                ContextKind::ValidValue,
                ContextValue::Strings(
                    ["full", "centered", "sum", "trace", "logit:K"]
                        .map(String::from)
                        .to_vec(),
                ),
            );
            err
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            ["full", "centered", "sum", "trace", "logit:K"]
                .into_iter()
                .map(PossibleValue::new),
        ))
    }
}

/// The estimators `compare` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompareMethod {
    /// MEMDET's exact log-det (the reference).
    Exact,
    /// FLODANCE from the nested log-dets of the first n_s examples.
    Flodance,
    /// Stochastic Lanczos quadrature, the paper's Table 2 preset (20 steps, 10–50 probes).
    Slq,
    /// SLQ, the paper's Table 1 preset (100 steps, 104 probes).
    SlqLarge,
    /// SLQ with the Table 2 preset on matrix-free NTK products (no kernel formed for it).
    SlqMatvec,
    /// Preconditioned SLQ (pivoted partial Cholesky of rank --precond-rank).
    Pslq,
    /// Sum of the log-dets of the n diagonal d×d blocks.
    BlockDiag,
    /// d · ln|det| of the n×n matrix of block means.
    PseudoNtk,
    /// The exact log-det of the kernel formed in f32 throughout (f32 passes and f32 GEMMs: the paper's "direct f32 formation").
    F32,
    /// The exact log-det of the kernel formed by f32 passes with f64 accumulation (`--precision f32-f64acc`).
    #[value(name = "f32-f64acc")]
    F32F64Acc,
    /// A straight line through the nested log-dets of the window.
    Linear,
    /// Stopped Cholesky: the mean of the last increments, extrapolated.
    StoppedCholesky,
}

impl CompareMethod {
    /// The name used in `--methods`.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }
}

/// `train --augment`: data augmentation of the training batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Augment {
    /// The images as they are.
    None,
    /// Random 4-pixel-padded crop and random horizontal flip (pytorch-cifar's CIFAR transform).
    CropFlip,
}

/// `train --schedule`: the learning rate over the planned steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Schedule {
    /// lr · (1 + cos(π·step/total))/2 over the planned epochs (the paper's).
    Cosine,
    /// lr at every step.
    Constant,
}

/// `train --pass`: how gradients are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PassArg {
    /// The hand-written pass (fast; the default).
    Hand,
    /// candle's autograd (the reference the hand-written pass is tested against).
    Autograd,
}
