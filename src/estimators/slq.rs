//! Stochastic Lanczos quadrature: `ln det A = tr ln A ≈ mean_j z_jᵀ ln(A) z_j` over Rademacher probes z_j,
//! each quadratic form by Gauss quadrature from `steps` Lanczos steps (full reorthogonalisation).

use super::lanczos::quadrature;
use super::operator::{KernelOperator, LinearOp};
use super::{Estimate, Estimator};
use crate::linalg::TileSource;
use crate::progress::Progress;
use crate::{Error, Result};
use faer::Mat;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// z-score of the two-sided 95 % normal interval used by the adaptive stopping rule.
const Z95: f64 = 1.959_963_984_540_054;

/// SLQ settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SlqOptions {
    /// Lanczos steps per probe.
    pub steps: usize,
    /// Probes drawn before the stopping rule is first checked.
    pub min_probes: usize,
    /// Most probes drawn.
    pub max_probes: usize,
    /// Stop adding probes once 1.96 · std_error ≤ rtol · |estimate| (ignored when min = max).
    pub rtol: f64,
    /// Seed of the Rademacher probes (ChaCha8).
    pub seed: u64,
    /// Memory for the operator (the matrix is kept if it fits, else streamed in panels) and, separately,
    /// for the Krylov bases (m × steps f64 per probe; probes are processed in batches that fit).
    pub memory_bytes: usize,
}

impl SlqOptions {
    /// The paper's Table 2 setting: 20 Lanczos steps, 10–50 probes, adaptive with rtol 1e-2.
    pub fn paper_table2(seed: u64) -> Self {
        Self {
            steps: 20,
            min_probes: 10,
            max_probes: 50,
            rtol: 1e-2,
            seed,
            memory_bytes: 1 << 30,
        }
    }

    /// The paper's Table 1 setting: 100 Lanczos steps, 104 probes.
    pub fn paper_table1(seed: u64) -> Self {
        Self {
            steps: 100,
            min_probes: 104,
            max_probes: 104,
            rtol: 0.0,
            seed,
            memory_bytes: 1 << 30,
        }
    }

    /// A preset by name: `paper-table2` or `paper-table1`.
    pub fn preset(name: &str, seed: u64) -> Result<Self> {
        match name {
            "paper-table2" => Ok(Self::paper_table2(seed)),
            "paper-table1" => Ok(Self::paper_table1(seed)),
            _ => Err(Error::Usage(format!(
                "unknown SLQ preset {name:?}; use paper-table2 or paper-table1"
            ))),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.min_probes == 0 || self.max_probes < self.min_probes {
            return Err(Error::Usage(format!(
                "SLQ needs steps >= 1 and 1 <= min_probes <= max_probes (got steps {}, probes {}..{})",
                self.steps, self.min_probes, self.max_probes
            )));
        }
        Ok(())
    }
}

/// The outcome of SLQ on a linear operator.
#[derive(Debug, Clone)]
pub struct SlqOutcome {
    /// Mean of the per-probe estimates of ln det.
    pub mean: f64,
    /// Standard error of the mean (sample std / √probes; None with one probe).
    pub std_error: Option<f64>,
    /// Per-probe estimates `z_jᵀ ln(A) z_j`.
    pub per_probe: Vec<f64>,
    /// Mean number of Lanczos steps actually taken per probe.
    pub mean_steps: f64,
    /// Smallest and largest Ritz value seen.
    pub ritz_range: (f64, f64),
}

/// SLQ on any symmetric positive definite operator. Probes are drawn in batches (the first of
/// `min_probes`, later ones of `min_probes` too, each batch capped so its Krylov bases fit
/// `memory_bytes`); after each batch the adaptive rule is checked.
pub fn slq_on(op: &dyn LinearOp, opts: &SlqOptions, progress: &dyn Progress) -> Result<SlqOutcome> {
    opts.validate()?;
    let m = op.dim();
    let steps = opts.steps.min(m);
    let per_probe_bytes = m.saturating_mul(steps).saturating_mul(8).max(1);
    let fit = (opts.memory_bytes / per_probe_bytes).max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut values: Vec<f64> = Vec::new();
    let mut step_sum = 0usize;
    let mut ritz = (f64::INFINITY, f64::NEG_INFINITY);
    progress.start("SLQ probes", opts.max_probes as u64);
    loop {
        let want = if values.is_empty() {
            opts.min_probes
        } else {
            opts.min_probes.min(opts.max_probes - values.len())
        };
        let batch = want.min(fit);
        let z = Mat::from_fn(m, batch, |_, _| if rng.gen::<bool>() { 1.0 } else { -1.0 });
        let q = quadrature(op, z.as_ref(), steps)?;
        values.extend(&q.values);
        step_sum += q.steps.iter().sum::<usize>();
        ritz = (ritz.0.min(q.ritz_range.0), ritz.1.max(q.ritz_range.1));
        progress.advance(batch as u64);
        let (mean, se) = mean_se(&values);
        if values.len() >= opts.max_probes {
            break;
        }
        if values.len() >= opts.min_probes {
            if let Some(se) = se {
                if Z95 * se <= opts.rtol * mean.abs() {
                    break;
                }
            }
        }
    }
    progress.finish();
    let (mean, std_error) = mean_se(&values);
    Ok(SlqOutcome {
        mean,
        std_error,
        mean_steps: step_sum as f64 / values.len() as f64,
        per_probe: values,
        ritz_range: ritz,
    })
}

/// Mean and standard error of the mean.
fn mean_se(v: &[f64]) -> (f64, Option<f64>) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, None);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, Some((var / n).sqrt()))
}

/// The SLQ estimator of SPEC §4 on the kernel itself.
#[derive(Debug, Clone)]
pub struct Slq {
    /// Settings.
    pub options: SlqOptions,
}

impl Estimator for Slq {
    fn name(&self) -> &'static str {
        "slq"
    }

    fn run(&self, source: &dyn TileSource, progress: &dyn Progress) -> Result<Estimate> {
        let start = Instant::now();
        let op = KernelOperator::new(source, self.options.memory_bytes);
        let out = slq_on(&op, &self.options, progress)?;
        Ok(Estimate {
            logdet: out.mean,
            std_error: out.std_error,
            matvecs: op.matvecs(),
            seconds: start.elapsed().as_secs_f64(),
            details: serde_json::json!({
                "options": self.options,
                "probes": out.per_probe.len(),
                "mean_lanczos_steps": out.mean_steps,
                "ritz_min": out.ritz_range.0,
                "ritz_max": out.ritz_range.1,
                "matrix_passes": op.passes(),
                "matrix_kept_in_ram": op.keeps_whole(),
            }),
        })
    }
}
