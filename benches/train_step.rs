//! One training step (train-mode forward, cross-entropy, backward, SGD update) of a CIFAR ResNet9 of width
//! 32 on a batch of 64 random 3×32×32 images, with candle's conv2d backward and with ours (im2col + GEMM),
//! interleaved in one run so machine load affects both alike. Prints the median seconds and the ratio.
//!
//! `cargo bench --bench train_step` (add `--profile dev` for a quick run; `STEPS=N` sets the repetitions).

use candle_core::{DType, Device, Tensor};
use ntk_pipeline::model::arch;
use ntk_pipeline::model::train::{ConvMode, Sgd, Trainer, VarSource};
use std::time::Instant;

fn trainer(mode: ConvMode) -> Trainer {
    let mut src = VarSource::new(0, DType::F32);
    let net = arch::build("resnet9", Some(32), [3, 32, 32], 10, &mut src).expect("build resnet9");
    let mut t = Trainer::new(net, src.into_vars(), Sgd::new(0.9, 5e-4)).expect("trainer");
    t.conv_mode = mode;
    t
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (64, 3, 32, 32), &dev).expect("input");
    let labels =
        Tensor::from_vec((0..64u32).map(|i| i % 10).collect::<Vec<_>>(), 64, &dev).expect("labels");
    let mut fast = trainer(ConvMode::Fast);
    let mut slow = trainer(ConvMode::Candle);
    println!(
        "resnet9 w=32, batch 64, {} parameters, {steps} timed steps each (after 1 warm-up)",
        fast.network.num_params()
    );
    let (mut t_fast, mut t_slow) = (Vec::new(), Vec::new());
    for i in 0..=steps {
        for (t, times) in [(&mut fast, &mut t_fast), (&mut slow, &mut t_slow)] {
            let start = Instant::now();
            t.step(&x, &labels, 0.01).expect("step");
            if i > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
    }
    let (f, s) = (median(t_fast), median(t_slow));
    println!(
        "candle conv backward: {s:.3} s/step   ours: {f:.3} s/step   speed-up x{:.2}",
        s / f
    );
}
