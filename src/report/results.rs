//! Exact reference data (`docs/results/*.json`) and the accuracy tables scored on them by `report`.
//!
//! A results file is one of the tool's own JSON outputs that carries exact nested log-dets: `run --exact-n`
//! (`exact.nested`), `logdet --nested --json` (`nested.logdets`), or any object with `nested: [[k, ℓ_k], …]`.
//! Every other key is kept as the file's provenance.

use crate::{Error, Result};
use serde::Serialize;
use std::path::Path;

/// The exact nested log-dets of one file, with where they came from.
#[derive(Debug, Clone)]
pub struct ResultFile {
    /// File name without the directory.
    pub name: String,
    /// `(k, ℓ_k)` for k = 1..N, sorted by k.
    pub nested: Vec<(usize, f64)>,
    /// The file's other top-level keys (provenance: model, command, commit, times, load, …).
    pub provenance: serde_json::Map<String, serde_json::Value>,
}

impl ResultFile {
    /// Read and validate one results file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
        let bad = |msg: String| Error::Input(format!("{}: {msg}", path.display()));
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let serde_json::Value::Object(mut map) = value else {
            return Err(bad("expected a JSON object".into()));
        };
        let list = match (map.get("exact"), map.get("nested")) {
            (Some(serde_json::Value::Object(e)), _) if e.contains_key("nested") => e["nested"].clone(),
            (_, Some(serde_json::Value::Object(n))) if n.contains_key("logdets") => n["logdets"].clone(),
            (_, Some(v @ serde_json::Value::Array(_))) => v.clone(),
            _ => {
                return Err(bad(
                    "no exact nested log-dets: expected `exact.nested` (run --exact-n), `nested.logdets` \
                     (logdet --nested) or a `nested` array of [k, l_k]"
                        .into(),
                ))
            }
        };
        map.remove("nested");
        if let Some(serde_json::Value::Object(e)) = map.get_mut("exact") {
            e.remove("nested");
        }
        let mut nested = parse_points(&list).map_err(bad)?;
        nested.sort_by_key(|p| p.0);
        if nested.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(bad("a k appears twice".into()));
        }
        let name = path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            name,
            nested,
            provenance: map,
        })
    }

    /// ℓ_k for this k, if the file has it.
    pub fn at(&self, k: usize) -> Option<f64> {
        self.nested
            .binary_search_by_key(&k, |p| p.0)
            .ok()
            .map(|i| self.nested[i].1)
    }

    /// The largest k.
    pub fn max_k(&self) -> usize {
        self.nested.last().map_or(0, |p| p.0)
    }
}

fn parse_points(list: &serde_json::Value) -> std::result::Result<Vec<(usize, f64)>, String> {
    let serde_json::Value::Array(items) = list else {
        return Err("the nested log-dets are not an array".into());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let (k, l) = match item {
                serde_json::Value::Array(p) if p.len() == 2 => (p[0].as_f64(), p[1].as_f64()),
                serde_json::Value::Object(o) => (
                    o.get("k").and_then(|v| v.as_f64()),
                    o.get("logdet")
                        .or_else(|| o.get("l_k"))
                        .and_then(|v| v.as_f64()),
                ),
                _ => (None, None),
            };
            match (k, l) {
                (Some(k), Some(l)) if k >= 1.0 && k.fract() == 0.0 && l.is_finite() => {
                    Ok((k as usize, l))
                }
                _ => Err(format!(
                    "nested entry {i} is not a pair (k >= 1 integer, finite l_k): {item}"
                )),
            }
        })
        .collect()
}

/// One interval and whether it held the exact value.
#[derive(Debug, Clone, Serialize)]
pub struct IntervalScore {
    /// Lower end.
    pub low: f64,
    /// Upper end.
    pub high: f64,
    /// Whether low ≤ exact ≤ high.
    pub covers: bool,
    /// (high − low) / |exact|, percent.
    pub width_percent: f64,
}

impl IntervalScore {
    /// Score `(low, high)` against `exact`.
    pub fn new((low, high): (f64, f64), exact: f64) -> Self {
        Self {
            low,
            high,
            covers: low <= exact && exact <= high,
            width_percent: 100.0 * (high - low) / exact.abs(),
        }
    }
}

/// One (file, window, target) cell.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Results file.
    pub file: String,
    /// Burn-in n₀.
    pub n0: usize,
    /// Sample size n_s (the window's end).
    pub ns: usize,
    /// Target n.
    pub n: usize,
    /// n / n_s.
    pub ratio: f64,
    /// Exact ℓ_n.
    pub exact: f64,
    /// FLODANCE's ℓ̂_n.
    pub flodance: f64,
    /// Its relative error, percent.
    pub flodance_error_percent: f64,
    /// The law used (q, α; after `--q auto`).
    pub q: usize,
    /// Weight exponent used.
    pub alpha: f64,
    /// The refit-sensitivity band.
    pub sensitivity: IntervalScore,
    /// The calibrated interval (null when the window allows no backtests).
    pub calibrated: Option<IntervalScore>,
    /// Whether the fitted law keeps its shape on [n_s, n].
    pub shape_ok: bool,
    /// Linear-in-k extrapolation's relative error, percent.
    pub linear_error_percent: f64,
    /// Stopped-Cholesky extrapolation's relative error, percent.
    pub stopped_cholesky_error_percent: f64,
}

/// Coverage and width of one kind of interval over all cells.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// Cells with this interval.
    pub cells: usize,
    /// Cells whose interval held the exact value.
    pub covered: usize,
    /// Median width, percent of |exact|.
    pub median_width_percent: f64,
}

impl Coverage {
    /// Summarise the given interval scores.
    pub fn of<'a>(scores: impl Iterator<Item = &'a IntervalScore>) -> Self {
        let scores: Vec<&IntervalScore> = scores.collect();
        let mut widths: Vec<f64> = scores.iter().map(|s| s.width_percent).collect();
        widths.sort_by(f64::total_cmp);
        let median = match widths.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => widths[n / 2],
            n => 0.5 * (widths[n / 2 - 1] + widths[n / 2]),
        };
        Self {
            cells: scores.len(),
            covered: scores.iter().filter(|s| s.covers).count(),
            median_width_percent: median,
        }
    }
}

/// The markdown table of every cell, one row each.
pub fn cell_table(cells: &[Cell]) -> String {
    let mut s = String::from(
        "| file | (n0, ns) | n | ratio | FLODANCE ℓ̂_n | exact ℓ_n | error % | q, α | sensitivity: covers, width % | \
         calibrated: covers, width % | shape | linear error % | stopped-Cholesky error % |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    for c in cells {
        let cal = c.calibrated.as_ref().map_or("—".to_string(), |i| {
            format!("{}, {:.2}", yes(i.covers), i.width_percent)
        });
        s.push_str(&format!(
            "| {} | ({}, {}) | {} | {:.1} | {:.1} | {:.1} | {:.2} | {}, {} | {}, {:.2} | {} | {} | {:.2} | {:.2} |\n",
            c.file,
            c.n0,
            c.ns,
            c.n,
            c.ratio,
            c.flodance,
            c.exact,
            c.flodance_error_percent,
            c.q,
            c.alpha,
            yes(c.sensitivity.covers),
            c.sensitivity.width_percent,
            cal,
            if c.shape_ok { "ok" } else { "turns up" },
            c.linear_error_percent,
            c.stopped_cholesky_error_percent,
        ));
    }
    s
}

/// The markdown table of both intervals' coverage over `cells`: cells, covered, median width.
pub fn coverage_table(cells: &[Cell]) -> String {
    let sens = Coverage::of(cells.iter().map(|c| &c.sensitivity));
    let cal = Coverage::of(cells.iter().filter_map(|c| c.calibrated.as_ref()));
    let mut s =
        String::from("| interval | cells | covered | median width % |\n|---|---|---|---|\n");
    for (name, c) in [
        ("sensitivity (refit band)", sens),
        ("calibrated (backtests)", cal),
    ] {
        s.push_str(&format!(
            "| {name} | {} | {} | {:.2} |\n",
            c.cells, c.covered, c.median_width_percent
        ));
    }
    s
}
