//! The `fit` subcommand: read nested log-dets from a JSON or CSV file, fit the FLODANCE scaling law,
//! print a short table, and optionally write the JSON report and the SVG plot.

use crate::cli::{Auto, FitArgs, FitModelArgs};
use crate::progress::Progress;
use crate::report::fit::{EstimateJson, ExactAtTarget, FitJson, FitReport};
use crate::report::plot::plot_fit;
use crate::report::{check_outputs, write_json};
use crate::scaling::{estimate, Estimate, EstimateOptions, FitOptions};
use crate::{Error, Result};
use std::path::Path;

/// The estimate's options from the fit's command-line arguments and the seed of its ensemble.
pub fn estimate_options(args: &FitModelArgs, seed: u64) -> EstimateOptions {
    let (q, auto_q) = match args.q {
        Auto::Auto => (2, true),
        Auto::Value(q) => (q, false),
    };
    let (alpha, auto_alpha) = match args.alpha {
        Auto::Auto => (0.0, true),
        Auto::Value(a) => (a, false),
    };
    EstimateOptions {
        fit: FitOptions {
            n0: args.burn_in,
            q,
            r: args.plain_terms,
            alpha,
            ensemble: args.ensemble,
            seed,
        },
        auto_q,
        auto_alpha,
        shape_constrained: args.shape_constrained,
        level: args.interval_level,
    }
}

/// Check before any work that the window k ∈ [n0, ns] of nested log-dets k = 1..=ns holds at least as many
/// points as the model has coefficients (3 + q + r), so a run does not fail at its fit after the kernel.
pub fn check_window(ns: usize, opts: &FitOptions) -> Result<()> {
    let points = (ns + 1).saturating_sub(opts.n0.max(1));
    let coefficients = 3 + opts.q + opts.r;
    if points < coefficients {
        return Err(Error::Usage(format!(
            "the fit window k in [{}, {ns}] holds {points} point(s) but the model (q = {}, r = {}) has \
             {coefficients} coefficients; lower --burn-in, --q or --plain-terms, or raise --n-sample",
            opts.n0, opts.q, opts.r
        )));
    }
    Ok(())
}

/// Execute `fit`.
pub fn run(args: &FitArgs, progress: &dyn Progress) -> Result<()> {
    check_outputs(&[
        ("--json", args.json.as_deref()),
        ("--plot", args.plot.as_deref()),
    ])?;
    if args.target_n == 0 {
        return Err(Error::Usage("--target-n must be at least 1".into()));
    }
    let all = read_nested_beyond(&args.logdets, args.n_sample.is_some())?;
    let (nested, beyond) = split_sample(&all, args.n_sample)?;
    let opts = estimate_options(&args.fit, args.seed);
    progress.start("fit", 1);
    let est = estimate(nested, &opts, args.target_n)?;
    progress.finish();
    let exact = beyond
        .iter()
        .find(|&&(k, _)| k == args.target_n)
        .map(|&(n, logdet)| ExactAtTarget {
            n,
            logdet,
            relative_error: (est.logdet - logdet) / logdet.abs(),
        });
    let report = FitReport {
        estimate: EstimateJson::from_estimate(&est),
        fit: FitJson::from_estimate(&est),
        input: args.logdets.display().to_string(),
        exact: exact.clone(),
    };
    // The result goes to stdout first, so a failing write at the end loses nothing.
    print!("{}", table(&est));
    if let Some(e) = &exact {
        println!(
            "exact:    l_{} = {:.10e}   relative error of the estimate {:+.3e}",
            e.n, e.logdet, e.relative_error
        );
    }
    if let Some(path) = &args.plot {
        plot_fit(path, nested, &est.fit, args.target_n, beyond)?;
    }
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(())
}

/// One nested log-det `(k, ℓ_k)`.
type Point = (usize, f64);

/// The nested log-dets k ≤ `n_sample` (all when `None`) and the rest, the exact values beyond the sample;
/// an `n_sample` the file does not reach is refused.
fn split_sample(all: &[Point], n_sample: Option<usize>) -> Result<(&[Point], &[Point])> {
    let Some(ns) = n_sample else {
        return Ok((all, &[]));
    };
    let last = all.last().map_or(0, |&(k, _)| k);
    if ns == 0 || ns > last {
        return Err(Error::Usage(format!(
            "--n-sample {ns}: the file holds nested log-dets for k = 1..{last}"
        )));
    }
    Ok(all.split_at(all.partition_point(|&(k, _)| k <= ns)))
}

/// The terminal summary of an estimate: the law, its diagnostics, the estimate with both intervals, and
/// any warnings (also on stderr).
pub fn table(est: &Estimate) -> String {
    let fit = &est.fit;
    let mut s = format!(
        "FLODANCE fit: {} points, k in [{}, {}], q = {}, alpha = {}{}\n",
        fit.points,
        fit.window.0,
        fit.window.1,
        fit.q,
        fit.alpha,
        if fit.concave_to.is_some() {
            ", shape-constrained"
        } else {
            ""
        }
    );
    for c in &est.candidates {
        s.push_str(&format!(
            "  candidate q = {}, alpha = {}: backtest rms relative error {:.3e}{}\n",
            c.q,
            c.alpha,
            c.backtest_rms,
            if c.chosen { "  (chosen)" } else { "" }
        ));
    }
    for c in &fit.coefficients {
        s.push_str(&format!("  {:<8} {:>24.15e}\n", c.name, c.value));
    }
    s.push_str(&format!(
        "  rms residual {:.3e}, max |residual| {:.3e}, rank {}/{}, condition {:.3e}\n",
        fit.rms_residual,
        fit.max_abs_residual,
        fit.rank,
        fit.coefficients.len(),
        fit.condition
    ));
    s.push_str(&format!(
        "estimate: l_{} = {:.10e}   sensitivity [{:.10e}, {:.10e}] (2.5-97.5 % of {} half-window refits)\n",
        est.target_n,
        est.logdet,
        est.sensitivity.0,
        est.sensitivity.1,
        fit.ensemble_size()
    ));
    s.push_str(&calibrated_and_warnings(est));
    s
}

/// The calibrated-interval line of an estimate; its warnings go to stderr.
pub fn calibrated_and_warnings(est: &Estimate) -> String {
    let mut s = String::new();
    if let (Some(cal), Some((lo, hi))) = (&est.calibration, est.calibrated) {
        s.push_str(&format!(
            "          calibrated [{lo:.10e}, {hi:.10e}] (level {}, error model {:.3e}·(1 − ln n_s / ln n) from {} backtests)\n",
            cal.level,
            cal.scale,
            cal.backtests.len()
        ));
    }
    for w in &est.warnings {
        crate::progress::notice(&format!("warning: {w}"));
    }
    s
}

/// Read nested log-dets `(k, ℓ_k)`: JSON (`[[k, l], ...]`, `{"nested": [...]}` as `run --json` and
/// `compare --json` write it, `{"nested": {"granule": d, "logdets": [...]}}` as `logdet --nested --json`
/// writes it; entries may be pairs or objects with `k` and one of `l_k`, `logdet`, `l`, and an optional
/// `sign` that must be +1) or CSV/whitespace text (`k,l_k` per line; blank lines, `#` comments and one
/// header line are skipped).
pub fn read_nested(path: &Path) -> Result<Vec<(usize, f64)>> {
    read_nested_beyond(path, false)
}

/// [`read_nested`], or with `beyond` from a `run --exact-n` document the exact K_N's `exact.nested`
/// (k = 1..N) instead of the sample's `nested` (what `fit --n-sample` reads).
fn read_nested_beyond(path: &Path, beyond: bool) -> Result<Vec<(usize, f64)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
    let trimmed = text.trim_start();
    let points = if trimmed.starts_with('[') || trimmed.starts_with('{') {
        parse_json(&text, beyond)
            .map_err(|msg| Error::Input(format!("{}: {msg}", path.display())))?
    } else {
        parse_csv(&text).map_err(|msg| Error::Input(format!("{}: {msg}", path.display())))?
    };
    if points.is_empty() {
        return Err(Error::Input(format!(
            "{}: no nested log-dets found",
            path.display()
        )));
    }
    Ok(points)
}

fn parse_k(v: f64, what: &str) -> std::result::Result<usize, String> {
    if v.is_finite() && v >= 1.0 && v.fract() == 0.0 && v < 1e15 {
        Ok(v as usize)
    } else {
        Err(format!("{what}: k = {v} is not a positive integer"))
    }
}

fn parse_json(text: &str, beyond: bool) -> std::result::Result<Vec<(usize, f64)>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    // A `run --exact-n` document also holds the exact K_N's nested log-dets (k = 1..N ⊇ the sample's).
    let exact_nested = Some(&value)
        .filter(|_| beyond)
        .and_then(|v| v.get("exact"))
        .and_then(|e| e.get("nested"))
        .and_then(|n| n.as_array());
    let list = match (&value, exact_nested) {
        (_, Some(a)) => a,
        (serde_json::Value::Array(a), None) => a,
        (serde_json::Value::Object(o), None) => match o.get("nested") {
            Some(serde_json::Value::Array(a)) => a,
            Some(serde_json::Value::Object(n)) => match n.get("logdets") {
                Some(serde_json::Value::Array(a)) => a,
                _ => return Err(
                    "\"nested\" is an object without a \"logdets\" array (as `logdet --nested --json` writes)"
                        .into(),
                ),
            },
            _ => return Err(
                "a JSON object must hold the nested log-dets under the key \"nested\" (an array of [k, l_k] \
                 pairs, or `logdet --nested --json`'s {\"granule\", \"logdets\"}); was `logdet` run without --nested?"
                    .into(),
            ),
        },
        _ => {
            return Err(
                "expected a JSON array of [k, l_k] pairs or an object with key \"nested\"".into(),
            )
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let what = format!("entry {i}");
        let (k, l) = match item {
            serde_json::Value::Array(pair) if pair.len() == 2 => {
                (pair[0].as_f64(), pair[1].as_f64())
            }
            serde_json::Value::Object(o) => {
                if let Some(sign) = o.get("sign").and_then(|v| v.as_f64()).filter(|&s| s != 1.0) {
                    return Err(format!(
                        "{what}: sign {sign}: det K_k is not positive, so this is not the kernel of a \
                         positive definite matrix and ℓ_k cannot be fitted"
                    ));
                }
                let l = ["l_k", "logdet", "l"]
                    .iter()
                    .find_map(|key| o.get(*key))
                    .and_then(|v| v.as_f64());
                (o.get("k").and_then(|v| v.as_f64()), l)
            }
            _ => (None, None),
        };
        match (k, l) {
            (Some(k), Some(l)) if l.is_finite() => out.push((parse_k(k, &what)?, l)),
            (Some(_), Some(l)) => return Err(format!("{what}: l_k = {l} is not finite")),
            _ => return Err(format!("{what} is not a [k, l_k] pair of numbers: {item}")),
        }
    }
    Ok(out)
}

fn parse_csv(text: &str) -> std::result::Result<Vec<(usize, f64)>, String> {
    let mut out = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line
            .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
            .filter(|f| !f.is_empty())
            .collect();
        let what = format!("line {}", lineno + 1);
        let parsed: Vec<Option<f64>> = fields.iter().map(|f| f.parse::<f64>().ok()).collect();
        if fields.len() != 2 || parsed.iter().any(Option::is_none) {
            if out.is_empty() && parsed.iter().all(Option::is_none) {
                continue; // a header line
            }
            return Err(format!(
                "{what}: expected two numbers `k,l_k`, got {line:?}"
            ));
        }
        let (k, l) = (parsed[0].unwrap_or(f64::NAN), parsed[1].unwrap_or(f64::NAN));
        if !l.is_finite() {
            return Err(format!("{what}: l_k = {l} is not finite"));
        }
        out.push((parse_k(k, &what)?, l));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_forms() {
        assert_eq!(
            parse_json("[[1, 2.5], [2, -1]]", false).unwrap(),
            vec![(1, 2.5), (2, -1.0)]
        );
        assert_eq!(
            parse_json(r#"{"nested": [[3, 1e3]]}"#, false).unwrap(),
            vec![(3, 1000.0)]
        );
        assert_eq!(
            parse_json(r#"[{"k": 4, "logdet": 7}]"#, false).unwrap(),
            vec![(4, 7.0)]
        );
        assert!(parse_json("[[0, 1]]", false).is_err());
        assert!(parse_json("[[1.5, 1]]", false).is_err());
        assert!(parse_json(r#"{"other": []}"#, false).is_err());
        assert!(parse_json("[[1, 2, 3]]", false).is_err());
    }

    #[test]
    fn parses_csv_forms() {
        assert_eq!(
            parse_csv("k,l_k\n1,2.5\n\n# c\n2, -1\n").unwrap(),
            vec![(1, 2.5), (2, -1.0)]
        );
        assert_eq!(parse_csv("1 2\n3\t4\n").unwrap(), vec![(1, 2.0), (3, 4.0)]);
        assert!(parse_csv("1,2\nx,y\n").is_err());
        assert!(parse_csv("1,nan\n").is_err());
        assert!(parse_csv("1,2,3\n").is_err());
    }
}
