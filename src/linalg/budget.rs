//! Memory sizes (`4GiB`, `500MB`, `1e9`) and the MEMDET block plan: how many blocks so that the whole run's
//! resident memory stays under a limit.

use crate::{Error, Result};
use serde::Serialize;

/// Parse a byte size: a number (integer, decimal or `1e9` form) with an optional unit
/// `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000) or `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024); case-insensitive.
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || {
        Error::Usage(format!(
            "invalid size {s:?}: expected e.g. 4GiB, 500MB or 1e9 (bytes)"
        ))
    };
    let t = s.trim();
    let split = t
        .char_indices()
        .find(|&(i, c)| c.is_ascii_alphabetic() && !(matches!(c, 'e' | 'E') && is_exponent(t, i)))
        .map_or(t.len(), |(i, _)| i);
    let (num, unit) = t.split_at(split);
    let value: f64 = num.trim().parse().map_err(|_| bad())?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0f64.powi(4),
        _ => return Err(bad()),
    };
    let bytes = value * factor;
    if !value.is_finite() || bytes.is_nan() || bytes < 0.0 {
        return Err(bad());
    }
    // 2^64 is exactly representable; `u64::MAX as f64` rounds up to it, so compare with it directly.
    if bytes >= 18_446_744_073_709_551_616.0 {
        return Err(Error::Usage(format!(
            "size {s:?} is 2^64 bytes or more, which no machine has; give e.g. 4GiB"
        )));
    }
    Ok(bytes.round() as u64)
}

/// True when the `e` at byte `i` of `t` is an exponent marker (a digit follows, possibly after a sign).
fn is_exponent(t: &str, i: usize) -> bool {
    let rest = &t[i + 1..];
    let rest = rest.strip_prefix(['+', '-']).unwrap_or(rest);
    i > 0 && rest.starts_with(|c: char| c.is_ascii_digit())
}

/// A block plan: `num_blocks` blocks of `block_size` rows (the last one may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlockPlan {
    /// Matrix order m.
    pub m: usize,
    /// Number of blocks per side n_b.
    pub num_blocks: usize,
    /// Rows per block b (a multiple of the granule, except that it never exceeds m).
    pub block_size: usize,
}

impl BlockPlan {
    /// The plan with blocks of `ceil(m / n_b)` rows rounded up to a multiple of `granule`.
    pub fn with_blocks(m: usize, num_blocks: usize, granule: usize) -> Result<Self> {
        if m == 0 {
            return Err(Error::Input("the matrix is empty".into()));
        }
        if num_blocks == 0 {
            return Err(Error::Usage("--num-blocks must be at least 1".into()));
        }
        let g = granule.max(1);
        let b = m.div_ceil(num_blocks).div_ceil(g) * g;
        let b = b.min(m);
        Ok(Self {
            m,
            num_blocks: m.div_ceil(b),
            block_size: b,
        })
    }

    /// Row range of block `k`.
    pub fn range(&self, k: usize) -> std::ops::Range<usize> {
        let start = k * self.block_size;
        start..(start + self.block_size).min(self.m)
    }

    /// Rows in block `k`.
    pub fn len(&self, k: usize) -> usize {
        self.range(k).len()
    }

    /// Always false: a plan has at least one block.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes resident at the peak of a MEMDET run with this plan: the widest block column in RAM, two
    /// prefetch buffers and (for LDLᵀ) one scaled copy, plus per-row vectors. `extra_tile` is true for LDLᵀ.
    pub fn resident_bytes(&self, extra_tile: bool) -> u64 {
        let (m, b) = (self.m as u64, self.block_size as u64);
        let per_row = 4 * m + b; // pivot logs, signs, D values, factor scratch
        let values = if self.num_blocks == 1 {
            b * b + per_row
        } else {
            m * b + (2 + u64::from(extra_tile)) * b * b + per_row
        };
        8 * values
    }

    /// Bytes of scratch store the run writes: every block column but the last, j ≥ i tiles only.
    pub fn scratch_bytes(&self) -> u64 {
        let mut total = 0u64;
        for j in 0..self.num_blocks.saturating_sub(1) {
            let rows_above = self.range(j).end as u64;
            total += rows_above * self.len(j) as u64 * 8;
        }
        total
    }
}

/// The part of `--max-mem` that tile buffers may use: seven eighths. The rest is kept for what the tiles do
/// not account for: the source's memory-mapped pages in flight, the GEMM kernels' packing buffers, thread
/// stacks and the binary itself (measured at 58–83 MiB of RSS beyond the tiles for an 8190² `.npy`).
pub fn tile_share(max_mem: u64) -> u64 {
    max_mem - max_mem / 8
}

/// Choose the plan: `num_blocks` if given (checked against `max_mem` if that is given), else the fewest
/// blocks whose resident memory fits the [`tile_share`] of `max_mem`, else a single block.
pub fn plan(
    m: usize,
    granule: usize,
    num_blocks: Option<usize>,
    max_mem: Option<u64>,
    ldlt: bool,
) -> Result<BlockPlan> {
    let fmt = |bytes: u64| format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0));
    if let Some(nb) = num_blocks {
        let p = BlockPlan::with_blocks(m, nb, granule)?;
        if let Some(limit) = max_mem.map(tile_share) {
            let need = p.resident_bytes(ldlt);
            if need > limit {
                return Err(Error::Budget(format!(
                    "{nb} blocks of {} rows need {} resident, more than the {} that --max-mem leaves for tiles (7/8 of it); use more blocks or raise --max-mem",
                    p.block_size,
                    fmt(need),
                    fmt(limit)
                )));
            }
        }
        return Ok(p);
    }
    let Some(limit) = max_mem.map(tile_share) else {
        return BlockPlan::with_blocks(m, 1, granule);
    };
    let g = granule.max(1);
    let max_blocks = m.div_ceil(g);
    let mut nb = 1;
    let mut smallest = None;
    while nb <= max_blocks {
        let p = BlockPlan::with_blocks(m, nb, granule)?;
        let need = p.resident_bytes(ldlt);
        if need <= limit {
            return Ok(p);
        }
        smallest = Some((p, need));
        // Jump to the next block count that actually changes the block size.
        nb = p.num_blocks.max(nb) + 1;
    }
    let (p, need) = smallest.ok_or_else(|| Error::Internal("empty block search".into()))?;
    Err(Error::Budget(format!(
        "--max-mem leaves {} for tiles (7/8 of it), too small: even {} blocks of {} rows need {}; raise --max-mem",
        fmt(limit),
        p.num_blocks,
        p.block_size,
        fmt(need)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1e9").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("1.5e3kb").unwrap(), 1_500_000);
        assert_eq!(parse_size(" 123 ").unwrap(), 123);
        assert_eq!(parse_size("64 MiB").unwrap(), 64 << 20);
        for bad in ["", "abc", "4XB", "-1", "1e", "GiB"] {
            assert!(parse_size(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn sizes_of_2_pow_64_bytes_or_more_are_errors() {
        // The largest f64 below 2^64 still fits a u64.
        assert_eq!(
            parse_size("18446744073709549568").unwrap(),
            18_446_744_073_709_549_568
        );
        for big in ["18446744073709551616", "16777216TiB", "1e20", "1e300GiB"] {
            let err = parse_size(big).expect_err(big).to_string();
            assert!(err.contains("2^64"), "{big}: {err}");
        }
    }

    #[test]
    fn plans_respect_granule_and_budget() {
        let p = BlockPlan::with_blocks(1000, 3, 10).unwrap();
        assert_eq!((p.block_size, p.num_blocks), (340, 3));
        assert_eq!(p.range(2), 680..1000);
        let p = BlockPlan::with_blocks(10, 8, 1).unwrap();
        assert_eq!((p.block_size, p.num_blocks), (2, 5));
        for limit in [1u64 << 20, 1 << 22, 1 << 24, 1 << 30] {
            let p = plan(1000, 1, None, Some(limit), false).unwrap();
            assert!(p.resident_bytes(false) <= tile_share(limit));
            if p.num_blocks > 1 {
                let fewer = BlockPlan::with_blocks(1000, p.num_blocks - 1, 1).unwrap();
                assert!(fewer.resident_bytes(false) > tile_share(limit));
            }
        }
        assert!(matches!(
            plan(1000, 1, None, Some(1000), false),
            Err(Error::Budget(_))
        ));
        assert!(matches!(
            plan(1000, 1, Some(1), Some(1 << 20), false),
            Err(Error::Budget(_))
        ));
    }
}
