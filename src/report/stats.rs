//! The `stats` subcommand's JSON document and terminal table.

use crate::estimators::kernel_stats::{KernelStatistics, TargetTerms};
use crate::estimators::trace::Estimated;
use serde::Serialize;
use std::fmt::Write;

/// The kernel–kernel alignment with the `--against` model.
#[derive(Debug, Clone, Serialize)]
pub struct AgainstStats {
    /// The second model.
    pub model: String,
    /// A(K, K2) = ⟨K, K2⟩_F / (‖K‖_F ‖K2‖_F).
    pub alignment: Estimated,
    /// ⟨K, K2⟩_F.
    pub inner: Estimated,
    /// tr K2.
    pub trace_other: Estimated,
    /// ‖K2‖_F.
    pub frobenius_other: Estimated,
}

/// The exact statistics from one streamed pass over the tiles.
#[derive(Debug, Clone, Serialize)]
pub struct ExactStats {
    /// tr K, ‖K‖_F, effective rank, alignments (standard errors 0).
    pub statistics: KernelStatistics,
    /// ‖K‖_F² = tr K².
    pub frobenius_sq: f64,
    /// tr k(x_i, x_i) per example (the sum of its d×d diagonal block; its diagonal entry for n×n modes).
    pub per_example_trace: Vec<f64>,
    /// With --against: the kernel–kernel alignment.
    pub against: Option<AgainstStats>,
    /// Tiles read (per kernel).
    pub tiles: usize,
    /// Wall time of the pass, seconds.
    pub seconds: f64,
    /// Forming work of the first kernel (features, contractions).
    pub kernel_stats: serde_json::Value,
}

/// One matrix-free estimate.
#[derive(Debug, Clone, Serialize)]
pub struct EstimateRow {
    /// Estimator name.
    pub method: String,
    /// Probes S.
    pub probes: usize,
    /// Seed of the probes.
    pub seed: u64,
    /// The statistics with standard errors.
    pub statistics: KernelStatistics,
    /// Estimate of ‖K‖_F² = tr K².
    pub frobenius_sq: Estimated,
    /// Kernel–vector products K v used.
    pub products: usize,
    /// Reverse-mode products Jᵀ z used (one-sided-reverse; kernel products use one of each per vector too).
    pub reverse_products: usize,
    /// Forward-mode products J w used (one-sided-forward).
    pub forward_products: usize,
    /// Wall time, seconds (excluding the shared target products).
    pub seconds: f64,
    /// Exact pass time / this estimate's time, when the exact pass ran.
    pub speedup_vs_exact: Option<f64>,
    /// |estimate − exact| / |exact| per statistic, when the exact pass ran.
    pub relative_error: Option<serde_json::Value>,
    /// With --against: the estimated kernel–kernel alignment (Hutchinson on both kernels, same probes).
    pub against: Option<AgainstStats>,
}

/// The whole `stats` document.
#[derive(Debug, Clone, Serialize)]
pub struct StatsReport {
    /// Model, data and kernel definition.
    pub kernel: serde_json::Value,
    /// n.
    pub n: usize,
    /// m, the kernel order.
    pub m: usize,
    /// The exact alignment ingredients from K [1, Y] (shared by every row).
    pub target_terms: Option<TargetTerms>,
    /// Kernel products used for `target_terms` in the matrix-free route (1 + columns of Y).
    pub target_products: usize,
    /// Seconds for those products.
    pub target_seconds: f64,
    /// The exact pass, if it ran.
    pub exact: Option<ExactStats>,
    /// The matrix-free estimates.
    pub estimates: Vec<EstimateRow>,
}

/// An exact value in full, an estimate with its standard error (even when that is 0).
fn fmt_val(e: &Estimated, exact: bool) -> String {
    if exact {
        format!("{:.6e}", e.value)
    } else {
        format!("{:.4e} ± {:.1e}", e.value, e.std_error)
    }
}

/// The terminal summary.
pub fn table(r: &StatsReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "NTK statistics, n = {}, m = {}", r.n, r.m);
    let _ = writeln!(
        s,
        "{:<20} {:>6} {:>24} {:>24} {:>22} {:>22} {:>22} {:>8} {:>9}",
        "method",
        "S",
        "trace",
        "frobenius",
        "effective rank",
        "alignment",
        "centred alignment",
        "K·v",
        "seconds"
    );
    let mut line = |name: &str, s_probes: String, st: &KernelStatistics, kv: usize, secs: f64| {
        let exact = name == "exact";
        let f = |e: &Estimated| fmt_val(e, exact);
        let _ = writeln!(
            s,
            "{:<20} {:>6} {:>24} {:>24} {:>22} {:>22} {:>22} {:>8} {:>9.2}",
            name,
            s_probes,
            f(&st.trace),
            f(&st.frobenius),
            f(&st.effective_rank),
            f(&st.alignment),
            st.centred_alignment.as_ref().map_or("-".into(), f),
            kv,
            secs
        );
    };
    if let Some(e) = &r.exact {
        line("exact", "-".into(), &e.statistics, 0, e.seconds);
    }
    for row in &r.estimates {
        line(
            &row.method,
            row.probes.to_string(),
            &row.statistics,
            row.products,
            row.seconds,
        );
    }
    if let Some(e) = &r.exact {
        let t = &e.per_example_trace;
        let min = t.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = t.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mean = t.iter().sum::<f64>() / t.len().max(1) as f64;
        let _ = writeln!(
            s,
            "per-example trace: min {min:.4e}, mean {mean:.4e}, max {max:.4e} (all {} in --json)",
            t.len()
        );
        if let Some(a) = &e.against {
            let _ = writeln!(
                s,
                "alignment with {}: {}",
                a.model,
                fmt_val(&a.alignment, true)
            );
        }
    }
    for row in &r.estimates {
        if let Some(a) = &row.against {
            let _ = writeln!(
                s,
                "alignment with {} ({}, S = {}): {}",
                a.model,
                row.method,
                row.probes,
                fmt_val(&a.alignment, false)
            );
        }
        if let Some(note) = &row.statistics.note {
            let _ = writeln!(s, "note ({}, S = {}): {note}", row.method, row.probes);
        }
    }
    if let Some(note) = r.exact.as_ref().and_then(|e| e.statistics.note.as_ref()) {
        let _ = writeln!(s, "note (exact): {note}");
    }
    s
}
