//! One SGD training step (train-mode forward with batch statistics, cross-entropy, backward, momentum and
//! weight decay) at batch 64, by the hand-written pass and by candle's autograd, and by PyTorch on the CPU
//! when a Python with torch is found; all in one run, interleaved, so machine load affects each alike.
//! Prints the median seconds per step and the ratios.
//!
//! "lowered" is the hand pass with its direct 3×3 convolutions turned off ([`conv_direct::set_enabled`]):
//! the path they replaced, on AVX-512 machines (elsewhere both columns run the lowered path).
//!
//! `cargo bench --bench train_step` (`STEPS=N` repetitions, default 5; `ARCHS=resnet9,lenet,mobilenet`;
//! `PASSES=hand` times the hand pass alone, e.g. under a profiler; default `hand,lowered,autograd,torch`).
//! PyTorch: `TORCH_PYTHON=/path/to/python` (default `python3`), e.g. after
//! `python3 -m venv venv && venv/bin/pip install torch`; the bench skips it when `import torch` fails.

use candle_core::{DType, Device, Tensor};
use ntk_pipeline::model::arch;
use ntk_pipeline::model::hand::conv_direct;
use ntk_pipeline::model::train::{Sgd, TrainPass, Trainer, VarSource};
use std::process::Command;
use std::time::Instant;

/// (architecture, width, input shape) of each benchmarked network: the shapes the shipped models use.
const CASES: [(&str, Option<usize>, [usize; 3]); 3] = [
    ("resnet9", Some(32), [3, 32, 32]),
    ("lenet", None, [1, 28, 28]),
    ("mobilenet", None, [3, 32, 32]),
];
const BATCH: usize = 64;

fn trainer(arch_name: &str, width: Option<usize>, shape: [usize; 3], pass: TrainPass) -> Trainer {
    let mut src = VarSource::new(0, DType::F32);
    let net = arch::build(arch_name, width, shape, 10, &mut src).expect("build");
    let mut t = Trainer::new(net, src.into_vars(), Sgd::new(0.9, 5e-4)).expect("trainer");
    t.pass = pass;
    t
}

/// The median (NaN for a pass that was not run).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// PyTorch's median seconds per step for the case, or None when no torch is available.
fn torch_step(python: &str, case: (&str, Option<usize>, [usize; 3]), steps: usize) -> Option<f64> {
    let (name, width, [c, h, w]) = case;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/train_step_torch.py");
    let threads = rayon::current_num_threads();
    let out = Command::new(python)
        .arg(script)
        .args([name, &width.unwrap_or(0).to_string()])
        .args([c, h, w, BATCH, steps, threads].map(|v| v.to_string()))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn main() {
    // As the binary does: candle otherwise reads /proc/cpuinfo on every matmul (pipeline::fix_candle_thread_count).
    ntk_pipeline::pipeline::fix_candle_thread_count(None);
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let wanted = std::env::var("ARCHS").unwrap_or_else(|_| "resnet9,lenet,mobilenet".into());
    let python = std::env::var("TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let passes = std::env::var("PASSES").unwrap_or_else(|_| "hand,lowered,autograd,torch".into());
    let runs = |pass: &str| passes.split(',').any(|p| p == pass);
    let dev = Device::Cpu;
    println!(
        "batch {BATCH}, {steps} timed steps per pass after 1 warm-up, {} threads",
        rayon::current_num_threads()
    );
    println!("| network | input | p | hand s/step | lowered s/step | autograd s/step | PyTorch s/step | lowered/hand | autograd/hand | PyTorch/hand |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for case in CASES
        .into_iter()
        .filter(|c| wanted.split(',').any(|w| w == c.0))
    {
        let (name, width, [c, h, w]) = case;
        let x = Tensor::randn(0f32, 1.0, (BATCH, c, h, w), &dev).expect("input");
        let labels = Tensor::from_vec(
            (0..BATCH as u32).map(|i| i % 10).collect::<Vec<_>>(),
            BATCH,
            &dev,
        )
        .expect("labels");
        let mut hand = trainer(name, width, [c, h, w], TrainPass::Hand);
        let mut lowered = trainer(name, width, [c, h, w], TrainPass::Hand);
        let mut auto = trainer(name, width, [c, h, w], TrainPass::Autograd);
        let (mut t_hand, mut t_low, mut t_auto) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..=steps {
            for (pass, t, times) in [
                ("hand", &mut hand, &mut t_hand),
                ("lowered", &mut lowered, &mut t_low),
                ("autograd", &mut auto, &mut t_auto),
            ] {
                if !runs(pass) {
                    continue;
                }
                conv_direct::set_enabled(pass != "lowered");
                let start = Instant::now();
                t.step(&x, &labels, 0.01).expect("step");
                if i > 0 {
                    times.push(start.elapsed().as_secs_f64());
                }
            }
        }
        conv_direct::set_enabled(true);
        let (th, tl, ta) = (median(t_hand), median(t_low), median(t_auto));
        let torch = runs("torch")
            .then(|| torch_step(&python, case, steps))
            .flatten();
        let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.3}"));
        println!(
            "| {name}{} | {c}×{h}×{w} | {} | {th:.3} | {tl:.3} | {ta:.3} | {} | {:.2} | {:.2} | {} |",
            width.map_or(String::new(), |w| format!(" w={w}")),
            hand.network.num_params(),
            fmt(torch),
            tl / th,
            ta / th,
            torch.map_or("–".to_string(), |t| format!("{:.2}", t / th)),
        );
    }
}
