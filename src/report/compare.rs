//! The `compare` subcommand's JSON document and terminal table.

use serde::Serialize;

/// One method's row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct MethodRow {
    /// Method name (as in `--methods`).
    pub method: String,
    /// Estimate of ln det K_n (mean over repeats for stochastic methods).
    pub logdet: f64,
    /// Standard deviation over repeats (stochastic methods with --repeat > 1), else None.
    pub std: Option<f64>,
    /// Signed relative error (estimate − exact) / |exact|, in percent.
    pub relative_error_pct: f64,
    /// |estimate − exact| / m: error per eigenvalue.
    pub error_per_eigenvalue: f64,
    /// Seconds spent forming what the method reads (the full kernel, K_{n_s}, or the diagonal blocks).
    pub seconds_forming: f64,
    /// Seconds spent estimating (mean over repeats).
    pub seconds_estimating: f64,
    /// Matrix–vector products (mean over repeats; 0 for factorisation-based methods).
    pub matvecs: f64,
    /// Peak resident set size of the process after this method, bytes (cumulative over the run).
    pub process_peak_rss: Option<u64>,
    /// Method-specific details (settings, seeds, per-repeat estimates).
    pub details: serde_json::Value,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// Model, data and kernel definition.
    pub kernel: serde_json::Value,
    /// n.
    pub n: usize,
    /// m = n · rows per example.
    pub m: usize,
    /// The reference: exact ln det K_n (MEMDET, f64).
    pub exact_logdet: f64,
    /// Seconds to form the full kernel once (f64).
    pub seconds_forming_kernel: f64,
    /// Exact nested log-dets `[k, ℓ_k]` for k = 1..n from the reference factorisation (usable by `fit`).
    pub nested: Vec<(usize, f64)>,
    /// One row per method.
    pub methods: Vec<MethodRow>,
}

/// The terminal table.
pub fn table(report: &CompareReport) -> String {
    let mut s = format!(
        "exact ln det K_n = {:.10e} (n = {}, m = {}); full kernel formed once in {:.1} s\n",
        report.exact_logdet, report.n, report.m, report.seconds_forming_kernel
    );
    s += &format!(
        "{:<22} {:>18} {:>12} {:>12} {:>6} {:>10} {:>10} {:>10}\n",
        "method", "estimate", "rel.err %", "err/eig", "sign", "form s", "est. s", "peak MiB"
    );
    for r in &report.methods {
        let est = match r.std {
            Some(sd) => format!("{:.6e}±{:.1e}", r.logdet, sd),
            None => format!("{:.8e}", r.logdet),
        };
        let sign = if r.relative_error_pct > 0.0 {
            "+"
        } else if r.relative_error_pct < 0.0 {
            "-"
        } else {
            "0"
        };
        // Errors below 1e-3 % (f32 formation's) in scientific notation, not as 0.0000.
        let pct = r.relative_error_pct.abs();
        let pct = if pct != 0.0 && pct < 1e-3 {
            format!("{pct:.2e}")
        } else {
            format!("{pct:.4}")
        };
        s += &format!(
            "{:<22} {:>18} {:>12} {:>12.3e} {:>6} {:>10.2} {:>10.2} {:>10.0}\n",
            r.method,
            est,
            pct,
            r.error_per_eigenvalue,
            sign,
            r.seconds_forming,
            r.seconds_estimating,
            r.process_peak_rss.unwrap_or(0) as f64 / 1048576.0
        );
    }
    s
}
