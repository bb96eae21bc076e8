//! The matrix-free NTK products: the tangent pass `J w` against central finite differences, the reverse
//! pass `Jᵀ z` against it through the adjoint identity ⟨J w, z⟩ = ⟨w, Jᵀ z⟩, and `K V` against the exact
//! tiles times V, on a ResNet block with BatchNorm and a strided shortcut, a depthwise-separable block, a
//! CNN with max-pool and an MLP with tanh/GELU, in every output mode. The hand-written products (the
//! default) against candle's graph on MobileNet (depthwise convolutions), LeNet and ResNet9, and in f32
//! against the f64 kernel.

#[path = "support/nets.rs"]
mod nets;

use candle_core::DType;
use faer::{Mat, MatRef};
use ntk_pipeline::linalg::TileSource;
use ntk_pipeline::model::Network;
use ntk_pipeline::ntk::layout::{perturbed, ParamLayout};
use ntk_pipeline::ntk::{KernelSpec, MatvecPass, NtkOperator, NtkTiles, Outputs, Precision, Scale};

fn spec(outputs: Outputs) -> KernelSpec {
    KernelSpec {
        outputs,
        scale: Scale::SqrtP,
        precision: Precision::F64,
    }
}

fn modes() -> [Outputs; 4] {
    [
        Outputs::Full,
        Outputs::Sum,
        Outputs::Trace,
        Outputs::Logit(1),
    ]
}

fn networks() -> Vec<Network> {
    [nets::resnet(), nets::depthwise(), nets::cnn(), nets::mlp()]
        .into_iter()
        .map(|n| n.to_dtype(DType::F64).unwrap())
        .collect()
}

fn block(rows: usize, cols: usize, seed: u64) -> Mat<f64> {
    let v = nets::values(rows * cols, seed, 1.0);
    Mat::from_fn(rows, cols, |r, c| v[c * rows + r])
}

fn rel(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    (a - b).norm_l2() / b.norm_l2()
}

#[test]
fn tangent_pass_equals_central_finite_differences() {
    // Central differences have error O(eps²) (truncation) + O(1e-16 / eps) (rounding): about 1e-10 at
    // eps = 1e-5, well inside the 1e-7 the issue asks for.
    let eps = 1e-5;
    for net in networks() {
        let x = nets::inputs(&net, 3, 11).to_dtype(DType::F64).unwrap();
        let op = NtkOperator::new(&net, x.clone(), spec(Outputs::Full), 1 << 30).unwrap();
        let p = ParamLayout::new(&net).total;
        let w = block(p, 1, 5);
        let jw = op.j(w.as_ref()).unwrap();
        let dir: Vec<f64> = (0..p).map(|i| w[(i, 0)]).collect();
        let plus = perturbed(&net, &dir, eps).unwrap().forward(&x).unwrap();
        let minus = perturbed(&net, &dir, -eps).unwrap().forward(&x).unwrap();
        let fd = ((plus - minus).unwrap() / (2.0 * eps)).unwrap();
        let fd = fd.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let fd = Mat::from_fn(fd.len(), 1, |r, _| fd[r]);
        let err = rel(&jw, &fd);
        assert!(
            err <= 1e-7,
            "{}: J w vs finite differences {err:e}",
            net.arch
        );
    }
}

#[test]
fn reverse_and_tangent_passes_are_adjoint() {
    for net in networks() {
        let x = nets::inputs(&net, 4, 12);
        for outputs in modes() {
            let op = NtkOperator::new(&net, x.clone(), spec(outputs), 1 << 30).unwrap();
            let w = block(op.factor_dim(), 3, 21);
            let z = block(op.order(), 3, 22);
            let jw = op.j(w.as_ref()).unwrap();
            let jtz = op.jt(z.as_ref()).unwrap();
            for t in 0..3 {
                let lhs: f64 = (0..z.nrows()).map(|r| jw[(r, t)] * z[(r, t)]).sum();
                let rhs: f64 = (0..w.nrows()).map(|r| w[(r, t)] * jtz[(r, t)]).sum();
                let err = (lhs - rhs).abs() / lhs.abs().max(rhs.abs());
                assert!(
                    err <= 1e-12,
                    "{} {outputs:?}: <Jw, z> = {lhs}, <w, Jᵀz> = {rhs} ({err:e})",
                    net.arch
                );
            }
        }
    }
}

#[test]
fn kernel_products_equal_exact_tiles_times_v() {
    for net in networks() {
        let x = nets::inputs(&net, 5, 13);
        for outputs in modes() {
            let tiles = NtkTiles::new(&net, x.clone(), spec(outputs), 1 << 30).unwrap();
            let m = tiles.dim();
            let mut k = Mat::zeros(m, m);
            tiles.fill(0..m, 0..m, k.as_mut()).unwrap();
            let v = block(m, 4, 31);
            let reference = &k * &v;
            // A memory bound of two parameter vectors forces the product into column blocks.
            let p = ParamLayout::new(&net).total;
            for memory in [
                1 << 30,
                16 * p * if outputs == Outputs::Trace { 3 } else { 1 },
            ] {
                let op = NtkOperator::new(&net, x.clone(), spec(outputs), memory).unwrap();
                assert_eq!(op.pass(), MatvecPass::Hand, "{}", net.arch);
                let mut kv = Mat::zeros(m, 4);
                op.kv(v.as_ref(), kv.as_mut()).unwrap();
                let err = rel(&kv, &reference);
                assert!(
                    err <= 1e-12,
                    "{} {outputs:?} (memory {memory}): K V error {err:e}",
                    net.arch
                );
                assert_eq!(op.products(), 4);
            }
        }
    }
}

/// Small builds of the shipped architectures: depthwise and pointwise convolutions (MobileNet), plain
/// convolutions with max-pool and linear layers (LeNet), a lowered 3×3 stack with BatchNorm and residual
/// adds (ResNet9).
fn architectures() -> Vec<Network> {
    use ntk_pipeline::model::{arch, SeededParams};
    [
        ("mobilenet", None, [3, 32, 32]),
        ("lenet", None, [1, 28, 28]),
        ("resnet9", Some(4), [3, 32, 32]),
    ]
    .into_iter()
    .map(|(name, width, shape)| {
        arch::build(name, width, shape, 10, &mut SeededParams::new(7))
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    })
    .collect()
}

#[test]
fn hand_products_equal_candle_products() {
    // The shipped architectures in full mode on two examples (candle's graph is slow on them), the small
    // networks in the two modes whose seeds differ most (all logits; d vectors per vector for `trace`).
    let cases = architectures()
        .into_iter()
        .map(|net| (net, 2, vec![Outputs::Full]))
        .chain(
            networks()
                .into_iter()
                .map(|net| (net, 3, vec![Outputs::Full, Outputs::Trace])),
        );
    for (net, n, modes) in cases {
        let x = nets::inputs(&net, n, 14);
        for outputs in modes {
            let ops = [MatvecPass::Hand, MatvecPass::Candle].map(|pass| {
                NtkOperator::with_pass(pass, &net, x.clone(), spec(outputs), 1 << 30).unwrap()
            });
            assert_eq!(ops[0].pass(), MatvecPass::Hand);
            let w = block(ops[0].factor_dim(), 1, 41);
            let z = block(ops[0].order(), 1, 42);
            let [jw, jw_ref] = [0, 1].map(|k| ops[k].j(w.as_ref()).unwrap());
            let [jtz, jtz_ref] = [0, 1].map(|k| ops[k].jt(z.as_ref()).unwrap());
            let [kz, kz_ref] = [0, 1].map(|k| {
                let mut out = Mat::zeros(ops[k].order(), 1);
                ops[k].kv(z.as_ref(), out.as_mut()).unwrap();
                out
            });
            for (what, a, b) in [
                ("J w", jw, jw_ref),
                ("Jᵀ z", jtz, jtz_ref),
                ("K z", kz, kz_ref),
            ] {
                let err = rel(&a, &b);
                assert!(
                    err <= 1e-12,
                    "{} {outputs:?}: {what} hand vs candle {err:e}",
                    net.arch
                );
            }
        }
    }
}

#[test]
fn f32_hand_products_follow_the_f64_kernel() {
    // Single precision carries about 6e-8 relative rounding per operation; through a dozen layers and
    // sums over thousands of terms the products stay within 1e-5 of the f64 ones (an error in a tangent
    // or contraction rule would be of order 1).
    for net in architectures() {
        let x = nets::inputs(&net, 3, 15);
        let mut f32_spec = spec(Outputs::Full);
        f32_spec.precision = Precision::F32;
        let op32 = NtkOperator::new(&net, x.clone(), f32_spec, 1 << 30).unwrap();
        let op64 = NtkOperator::new(&net, x.clone(), spec(Outputs::Full), 1 << 30).unwrap();
        assert_eq!(op32.pass(), MatvecPass::Hand);
        let z = block(op64.order(), 2, 43);
        let [k32, k64] = [&op32, &op64].map(|op| {
            let mut out = Mat::zeros(op.order(), 2);
            op.kv(z.as_ref(), out.as_mut()).unwrap();
            out
        });
        let err = rel(&k32, &k64);
        assert!(err <= 1e-5, "{}: f32 K z vs f64 {err:e}", net.arch);
    }
}

/// A product of the operator applied to a block of vectors.
type Product<'a> = dyn Fn(MatRef<'_, f64>) -> Mat<f64> + 'a;

#[test]
fn many_directions_and_vectors_in_blocks_equal_one_at_a_time() {
    // More directions than one GEMM takes (DIRECTION_BLOCK), so the tangent pass's convolutions (and the
    // reverse pass's weight gradients) run in several stacked blocks from one patch matrix; each column
    // must be what that direction gives alone
    // (itself checked against candle's products above). LeNet's convolutions have biases, MobileNet's
    // depthwise ones take the per-direction path.
    use ntk_pipeline::model::hand::tangent::DIRECTION_BLOCK;
    let q = 2 * DIRECTION_BLOCK + 3;
    for net in architectures() {
        let x = nets::inputs(&net, 2, 15);
        let op = NtkOperator::new(&net, x, spec(Outputs::Full), 1 << 30).unwrap();
        assert_eq!(op.pass(), MatvecPass::Hand);
        // J W, then Jᵀ Z (the reverse pass's weight gradients in stacked blocks too).
        let w = block(op.factor_dim(), q, 51);
        let z = block(op.order(), q, 52);
        let products: [(&str, &Product, &Mat<f64>); 2] = [
            ("J w", &|v| op.j(v).unwrap(), &w),
            ("Jᵀ z", &|v| op.jt(v).unwrap(), &z),
        ];
        for (what, apply, vectors) in products {
            let all = apply(vectors.as_ref());
            for t in [0, DIRECTION_BLOCK - 1, DIRECTION_BLOCK, q - 1] {
                let one = apply(vectors.as_ref().subcols(t, 1));
                let col = Mat::from_fn(one.nrows(), 1, |r, _| all[(r, t)]);
                let err = rel(&col, &one);
                assert!(
                    err <= 1e-13,
                    "{}: {what}, vector {t} of {q}: {err:e}",
                    net.arch
                );
            }
        }
    }
}
