//! The matrix-free trace estimators against exact values: every estimator's mean over many seeds lies within
//! 3 standard errors (of that mean, from the spread over seeds) of the exact tr K and tr K², its reported
//! standard error matches the spread it shows, Hutch++'s error falls faster with S than Hutchinson's on an
//! NTK (a decaying spectrum), and SLQ on the matrix-free operator equals SLQ on the formed kernel.

#[path = "support/nets.rs"]
mod nets;

use faer::Mat;
use ntk_pipeline::estimators::one_sided::{one_sided, Side};
use ntk_pipeline::estimators::operator::KernelOperator;
use ntk_pipeline::estimators::slq::slq_on;
use ntk_pipeline::estimators::trace::{hutchinson, hutchpp, TraceMoments};
use ntk_pipeline::estimators::SlqOptions;
use ntk_pipeline::linalg::{DenseSource, TileSource};
use ntk_pipeline::ntk::{KernelSpec, NtkOperator, NtkTiles, Outputs, Precision, Scale};
use ntk_pipeline::progress::Silent;

fn spec(outputs: Outputs) -> KernelSpec {
    KernelSpec {
        outputs,
        scale: Scale::SqrtP,
        precision: Precision::F64,
    }
}

fn dense(tiles: &dyn TileSource) -> Mat<f64> {
    let m = tiles.dim();
    let mut k = Mat::zeros(m, m);
    tiles.fill(0..m, 0..m, k.as_mut()).unwrap();
    k
}

fn exact_moments(k: &Mat<f64>) -> (f64, f64) {
    let m = k.nrows();
    let tr = (0..m).map(|i| k[(i, i)]).sum();
    let f2 = (0..m)
        .flat_map(|c| (0..m).map(move |r| (r, c)))
        .map(|(r, c)| k[(r, c)] * k[(r, c)])
        .sum();
    (tr, f2)
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Over `runs` seeds: the mean of each estimate is within 3 standard errors of the mean of the exact
/// value, and the median reported standard error is within a factor 2 of the spread over seeds.
fn check_unbiased(name: &str, runs: usize, exact: (f64, f64), est: impl Fn(u64) -> TraceMoments) {
    let results: Vec<TraceMoments> = (0..runs as u64).map(|s| est(1000 + s)).collect();
    for (what, want, pick) in [("tr K", exact.0, 0usize), ("tr K²", exact.1, 1usize)] {
        let vals: Vec<f64> = results
            .iter()
            .map(|r| {
                if pick == 0 {
                    r.trace.value
                } else {
                    r.trace_sq.value
                }
            })
            .collect();
        let mut ses: Vec<f64> = results
            .iter()
            .map(|r| {
                if pick == 0 {
                    r.trace.std_error
                } else {
                    r.trace_sq.std_error
                }
            })
            .collect();
        ses.sort_by(f64::total_cmp);
        let (mean, sd) = mean_sd(&vals);
        let se_mean = sd / (runs as f64).sqrt();
        assert!(
            (mean - want).abs() <= 3.0 * se_mean,
            "{name} {what}: mean {mean} over {runs} seeds, exact {want}, 3 SE = {}",
            3.0 * se_mean
        );
        let reported = ses[runs / 2];
        assert!(
            reported > sd / 2.0 && reported < sd * 2.0,
            "{name} {what}: reported standard error {reported:e} vs spread {sd:e}"
        );
    }
}

#[test]
fn every_estimator_is_unbiased_on_an_ntk() {
    // A small ResNet block (BatchNorm, strided shortcut) on 6 examples in full mode: m = 24, and the
    // one-sided estimators draw real reverse/forward products through the operator.
    let net = nets::resnet();
    let x = nets::inputs(&net, 6, 5);
    let tiles = NtkTiles::new(&net, x.clone(), spec(Outputs::Full), 1 << 30).unwrap();
    let k = dense(&tiles);
    let exact = exact_moments(&k);
    let op = NtkOperator::new(&net, x, spec(Outputs::Full), 1 << 30).unwrap();
    let src = DenseSource::new(k);
    let kop = KernelOperator::new(&src, 1 << 30);
    check_unbiased("hutchinson", 300, exact, |s| {
        hutchinson(&kop, 8, s).unwrap()
    });
    check_unbiased("hutchpp", 300, exact, |s| hutchpp(&kop, 9, s).unwrap());
    check_unbiased("one-sided-reverse", 300, exact, |s| {
        one_sided(&op, Side::Reverse, 8, s, 1 << 30).unwrap()
    });
    check_unbiased("one-sided-forward", 300, exact, |s| {
        one_sided(&op, Side::Forward, 8, s, 1 << 30).unwrap()
    });
}

#[test]
fn hutchinson_through_the_operator_equals_hutchinson_on_the_formed_kernel() {
    let net = nets::depthwise();
    let x = nets::inputs(&net, 5, 6);
    for outputs in [Outputs::Full, Outputs::Trace] {
        let tiles = NtkTiles::new(&net, x.clone(), spec(outputs), 1 << 30).unwrap();
        let src = DenseSource::new(dense(&tiles));
        let kop = KernelOperator::new(&src, 1 << 30);
        let op = NtkOperator::new(&net, x.clone(), spec(outputs), 1 << 30).unwrap();
        let a = hutchpp(&kop, 9, 3).unwrap();
        let b = hutchpp(&op, 9, 3).unwrap();
        let rel = |x: f64, y: f64| (x - y).abs() / y.abs();
        assert!(rel(b.trace.value, a.trace.value) <= 1e-12, "{outputs:?}");
        assert!(
            rel(b.trace_sq.value, a.trace_sq.value) <= 1e-12,
            "{outputs:?}"
        );
    }
}

#[test]
fn hutchpp_error_falls_faster_with_probes_than_hutchinson() {
    // The shipped LeNet's NTK on 40 MNIST images (m = 400) has a decaying spectrum; Hutchinson's RMS error
    // falls like S^-1/2, Hutch++'s faster (like S^-1 for a fast decay).
    let prepared_net = ntk_pipeline::model::load::load_model(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/lenet-mnist.safetensors"
        ),
        None,
        None,
        None,
        None,
    )
    .unwrap();
    let ds = ntk_pipeline::data::load_with(
        concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/mnist"),
        &ntk_pipeline::data::DataOptions {
            split: ntk_pipeline::data::Split::Train,
            data_dir: None,
            download: false,
        },
        &ntk_pipeline::data::Locations::from_env(),
        &Silent,
    )
    .unwrap();
    let idx: Vec<usize> = (0..40).collect();
    let x = ds.images(&idx, prepared_net.network.input_shape).unwrap();
    let tiles = NtkTiles::new(&prepared_net.network, x, spec(Outputs::Full), 1 << 30).unwrap();
    let k = dense(&tiles);
    let (tr, f2) = exact_moments(&k);
    let src = DenseSource::new(k);
    let op = KernelOperator::new(&src, 1 << 30);
    let rms = |f: &dyn Fn(u64) -> TraceMoments, exact: f64, pick: usize| -> f64 {
        let e: Vec<f64> = (0..60u64)
            .map(|s| {
                let r = f(s);
                let v = if pick == 0 {
                    r.trace.value
                } else {
                    r.trace_sq.value
                };
                ((v - exact) / exact).powi(2)
            })
            .collect();
        (e.iter().sum::<f64>() / e.len() as f64).sqrt()
    };
    for (what, exact, pick) in [("tr K", tr, 0), ("tr K²", f2, 1)] {
        let h6 = rms(&|s| hutchinson(&op, 6, s).unwrap(), exact, pick);
        let h60 = rms(&|s| hutchinson(&op, 60, s).unwrap(), exact, pick);
        let p6 = rms(&|s| hutchpp(&op, 6, s).unwrap(), exact, pick);
        let p60 = rms(&|s| hutchpp(&op, 60, s).unwrap(), exact, pick);
        assert!(
            p6 / p60 > h6 / h60,
            "{what}: Hutch++ error ratio S=6/S=60 {} vs Hutchinson's {}",
            p6 / p60,
            h6 / h60
        );
        assert!(
            p60 < h60,
            "{what}: at S = 60 Hutch++ {p60:e} vs Hutchinson {h60:e}"
        );
    }
}

#[test]
fn slq_on_the_matrix_free_operator_equals_slq_on_the_formed_kernel() {
    let net = nets::cnn();
    let x = nets::inputs(&net, 6, 7);
    let tiles = NtkTiles::new(&net, x.clone(), spec(Outputs::Full), 1 << 30).unwrap();
    let src = DenseSource::new(dense(&tiles));
    let opts = SlqOptions {
        steps: 10,
        min_probes: 6,
        max_probes: 6,
        rtol: 0.0,
        seed: 9,
        memory_bytes: 1 << 30,
    };
    let formed = slq_on(&KernelOperator::new(&src, 1 << 30), &opts, &Silent).unwrap();
    let op = NtkOperator::new(&net, x, spec(Outputs::Full), 1 << 30).unwrap();
    let free = slq_on(&op, &opts, &Silent).unwrap();
    let rel = (free.mean - formed.mean).abs() / formed.mean.abs();
    assert!(
        rel <= 1e-10,
        "slq-matvec {} vs slq {} ({rel:e})",
        free.mean,
        formed.mean
    );
    for (a, b) in free.per_probe.iter().zip(&formed.per_probe) {
        assert!((a - b).abs() <= 1e-10 * b.abs());
    }
}

#[test]
fn kernel_kernel_alignment_estimate_is_consistent() {
    // Two different networks' NTKs on the same sample: the shared-probe estimate of ⟨K1, K2⟩ is unbiased
    // over seeds, and the alignment ratio lands within 3 jackknife standard errors of the exact value.
    use ntk_pipeline::estimators::trace::kernel_alignment;
    let (a, b) = (nets::resnet(), nets::resnet());
    let b = ntk_pipeline::ntk::layout::perturbed(
        &b,
        &nets::values(
            ntk_pipeline::ntk::layout::ParamLayout::new(&b).total,
            4,
            0.3,
        ),
        1.0,
    )
    .unwrap();
    let x = nets::inputs(&a, 6, 8);
    let ka = dense(&NtkTiles::new(&a, x.clone(), spec(Outputs::Full), 1 << 30).unwrap());
    let kb = dense(&NtkTiles::new(&b, x, spec(Outputs::Full), 1 << 30).unwrap());
    let inner: f64 = (0..ka.nrows())
        .flat_map(|c| (0..ka.nrows()).map(move |r| (r, c)))
        .map(|(r, c)| ka[(r, c)] * kb[(r, c)])
        .sum();
    let exact = inner / (exact_moments(&ka).1.sqrt() * exact_moments(&kb).1.sqrt());
    let (sa, sb) = (DenseSource::new(ka), DenseSource::new(kb));
    let (oa, ob) = (
        KernelOperator::new(&sa, 1 << 30),
        KernelOperator::new(&sb, 1 << 30),
    );
    let runs: Vec<_> = (0..200u64)
        .map(|s| kernel_alignment(&oa, &ob, 10, s).unwrap())
        .collect();
    let (mean, sd) = mean_sd(&runs.iter().map(|r| r.inner.value).collect::<Vec<_>>());
    assert!(
        (mean - inner).abs() <= 3.0 * sd / (200f64).sqrt(),
        "inner {mean} vs {inner}"
    );
    let big = kernel_alignment(&oa, &ob, 400, 1).unwrap();
    assert!(
        (big.alignment.value - exact).abs() <= 3.0 * big.alignment.std_error,
        "alignment {} ± {} vs exact {exact}",
        big.alignment.value,
        big.alignment.std_error
    );
}
