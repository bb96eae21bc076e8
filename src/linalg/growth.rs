//! The element-growth monitor of MEMDET's `sym` runs: `g = max_r (|L||B||Lᵀ|)_rr / ‖A‖_F` over the rows
//! factored so far, against the leading block's Frobenius norm, and the refusal when g exceeds
//! [`GROWTH_LIMIT`].
//!
//! Why this measure: the computed factors satisfy `A + ΔA = L B Lᵀ` with `|ΔA| ≤ γ_m |L||B||Lᵀ|`, and
//! |L||B||Lᵀ| is a Gram matrix, so each of its entries is at most `max_r (|L||B||Lᵀ|)_rr`; hence
//! `‖ΔA‖_2 ≤ m·γ_m·g·‖A‖_F`. For Cholesky of an SPD matrix `(|L||Lᵀ|)_rr = a_rr ≤ ‖A‖_F`, so g ≤ 1: g says
//! how much weaker the backward-error bound is than Cholesky's. The Frobenius norm (not max |a_ij|) is the
//! scale because the normwise bound is what governs the log-determinant (`δ ln|det| ≈ tr(A⁻¹ΔA)`), and the
//! diagonal of |L||B||Lᵀ| of a backward-stable pivoted factorisation of a dense indefinite matrix grows with
//! its norm, not with its largest entry. Costs O(b²) per tile, next to the O(b³) of the updates.

use crate::{Error, Result};

/// The largest growth g accepted from `sym` (see the module docs): beyond it the backward-error bound is
/// more than 10⁴ times Cholesky's on an SPD matrix, and the log-determinant is refused. Measured on SPEC's
/// C = R + Rᵀ and on the centred (2R − 1) + (2R − 1)ᵀ, m = 200..1000: rook-pivoted Bunch–Kaufman over the
/// whole matrix g = 0.8–3; pivoting confined to 2–8 blocks g up to 180, with relative log-det errors up to
/// 7e-13 (the error grew about in proportion to g, so the limit keeps it near 1e-11 on such matrices); an
/// unpivoted LDLᵀ through a 1e-16 pivot (tests/memdet_stability.rs) g ≈ 1e13.
pub const GROWTH_LIMIT: f64 = 1e4;

/// Running state of the monitor.
#[derive(Debug, Clone, Default)]
pub struct GrowthMonitor {
    /// ‖A‖_F of the tiles seen so far as `scale·sqrt(ssq)` (LAPACK `lassq` style, so no overflow).
    scale: f64,
    ssq: f64,
    /// Largest `(|L||B||Lᵀ|)_rr` so far and its global row.
    weight: f64,
    row: usize,
}

/// What to suggest when the growth is too large.
#[derive(Debug, Clone, Copy)]
pub enum Remedy {
    /// Nested log-dets forbade pivoting.
    DropNested,
    /// Pivoting was confined to blocks of this many rows.
    FewerBlocks(usize),
    /// Pivoting covered the whole matrix.
    Shift,
}

impl GrowthMonitor {
    /// The monitor's state as f64 bit patterns (scale, ssq, weight) and the row, for a checkpoint.
    pub fn to_bits(&self) -> ([u64; 3], usize) {
        (
            [self.scale, self.ssq, self.weight].map(f64::to_bits),
            self.row,
        )
    }

    /// The monitor [`to_bits`](Self::to_bits) saved.
    pub fn from_bits((bits, row): ([u64; 3], usize)) -> Self {
        let [scale, ssq, weight] = bits.map(f64::from_bits);
        Self {
            scale,
            ssq,
            weight,
            row,
        }
    }

    /// Account for a tile of the input (after t and D); `mirrored` counts it twice (an off-diagonal tile
    /// stands for its transpose too).
    pub fn add_tile(&mut self, values: &[f64], mirrored: bool) {
        use rayon::prelude::*;
        let tile_max = values.par_iter().map(|v| v.abs()).reduce(|| 0.0, f64::max);
        if tile_max == 0.0 || !tile_max.is_finite() {
            return;
        }
        let inv = 1.0 / tile_max;
        let tile_ssq: f64 = values
            .par_iter()
            .map(|v| (v * inv) * (v * inv))
            .sum::<f64>()
            * if mirrored { 2.0 } else { 1.0 };
        if tile_max > self.scale {
            let r = self.scale / tile_max;
            self.ssq = self.ssq * r * r + tile_ssq;
            self.scale = tile_max;
        } else {
            let r = tile_max / self.scale;
            self.ssq += tile_ssq * r * r;
        }
    }

    /// Record `(|L||B||Lᵀ|)_rr = weight` of global row `row`.
    pub fn add_row(&mut self, weight: f64, row: usize) {
        if weight > self.weight || weight.is_nan() {
            self.weight = weight;
            self.row = row;
        }
    }

    /// ‖A‖_F of the tiles seen so far.
    pub fn frobenius(&self) -> f64 {
        self.scale * self.ssq.sqrt()
    }

    /// The growth g so far (0 for a zero matrix).
    pub fn growth(&self) -> f64 {
        let f = self.frobenius();
        if f == 0.0 {
            0.0
        } else {
            self.weight / f
        }
    }

    /// Refuse when g over the leading `rows` rows exceeds [`GROWTH_LIMIT`], saying why and what to do.
    pub fn check(&self, rows: usize, remedy: Remedy) -> Result<()> {
        let g = self.growth();
        if g <= GROWTH_LIMIT {
            return Ok(());
        }
        let what = match remedy {
            Remedy::DropNested => "nested log-dets need LDL^T without pivoting, which is not backward stable \
                on this matrix; drop --nested to get log|det| from a pivoted (Bunch-Kaufman) factorisation, or \
                add a diagonal shift with --shift"
                .to_string(),
            Remedy::FewerBlocks(b) => format!(
                "Bunch-Kaufman pivoting is confined to blocks of {b} rows; use fewer blocks (--num-blocks 1, \
                 or a larger --max-mem) so that pivoting covers the whole matrix"
            ),
            Remedy::Shift => "this persists with Bunch-Kaufman pivoting over the whole matrix, which is too \
                close to singular for an accurate log-determinant; add a diagonal shift with --shift"
                .to_string(),
        };
        Err(Error::Unstable(format!(
            "--assume sym refused: element growth {g:.3e} at row {} (max_r (|L||D||L^T|)_rr = {:.3e} against \
             ||A||_F = {:.3e} of the leading {rows} rows) exceeds the limit {GROWTH_LIMIT:e}, so the LDL^T \
             factorisation is not backward stable and its log-determinant cannot be trusted; {what}",
            self.row,
            self.weight,
            self.frobenius()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frobenius_accumulates_without_overflow_and_counts_mirrors() {
        let mut g = GrowthMonitor::default();
        g.add_tile(&[3.0, 0.0, 0.0, 4.0], false);
        g.add_tile(&[1e200], true);
        // 2·(1e200)² overflows a plain sum of squares; the scaled one gives sqrt(2)·1e200.
        assert!((g.frobenius() / (1e200 * 2f64.sqrt()) - 1.0).abs() < 1e-15);
        g.add_row(5.0, 3);
        assert!(g.check(2, Remedy::Shift).is_ok());
        g.add_row(1e205, 7);
        let err = g.check(8, Remedy::FewerBlocks(4)).unwrap_err().to_string();
        assert!(
            err.contains("row 7") && err.contains("--num-blocks 1"),
            "{err}"
        );
    }
}
