//! Per-layer tile rules: the kernel block between examples `ia` of one feature block and `jb` of another,
//! `Σ_layers J_l(ia) J_l(jb)ᵀ` (unscaled), every product a GEMM accumulated in f64.

use crate::linalg::gemm::matmul;
use crate::ntk::features::{DenseFactors, Features, LayerPlan, Rule, SpatialFactors};
use faer::reborrow::ReborrowMut;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::ops::Range;

/// Write `Σ_l J_l J_lᵀ` for rows (i, c), i ∈ `ia` of `a` and columns (j, c'), j ∈ `jb` of `b` into `out`
/// (|ia|·r × |jb|·r), replacing its contents.
pub fn contract(
    plan: &LayerPlan,
    a: &Features,
    ia: Range<usize>,
    b: &Features,
    jb: Range<usize>,
    mut out: MatMut<'_, f64>,
) {
    let r = plan.rows;
    // Explicit Jacobian columns: one GEMM.
    let ea = a.explicit_t().subcols(ia.start * r, ia.len() * r);
    let eb = b.explicit_t().subcols(jb.start * r, jb.len() * r);
    matmul(
        out.rb_mut(),
        Accum::Replace,
        ea.transpose(),
        eb,
        1.0,
        Par::rayon(0),
    );
    for layer in &plan.layers {
        match layer.rule {
            Rule::Linear { slot, bias } => dense(
                &a.dense[slot],
                ia.clone(),
                &b.dense[slot],
                jb.clone(),
                r,
                bias,
                out.rb_mut(),
            ),
            Rule::ConvSpatial { slot, .. } => spatial(
                &a.spatial[slot],
                ia.clone(),
                &b.spatial[slot],
                jb.clone(),
                r,
                out.rb_mut(),
            ),
            Rule::ConvExplicit { .. } | Rule::BatchNorm { .. } => {}
        }
    }
}

/// Linear layer: `K[(i,c),(j,c')] += (g_ic · g_jc') (a_i · a_j + [bias])`.
fn dense(
    a: &DenseFactors,
    ia: Range<usize>,
    b: &DenseFactors,
    jb: Range<usize>,
    r: usize,
    bias: bool,
    mut out: MatMut<'_, f64>,
) {
    let (ni, nj) = (ia.len(), jb.len());
    let ga = MatRef::from_row_major_slice(
        &a.grads[ia.start * r * a.out_dim..ia.end * r * a.out_dim],
        ni * r,
        a.out_dim,
    );
    let gb = MatRef::from_row_major_slice(
        &b.grads[jb.start * r * b.out_dim..jb.end * r * b.out_dim],
        nj * r,
        b.out_dim,
    );
    let xa = MatRef::from_row_major_slice(
        &a.inputs[ia.start * a.in_dim..ia.end * a.in_dim],
        ni,
        a.in_dim,
    );
    let xb = MatRef::from_row_major_slice(
        &b.inputs[jb.start * b.in_dim..jb.end * b.in_dim],
        nj,
        b.in_dim,
    );
    let mut gg = Mat::<f64>::zeros(ni * r, nj * r);
    matmul(
        gg.as_mut(),
        Accum::Replace,
        ga,
        gb.transpose(),
        1.0,
        Par::rayon(0),
    );
    let mut xx = Mat::<f64>::zeros(ni, nj);
    matmul(
        xx.as_mut(),
        Accum::Replace,
        xa,
        xb.transpose(),
        1.0,
        Par::rayon(0),
    );
    let add = if bias { 1.0 } else { 0.0 };
    for col in 0..nj * r {
        for row in 0..ni * r {
            out[(row, col)] += gg[(row, col)] * (xx[(row / r, col / r)] + add);
        }
    }
}

/// Route-B conv: `K[(i,c),(j,c')] += Σ_{o,u,v} G_i[c,o,u] S_ij[u,v] G_j[c',o,v]`, `S_ij = P_i P_jᵀ`.
/// Per row example i: `S = P_i [P_j]ᵀ` in one GEMM; per pair: `T = G_j S_ijᵀ`, then `G_i Tᵀ` over (o, u).
fn spatial(
    a: &SpatialFactors,
    ia: Range<usize>,
    b: &SpatialFactors,
    jb: Range<usize>,
    r: usize,
    mut out: MatMut<'_, f64>,
) {
    let (u, plen, c_out) = (a.positions, a.patch_len, a.c_out);
    let nj = jb.len();
    let pb = MatRef::from_row_major_slice(
        &b.patches[jb.start * u * plen..jb.end * u * plen],
        nj * u,
        plen,
    );
    let g_len = r * c_out * u;
    let blocks: Vec<Mat<f64>> = ia
        .clone()
        .into_par_iter()
        .map(|i| {
            let pi =
                MatRef::from_row_major_slice(&a.patches[i * u * plen..(i + 1) * u * plen], u, plen);
            let mut s = Mat::<f64>::zeros(u, nj * u);
            matmul(
                s.as_mut(),
                Accum::Replace,
                pi,
                pb.transpose(),
                1.0,
                Par::Seq,
            );
            let gi =
                MatRef::from_row_major_slice(&a.grads[i * g_len..(i + 1) * g_len], r, c_out * u);
            let mut row_block = Mat::<f64>::zeros(r, nj * r);
            let mut t = vec![0.0; g_len];
            for (jj, j) in jb.clone().enumerate() {
                let gj = MatRef::from_row_major_slice(
                    &b.grads[j * g_len..(j + 1) * g_len],
                    r * c_out,
                    u,
                );
                let s_ij = s.as_ref().subcols(jj * u, u);
                let tm = MatMut::from_row_major_slice_mut(&mut t, r * c_out, u);
                matmul(tm, Accum::Replace, gj, s_ij.transpose(), 1.0, Par::Seq);
                let tj = MatRef::from_row_major_slice(&t, r, c_out * u);
                matmul(
                    row_block.as_mut().subcols_mut(jj * r, r),
                    Accum::Replace,
                    gi,
                    tj.transpose(),
                    1.0,
                    Par::Seq,
                );
            }
            row_block
        })
        .collect();
    for (ii, block) in blocks.iter().enumerate() {
        let mut dst = out.rb_mut().subrows_mut(ii * r, r);
        for col in 0..block.ncols() {
            for row in 0..r {
                dst[(row, col)] += block[(row, col)];
            }
        }
    }
}
