//! Block-of-probes Lanczos with full reorthogonalisation and Gauss quadrature for `zᵀ ln(A) z`: the core
//! of SLQ. All active probes share each operator pass; each keeps its own Krylov basis.

use super::operator::LinearOp;
use crate::linalg::gemm::matmul;
use crate::{Error, Result};
use faer::{Accum, Mat, MatRef, Par, Side};
use rayon::prelude::*;

/// A Lanczos run stops for a probe once β_j ≤ this times the running estimate of ‖T‖: the Krylov space is
/// then (numerically) invariant and the quadrature is exact for that probe.
const BREAKDOWN_RTOL: f64 = 1e-11;

/// Per-probe results of the quadrature.
#[derive(Debug, Clone)]
pub struct Quadrature {
    /// `zᵀ ln(A) z` estimated by the Lanczos–Gauss rule, one per probe.
    pub values: Vec<f64>,
    /// Lanczos steps taken by each probe (fewer than requested after a breakdown).
    pub steps: Vec<usize>,
    /// Smallest and largest Ritz value seen over all probes.
    pub ritz_range: (f64, f64),
}

struct ProbeState {
    basis: Mat<f64>,
    alpha: Vec<f64>,
    beta: Vec<f64>,
    norm2: f64,
    active: bool,
    scale: f64,
}

/// Run `steps` Lanczos steps from each column of `probes` (m × p) and return the quadrature values.
pub fn quadrature(op: &dyn LinearOp, probes: MatRef<'_, f64>, steps: usize) -> Result<Quadrature> {
    let m = op.dim();
    let p = probes.ncols();
    let steps = steps.max(1).min(m);
    let mut states: Vec<ProbeState> = (0..p)
        .map(|j| {
            let z = probes.col(j);
            let norm2: f64 = z.iter().map(|v| v * v).sum();
            let mut basis = Mat::zeros(m, steps);
            let inv = 1.0 / norm2.sqrt();
            for i in 0..m {
                basis[(i, 0)] = z[i] * inv;
            }
            ProbeState {
                basis,
                alpha: Vec::new(),
                beta: Vec::new(),
                norm2,
                active: norm2 > 0.0,
                scale: 0.0,
            }
        })
        .collect();
    for t in 0..steps {
        crate::signals::check()?;
        let active: Vec<usize> = (0..p).filter(|&j| states[j].active).collect();
        if active.is_empty() {
            break;
        }
        let x = Mat::from_fn(m, active.len(), |i, c| states[active[c]].basis[(i, t)]);
        let mut w = Mat::zeros(m, active.len());
        op.apply(x.as_ref(), w.as_mut())?;
        let mut slot = vec![usize::MAX; p];
        for (c, &j) in active.iter().enumerate() {
            slot[j] = c;
        }
        states.par_iter_mut().enumerate().for_each(|(j, st)| {
            if slot[j] != usize::MAX {
                step(st, w.col(slot[j]).iter().copied().collect(), t, steps);
            }
        });
    }
    let mut values = Vec::with_capacity(p);
    let mut ritz_range = (f64::INFINITY, f64::NEG_INFINITY);
    for (j, st) in states.iter().enumerate() {
        let k = st.alpha.len();
        if k == 0 {
            return Err(Error::Input(format!("SLQ: probe {j} is the zero vector")));
        }
        let t = Mat::from_fn(k, k, |a, b| {
            if a == b {
                st.alpha[a]
            } else if a == b + 1 || b == a + 1 {
                st.beta[a.min(b)]
            } else {
                0.0
            }
        });
        let eig = t.self_adjoint_eigen(Side::Lower).map_err(|e| {
            Error::Internal(format!(
                "eigen-decomposition of the Lanczos matrix failed: {e:?}"
            ))
        })?;
        let (u, s) = (eig.U(), eig.S().column_vector());
        let mut sum = 0.0;
        for i in 0..k {
            let theta = s[i];
            let tau2 = u[(0, i)] * u[(0, i)];
            ritz_range = (ritz_range.0.min(theta), ritz_range.1.max(theta));
            if theta <= 0.0 || !theta.is_finite() {
                return Err(Error::Input(format!(
                    "SLQ: Lanczos produced the Ritz value {theta:e} <= 0, so the matrix is not positive definite \
                     (or singular to working precision); its log-determinant cannot be estimated by SLQ"
                )));
            }
            sum += tau2 * theta.ln();
        }
        values.push(st.norm2 * sum);
    }
    let steps = states.iter().map(|s| s.alpha.len()).collect();
    Ok(Quadrature {
        values,
        steps,
        ritz_range,
    })
}

/// One Lanczos step for one probe, given w = A v_t.
fn step(st: &mut ProbeState, mut w: Vec<f64>, t: usize, steps: usize) {
    let m = w.len();
    let v_t = st.basis.col(t);
    let alpha: f64 = (0..m).map(|i| v_t[i] * w[i]).sum();
    st.alpha.push(alpha);
    let prev_beta = if t > 0 { st.beta[t - 1] } else { 0.0 };
    st.scale = st.scale.max(alpha.abs() + prev_beta);
    if t + 1 == steps {
        st.active = false;
        return;
    }
    for i in 0..m {
        w[i] -= alpha * v_t[i];
        if t > 0 {
            w[i] -= prev_beta * st.basis[(i, t - 1)];
        }
    }
    // Full reorthogonalisation against v_0..v_t, twice ("twice is enough").
    let v = st.basis.as_ref().subcols(0, t + 1);
    let mut wm = Mat::from_fn(m, 1, |i, _| w[i]);
    for _ in 0..2 {
        let mut h = Mat::<f64>::zeros(t + 1, 1);
        matmul(
            h.as_mut(),
            Accum::Replace,
            v.transpose(),
            wm.as_ref(),
            1.0,
            Par::Seq,
        );
        matmul(wm.as_mut(), Accum::Add, v, h.as_ref(), -1.0, Par::Seq);
    }
    let beta = wm.col(0).norm_l2();
    st.scale = st.scale.max(alpha.abs() + prev_beta + beta);
    // (also stops on a NaN β, which fails every comparison)
    if beta.is_nan() || beta <= BREAKDOWN_RTOL * st.scale {
        st.active = false;
        return;
    }
    st.beta.push(beta);
    let inv = 1.0 / beta;
    for i in 0..m {
        st.basis[(i, t + 1)] = wm[(i, 0)] * inv;
    }
}
