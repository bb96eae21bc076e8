//! `stats`' `--estimate` and `--probes` options, parsed and checked before the work.

use crate::{Error, Result};

/// The matrix-free estimators `--estimate` accepts.
pub const ESTIMATORS: &[&str] = &[
    "hutchinson",
    "hutchpp",
    "one-sided-reverse",
    "one-sided-forward",
];

/// `--estimate` as a list of known estimators (`all` = every one); empty without the flag.
pub fn parse_methods(arg: Option<&str>) -> Result<Vec<&'static str>> {
    let Some(arg) = arg else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for name in arg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if name == "all" {
            out.extend_from_slice(ESTIMATORS);
            continue;
        }
        if name == "one-sided" {
            out.extend_from_slice(&ESTIMATORS[2..]);
            continue;
        }
        match ESTIMATORS.iter().find(|&&e| e == name) {
            Some(&e) => out.push(e),
            None => {
                return Err(Error::Usage(format!(
                    "--estimate: unknown estimator `{name}`; known: {}, one-sided (both), all",
                    ESTIMATORS.join(", ")
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Usage(
            "--estimate: name at least one estimator".into(),
        ));
    }
    let mut seen = Vec::new();
    out.retain(|m| {
        let new = !seen.contains(m);
        seen.push(*m);
        new
    });
    Ok(out)
}

/// `--probes` as positive integers.
pub fn parse_probes(arg: &str) -> Result<Vec<usize>> {
    let probes: Vec<usize> =
        arg.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<usize>().ok().filter(|&v| v > 0).ok_or_else(|| {
                    Error::Usage(format!("--probes: `{s}` is not a positive integer"))
                })
            })
            .collect::<Result<_>>()?;
    if probes.is_empty() {
        return Err(Error::Usage(
            "--probes: give at least one probe count".into(),
        ));
    }
    Ok(probes)
}
