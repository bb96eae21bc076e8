//! What the hand-written pass holds against what its plan counts before it runs (`Plan::train_bytes`,
//! `eval_bytes`, `reverse_bytes`, the figures `--max-mem` plans `train`, `eval` and the NTK feature pass
//! with): after a training step, an eval-mode forward and an NTK reverse pass on small ResNet9, MobileNet
//! and LeNet networks, the allocated bytes of every buffer (`HandPass::held_bytes`) equal the count
//! exactly. A buffer added to the pass without being counted, or a count that drifts from the buffers'
//! sizes, fails here.

use candle_core::{DType, Tensor};
use ntk_pipeline::model::arch;
use ntk_pipeline::model::hand::HandPass;
use ntk_pipeline::model::train::VarSource;
use ntk_pipeline::model::Network;

/// The networks: a lowered 3×3 convolution stack with BatchNorm and residual adds (ResNet9), depthwise
/// and pointwise convolutions (MobileNet), plain convolutions, pooling and linear layers (LeNet).
fn networks(dtype: DType) -> Vec<Network> {
    [
        ("resnet9", Some(4), [3, 32, 32]),
        ("mobilenet", None, [3, 32, 32]),
        ("lenet", None, [1, 28, 28]),
    ]
    .into_iter()
    .map(|(name, width, shape)| {
        let mut src = VarSource::new(3, dtype);
        arch::build(name, width, shape, 10, &mut src).expect("build")
    })
    .collect()
}

fn values<T: candle_core::WithDType>(t: &Tensor) -> Vec<T> {
    t.flatten_all().unwrap().to_vec1::<T>().unwrap()
}

fn params<T: candle_core::WithDType>(net: &Network) -> Vec<Vec<T>> {
    net.parameters()
        .into_iter()
        .map(|(_, t)| values(t))
        .collect()
}

fn running(net: &Network) -> Vec<(Vec<f64>, Vec<f64>)> {
    let buffers = net.buffers();
    buffers
        .chunks(2)
        .map(|b| {
            let f = |t: &Tensor| values::<f64>(&t.to_dtype(DType::F64).unwrap());
            (f(b[0].1), f(b[1].1))
        })
        .collect()
}

/// A deterministic batch of `n` inputs.
fn inputs<T: ntk_pipeline::model::hand::Real>(net: &Network, n: usize) -> Vec<T> {
    let per: usize = net.input_shape.iter().product();
    (0..n * per)
        .map(|i| T::from_f64(((i * 37 % 101) as f64 / 101.0) - 0.5))
        .collect()
}

#[test]
fn a_training_step_holds_what_the_plan_counts() {
    for net in networks(DType::F32) {
        let mut pass = HandPass::<f32>::new(&net).unwrap();
        let p = params::<f32>(&net);
        let mut grads: Vec<Vec<f32>> = p.iter().map(|v| vec![0.0; v.len()]).collect();
        // A full batch, then a shorter last one: the buffers stay sized for the full batch.
        for n in [6, 4] {
            let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
            pass.gradients(&net, &p, &inputs(&net, n), &labels, &mut grads)
                .unwrap();
        }
        assert_eq!(
            pass.held_bytes(),
            pass.plan().train_bytes::<f32>(&net, 6),
            "{}",
            net.arch
        );
    }
}

#[test]
fn eval_mode_forwards_hold_what_the_plan_counts() {
    for net in networks(DType::F32) {
        let mut pass = HandPass::<f32>::new(&net).unwrap();
        let (p, run) = (params::<f32>(&net), running(&net));
        for n in [5, 2] {
            pass.logits_eval(&net, &p, &run, &inputs(&net, n), n)
                .unwrap();
        }
        assert_eq!(
            pass.held_bytes(),
            pass.plan().eval_bytes::<f32>(5),
            "{}",
            net.arch
        );
    }
}

#[test]
fn ntk_reverse_passes_hold_what_the_plan_counts() {
    for net in networks(DType::F64) {
        let mut pass = HandPass::<f64>::new(&net).unwrap();
        let (p, run) = (params::<f64>(&net), running(&net));
        let d = 10;
        for (n, r) in [(3, d), (1, d), (2, 1)] {
            // Row i·r + c seeds logit c of example i (r = d), or every logit (r = 1).
            let seeds: Vec<f64> = (0..n * r * d)
                .map(|k| {
                    let (row, j) = (k / d, k % d);
                    if r == 1 || row % r == j {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            pass.reverse_rows(&net, &p, &run, &inputs(&net, n), n, r, &seeds, |_| Ok(()))
                .unwrap();
        }
        assert_eq!(
            pass.held_bytes(),
            pass.plan().reverse_bytes::<f64>(&net, 3, d),
            "{}",
            net.arch
        );
    }
}

#[test]
fn ntk_matrix_free_products_hold_what_the_plan_counts() {
    for net in networks(DType::F64) {
        let mut pass = HandPass::<f64>::new(&net).unwrap();
        let (p, run) = (params::<f64>(&net), running(&net));
        let d = 10;
        // Reverse and tangent passes as the NTK operator runs them, a full micro-batch then a shorter one.
        for (n, q) in [(3, 2), (1, 2), (2, 1)] {
            let seeds = vec![0.5; n * q * d];
            pass.reverse_rows(&net, &p, &run, &inputs(&net, n), n, q, &seeds, |_| Ok(()))
                .unwrap();
            let dirs: Vec<Vec<f64>> = p.iter().map(|v| vec![0.25; q * v.len()]).collect();
            pass.tangent_rows(&net, &p, &run, &inputs(&net, n), n, q, &dirs)
                .unwrap();
        }
        assert_eq!(
            pass.held_bytes(),
            pass.plan().product_bytes::<f64>(&net, 3, 2),
            "{}",
            net.arch
        );
    }
}
