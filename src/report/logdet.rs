//! The JSON document written by `logdet --json` (schema documented in README, section `logdet`), and an
//! atomic JSON writer (temporary name, rename on success).

use crate::linalg::{LogDet, MemdetInfo, NestedLogdet};
use crate::{Error, Result};
use serde::Serialize;

/// Nested log-dets ℓ_k of the leading k·granule rows.
#[derive(Debug, Clone, Serialize)]
pub struct NestedReport {
    /// Rows per step d.
    pub granule: usize,
    /// ℓ_k for k = 1..=⌊m/d⌋.
    pub logdets: Vec<NestedLogdet>,
}

/// The extremes of the factorisation's pivots |p_i| (of the Cholesky / LDLᵀ diagonal; ∏ p_i = det M): a
/// near-null band of the matrix shows as pivots many orders below the largest.
#[derive(Debug, Clone, Serialize)]
pub struct PivotSummary {
    /// The smallest |p_i|.
    pub smallest: f64,
    /// The largest |p_i|.
    pub largest: f64,
    /// smallest / largest.
    pub ratio: f64,
    /// The (at most) five smallest as `[row, |p_i|]`, smallest first (rows from 0).
    pub smallest_rows: Vec<(usize, f64)>,
}

impl PivotSummary {
    /// The summary of per-row log|p_i| (None for an empty factorisation).
    pub fn of(pivots_logabs: &[f64]) -> Option<Self> {
        let mut order: Vec<usize> = (0..pivots_logabs.len()).collect();
        order.sort_by(|&a, &b| pivots_logabs[a].total_cmp(&pivots_logabs[b]));
        let (&first, &last) = (order.first()?, order.last()?);
        let (smallest, largest) = (pivots_logabs[first].exp(), pivots_logabs[last].exp());
        Some(Self {
            smallest,
            largest,
            ratio: smallest / largest,
            smallest_rows: order
                .iter()
                .take(5)
                .map(|&i| (i, pivots_logabs[i].exp()))
                .collect(),
        })
    }
}

/// Top-level keys of `logdet --json`.
#[derive(Debug, Clone, Serialize)]
pub struct LogdetReport {
    /// log|det M| (natural log).
    pub logdet: f64,
    /// sign(det M).
    pub sign: f64,
    /// Matrix order.
    pub m: usize,
    /// `spd` or `sym`.
    pub assume: String,
    /// Blocks per side n_b.
    pub num_blocks: usize,
    /// Rows per block b.
    pub block_size: usize,
    /// The factor t in M = t·A + shift·I (`--scale-by`). Named apart from an NTK's `scale` (its s in
    /// `J Jᵀ / s`), which `logdet --model` adds at the top level.
    pub scale_by: f64,
    /// The diagonal shift.
    pub shift: f64,
    /// Nested log-dets, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nested: Option<NestedReport>,
    /// The extremes of the pivots.
    pub pivots: Option<PivotSummary>,
    /// Run statistics.
    pub info: MemdetInfo,
}

impl LogdetReport {
    /// Assemble the report of one MEMDET run.
    pub fn new(
        result: &LogDet,
        assume: &str,
        scale_by: f64,
        shift: f64,
        nested_granule: Option<usize>,
    ) -> Self {
        Self {
            logdet: result.logdet,
            sign: result.sign,
            m: result.info.m,
            assume: assume.to_string(),
            num_blocks: result.info.num_blocks,
            block_size: result.info.block_size,
            scale_by,
            shift,
            nested: nested_granule.map(|d| NestedReport {
                granule: d,
                logdets: result.nested(d),
            }),
            pivots: PivotSummary::of(&result.pivots_logabs),
            info: result.info.clone(),
        }
    }

    /// The report as JSON, with `extra`'s keys (e.g. kernel metadata) added at the top level. A key both
    /// have must hold the same value in both (`m`); a conflict is an internal error, never a value silently
    /// dropped.
    pub fn to_json(&self, extra: Option<serde_json::Value>) -> Result<serde_json::Value> {
        let mut value = serde_json::to_value(self)
            .map_err(|e| Error::Internal(format!("serialising the report: {e}")))?;
        if let (Some(serde_json::Value::Object(extra)), serde_json::Value::Object(obj)) =
            (extra, &mut value)
        {
            for (k, v) in extra {
                match obj.get(&k) {
                    Some(own) if *own != v => {
                        return Err(Error::Internal(format!(
                            "logdet report: key `{k}` is {own} in the factorisation and {v} in the kernel metadata"
                        )))
                    }
                    Some(_) => {}
                    None => {
                        obj.insert(k, v);
                    }
                }
            }
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pivot_summary_finds_the_extremes_and_orders_the_smallest() {
        let logabs: Vec<f64> = [4.0, 1e-9, 2.0, 0.5, 1e-3, 7.0, 3.0]
            .iter()
            .map(|p: &f64| p.ln())
            .collect();
        let s = PivotSummary::of(&logabs).unwrap();
        assert!((s.smallest - 1e-9).abs() <= 1e-22 && (s.largest - 7.0).abs() <= 1e-14);
        assert!((s.ratio - 1e-9 / 7.0).abs() <= 1e-22);
        let rows: Vec<usize> = s.smallest_rows.iter().map(|r| r.0).collect();
        assert_eq!(rows, vec![1, 4, 3, 2, 6]);
        assert!(PivotSummary::of(&[]).is_none());
    }
}
