//! The paper's Table 2 layout on our nets (`report --estimates`): the relative error of ℓ_n of every method,
//! mean ± standard deviation over the networks of each setting (architecture, dataset, n), beside the paper's
//! values.
//!
//! The estimates come from `compare --json` outputs (every method row) and `logdet --model --json` outputs
//! (one kernel formed in another precision, e.g. `--precision f32`); FLODANCE's rows come from `report`'s own
//! cells on the exact nested log-dets. Each estimate is scored against the exact ℓ_n of the same model file
//! (matched by sha256) from the results files, else against the `compare` run's own exact value.

use crate::report::results::{Cell, ResultFile};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The estimates of one `compare` or `logdet --model` output.
#[derive(Debug, Clone)]
pub struct EstimateFile {
    /// File name without the directory.
    pub name: String,
    /// sha256 of the model file the kernel was formed from.
    pub model_sha256: String,
    /// `arch / data`, e.g. `resnet9 / mnist`.
    pub setting: String,
    /// Examples n.
    pub n: usize,
    /// `(method, ℓ̂_n)` for every method of the file.
    pub rows: Vec<(String, f64)>,
    /// The run's own exact ℓ_n (`compare`'s `exact_logdet`), if it has one.
    pub exact: Option<f64>,
}

/// The `arch / data` of a tool JSON's kernel keys (`kernel.*` or top level).
fn setting_of(kernel: &serde_json::Value) -> Option<String> {
    Some(format!(
        "{} / {}",
        kernel.get("arch")?.as_str()?,
        kernel.get("data")?.as_str()?
    ))
}

/// The model sha256 of a tool JSON (`provenance.model.sha256`).
pub fn model_sha256(doc: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    Some(
        doc.get("provenance")?
            .get("model")?
            .get("sha256")?
            .as_str()?
            .to_string(),
    )
}

/// The `arch / data` setting of a results file (`run --exact-n` and `compare`: `kernel.*`; `logdet
/// --model`: top level).
pub fn results_setting(file: &ResultFile) -> Option<String> {
    match file.provenance.get("kernel") {
        Some(kernel) => setting_of(kernel),
        None => setting_of(&serde_json::Value::Object(file.provenance.clone())),
    }
}

impl EstimateFile {
    /// Read one `compare --json` or `logdet --model --json` output.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
        let bad = |msg: &str| Error::Input(format!("{}: {msg}", path.display()));
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(&format!("not valid JSON: {e}")))?;
        let serde_json::Value::Object(map) = &doc else {
            return Err(bad("expected a JSON object"));
        };
        let sha = model_sha256(map)
            .ok_or_else(|| bad("no provenance.model.sha256 (not an NTK run of this tool?)"))?;
        let n = doc
            .get("n")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| bad("no `n`"))? as usize;
        let name = path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let finite = |v: Option<&serde_json::Value>, what: &str| {
            v.and_then(|v| v.as_f64())
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(&format!("{what} is missing or not a finite number")))
        };
        if let Some(serde_json::Value::Array(methods)) = doc.get("methods") {
            let setting = doc
                .get("kernel")
                .and_then(setting_of)
                .ok_or_else(|| bad("no kernel.arch / kernel.data"))?;
            let rows = methods
                .iter()
                .map(|m| {
                    let method = m
                        .get("method")
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| bad("a method row without `method`"))?;
                    Ok((method.to_string(), finite(m.get("logdet"), method)?))
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Self {
                name,
                model_sha256: sha,
                setting,
                n,
                rows,
                exact: doc.get("exact_logdet").and_then(|v| v.as_f64()),
            });
        }
        let precision = doc
            .get("precision")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("neither a compare output (`methods`) nor a logdet --model output (`precision`)"))?;
        let setting = setting_of(&doc).ok_or_else(|| bad("no arch / data"))?;
        Ok(Self {
            name,
            model_sha256: sha,
            setting,
            n,
            rows: vec![(
                format!("logdet --precision {precision}"),
                finite(doc.get("logdet"), "logdet")?,
            )],
            exact: None,
        })
    }
}

/// One method's relative error on one network.
#[derive(Debug, Clone, Serialize)]
pub struct Table2Entry {
    /// `arch / data`.
    pub setting: String,
    /// Examples n.
    pub n: usize,
    /// sha256 of the network's model file.
    pub model_sha256: String,
    /// Method, in the table's wording.
    pub method: String,
    /// (ℓ̂_n − ℓ_n) / |ℓ_n|, percent (for the `exact ℓ_n` row: ℓ_n itself).
    pub value: f64,
}

/// The row label of the exact values.
const EXACT: &str = "exact ℓ_n (f64)";

/// The table's wording for a method name of `compare` / `logdet`, and the paper's values for it
/// (ResNet9 CIFAR-10 n = 1000, MobileNet MNIST n = 2500; SPEC §3).
fn wording(method: &str) -> (String, Option<(f64, f64)>) {
    let (label, paper) = match method {
        "logdet --precision f32" => ("direct f32 formation", Some((3.67, 14.27))),
        // `compare`'s f32 method is the same formation (f32 throughout since 80649f1; before it, `compare`
        // had no f32-throughout method, and no committed compare output holds one).
        "f32 formation" | "f32" => ("direct f32 formation", Some((3.67, 14.27))),
        // The hybrid (f32 passes, f64 accumulation) has no counterpart in the paper.
        "logdet --precision f32-f64acc" => ("f32 passes, f64 accumulation", None),
        "f32-f64acc formation" | "f32-f64acc" => ("f32 passes, f64 accumulation", None),
        "block-diag" => ("block diagonal", Some((76.49, 112.55))),
        "slq" => ("SLQ (20 steps, 10–50 probes)", Some((81.51, 84.52))),
        "pseudo-ntk" => ("pseudo-NTK", Some((118.35, 75.32))),
        "FLODANCE (1, 100)" => ("", Some((5.61, 35.51))),
        "FLODANCE (300, 500)" => ("", Some((1.34, 23.19))),
        other => (other, None),
    };
    // FLODANCE windows `FLODANCE (n0, ns)` read as the paper writes them.
    let label = match method
        .strip_prefix("FLODANCE (")
        .and_then(|w| w.strip_suffix(')'))
        .and_then(|w| w.split_once(", "))
    {
        Some((n0, ns)) => format!("FLODANCE n_0 = {n0}, n_s = {ns}"),
        None => label.to_string(),
    };
    (label, paper)
}

/// A percentage for the table: two decimals, or two significant digits below 0.01.
fn percent(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.1e}")
    } else {
        format!("{v:.2}")
    }
}

/// Every entry of the table: the exact values, every estimate file's rows, and FLODANCE's cells, one row
/// per window and fit variant (`(label suffix, cells)`, e.g. `(" (shape-constrained)", …)`).
pub fn entries(
    results: &[ResultFile],
    estimates: &[EstimateFile],
    variants: &[(&str, Vec<Cell>)],
) -> Result<Vec<Table2Entry>> {
    let by_sha: BTreeMap<String, &ResultFile> = results
        .iter()
        .filter_map(|f| Some((model_sha256(&f.provenance)?, f)))
        .collect();
    let mut out = Vec::new();
    let mut exact_seen = std::collections::BTreeSet::new();
    let mut push_exact = |out: &mut Vec<Table2Entry>, setting: &str, n, sha: &str, exact| {
        if exact_seen.insert((sha.to_string(), n)) {
            out.push(Table2Entry {
                setting: setting.to_string(),
                n,
                model_sha256: sha.to_string(),
                method: EXACT.into(),
                value: exact,
            });
        }
    };
    for e in estimates {
        let exact = by_sha
            .get(&e.model_sha256)
            .and_then(|f| f.at(e.n))
            .or(e.exact)
            .ok_or_else(|| {
                Error::Input(format!(
                    "{}: no exact ℓ_{} of its model (sha256 {}) in the results files, and the file has none",
                    e.name, e.n, e.model_sha256
                ))
            })?;
        push_exact(&mut out, &e.setting, e.n, &e.model_sha256, exact);
        for (method, logdet) in e.rows.iter().filter(|(m, _)| m != "exact") {
            out.push(Table2Entry {
                setting: e.setting.clone(),
                n: e.n,
                model_sha256: e.model_sha256.clone(),
                method: wording(method).0,
                value: 100.0 * (logdet - exact) / exact.abs(),
            });
        }
    }
    for (suffix, cells) in variants {
        for c in cells {
            let Some(file) = results.iter().find(|f| f.name == c.file) else {
                continue;
            };
            let (Some(sha), Some(setting)) =
                (model_sha256(&file.provenance), results_setting(file))
            else {
                continue;
            };
            push_exact(&mut out, &setting, c.n, &sha, c.exact);
            let window = wording(&format!("FLODANCE ({}, {})", c.n0, c.ns)).0;
            out.push(Table2Entry {
                setting,
                n: c.n,
                model_sha256: sha,
                method: format!("{window}{suffix}"),
                value: c.flodance_error_percent,
            });
        }
    }
    Ok(out)
}

/// Mean and sample standard deviation (0 for one value).
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// The markdown table: one row per method, one column per (setting, n) with |relative error| % as
/// mean ± std over its networks (the count in the header; the sign when every network errs the same way),
/// then the paper's two columns.
pub fn markdown(entries: &[Table2Entry]) -> String {
    let mut columns: Vec<(String, usize)> =
        entries.iter().map(|e| (e.setting.clone(), e.n)).collect();
    columns.sort();
    columns.dedup();
    let mut methods: Vec<String> = vec![EXACT.to_string()];
    for e in entries {
        if !methods.contains(&e.method) {
            methods.push(e.method.clone());
        }
    }
    let nets = |col: &(String, usize)| {
        let mut shas: Vec<&str> = entries
            .iter()
            .filter(|e| (&e.setting, e.n) == (&col.0, col.1))
            .map(|e| e.model_sha256.as_str())
            .collect();
        shas.sort();
        shas.dedup();
        shas.len()
    };
    let mut s = String::from("| method |");
    for col in &columns {
        let k = nets(col);
        let noun = if k == 1 { "net" } else { "nets" };
        s.push_str(&format!(" {} n = {} ({k} {noun}) |", col.0, col.1));
    }
    s.push_str(" paper: ResNet9 CIFAR-10 n = 1000 | paper: MobileNet MNIST n = 2500 |\n|---|");
    s.push_str(&"---|".repeat(columns.len() + 2));
    s.push('\n');
    for method in &methods {
        s.push_str(&format!("| {method} |"));
        for col in &columns {
            let v: Vec<f64> = entries
                .iter()
                .filter(|e| &e.method == method && (&e.setting, e.n) == (&col.0, col.1))
                .map(|e| e.value)
                .collect();
            if v.is_empty() {
                s.push_str(" — |");
            } else if method == EXACT {
                let (m, sd) = mean_std(&v);
                if v.len() == 1 {
                    s.push_str(&format!(" {m:.1} |"));
                } else {
                    s.push_str(&format!(" {m:.1} ± {sd:.1} |"));
                }
            } else {
                let abs: Vec<f64> = v.iter().map(|x| x.abs()).collect();
                let (m, sd) = mean_std(&abs);
                let sign = if v.iter().all(|x| *x > 0.0) {
                    " (high)"
                } else if v.iter().all(|x| *x < 0.0) {
                    " (low)"
                } else {
                    ""
                };
                // A row with fewer networks than its column says how many it has.
                let of = if v.len() < nets(col) {
                    format!(" [{} of {} nets]", v.len(), nets(col))
                } else {
                    String::new()
                };
                if v.len() == 1 {
                    s.push_str(&format!(" {}{sign}{of} |", percent(m)));
                } else {
                    s.push_str(&format!(" {} ± {}{sign}{of} |", percent(m), percent(sd)));
                }
            }
        }
        let paper = match method.as_str() {
            EXACT => Some((76538.0, -183962.0)),
            m => methods_paper(m),
        };
        match paper {
            Some((a, b)) => s.push_str(&format!(" {a} | {b} |\n")),
            None => s.push_str(" — | — |\n"),
        }
    }
    s
}

/// The paper's values for a row label of [`wording`] (a FLODANCE label with a fit-variant suffix such as
/// " (shape-constrained)" has its window's values).
fn methods_paper(label: &str) -> Option<(f64, f64)> {
    let base = match label.find(" (") {
        Some(i) if label.starts_with("FLODANCE") => &label[..i],
        _ => label,
    };
    [
        "logdet --precision f32",
        "f32 formation",
        "block-diag",
        "slq",
        "pseudo-ntk",
        "FLODANCE (1, 100)",
        "FLODANCE (300, 500)",
    ]
    .iter()
    .map(|m| wording(m))
    .find(|(l, _)| l == base)
    .and_then(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(setting: &str, sha: &str, method: &str, value: f64) -> Table2Entry {
        Table2Entry {
            setting: setting.into(),
            n: 1000,
            model_sha256: sha.into(),
            method: method.into(),
            value,
        }
    }

    #[test]
    fn a_column_is_the_mean_and_sample_std_of_absolute_errors_over_its_nets() {
        let e = vec![
            entry("resnet9 / mnist", "a", EXACT, -100.0),
            entry("resnet9 / mnist", "b", EXACT, -120.0),
            entry("resnet9 / mnist", "a", "pseudo-NTK", 10.0),
            entry("resnet9 / mnist", "b", "pseudo-NTK", -20.0),
            entry("resnet9 / mnist", "a", "block diagonal", 3.0),
            entry("resnet9 / mnist", "b", "block diagonal", 5.0),
        ];
        let t = markdown(&e);
        assert!(t.contains("resnet9 / mnist n = 1000 (2 nets)"), "{t}");
        // |10|, |−20|: mean 15, sample std sqrt(50) = 7.07; mixed signs, no sign note.
        assert!(
            t.contains("| pseudo-NTK | 15.00 ± 7.07 | 118.35 | 75.32 |"),
            "{t}"
        );
        assert!(t.contains("| block diagonal | 4.00 ± 1.41 (high) |"), "{t}");
        assert!(t.contains("| exact ℓ_n (f64) | -110.0 ± 14.1 |"), "{t}");
    }
}
