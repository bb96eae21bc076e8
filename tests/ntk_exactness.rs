//! Exactness of the structured NTK tiles against brute force (one candle autograd backward per example and
//! logit) and against central finite differences. Both sides are exact up to rounding of sums of a few
//! thousand terms; tolerances are about 100× the errors measured (each stated where it is set).

use candle_core::{DType, Device, Tensor};
use faer::Mat;
use ntk_pipeline::linalg::TileSource;
use ntk_pipeline::model::{Network, Op};
use ntk_pipeline::ntk::features::Rule;
use ntk_pipeline::ntk::{brute, KernelSpec, NtkTiles, Outputs, Precision, Scale};
use tolerance::within;

#[path = "support/nets.rs"]
mod nets;
use nets::*;

mod tolerance;

/// Structured tiles against brute force, relative Frobenius (both exact up to rounding): measured ≤ 3.2e-16
/// over every network, output mode, budget and tile, so 3e-14 (about 100×; see `tests/tolerance`).
const TOL_BRUTE: f64 = 3e-14;
/// Asymmetry of the assembled kernel: measured ≤ 6.7e-17.
const TOL_SYM: f64 = 1e-14;

/// MobileNet-style: a stem conv, then two depthwise-separable blocks (depthwise 3×3 + BatchNorm + ReLU,
/// pointwise 1×1 + BatchNorm + ReLU), the second depthwise conv strided, pooling and a linear head.
fn mobilenet_block() -> Network {
    let mut net = Network::new("test-mobilenet", [2, 6, 6]);
    net.then("conv1", conv(2, 4, 3, 1, 1, false, 200));
    net.then("bn1", bn(4, 210));
    net.then("", Op::Relu);
    net.then("layers.0.conv1", grouped_conv(4, 4, 3, 1, 1, 4, false, 220));
    net.then("layers.0.bn1", bn(4, 230));
    net.then("", Op::Relu);
    net.then("layers.0.conv2", conv(4, 6, 1, 1, 0, false, 240));
    net.then("layers.0.bn2", bn(6, 250));
    net.then("", Op::Relu);
    net.then("layers.1.conv1", grouped_conv(6, 6, 3, 2, 1, 6, true, 260));
    net.then("layers.1.bn1", bn(6, 270));
    net.then("", Op::Relu);
    net.then("layers.1.conv2", conv(6, 8, 1, 1, 0, true, 280));
    net.then("", Op::Relu);
    net.then("", Op::AdaptiveAvgPool2d { output: [1, 1] });
    net.then("", Op::Flatten);
    net.then("linear", linear(8, 3, true, 290));
    net
}

/// Grouped (not depthwise) convs: groups = 2 with a bias and stride 2, then groups = 4 with 2 input and
/// 2 output channels per group.
fn grouped() -> Network {
    let mut net = Network::new("test-grouped", [4, 6, 6]);
    net.then("c1", grouped_conv(4, 8, 3, 2, 1, 2, true, 300));
    net.then("", Op::Tanh);
    net.then("c2", grouped_conv(8, 8, 3, 1, 1, 4, false, 310));
    net.then("bn", bn(8, 320));
    net.then("", Op::Relu);
    net.then("", Op::Flatten);
    net.then("fc", linear(8 * 3 * 3, 3, true, 330));
    net
}

fn rel_diff(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let diff = a - b;
    diff.norm_l2() / b.norm_l2()
}

fn dense_from(source: &dyn TileSource) -> Mat<f64> {
    let m = source.dim();
    let mut k = Mat::zeros(m, m);
    source.fill(0..m, 0..m, k.as_mut()).unwrap();
    k
}

fn spec(outputs: Outputs) -> KernelSpec {
    KernelSpec {
        outputs,
        scale: Scale::SqrtP,
        precision: Precision::F64,
    }
}

fn check_against_brute(net: &Network, n: usize, budget: usize) {
    let x = inputs(net, n, 7);
    for outputs in [
        Outputs::Full,
        Outputs::Sum,
        Outputs::Trace,
        Outputs::Logit(1),
    ] {
        let spec = spec(outputs);
        let tiles = NtkTiles::new(net, x.clone(), spec, budget).unwrap();
        let ours = dense_from(&tiles);
        let reference = brute::kernel(net, &x, &spec).unwrap();
        let err = rel_diff(&ours, &reference);
        within(
            &format!("{} {outputs:?} vs brute force", net.arch),
            err,
            TOL_BRUTE,
        );
        // Symmetry of the assembled kernel.
        let asym = rel_diff(&ours.transpose().to_owned(), &ours);
        within(
            &format!("{} {outputs:?} asymmetry", net.arch),
            asym,
            TOL_SYM,
        );
    }
}

#[test]
fn mlp_tiles_equal_brute_force() {
    check_against_brute(&mlp(), 5, 1 << 30);
}

#[test]
fn cnn_tiles_equal_brute_force_with_both_conv_routes() {
    let net = cnn();
    let x = inputs(&net, 1, 1).to_dtype(DType::F64).unwrap();
    let plan =
        ntk_pipeline::ntk::features::LayerPlan::new(&net.to_dtype(DType::F64).unwrap(), &x, 3)
            .unwrap();
    let routes: Vec<&str> = plan
        .layers
        .iter()
        .filter_map(|l| match l.rule {
            Rule::ConvExplicit { .. } => Some("A"),
            Rule::ConvSpatial { .. } => Some("B"),
            _ => None,
        })
        .collect();
    assert!(
        routes.contains(&"A") && routes.contains(&"B"),
        "routes chosen: {routes:?}"
    );
    check_against_brute(&net, 4, 1 << 30);
}

#[test]
fn resnet_tiles_equal_brute_force() {
    check_against_brute(&resnet(), 4, 1 << 30);
}

/// The groups of every conv in `net`'s route plan (grouped convs must take route A, the only grouped one).
fn planned_conv_groups(net: &Network) -> Vec<usize> {
    let x = inputs(net, 1, 1).to_dtype(DType::F64).unwrap();
    let plan =
        ntk_pipeline::ntk::features::LayerPlan::new(&net.to_dtype(DType::F64).unwrap(), &x, 3)
            .unwrap();
    plan.layers
        .iter()
        .filter_map(|l| match l.rule {
            Rule::ConvExplicit { groups, .. } => Some(groups),
            Rule::ConvSpatial { .. } => Some(1),
            _ => None,
        })
        .collect()
}

#[test]
fn mobilenet_depthwise_separable_tiles_equal_brute_force() {
    let net = mobilenet_block();
    assert_eq!(planned_conv_groups(&net), [1, 4, 1, 6, 1]);
    check_against_brute(&net, 4, 1 << 30);
}

#[test]
fn grouped_conv_tiles_equal_brute_force() {
    let net = grouped();
    assert_eq!(planned_conv_groups(&net), [2, 4]);
    check_against_brute(&net, 4, 1 << 30);
    // And with one-example feature chunks (the grouped feature layout sliced per example).
    check_against_brute(&net, 3, 1);
}

#[test]
fn spec_built_network_tiles_equal_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("net.json");
    std::fs::write(
        &spec,
        r#"{"input": [2, 6, 6], "layers": [
            {"type": "conv2d", "name": "features.0", "out": 3, "kernel": 3, "padding": 1},
            {"type": "batchnorm2d", "name": "features.1"}, {"type": "gelu"},
            {"type": "avgpool2d", "kernel": 2}, {"type": "conv2d", "name": "features.4", "out": 4, "kernel": 3, "stride": 2, "padding": 1, "bias": false},
            {"type": "tanh"}, {"type": "adaptiveavgpool2d", "output": [1, 1]}, {"type": "flatten"}, {"type": "dropout"},
            {"type": "linear", "name": "classifier.0", "out": 3}]}"#,
    )
    .unwrap();
    let net = ntk_pipeline::model::arch::build(
        spec.to_str().unwrap(),
        None,
        [2, 6, 6],
        3,
        &mut ntk_pipeline::model::SeededParams::new(5),
    )
    .unwrap();
    check_against_brute(&net, 3, 1 << 30);
}

#[test]
fn tiny_feature_budget_and_unaligned_tiles_give_the_same_kernel() {
    // A budget of one example's features forces one-example chunks and evictions; tiles whose bounds cut
    // through chunks and examples must still be exact slices of the kernel.
    let net = resnet();
    let x = inputs(&net, 5, 3);
    let spec = spec(Outputs::Full);
    let reference = brute::kernel(&net, &x, &spec).unwrap();
    let tiles = NtkTiles::new(&net, x, spec, 1).unwrap();
    assert_eq!(tiles.stats().chunk_examples, 1);
    for (rows, cols) in [(0..20, 0..20), (3..11, 7..19), (12..20, 0..5)] {
        let mut out = Mat::zeros(rows.len(), cols.len());
        tiles
            .fill(rows.clone(), cols.clone(), out.as_mut())
            .unwrap();
        let want = reference
            .as_ref()
            .submatrix(rows.start, cols.start, rows.len(), cols.len())
            .to_owned();
        within(
            &format!("tile {rows:?} x {cols:?}"),
            rel_diff(&out, &want),
            TOL_BRUTE,
        );
    }
}

#[test]
fn features_that_do_not_fit_are_scheduled_like_an_out_of_core_product() {
    // Budget for 5 examples' features with n = 20: one-example chunks, groups of 3 held column chunks (5 - 2),
    // rows streamed past each group. The whole kernel must be exact, and features computed at most
    // n + Σ_groups (examples before the group) = 20 + 3·(0 + 1 + … + 6) = 83 times, where a row-by-row sweep
    // under the same budget recomputes about n²/2 = 200.
    let net = mlp();
    let n = 20;
    let x = inputs(&net, n, 13);
    let spec = spec(Outputs::Full);
    let per_example = NtkTiles::new(&net, x.clone(), spec, 1 << 30)
        .unwrap()
        .stats()
        .feature_bytes_per_example;
    let tiles = NtkTiles::new(&net, x.clone(), spec, 5 * per_example).unwrap();
    assert_eq!(tiles.stats().chunk_examples, 1);
    assert_eq!(tiles.held_examples(), 3);
    let ours = dense_from(&tiles);
    let reference = brute::kernel(&net, &x, &spec).unwrap();
    within(
        "out-of-core schedule",
        rel_diff(&ours, &reference),
        TOL_BRUTE,
    );
    let computed = tiles.stats().feature_blocks_computed;
    assert!(computed <= 83, "features computed {computed} times");
    // The dense assembly used by `compare` follows the same schedule through its panels.
    let tiles = NtkTiles::new(&net, x.clone(), spec, 5 * per_example).unwrap();
    let dense =
        ntk_pipeline::pipeline::inputs::dense_kernel(&tiles, &ntk_pipeline::progress::Silent)
            .unwrap();
    within(
        "dense_kernel panels",
        rel_diff(&dense, &reference),
        TOL_BRUTE,
    );
    let computed = tiles.stats().feature_blocks_computed;
    assert!(
        computed <= 83,
        "dense_kernel computed features {computed} times"
    );
}

#[test]
fn a_cache_limited_after_planning_holds_what_its_new_budget_holds_and_stays_exact() {
    // `limit_cache` (used when one example's working set is larger than the quarter of a share planned
    // for it) must shrink the cache and its chunks as if the tiles had been planned with the smaller
    // budget: five examples' features of 20 give one-example chunks and 3 held column chunks, as above.
    let net = mlp();
    let n = 20;
    let x = inputs(&net, n, 13);
    let spec = spec(Outputs::Full);
    let mut tiles = NtkTiles::new(&net, x.clone(), spec, 1 << 30).unwrap();
    let per_example = tiles.stats().feature_bytes_per_example;
    assert_eq!(
        tiles.held_examples(),
        n,
        "the large budget should hold every example"
    );
    tiles.limit_cache(5 * per_example);
    assert_eq!(tiles.stats().chunk_examples, 1);
    assert_eq!(tiles.held_examples(), 3);
    let ours = dense_from(&tiles);
    within(
        "limited cache",
        rel_diff(&ours, &brute::kernel(&net, &x, &spec).unwrap()),
        TOL_BRUTE,
    );
    let computed = tiles.stats().feature_blocks_computed;
    assert!(
        (n + 1..=83).contains(&computed),
        "features computed {computed} times: the cache was not limited or its schedule broke"
    );
}

#[test]
fn finite_differences_agree_with_the_kernel() {
    // Central differences of f w.r.t. every parameter, in f64 with h = 1e-5: truncation error O(h²) ≈ 1e-10
    // at most, measured 7.6e-12; tolerance 1e-9 (a wrong derivative rule would be off by O(1)).
    let net = mlp().to_dtype(DType::F64).unwrap();
    let x = inputs(&net, 3, 11).to_dtype(DType::F64).unwrap();
    let base = net.forward(&x).unwrap();
    let (n, d) = base.dims2().unwrap();
    let mut columns: Vec<Vec<f64>> = Vec::new();
    let h = 1e-5;
    let params: Vec<(usize, usize)> = net
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(k, node)| (0..node.op.parameters().len()).map(move |q| (k, q)))
        .collect();
    for (k, q) in params {
        let len = net.nodes[k].op.parameters()[q].1.elem_count();
        for e in 0..len {
            let eval = |delta: f64| {
                let mut perturbed = net.clone();
                let op = &mut perturbed.nodes[k].op;
                let t = match (op, q) {
                    (Op::Linear(l), 0) => &mut l.weight,
                    (Op::Linear(l), _) => l.bias.as_mut().unwrap(),
                    _ => unreachable!("the MLP has only linear layers"),
                };
                let mut v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                v[e] += delta;
                *t = Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap();
                perturbed
                    .forward(&x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            };
            let (plus, minus) = (eval(h), eval(-h));
            columns.push(
                plus.iter()
                    .zip(&minus)
                    .map(|(a, b)| (a - b) / (2.0 * h))
                    .collect(),
            );
        }
    }
    let p = columns.len();
    let j = Mat::from_fn(n * d, p, |r, c| columns[c][r]);
    let fd_kernel = &j * j.transpose() * faer::Scale(1.0 / (p as f64).sqrt());
    let tiles = NtkTiles::new(&net, x, spec(Outputs::Full), 1 << 30).unwrap();
    assert_eq!(tiles.num_params(), p);
    let err = rel_diff(&dense_from(&tiles), &fd_kernel);
    within("finite differences", err, 1e-9);
}

#[test]
fn scale_options_divide_by_the_right_constant() {
    let net = mlp();
    let x = inputs(&net, 2, 5);
    let p = net.num_params() as f64;
    let none = dense_from(
        &NtkTiles::new(
            &net,
            x.clone(),
            KernelSpec {
                scale: Scale::None,
                ..spec(Outputs::Full)
            },
            1 << 30,
        )
        .unwrap(),
    );
    let by_p = dense_from(
        &NtkTiles::new(
            &net,
            x,
            KernelSpec {
                scale: Scale::P,
                ..spec(Outputs::Full)
            },
            1 << 30,
        )
        .unwrap(),
    );
    let scaled = &by_p * faer::Scale(p);
    // One multiplication by p apart: measured 5.2e-17.
    within("scale p times p vs none", rel_diff(&scaled, &none), 5e-15);
}

#[test]
fn f32_formation_is_close_but_not_identical() {
    let net = cnn();
    let x = inputs(&net, 3, 9);
    let k64 = dense_from(&NtkTiles::new(&net, x.clone(), spec(Outputs::Full), 1 << 30).unwrap());
    let k32 = dense_from(
        &NtkTiles::new(
            &net,
            x,
            KernelSpec {
                precision: Precision::F32,
                ..spec(Outputs::Full)
            },
            1 << 30,
        )
        .unwrap(),
    );
    let err = rel_diff(&k32, &k64);
    assert!(err > 0.0, "f32 formation must differ from f64");
    // f32 rounding (unit 6e-8) of features and f32 products: measured 5.0e-8 (2.1e-8 when the f32
    // features were contracted in f64; `tests/ntk_f32.rs` tests both precisions further).
    within("f32 vs f64 formation", err, 2e-6);
}

/// The hand-written feature pass and the candle one give the same features (every explicit column, dense
/// and spatial factor) in every output mode, and so do 2 and 1 examples per pass: all are exact up to
/// rounding, measured ≤ 1e-15 relative.
#[test]
fn hand_and_candle_feature_passes_agree() {
    use ntk_pipeline::ntk::features::{compute_with, FeaturePass, LayerPlan};
    for net in [
        cnn(),
        resnet(),
        depthwise(),
        mobilenet_block(),
        grouped(),
        mlp(),
    ] {
        let net = net.to_dtype(DType::F64).unwrap();
        let x = inputs(&net, 3, 11).to_dtype(DType::F64).unwrap();
        for outputs in [
            Outputs::Full,
            Outputs::Sum,
            Outputs::Centered,
            Outputs::Logit(1),
        ] {
            let rows = match outputs {
                Outputs::Full | Outputs::Trace => net.num_outputs().unwrap(),
                Outputs::Centered => net.num_outputs().unwrap() - 1,
                _ => 1,
            };
            let plan = LayerPlan::new(&net, &x.narrow(0, 0, 1).unwrap(), rows).unwrap();
            let s = spec(outputs);
            let a = compute_with(FeaturePass::Hand, &net, &plan, &x, &s, 2).unwrap();
            let b = compute_with(FeaturePass::Candle, &net, &plan, &x, &s, 2).unwrap();
            // One example per pass: the extraction then handles examples one by one (at 2 per pass it
            // runs them side by side, which both passes share, so only this comparison sees it).
            let one = compute_with(FeaturePass::Hand, &net, &plan, &x, &s, 1).unwrap();
            let flat = |f: &ntk_pipeline::ntk::features::Features| {
                let mut v = f.explicit.clone();
                for d in &f.dense {
                    v.extend(&d.inputs);
                    v.extend(&d.grads);
                }
                for sp in &f.spatial {
                    v.extend(&sp.patches);
                    v.extend(&sp.grads);
                }
                v
            };
            let (va, vb, v1) = (flat(&a), flat(&b), flat(&one));
            // ‖x − y‖ and ‖y‖ of two feature vectors of the same layout.
            let gap = |x: &[f64], y: &[f64]| -> (f64, f64) {
                assert_eq!(x.len(), y.len(), "{}: feature sizes", net.arch);
                let d = x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum::<f64>();
                (d.sqrt(), y.iter().map(|q| q * q).sum::<f64>().sqrt())
            };
            for (other, what) in [(&vb, "candle's pass"), (&v1, "1 example per pass")] {
                let (diff, norm) = gap(&va, other);
                assert!(
                    diff <= 1e-13 * norm,
                    "{} {outputs:?}: features differ from {what}'s by {:e} relative",
                    net.arch,
                    diff / norm
                );
            }
        }
    }
}

#[test]
fn sources_of_the_same_plan_side_by_side_each_read_their_own_weights() {
    // The hand-written pass's buffers are kept from one feature chunk to the next, process-wide, and
    // reused by any network of the same plan: each source must still read its own weights and running
    // statistics. One-example chunks (budget 1) make every source recompute, alternating.
    let (a, b) = (resnet(), resnet_seeded(7));
    let x = inputs(&a, 4, 3);
    let spec = spec(Outputs::Full);
    let (want_a, want_b) = (
        brute::kernel(&a, &x, &spec).unwrap(),
        brute::kernel(&b, &x, &spec).unwrap(),
    );
    assert!(rel_diff(&want_a, &want_b) > 1e-3, "the two networks differ");
    let ta = NtkTiles::new(&a, x.clone(), spec, 1).unwrap();
    let tb = NtkTiles::new(&b, x.clone(), spec, 1).unwrap();
    for _ in 0..2 {
        within("source a", rel_diff(&dense_from(&ta), &want_a), TOL_BRUTE);
        within("source b", rel_diff(&dense_from(&tb), &want_b), TOL_BRUTE);
    }
}
