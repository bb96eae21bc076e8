//! The `report` subcommand: score FLODANCE (and the naive extrapolations) on committed exact nested
//! log-dets (`docs/results/`), every (file, window, target) cell, with both intervals and the shape check,
//! and print the markdown tables README carries. Anyone can re-score a new estimator without forming a
//! kernel.

use crate::cli::ReportArgs;
use crate::estimators::extrapolate::{LinearExtrapolation, StoppedCholesky, StoppedCholeskyRule};
use crate::pipeline::fit::estimate_options;
use crate::progress::Progress;
use crate::report::results::{
    cell_table, coverage_table, Cell, Coverage, IntervalScore, ResultFile,
};
use crate::report::table2::{self, EstimateFile, Table2Entry};
use crate::report::{check_outputs, error_plot, write_atomic, write_json};
use crate::scaling::estimate;
use crate::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;

/// The `report --json` document.
#[derive(Debug, Serialize)]
struct ReportJson {
    /// Every scored cell.
    cells: Vec<Cell>,
    /// Coverage of the refit-sensitivity band.
    sensitivity: Coverage,
    /// Coverage of the calibrated interval.
    calibrated: Coverage,
    /// The files read, with their provenance.
    files: Vec<serde_json::Value>,
    /// The Table 2 entries (with `--estimates`): every method's error on every network.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    table2: Vec<Table2Entry>,
}

/// Parse `N0:NS` window pairs.
fn windows(spec: &str) -> Result<Vec<(usize, usize)>> {
    spec.split(',')
        .map(|w| {
            let parsed = w
                .split_once(':')
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
            match parsed {
                Some((n0, ns)) if n0 >= 1 && n0 < ns => Ok((n0, ns)),
                _ => Err(Error::Usage(format!(
                    "--windows: `{w}` is not N0:NS with 1 <= N0 < NS (e.g. 1:100,300:500)"
                ))),
            }
        })
        .collect()
}

/// The results files: every `*.json` of a directory (sorted), or the given files.
fn inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|e| Error::io("cannot list", p, e))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::Usage("report: no results files found".into()));
    }
    Ok(out)
}

/// Execute `report`.
pub fn run(args: &ReportArgs, progress: &dyn Progress) -> Result<()> {
    check_outputs(&[
        ("--json", args.json.as_deref()),
        ("--plot", args.plot.as_deref()),
    ])?;
    let windows = windows(&args.windows)?;
    let files: Vec<ResultFile> = inputs(&args.results)?
        .iter()
        .map(|p| ResultFile::read(p))
        .collect::<Result<_>>()?;
    let estimates: Vec<EstimateFile> = if args.estimates.is_empty() {
        Vec::new()
    } else {
        inputs(&args.estimates)?
            .iter()
            .map(|p| EstimateFile::read(p))
            .collect::<Result<_>>()?
    };
    let opts = estimate_options(&args.fit, args.seed);
    let total: usize = files.len() * windows.len() * args.targets.len();
    progress.start("report cells", total as u64);
    let cells = score(&files, &windows, &args.targets, &opts, false, progress)?;
    progress.finish();
    if cells.is_empty() {
        return Err(Error::Usage(format!(
            "report: no cell has both its window end and its target among the files' k (largest k: {}); \
             check --windows and --targets",
            files.iter().map(ResultFile::max_k).max().unwrap_or(0)
        )));
    }
    let (table2, variants) = if estimates.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        // FLODANCE's rows in Table 2: the paper's plain fit (q = 2, α = 0) and our two settings, whatever
        // the command's fit options (those are the cells table's).
        let mut variants = Vec::new();
        for (label, q, shape) in [
            ("", Some(2), false),
            (" (shape-constrained)", Some(2), true),
            (" (--q auto, shape-constrained)", None, true),
        ] {
            let mut o = opts.clone();
            o.fit.q = q.unwrap_or(2);
            o.fit.alpha = 0.0;
            o.fit.r = 0;
            o.auto_q = q.is_none();
            o.auto_alpha = false;
            o.shape_constrained = shape;
            let cells = score(
                &files,
                &windows,
                &args.targets,
                &o,
                true,
                &crate::progress::Silent,
            )?;
            variants.push((label, cells));
        }
        let entries = table2::entries(&files, &estimates, &variants)?;
        (entries, variants)
    };
    if let Some(path) = &args.plot {
        write_atomic(path, error_plot::render(&cells)?.as_bytes())?;
    }
    if let Some(path) = &args.json {
        let doc = ReportJson {
            sensitivity: Coverage::of(cells.iter().map(|c| &c.sensitivity)),
            calibrated: Coverage::of(cells.iter().filter_map(|c| c.calibrated.as_ref())),
            files: files
                .iter()
                .map(|f| serde_json::json!({"file": f.name, "max_k": f.max_k(), "provenance": f.provenance}))
                .collect(),
            cells: cells.clone(),
            table2: table2.clone(),
        };
        write_json(path, &doc)?;
    }
    print!("{}", markdown(&cells, &table2, &variants));
    Ok(())
}

/// What `report` prints, README's block as it stands: without Table 2, the cells and their coverage; with
/// it, Table 2, the cells (the command's fit) and the coverage of both intervals under each of Table 2's
/// FLODANCE fits, so one command regenerates the whole block.
fn markdown(cells: &[Cell], table2: &[Table2Entry], variants: &[(&str, Vec<Cell>)]) -> String {
    if table2.is_empty() {
        return format!("{}\n{}", cell_table(cells), coverage_table(cells));
    }
    let mut s = format!(
        "{}\nEvery cell (the command's fit options; `shape` is the shape check's verdict):\n\n{}",
        table2::markdown(table2),
        cell_table(cells)
    );
    for (label, variant) in variants {
        let name = match label.trim() {
            "" => "plain q = 2 fit".to_string(),
            l => l.trim_matches(|c| c == '(' || c == ')').to_string(),
        };
        s.push_str(&format!(
            "\nCoverage of both intervals, {name}:\n\n{}",
            coverage_table(variant)
        ));
    }
    s
}

/// Score every (file, window, target) cell whose window end and target the file holds, with `opts`
/// (skipping the cells whose fit refuses its window when `skip_refused`, else failing). A cell an earlier
/// file already gave for the same model (sha256) with the same ℓ_{n_s} and ℓ_n to 1e-9 relative (the same
/// kernel in two files, e.g. a model's N = 1000 and N = 2500 runs) is scored once, so no network counts
/// twice in a coverage or a Table 2 mean.
fn score(
    files: &[ResultFile],
    windows: &[(usize, usize)],
    targets: &[usize],
    opts: &crate::scaling::EstimateOptions,
    skip_refused: bool,
    progress: &dyn Progress,
) -> Result<Vec<Cell>> {
    let mut cells = Vec::new();
    // (model sha256, n0, ns, n, ℓ_ns, ℓ_n) of every cell scored so far.
    let mut scored: Vec<(String, usize, usize, usize, f64, f64)> = Vec::new();
    let same = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
    for file in files {
        let sha = table2::model_sha256(&file.provenance).unwrap_or_default();
        for &(n0, ns) in windows {
            for &n in targets {
                progress.advance(1);
                let (Some(exact), Some(at_ns), true) = (file.at(n), file.at(ns), n > ns) else {
                    continue;
                };
                let repeat = scored.iter().any(|(s, a, b, c, l_ns, l_n)| {
                    !sha.is_empty()
                        && *s == sha
                        && (*a, *b, *c) == (n0, ns, n)
                        && same(*l_ns, at_ns)
                        && same(*l_n, exact)
                });
                if repeat {
                    continue;
                }
                scored.push((sha.clone(), n0, ns, n, at_ns, exact));
                let sample: Vec<(usize, f64)> =
                    file.nested.iter().copied().filter(|p| p.0 <= ns).collect();
                let mut o = opts.clone();
                o.fit.n0 = n0;
                let est = match estimate(&sample, &o, n) {
                    Ok(est) => est,
                    // A variant of Table 2 whose fit cannot run on this window has no entry.
                    Err(Error::Usage(_)) if skip_refused => continue,
                    Err(e) => return Err(e),
                };
                let err = |v: f64| 100.0 * (v - exact) / exact.abs();
                let linear = LinearExtrapolation { n0, target_n: n }.estimate(&sample)?;
                let stopped = StoppedCholesky {
                    window: ns - n0,
                    target_n: n,
                    rule: StoppedCholeskyRule::Average,
                }
                .estimate(&sample)?;
                cells.push(Cell {
                    file: file.name.clone(),
                    n0,
                    ns,
                    n,
                    ratio: n as f64 / ns as f64,
                    exact,
                    flodance: est.logdet,
                    flodance_error_percent: err(est.logdet),
                    q: est.fit.q,
                    alpha: est.fit.alpha,
                    sensitivity: IntervalScore::new(est.sensitivity, exact),
                    calibrated: est.calibrated.map(|iv| IntervalScore::new(iv, exact)),
                    shape_ok: est.shape.ok,
                    linear_error_percent: err(linear.logdet),
                    stopped_cholesky_error_percent: err(stopped.logdet),
                });
            }
        }
    }
    Ok(cells)
}
