//! Command-line argument structs (clap derive). Defaults are documented in each option's help text.
//! `run` is the default subcommand: `ntk-pipeline --model M --data D` means `ntk-pipeline run --model M --data D`.

mod default_run;
mod values;

pub use default_run::parse_with_default_run;
pub use values::{Augment, CompareMethod, OutputsParser, PassArg, SampleOrder, Schedule};

use crate::data::Split;
use crate::linalg::{Assume, Triangle};
use crate::ntk::{Outputs, Precision, Scale};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Exact, memory-bounded log-determinants of empirical Neural Tangent Kernels, and FLODANCE extrapolation.
#[derive(Debug, Parser)]
#[command(name = "ntk-pipeline", version, about, long_about = None)]
pub struct Cli {
    /// Number of worker threads (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// No progress bars.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Estimate log det of the full dataset's NTK with FLODANCE (the default subcommand).
    Run(RunArgs),
    /// Write the dense NTK of the first N examples to a .npy file.
    Ntk(NtkArgs),
    /// Exact log|det| of a matrix (.npy) or of an NTK, under a memory limit.
    Logdet(LogdetArgs),
    /// Fit the FLODANCE scaling law to nested log-dets from a file and extrapolate.
    Fit(FitArgs),
    /// Compare FLODANCE and the classical estimators with the exact log-det.
    Compare(CompareArgs),
    /// Train a built-in architecture on a dataset and save it as safetensors.
    Train(TrainArgs),
    /// Evaluate a model's accuracy on a dataset split.
    Eval(EvalArgs),
    /// Score FLODANCE and the naive extrapolations on exact nested log-dets (docs/results) and print tables.
    Report(ReportArgs),
    /// NTK statistics without storing the kernel: trace, Frobenius norm, effective rank, alignment
    /// (exact in one streamed pass over the tiles, or matrix-free with --estimate).
    Stats(StatsArgs),
}

/// Which network and which data: shared by every subcommand that loads a model (`run`, `ntk`, `logdet
/// --model`, `compare`, `eval`).
#[derive(Debug, Args, Clone)]
pub struct ModelDataArgs {
    /// Model weights: a .safetensors or .pth file, or ORG/NAME[/FILE] in the Hugging Face cache.
    /// (Required, except by `logdet --matrix`; read it with [`ModelDataArgs::model`].)
    #[arg(long, required = true)]
    pub model: Option<String>,
    /// Architecture: a built-in name (resnet9, resnet18, resnet34, resnet50, mobilenet, lenet, mlp) or a
    /// JSON sequential spec file. Default: from the weights' metadata or recognised from tensor names.
    #[arg(long)]
    pub arch: Option<String>,
    /// Base width of built-in architectures (only with --arch; default 64 for ResNets).
    #[arg(long)]
    pub width: Option<usize>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Dataset split.
    #[arg(long, value_enum, default_value_t = Split::Train)]
    pub split: Split,
    /// Sample order: dataset order, or a seeded random permutation.
    #[arg(long, value_enum, default_value_t = SampleOrder::Dataset)]
    pub order: SampleOrder,
    /// Seed for --order random and all stochastic parts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Which dataset and where to find it: shared by every subcommand that loads data.
#[derive(Debug, Args, Clone)]
pub struct DataArgs {
    /// Dataset: mnist, fashion-mnist, cifar10, cifar100, or a directory holding IDX or CIFAR binary files.
    /// (Required, except by `logdet --matrix`; read it with [`DataArgs::name`].)
    #[arg(id = "data", long = "data", value_name = "NAME|DIR", required = true)]
    pub name: Option<String>,
    /// Directory to look for datasets in first (also env NTK_PIPELINE_DATA); it must exist.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Download the dataset into the cache if it is not found.
    #[arg(long)]
    pub download: bool,
}

impl ModelDataArgs {
    /// `--model` (clap requires it everywhere but in `logdet`, whose `--matrix` mode has no model).
    pub fn model(&self) -> crate::Result<&str> {
        self.model
            .as_deref()
            .ok_or_else(|| crate::Error::Usage("--model is required here".into()))
    }
}

impl DataArgs {
    /// `--data` (clap requires it everywhere but in `logdet`, whose `--matrix` mode has no data).
    pub fn name(&self) -> crate::Result<&str> {
        self.name
            .as_deref()
            .ok_or_else(|| crate::Error::Usage("--data is required here".into()))
    }
}

/// How the kernel is defined.
#[derive(Debug, Args, Clone)]
pub struct KernelArgs {
    /// Network outputs: full (all d logits), centered (the d−1 logit contrasts), sum, trace, or logit:K (K a class index).
    #[arg(long, default_value = "full", value_parser = OutputsParser)]
    pub outputs: Outputs,
    /// Kernel scale s in J Jᵀ / s.
    #[arg(long, value_enum, default_value_t = Scale::SqrtP)]
    pub scale: Scale,
    /// Precision of kernel formation: f64 (reference) or f32.
    #[arg(long, value_enum, default_value_t = Precision::F64)]
    pub precision: Precision,
}

/// Memory limit and scratch location for MEMDET.
#[derive(Debug, Args, Clone)]
pub struct MemArgs {
    /// Resident memory limit, e.g. 4GiB, 500MB, 1e9.
    #[arg(long, default_value = "4GiB")]
    pub max_mem: String,
    /// Number of blocks per side (overrides --max-mem's plan).
    #[arg(long)]
    pub num_blocks: Option<usize>,
    /// Directory for the on-disk scratch store (default: the OS temp dir).
    #[arg(long)]
    pub scratch_dir: Option<PathBuf>,
    /// NTK subcommands: the part of --max-mem for cached per-example NTK features, e.g. 16GiB (default:
    /// half of what the data, model, inputs and binary leave); MEMDET gets the rest.
    #[arg(long)]
    pub feature_mem: Option<String>,
}

/// Checkpoint and resume of the exact factorisation, for long runs (`logdet`, `run`, `compare`).
#[derive(Debug, Args, Clone, Default)]
pub struct CheckpointArgs {
    /// Keep MEMDET's factor tiles and a manifest in DIR after every block column, so that a killed run can
    /// be resumed (put DIR on a persistent disk; it replaces --scratch-dir for the tiles).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: Option<PathBuf>,
    /// Continue the checkpoint in --checkpoint DIR after its last complete block column (bitwise the same
    /// result; starts from the beginning if DIR holds no checkpoint yet).
    #[arg(long, requires = "checkpoint")]
    pub resume: bool,
}

/// `train --resume`.
#[derive(Debug, Args, Clone, Default)]
pub struct TrainResumeArgs {
    /// Continue an interrupted training from its last completed epoch (weights, momentum, schedule position
    /// and random state from NAME.train-state.safetensors next to --out), bitwise as if never stopped.
    #[arg(long)]
    pub resume: bool,
}

/// `ntk --max-mem`.
#[derive(Debug, Args, Clone)]
pub struct NtkMemArgs {
    /// Memory limit of the whole process: the dense kernel (8·m² bytes), the data, model and inputs, and the
    /// cached NTK features must fit, e.g. 4GiB.
    #[arg(long, default_value = "4GiB")]
    pub max_mem: String,
}

/// The scaling-law fit and its interval (SPEC §3), shared by `run` and `fit`.
#[derive(Debug, Args, Clone)]
pub struct FitModelArgs {
    /// Burn-in n_0: the fit uses k in [n_0, n_s].
    #[arg(long, default_value_t = 100)]
    pub burn_in: usize,
    /// Laurent order q of the scaling-law fit, or `auto`: the q in 1..4 whose backtests (sub-windows
    /// predicting ℓ_{n_s}) err least.
    #[arg(long, default_value = "2")]
    pub q: Auto<usize>,
    /// Number r of plain k^-i terms (i = 1..r) added to the model.
    #[arg(long, default_value_t = 0)]
    pub plain_terms: usize,
    /// Fit weight exponent alpha (0 fits ℓ_k, 1 fits ℓ_k / k), or `auto`: 0 or 1, whichever backtests
    /// better.
    #[arg(long, default_value = "0")]
    pub alpha: Auto<f64>,
    /// Constrain the fitted law's per-example increments ℓ_k − ℓ_{k−1} to be non-increasing on
    /// [n_0, target n] (constrained least squares; equal to the plain fit when that already has the shape).
    #[arg(long)]
    pub shape_constrained: bool,
    /// Nominal level of the calibrated interval (the quantile of the backtests' normalised errors).
    #[arg(long, default_value_t = 0.9)]
    pub interval_level: f64,
    /// Number of refits on random subsamples of the window for the interval.
    #[arg(long, default_value_t = 50)]
    pub ensemble: usize,
}

/// Arguments of `report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Results files or directories of them (every *.json): run --exact-n or logdet --nested output, or
    /// any JSON object with `nested: [[k, l_k], ...]`.
    #[arg(long, num_args = 1.., default_value = "docs/results")]
    pub results: Vec<PathBuf>,
    /// Fit windows as N0:NS pairs, comma-separated.
    #[arg(long, default_value = "1:100,100:500,300:500")]
    pub windows: String,
    /// Target sizes n, comma-separated (cells whose n exceeds a file's largest k are skipped).
    #[arg(long, value_delimiter = ',', default_value = "1000,2500")]
    pub targets: Vec<usize>,
    #[command(flatten)]
    pub fit: FitModelArgs,
    /// Seed of the refit ensembles.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write every cell and the coverage summary as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the SVG of relative error against extrapolation ratio here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// `compare --json` and `logdet --model --json` outputs (files or directories of them) of the same
    /// models: also print the paper's Table 2 layout (every method's error, mean ± std over the networks of
    /// each setting, beside the paper's values).
    #[arg(long, num_args = 1..)]
    pub estimates: Vec<PathBuf>,
}

/// A value, or `auto` (chosen by the program; see the option's help).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Auto<T> {
    /// Let the program choose.
    Auto,
    /// This value.
    Value(T),
}

impl<T: std::str::FromStr> std::str::FromStr for Auto<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Auto::Auto);
        }
        s.parse()
            .map(Auto::Value)
            .map_err(|e| format!("expected `auto` or a number: {e}"))
    }
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub md: ModelDataArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
    #[command(flatten)]
    pub mem: MemArgs,
    /// Sample size n_s whose kernel is factored.
    #[arg(long, default_value_t = 500)]
    pub n_sample: usize,
    #[command(flatten)]
    pub fit: FitModelArgs,
    /// Extrapolate to this n (default: the dataset's size).
    #[arg(long)]
    pub target_n: Option<usize>,
    /// Also compute ℓ_N exactly for this N > n_s and report the extrapolation's error.
    #[arg(long)]
    pub exact_n: Option<usize>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot of the fit here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub ckpt: CheckpointArgs,
    #[cfg(feature = "mpi")]
    #[command(flatten)]
    pub dist: DistArgs,
}

/// Arguments of `ntk`.
#[derive(Debug, Args)]
pub struct NtkArgs {
    #[command(flatten)]
    pub md: ModelDataArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
    /// Number of examples n (the kernel is m x m with m = n·d for --outputs full).
    #[arg(long)]
    pub n: usize,
    /// Output .npy file (f64, C order, example-major).
    #[arg(long)]
    pub out: PathBuf,
    /// Write JSON metadata here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub mem: NtkMemArgs,
}

/// Arguments of `logdet`: `--matrix`, or the model and data whose NTK is factored (then required).
#[derive(Debug, Args, Clone)]
#[command(
    mut_arg("model", |a| a.required(false)),
    mut_arg("data", |a| a.required(false))
)]
pub struct LogdetArgs {
    /// A square .npy matrix (f32 or f64, C or Fortran order).
    #[arg(long, conflicts_with_all = ["model", "data", "n"])]
    pub matrix: Option<PathBuf>,
    /// Only this triangle of --matrix is valid (default: the full matrix is symmetric).
    #[arg(long, value_enum)]
    pub triangle: Option<Triangle>,
    /// The network and data whose NTK of the first --n examples is factored (instead of --matrix).
    #[command(flatten)]
    pub md: ModelDataArgs,
    /// Number of examples (with --model).
    #[arg(long)]
    pub n: Option<usize>,
    #[command(flatten)]
    pub kernel: KernelArgs,
    /// Factorisation: spd (Cholesky) or sym (LDLᵀ).
    #[arg(long, value_enum, default_value_t = Assume::Spd)]
    pub assume: Assume,
    #[command(flatten)]
    pub mem: MemArgs,
    /// Multiply the matrix by this factor t (M = t·A + shift·I).
    #[arg(long, default_value_t = 1.0)]
    pub scale_by: f64,
    /// Add this diagonal shift.
    #[arg(long, default_value_t = 0.0)]
    pub shift: f64,
    /// Report nested log-dets ℓ_k of the leading k·D rows, k = 1, 2, … (D ≥ 1; default: the granule, e.g.
    /// d for an NTK).
    #[arg(long, value_name = "D", num_args = 0..=1)]
    pub nested: Option<Option<usize>>,
    /// Write the JSON result here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Testing aid: fail as if the scratch disk were full after this many bytes.
    #[arg(long, hide = true)]
    pub scratch_cap: Option<String>,
    #[command(flatten)]
    pub ckpt: CheckpointArgs,
    #[cfg(feature = "mpi")]
    #[command(flatten)]
    pub dist: DistArgs,
}

/// MPI build only: the layout of the distributed factorisation (`logdet` and `run` under `mpirun`).
#[cfg(feature = "mpi")]
#[derive(Debug, Args, Clone, Default)]
pub struct DistArgs {
    /// MPI build only: the process grid PxQ for the distributed factorisation (default: the squarest for
    /// the job's ranks; used whenever the job has more than one rank or this is given).
    #[arg(long)]
    pub grid: Option<String>,
    /// MPI build only: the block-cyclic block size (a multiple of the granule, d for an NTK; default
    /// 256 rounded up to the granule).
    #[arg(long)]
    pub block_size: Option<usize>,
}

/// Arguments of `fit`.
#[derive(Debug, Args)]
pub struct FitArgs {
    /// Nested log-dets: JSON ([[k, l_k], ...] or {"nested": [...]}) or CSV (k,l_k per line).
    #[arg(long)]
    pub logdets: PathBuf,
    /// Extrapolate to this n.
    #[arg(long)]
    pub target_n: usize,
    /// Fit only ℓ_k for k ≤ this n_s (default: every k of the file); the file's ℓ_k beyond it are the exact
    /// values: drawn in --plot, and scored at --target-n when the file holds it.
    #[arg(long)]
    pub n_sample: Option<usize>,
    #[command(flatten)]
    pub fit: FitModelArgs,
    /// Seed for the ensemble.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the JSON result here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Arguments of `compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub md: ModelDataArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
    #[command(flatten)]
    pub mem: MemArgs,
    /// Number of examples n.
    #[arg(long)]
    pub n: usize,
    /// Methods, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "exact,flodance,slq,pslq,block-diag,pseudo-ntk,f32,linear,stopped-cholesky"
    )]
    pub methods: Vec<CompareMethod>,
    /// Repeat the stochastic methods R times with different seeds (mean and std).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// FLODANCE sample size n_s (default n/10).
    #[arg(long)]
    pub n_sample: Option<usize>,
    /// FLODANCE burn-in.
    #[arg(long)]
    pub burn_in: Option<usize>,
    /// FLODANCE Laurent order.
    #[arg(long, default_value_t = 2)]
    pub q: usize,
    /// Preconditioner rank for pslq.
    #[arg(long, default_value_t = 100)]
    pub precond_rank: usize,
    /// Write the JSON result here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub ckpt: CheckpointArgs,
}

/// Arguments of `train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Built-in architecture name or JSON sequential spec file.
    #[arg(long)]
    pub arch: String,
    /// Base width (default: the architecture's own).
    #[arg(long)]
    pub width: Option<usize>,
    /// The training data (its train split is used).
    #[command(flatten)]
    pub data: DataArgs,
    /// Maximum number of epochs.
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Stop once the eval-mode accuracy on all training examples reaches this (README: the stop rule).
    #[arg(long, default_value_t = 0.995)]
    pub target_acc: f64,
    /// Learning rate (SGD, momentum 0.9, weight decay 5e-4, cosine schedule).
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Train on the first N training examples only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Input shape C,H,W the network expects (default: 3,32,32 for ResNets/MobileNet, the data's own otherwise).
    #[arg(long)]
    pub input_shape: Option<String>,
    /// Start from these weights (.safetensors or .pth of the same architecture: fine-tuning, or a model
    /// trained elsewhere) instead of a seeded initialisation; BatchNorm running statistics come from it too.
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    /// Augmentation of the training batches (default: crop-flip on 3-channel data, none on 1-channel
    /// data, where a mirrored digit is another symbol).
    #[arg(long, value_enum)]
    pub augment: Option<Augment>,
    /// Reshuffle the training examples every epoch (false: dataset order every epoch).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub shuffle: bool,
    /// Learning-rate schedule over the planned --epochs.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,
    /// How gradients are computed (both give the same step to rounding; see README).
    #[arg(long, value_enum, default_value_t = PassArg::Hand)]
    pub pass: PassArg,
    /// Output weights (.safetensors); a training log is written next to it as .log.json.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub resume: TrainResumeArgs,
    /// Resident memory limit of the whole run (default 4GiB), e.g. 2GiB: what training holds is counted
    /// before the first step and refused when it does not fit; the accuracy passes' batch adapts (the
    /// training batch never does). Hand pass only: with --pass autograd it is refused.
    #[arg(long)]
    pub max_mem: Option<String>,
}

/// Arguments of `eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub md: ModelDataArgs,
    /// Evaluate on the first N examples only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Resident memory limit, e.g. 4GiB, 500MB, 1e9 (sets the batch size; only the evaluated examples'
    /// images are held).
    #[arg(long, default_value = "4GiB")]
    pub max_mem: String,
    /// Write the JSON result here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Arguments of `stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub md: ModelDataArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
    /// Number of examples n (the kernel is m x m with m = n·d for --outputs full).
    #[arg(long)]
    pub n: usize,
    /// Matrix-free estimators, comma separated: hutchinson, hutchpp, one-sided-reverse, one-sided-forward,
    /// one-sided (both one-sided ones) or all. Without it the statistics are computed exactly.
    #[arg(long)]
    pub estimate: Option<String>,
    /// With --estimate: also run the exact pass and report each estimate's actual error and speed-up.
    #[arg(long)]
    pub exact: bool,
    /// Probe counts S for --estimate, comma separated (e.g. 10,30,100); each is one run of each estimator.
    #[arg(long, default_value = "30")]
    pub probes: String,
    /// A second model on the same sample: report the kernel–kernel alignment A(K, K2).
    #[arg(long)]
    pub against: Option<String>,
    /// Architecture of --against (default: from its weights, as for --model).
    #[arg(long)]
    pub against_arch: Option<String>,
    /// Resident memory limit, e.g. 4GiB, 500MB, 1e9.
    #[arg(long, default_value = "4GiB")]
    pub max_mem: String,
    /// The part of --max-mem for cached per-example NTK features in the exact pass (default: half).
    #[arg(long)]
    pub feature_mem: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}
