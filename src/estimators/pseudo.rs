//! Pseudo-NTK estimator: the n × n matrix of block means `P_ij = (1/d) Σ_{a,b} k_ab(x_i, x_j)` (the
//! kernel of the mean logit times d), reported as `d · ln|det P|`.

use super::dense::{check_finite, dense_logdet};
use super::{Estimate, Estimator};
use crate::linalg::TileSource;
use crate::progress::Progress;
use crate::{Error, Result};
use faer::Mat;
use std::time::Instant;

/// The pseudo-NTK estimator (d = the source's granule).
#[derive(Debug, Clone)]
pub struct PseudoNtk {
    /// Examples per row panel read from the source (memory: panel · d × m f64).
    pub panel_examples: usize,
}

impl Default for PseudoNtk {
    fn default() -> Self {
        Self { panel_examples: 64 }
    }
}

/// The n × n block-mean matrix `(1/d) Σ_{a,b} K[(i,a),(j,b)]`, reading only tiles with J ≥ I.
pub fn block_means(
    source: &dyn TileSource,
    panel_examples: usize,
    progress: &dyn Progress,
) -> Result<Mat<f64>> {
    let m = source.dim();
    let d = source.granule().max(1);
    if !m.is_multiple_of(d) {
        return Err(Error::Input(format!(
            "pseudo-NTK: matrix order {m} is not a multiple of the block size {d}"
        )));
    }
    let n = m / d;
    let pe = panel_examples.max(1);
    let mut p = Mat::<f64>::zeros(n, n);
    progress.start("pseudo-NTK", n as u64);
    let mut i0 = 0;
    while i0 < n {
        let h = pe.min(n - i0);
        let (r0, c0) = (i0 * d, i0 * d);
        let mut panel = Mat::<f64>::zeros(h * d, m - c0);
        source.fill(r0..r0 + h * d, c0..m, panel.as_mut())?;
        check_finite(panel.as_ref(), r0, c0)?;
        for i in 0..h {
            for j in i0 + i..n {
                let mut s = 0.0;
                for b in 0..d {
                    for a in 0..d {
                        s += panel[(i * d + a, (j - i0) * d + b)];
                    }
                }
                let v = s / d as f64;
                p[(i0 + i, j)] = v;
                p[(j, i0 + i)] = v;
            }
        }
        progress.advance(h as u64);
        i0 += h;
    }
    progress.finish();
    Ok(p)
}

impl Estimator for PseudoNtk {
    fn name(&self) -> &'static str {
        "pseudo-ntk"
    }

    fn run(&self, source: &dyn TileSource, progress: &dyn Progress) -> Result<Estimate> {
        let start = Instant::now();
        let d = source.granule().max(1);
        let p = block_means(source, self.panel_examples, progress)?;
        let ld = dense_logdet(p.as_ref());
        Ok(Estimate {
            logdet: d as f64 * ld.logdet,
            std_error: None,
            matvecs: 0,
            seconds: start.elapsed().as_secs_f64(),
            details: serde_json::json!({
                "n": p.nrows(),
                "d": d,
                "logdet_block_means": ld.logdet,
                "sign": ld.sign,
                "spd": ld.cholesky,
            }),
        })
    }
}
