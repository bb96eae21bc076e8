//! The pivots of one factored LDLᵀ pivot block, `P S Pᵀ = L B Lᵀ`: the block-diagonal B (1×1 and, with
//! Bunch–Kaufman pivoting, 2×2 blocks) and the row permutation P. Applies B⁻¹ and P to other tiles, gives the
//! per-row log|det| and signs, and the element-growth measure `(|L||B||Lᵀ|)_rr` that MEMDET checks.

use faer::{MatMut, MatRef};

/// B and P of one factored pivot block.
#[derive(Debug, Clone, Default)]
pub struct Pivots {
    /// The diagonal of B.
    pub diag: Vec<f64>,
    /// The subdiagonal of B, or empty when every block is 1×1: `sub[k] != 0` marks a 2×2 block on rows
    /// k, k + 1 with `B[k+1, k] = sub[k]`.
    pub sub: Vec<f64>,
    /// `perm[k]` = the local row of S placed at position k; empty for the identity.
    pub perm: Vec<usize>,
}

/// One diagonal block of B: its first row and its size (1 or 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    start: usize,
    size: usize,
}

impl Pivots {
    /// Unpivoted LDLᵀ: B = diag(d), P = I.
    pub fn diagonal(diag: Vec<f64>) -> Self {
        Self {
            diag,
            sub: Vec::new(),
            perm: Vec::new(),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.diag.len()
    }

    /// True for a block of no rows.
    pub fn is_empty(&self) -> bool {
        self.diag.is_empty()
    }

    fn blocks(&self) -> impl Iterator<Item = Block> + '_ {
        let n = self.len();
        let mut k = 0;
        std::iter::from_fn(move || {
            if k >= n {
                return None;
            }
            let size = if self.sub.get(k).is_some_and(|s| *s != 0.0) && k + 1 < n {
                2
            } else {
                1
            };
            let b = Block { start: k, size };
            k += size;
            Some(b)
        })
    }

    /// The entries (a, c, b) of the 2×2 block `[[a, c], [c, b]]` starting at row k.
    fn two(&self, k: usize) -> (f64, f64, f64) {
        (self.diag[k], self.sub[k], self.diag[k + 1])
    }

    /// Overwrite `x` with B⁻¹·x (rows of x indexed like B).
    pub fn apply_inverse(&self, mut x: MatMut<'_, f64>) {
        let blocks: Vec<Block> = self.blocks().collect();
        for j in 0..x.ncols() {
            for b in &blocks {
                let k = b.start;
                if b.size == 1 {
                    x[(k, j)] /= self.diag[k];
                } else {
                    let (a, c, d) = self.two(k);
                    let (x0, x1) = (x[(k, j)], x[(k + 1, j)]);
                    let det = a * d - c * c;
                    x[(k, j)] = (d * x0 - c * x1) / det;
                    x[(k + 1, j)] = (a * x1 - c * x0) / det;
                }
            }
        }
    }

    /// Overwrite `x` with P·x: row k becomes the old row `perm[k]`.
    pub fn permute_rows(&self, mut x: MatMut<'_, f64>) {
        if self.perm.is_empty() {
            return;
        }
        let mut tmp = vec![0.0; x.nrows()];
        for j in 0..x.ncols() {
            for (k, &p) in self.perm.iter().enumerate() {
                tmp[k] = x[(p, j)];
            }
            for (k, v) in tmp.iter().enumerate() {
                x[(k, j)] = *v;
            }
        }
    }

    /// The local row of S at position `pos` of the factor.
    pub fn original_row(&self, pos: usize) -> usize {
        self.perm.get(pos).copied().unwrap_or(pos)
    }

    /// Per-row log|det| and sign: a 1×1 block gives its pivot's, a 2×2 block puts its determinant's on its
    /// first row (log 1 = 0 and sign +1 on the second). The sums are exact for every leading set of whole
    /// blocks; per-row values of pivoted blocks are not nested log-dets.
    pub fn logabs_signs(&self) -> (Vec<f64>, Vec<f64>) {
        let n = self.len();
        let (mut logabs, mut signs) = (vec![0.0; n], vec![1.0; n]);
        for b in self.blocks() {
            let k = b.start;
            let det = if b.size == 1 {
                self.diag[k]
            } else {
                let (a, c, d) = self.two(k);
                a * d - c * c
            };
            logabs[k] = det.abs().ln();
            signs[k] = det.signum();
        }
        (logabs, signs)
    }

    /// The first row whose block of B is singular or not finite, with that block's determinant.
    pub fn first_singular(&self) -> Option<(usize, f64)> {
        self.blocks().find_map(|b| {
            let k = b.start;
            let det = if b.size == 1 {
                self.diag[k]
            } else {
                let (a, c, d) = self.two(k);
                a * d - c * c
            };
            (det == 0.0 || !det.is_finite()).then_some((k, det))
        })
    }

    /// Per-row pivot magnitudes: |d| of a 1×1 block, the two eigenvalue magnitudes of a 2×2 block
    /// (smaller first). Compared against the largest diagonal entry to warn of near-singular pivots.
    pub fn magnitudes(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.len()];
        for b in self.blocks() {
            let k = b.start;
            if b.size == 1 {
                out[k] = self.diag[k].abs();
            } else {
                let (a, c, d) = self.two(k);
                let mean = 0.5 * (a + d);
                let radius = (0.25 * (a - d) * (a - d) + c * c).sqrt();
                let (l1, l2) = ((mean - radius).abs(), (mean + radius).abs());
                out[k] = l1.min(l2);
                out[k + 1] = l1.max(l2);
            }
        }
        out
    }

    /// `|l|ᵀ|B||l|` summed over the blocks, with `l = B⁻¹ u`: the contribution of a column u of
    /// `L_kk⁻¹ P S_kj` (an off-diagonal factor tile) to `(|L||B||Lᵀ|)_rr` of the row r it belongs to.
    pub fn growth_of_column(&self, u: &[f64]) -> f64 {
        let mut w = 0.0;
        for b in self.blocks() {
            let k = b.start;
            if b.size == 1 {
                w += u[k] * u[k] / self.diag[k].abs();
            } else {
                let (a, c, d) = self.two(k);
                let det = a * d - c * c;
                let l0 = ((d * u[k] - c * u[k + 1]) / det).abs();
                let l1 = ((a * u[k + 1] - c * u[k]) / det).abs();
                w += l0 * l0 * a.abs() + 2.0 * l0 * l1 * c.abs() + l1 * l1 * d.abs();
            }
        }
        w
    }

    /// `(|L||B||Lᵀ|)_rr` of every row within the block itself, from the unit lower factor `l` (strict lower
    /// triangle read; position k of the factor).
    pub fn growth_within(&self, l: MatRef<'_, f64>) -> Vec<f64> {
        let n = self.len();
        let mut w = vec![0.0; n];
        for b in self.blocks() {
            let k = b.start;
            if b.size == 1 {
                let dk = self.diag[k].abs();
                w[k] += dk;
                for (r, wr) in w.iter_mut().enumerate().skip(k + 1) {
                    let x = l[(r, k)];
                    *wr += x * x * dk;
                }
            } else {
                let (a, c, d) = self.two(k);
                w[k] += a.abs();
                w[k + 1] += d.abs();
                for (r, wr) in w.iter_mut().enumerate().skip(k + 2) {
                    let (x0, x1) = (l[(r, k)].abs(), l[(r, k + 1)].abs());
                    *wr += x0 * x0 * a.abs() + 2.0 * x0 * x1 * c.abs() + x1 * x1 * d.abs();
                }
            }
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    #[test]
    fn two_by_two_blocks_invert_and_give_their_determinant() {
        // B = [[1, 2], [2, 1]] (det -3) ⊕ [4].
        let p = Pivots {
            diag: vec![1.0, 1.0, 4.0],
            sub: vec![2.0, 0.0, 0.0],
            perm: vec![2, 0, 1],
        };
        let mut x = Mat::<f64>::from_fn(3, 1, |i, _| [5.0, 4.0, 8.0][i]);
        p.apply_inverse(x.as_mut());
        // [[1,2],[2,1]] y = (5, 4) → y = (1, 2); 8 / 4 = 2.
        assert!((x[(0, 0)] - 1.0).abs() < 1e-15 && (x[(1, 0)] - 2.0).abs() < 1e-15);
        assert!((x[(2, 0)] - 2.0).abs() < 1e-15);
        let (logabs, signs) = p.logabs_signs();
        assert!((logabs[0] - 3f64.ln()).abs() < 1e-15 && logabs[1] == 0.0);
        assert_eq!(signs, vec![-1.0, 1.0, 1.0]);
        let mut y = Mat::<f64>::from_fn(3, 1, |i, _| i as f64);
        p.permute_rows(y.as_mut());
        assert_eq!((y[(0, 0)], y[(1, 0)], y[(2, 0)]), (2.0, 0.0, 1.0));
        let mags = p.magnitudes();
        assert!((mags[0] - 1.0).abs() < 1e-15 && (mags[1] - 3.0).abs() < 1e-15);
    }
}
