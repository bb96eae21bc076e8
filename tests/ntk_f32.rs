//! `--precision f32` is f32 throughout (f32 passes, f32 features, f32 GEMMs), and `f32-f64acc` is the
//! hybrid (f32 passes, f64 accumulation). Checked against an independent f32 computation (plain f32 dot
//! products of Jacobian rows rebuilt from the same f32 features) with a tolerance derived from f32
//! rounding, and against the f64 kernel.

use candle_core::DType;
use faer::Mat;
use ntk_pipeline::linalg::TileSource;
use ntk_pipeline::model::{Network, Op};
use ntk_pipeline::ntk::features::{compute, Features, LayerPlan, Rule};
use ntk_pipeline::ntk::{KernelSpec, NtkTiles, Outputs, Precision, Scale};
use tolerance::within;

#[path = "support/nets.rs"]
mod nets;
use nets::*;

mod tolerance;

/// The f32 unit roundoff 2^-24.
const U32: f64 = 5.960_464_477_539_063e-8;

/// λ of the probabilistic rounding bound `|fl(Σ) − Σ| ≤ λ √N u Σ|terms|` (Higham & Mary 2019): it fails
/// with probability at most about `2N·exp(−λ²/2)` per sum, < 1e-10 for λ = 8 at the sizes here.
const LAMBDA: f64 = 8.0;

fn spec(precision: Precision) -> KernelSpec {
    KernelSpec {
        outputs: Outputs::Full,
        scale: Scale::None,
        precision,
    }
}

fn kernel(net: &Network, n: usize, seed: u64, precision: Precision) -> Mat<f64> {
    let tiles = NtkTiles::new(net, inputs(net, n, seed), spec(precision), 1 << 30).unwrap();
    let m = tiles.dim();
    let mut k = Mat::zeros(m, m);
    tiles.fill(0..m, 0..m, k.as_mut()).unwrap();
    k
}

fn rel_diff(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    (a - b).norm_l2() / b.norm_l2()
}

/// The f32 features `--precision f32` contracts (f32 network, f32 passes), as f64 arrays.
fn f32_features(net: &Network, n: usize, seed: u64) -> (Features, LayerPlan) {
    let net = net.to_dtype(DType::F32).unwrap();
    let x = inputs(&net, n, seed).to_dtype(DType::F32).unwrap();
    let d = net.num_outputs().unwrap();
    let plan = LayerPlan::new(&net, &x.narrow(0, 0, 1).unwrap(), d).unwrap();
    let feats = compute(&net, &plan, &x, &spec(Precision::F32), 2).unwrap();
    (feats, plan)
}

/// The full Jacobian rows (one per (example, logit)) rebuilt from the features with plain f32 arithmetic:
/// explicit columns as they are, linear layers `g_o·a_k` (and `g_o` for the bias), route-B convs
/// `Σ_u G[o,u] P[u,k]` summed in order. With `abs`, the same from the features' absolute values in f64:
/// the rows of `|J|`, whose Gram bounds every rounding error of the kernel's sums.
fn jacobian_rows(f: &Features, plan: &LayerPlan, abs: bool) -> Vec<Vec<f64>> {
    let r = f.rows;
    let a = |v: f64| if abs { v.abs() } else { v };
    (0..f.n * r)
        .map(|row| {
            let i = row / r;
            let mut out: Vec<f64> = f.explicit[row * f.explicit_cols..(row + 1) * f.explicit_cols]
                .iter()
                .map(|&v| a(v))
                .collect();
            for layer in &plan.layers {
                match layer.rule {
                    Rule::Linear { slot, bias } => {
                        let dn = &f.dense[slot];
                        let g = &dn.grads[row * dn.out_dim..(row + 1) * dn.out_dim];
                        let x = &dn.inputs[i * dn.in_dim..(i + 1) * dn.in_dim];
                        for &go in g {
                            for &xk in x {
                                out.push(if abs {
                                    go.abs() * xk.abs()
                                } else {
                                    (go as f32 * xk as f32) as f64
                                });
                            }
                        }
                        if bias {
                            out.extend(g.iter().map(|&v| a(v)));
                        }
                    }
                    Rule::ConvSpatial { slot, .. } => {
                        let sp = &f.spatial[slot];
                        let (u, plen, co) = (sp.positions, sp.patch_len, sp.c_out);
                        let g = &sp.grads[row * co * u..(row + 1) * co * u];
                        let p = &sp.patches[i * u * plen..(i + 1) * u * plen];
                        for o in 0..co {
                            for k in 0..plen {
                                let (mut s32, mut s64) = (0.0f32, 0.0f64);
                                for uu in 0..u {
                                    let (gv, pv) = (g[o * u + uu], p[uu * plen + k]);
                                    s32 += gv as f32 * pv as f32;
                                    s64 += gv.abs() * pv.abs();
                                }
                                out.push(if abs { s64 } else { s32 as f64 });
                            }
                        }
                    }
                    Rule::ConvExplicit { .. } | Rule::BatchNorm { .. } => {}
                }
            }
            out
        })
        .collect()
}

/// `rows · rowsᵀ`, by plain dot products accumulated in f32 (`in_f32`) or f64.
fn gram(rows: &[Vec<f64>], in_f32: bool) -> Mat<f64> {
    Mat::from_fn(rows.len(), rows.len(), |i, j| {
        if in_f32 {
            let s: f32 = rows[i]
                .iter()
                .zip(&rows[j])
                .fold(0.0f32, |acc, (&x, &y)| acc + x as f32 * y as f32);
            s as f64
        } else {
            rows[i].iter().zip(&rows[j]).map(|(x, y)| x * y).sum()
        }
    })
}

/// A wider CNN (p = 15,274), so that the contraction's inner dimension, and its f32 rounding, is large.
fn wide_cnn() -> Network {
    let mut net = Network::new("test-wide-cnn", [3, 16, 16]);
    net.then("c1", conv(3, 32, 3, 1, 1, true, 400));
    net.then("", Op::Relu);
    net.then("c2", conv(32, 32, 3, 2, 1, true, 410));
    net.then("", Op::Relu);
    net.then(
        "",
        Op::AvgPool2d {
            kernel: 2,
            stride: 2,
        },
    );
    net.then("", Op::Flatten);
    net.then("fc", linear(32 * 4 * 4, 10, true, 420));
    net
}

/// The f32 kernel's entries are f32 numbers (f32 accumulation; with `--scale none` nothing else touches
/// them), and each equals the plain f32 dot product of the Jacobian rows rebuilt from the same f32
/// features within the rounding both sums may make: per entry `2 λ √N u (|J||J|ᵀ)_ij`, N = 2p bounding
/// the roundings along any term's path (p terms, plus the few nested GEMMs of a route-B conv).
#[test]
fn f32_kernel_is_an_f32_contraction_of_the_f32_features() {
    for net in [cnn(), resnet(), wide_cnn()] {
        let n = 4;
        let k32 = kernel(&net, n, 17, Precision::F32);
        let m = k32.nrows();
        for j in 0..m {
            for i in 0..m {
                let v = k32[(i, j)];
                assert_eq!(
                    (v as f32) as f64,
                    v,
                    "{}: entry ({i}, {j}) = {v:e} is not an f32 number",
                    net.arch
                );
            }
        }
        let (feats, plan) = f32_features(&net, n, 17);
        let naive = gram(&jacobian_rows(&feats, &plan, false), true);
        let bound = gram(&jacobian_rows(&feats, &plan, true), false);
        let p = net.num_params() as f64;
        let allowed = 2.0 * LAMBDA * (2.0 * p).sqrt() * U32;
        let mut worst = 0.0f64;
        for j in 0..m {
            for i in 0..m {
                let ratio = (k32[(i, j)] - naive[(i, j)]).abs() / bound[(i, j)];
                worst = worst.max(ratio);
            }
        }
        within(
            &format!(
                "{}: |f32 kernel − naive f32 dots| / (|J||J|ᵀ), worst entry",
                net.arch
            ),
            worst,
            allowed,
        );
    }
}

/// Against the f64 kernel: f32 throughout deviates by an f32-sized amount, more than the hybrid (same f32
/// passes, f64 accumulation), and its own contraction rounding (f32 throughout against the hybrid) is far
/// above what f64 accumulation could leave (~1e-16) and within the probabilistic f32 GEMM bound for the
/// inner dimension p, `λ √N u ‖|J||J|ᵀ‖ / ‖K‖` (N = 2p as above).
#[test]
fn f32_throughout_deviates_from_f64_more_than_the_hybrid() {
    let net = wide_cnn();
    let n = 6;
    let k64 = kernel(&net, n, 23, Precision::F64);
    let k32 = kernel(&net, n, 23, Precision::F32);
    let hybrid = kernel(&net, n, 23, Precision::F32F64Acc);
    let (err32, err_hybrid, err_contraction) = (
        rel_diff(&k32, &k64),
        rel_diff(&hybrid, &k64),
        rel_diff(&k32, &hybrid),
    );
    eprintln!(
        "relative Frobenius error against f64: f32 {err32:.2e}, f32-f64acc {err_hybrid:.2e}; f32 against f32-f64acc {err_contraction:.2e}"
    );
    assert!(
        err_hybrid < err32,
        "the hybrid ({err_hybrid:e}) must be closer to f64 than f32 throughout ({err32:e})"
    );
    // Each entry of the f32 kernel is rounded to f32 at least once, a relative error spread over about
    // [−u, u], so the Frobenius relative difference is near u/√3 ≈ 3.4e-8 or more over these 3600 entries;
    // f64 accumulation of the same features would leave ~1e-16.
    assert!(
        err_contraction > 1e-8,
        "f32 throughout is {err_contraction:e} from the hybrid: its contraction accumulates in f64"
    );
    let (feats, plan) = f32_features(&net, n, 23);
    let abs = gram(&jacobian_rows(&feats, &plan, true), false);
    let p = net.num_params() as f64;
    let bound = LAMBDA * (2.0 * p).sqrt() * U32 * abs.norm_l2() / hybrid.norm_l2();
    within(
        "f32 against f32-f64acc kernel (contraction rounding), relative Frobenius",
        err_contraction,
        bound,
    );
    // f32 size: the f32 kernel's own error against f64 stays below 1e-5 (the f32 GEMM bound above is
    // ~1e-4 here; the measured value is printed).
    within("f32 against f64 kernel, relative Frobenius", err32, 1e-5);
}
