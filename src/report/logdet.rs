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
