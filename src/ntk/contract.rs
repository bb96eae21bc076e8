//! Per-layer tile rules: the kernel block between examples `ia` of one feature block and `jb` of another,
//! `Σ_layers J_l(ia) J_l(jb)ᵀ` (unscaled), every product a GEMM, in the features' own type: accumulated in
//! f64 for f64 features, in f32 (the `gemm` crate's f32 kernels, f32 sums) for f32 ones.

use crate::linalg::gemm::matmul;
use crate::model::hand::real::Real;
use crate::ntk::features::{DenseFactors, Features, LayerPlan, Rule, SpatialFactors};
use faer::reborrow::ReborrowMut;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::ops::Range;

/// Write `Σ_l J_l J_lᵀ` for rows (i, c), i ∈ `ia` of `a` and columns (j, c'), j ∈ `jb` of `b` into `out`
/// (|ia|·r × |jb|·r), replacing its contents; every product and sum is computed in `T`.
pub fn contract<T: Real>(
    plan: &LayerPlan,
    a: &Features<T>,
    ia: Range<usize>,
    b: &Features<T>,
    jb: Range<usize>,
    mut out: MatMut<'_, T>,
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
        T::from(1.0),
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
fn dense<T: Real>(
    a: &DenseFactors<T>,
    ia: Range<usize>,
    b: &DenseFactors<T>,
    jb: Range<usize>,
    r: usize,
    bias: bool,
    mut out: MatMut<'_, T>,
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
    let mut gg = vec![T::ZERO; ni * r * nj * r];
    matmul(
        MatMut::from_column_major_slice_mut(&mut gg, ni * r, nj * r),
        Accum::Replace,
        ga,
        gb.transpose(),
        T::from(1.0),
        Par::rayon(0),
    );
    let mut xx = vec![T::ZERO; ni * nj];
    matmul(
        MatMut::from_column_major_slice_mut(&mut xx, ni, nj),
        Accum::Replace,
        xa,
        xb.transpose(),
        T::from(1.0),
        Par::rayon(0),
    );
    let add = if bias { T::from(1.0) } else { T::ZERO };
    for col in 0..nj * r {
        for row in 0..ni * r {
            out[(row, col)] += gg[col * ni * r + row] * (xx[(col / r) * ni + row / r] + add);
        }
    }
}

/// Route-B conv: `K[(i,c),(j,c')] += Σ_{o,u,v} G_i[c,o,u] S_ij[u,v] G_j[c',o,v]`, `S_ij = P_i P_jᵀ`.
/// Per row example i: `S = P_i [P_j]ᵀ` in one GEMM; per pair: `T = G_j S_ijᵀ`, then `G_i Tᵀ` over (o, u).
fn spatial<T: Real>(
    a: &SpatialFactors<T>,
    ia: Range<usize>,
    b: &SpatialFactors<T>,
    jb: Range<usize>,
    r: usize,
    mut out: MatMut<'_, T>,
) {
    let (u, plen, c_out) = (a.positions, a.patch_len, a.c_out);
    let nj = jb.len();
    let pb = MatRef::from_row_major_slice(
        &b.patches[jb.start * u * plen..jb.end * u * plen],
        nj * u,
        plen,
    );
    let g_len = r * c_out * u;
    // Each row example's r × (nj·r) block, column-major.
    let blocks: Vec<Vec<T>> = ia
        .clone()
        .into_par_iter()
        .map(|i| {
            let pi =
                MatRef::from_row_major_slice(&a.patches[i * u * plen..(i + 1) * u * plen], u, plen);
            let mut s_buf = vec![T::ZERO; u * nj * u];
            matmul(
                MatMut::from_column_major_slice_mut(&mut s_buf, u, nj * u),
                Accum::Replace,
                pi,
                pb.transpose(),
                T::from(1.0),
                Par::Seq,
            );
            let s = MatRef::from_column_major_slice(&s_buf, u, nj * u);
            let gi =
                MatRef::from_row_major_slice(&a.grads[i * g_len..(i + 1) * g_len], r, c_out * u);
            let mut block_buf = vec![T::ZERO; r * nj * r];
            let mut row_block = MatMut::from_column_major_slice_mut(&mut block_buf, r, nj * r);
            let mut t = vec![T::ZERO; g_len];
            for (jj, j) in jb.clone().enumerate() {
                let gj = MatRef::from_row_major_slice(
                    &b.grads[j * g_len..(j + 1) * g_len],
                    r * c_out,
                    u,
                );
                let s_ij = s.subcols(jj * u, u);
                let tm = MatMut::from_row_major_slice_mut(&mut t, r * c_out, u);
                matmul(
                    tm,
                    Accum::Replace,
                    gj,
                    s_ij.transpose(),
                    T::from(1.0),
                    Par::Seq,
                );
                let tj = MatRef::from_row_major_slice(&t, r, c_out * u);
                matmul(
                    row_block.rb_mut().subcols_mut(jj * r, r),
                    Accum::Replace,
                    gi,
                    tj.transpose(),
                    T::from(1.0),
                    Par::Seq,
                );
            }
            block_buf
        })
        .collect();
    for (ii, block) in blocks.iter().enumerate() {
        let mut dst = out.rb_mut().subrows_mut(ii * r, r);
        for col in 0..nj * r {
            for row in 0..r {
                dst[(row, col)] += block[col * r + row];
            }
        }
    }
}
