//! The `run` subcommand's JSON document (a stable schema; documented in README).

use crate::report::fit::{EstimateJson, FitJson};
use serde::Serialize;

/// The exact ℓ_N computed by `--exact-n` and the fit's error there.
#[derive(Debug, Clone, Serialize)]
pub struct ExactJson {
    /// N.
    pub n: usize,
    /// Exact ℓ_N (f64 factorisation of K_N).
    pub logdet: f64,
    /// Sign of det K_N.
    pub sign: f64,
    /// The fit evaluated at N.
    pub predicted: f64,
    /// |predicted − exact| / |exact|.
    pub relative_error: f64,
    /// |predicted − exact| / (N·rows per example): the error per eigenvalue.
    pub error_per_eigenvalue: f64,
    /// Seconds to form and factor K_N.
    pub seconds: f64,
    /// Seconds of those spent computing per-example features.
    pub features_seconds: f64,
    /// Seconds of those spent contracting features into kernel tiles.
    pub contractions_seconds: f64,
    /// `[k, ℓ_k]` for k = 1..N from the same factorisation of K_N (the exact nested log-dets, SPEC §3).
    pub nested: Vec<(usize, f64)>,
}

/// Wall-clock split of a run, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TimingsJson {
    /// Loading data and model.
    pub load: f64,
    /// Forward/backward passes and feature extraction for K_{n_s}.
    pub features: f64,
    /// Tile contractions for K_{n_s}.
    pub contractions: f64,
    /// MEMDET on K_{n_s}, excluding time spent forming tiles.
    pub factor: f64,
    /// The fit and its ensemble.
    pub fit: f64,
    /// The whole run.
    pub total: f64,
}

/// The sample whose kernel was factored.
#[derive(Debug, Clone, Serialize)]
pub struct SampleJson {
    /// n_s.
    pub n: usize,
    /// m_s = n_s · rows per example.
    pub m: usize,
    /// `dataset` or `random`.
    pub order: String,
    /// Seed of the order (and of the ensemble).
    pub seed: u64,
}

/// Memory figures.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryJson {
    /// The `--max-mem` limit in bytes.
    pub max_mem: u64,
    /// MEMDET's peak resident bytes (blocks and buffers).
    pub memdet_peak_resident: u64,
    /// Budget for cached NTK features.
    pub feature_budget: u64,
    /// Bytes of features per example.
    pub feature_bytes_per_example: usize,
    /// Peak resident set size of the process (VmHWM), if known.
    pub process_peak_rss: Option<u64>,
}

/// The whole `run` report.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// FLODANCE's estimate of ℓ_n at the target n, with its ensemble interval.
    pub estimate: EstimateJson,
    /// The fitted scaling law.
    pub fit: FitJson,
    /// `[[k, ℓ_k], …]` for k = 1..n_s.
    pub nested: Vec<(usize, f64)>,
    /// Model, data and kernel definition (model, arch, data, split, d, p, outputs, scale, precision).
    pub kernel: serde_json::Value,
    /// The factored sample.
    pub sample: SampleJson,
    /// Exact ℓ_N when `--exact-n` was given.
    pub exact: Option<ExactJson>,
    /// Time split.
    pub timings: TimingsJson,
    /// Memory figures.
    pub memory: MemoryJson,
    /// MEMDET's own report on the factorisation of K_{n_s}.
    pub memdet: crate::linalg::MemdetInfo,
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if available.
pub fn process_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
