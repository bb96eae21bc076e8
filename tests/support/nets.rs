//! Small test networks built directly from layers (shared by the NTK-product and statistics tests): an MLP
//! with tanh/GELU, a CNN with max-pool and both conv routes, a ResNet block with BatchNorm and a strided
//! shortcut, and a MobileNet-style block with a depthwise conv.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use ntk_pipeline::model::{BatchNorm2d, Conv2d, Linear, Network, Op};

/// Deterministic pseudo-random values in (−scale, scale).
pub fn values(len: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

pub fn tensor(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let len = shape.iter().product();
    Tensor::from_vec(values(len, seed, scale), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

/// A conv with one group.
pub fn conv(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    bias: bool,
    seed: u64,
) -> Op {
    grouped_conv(c_in, c_out, k, stride, padding, 1, bias, seed)
}

/// A conv with `groups` groups (weight C_out × C_in/groups × k × k; groups = C_in is depthwise).
#[allow(clippy::too_many_arguments)]
pub fn grouped_conv(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    groups: usize,
    bias: bool,
    seed: u64,
) -> Op {
    let scale = 1.0 / ((c_in / groups * k * k) as f64).sqrt();
    Op::Conv2d(Conv2d {
        weight: tensor(&[c_out, c_in / groups, k, k], seed, scale * 1.5),
        bias: bias.then(|| tensor(&[c_out], seed + 1, 0.1)),
        stride,
        padding,
        groups,
    })
}

pub fn linear(i: usize, o: usize, bias: bool, seed: u64) -> Op {
    Op::Linear(Linear {
        weight: tensor(&[o, i], seed, 1.5 / (i as f64).sqrt()),
        bias: bias.then(|| tensor(&[o], seed + 1, 0.1)),
    })
}

pub fn bn(c: usize, seed: u64) -> Op {
    let var: Vec<f64> = values(c, seed + 3, 0.5).iter().map(|v| 1.0 + v).collect();
    Op::BatchNorm2d(BatchNorm2d {
        weight: tensor(&[c], seed, 0.5).affine(1.0, 1.0).unwrap(),
        bias: tensor(&[c], seed + 1, 0.2),
        running_mean: tensor(&[c], seed + 2, 0.3),
        running_var: Tensor::from_vec(var, c, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap(),
        eps: 1e-5,
    })
}

/// MLP with tanh and GELU.
pub fn mlp() -> Network {
    let mut net = Network::new("test-mlp", [1, 3, 3]);
    net.then("", Op::Flatten);
    net.then("fc1", linear(9, 6, true, 10));
    net.then("", Op::Tanh);
    net.then("fc2", linear(6, 5, false, 20));
    net.then("", Op::Gelu);
    net.then("fc3", linear(5, 3, true, 30));
    net
}

/// CNN with max-pool, a strided conv, a route-B (small spatial, wide) conv and a linear head.
pub fn cnn() -> Network {
    let mut net = Network::new("test-cnn", [2, 8, 8]);
    net.then("c1", conv(2, 3, 3, 1, 1, true, 40));
    net.then("", Op::Relu);
    net.then(
        "",
        Op::MaxPool2d {
            kernel: 2,
            stride: 2,
        },
    );
    net.then("c2", conv(3, 8, 3, 2, 1, false, 50));
    net.then("", Op::Relu);
    net.then("c3", conv(8, 8, 3, 1, 1, true, 60));
    net.then("", Op::Relu);
    net.then(
        "",
        Op::AvgPool2d {
            kernel: 2,
            stride: 2,
        },
    );
    net.then("", Op::Flatten);
    net.then("fc", linear(8, 3, true, 70));
    net
}

/// A CIFAR-layout ResNet stage: stem conv + BN, one BasicBlock with a strided shortcut conv, pooling, head.
pub fn resnet() -> Network {
    resnet_seeded(0)
}

/// [`resnet`] with every parameter's seed moved by `offset` (the same plan, other weights).
pub fn resnet_seeded(offset: u64) -> Network {
    let mut net = Network::new("test-resnet", [3, 8, 8]);
    net.then("conv1", conv(3, 4, 3, 1, 1, false, 80 + offset));
    net.then("bn1", bn(4, 90 + offset));
    let stem = net.then("", Op::Relu);
    net.then("layer1.0.conv1", conv(4, 6, 3, 2, 1, false, 100 + offset));
    net.then("layer1.0.bn1", bn(6, 110 + offset));
    net.then("", Op::Relu);
    net.then("layer1.0.conv2", conv(6, 6, 3, 1, 1, false, 120 + offset));
    let main = net.then("layer1.0.bn2", bn(6, 130 + offset));
    let sc = net.push(
        "layer1.0.shortcut.0",
        conv(4, 6, 1, 2, 0, false, 140 + offset),
        vec![stem],
    );
    let sc = net.push("layer1.0.shortcut.1", bn(6, 150 + offset), vec![sc]);
    net.push("", Op::Add, vec![main, sc]);
    net.then("", Op::Relu);
    net.then("", Op::AdaptiveAvgPool2d { output: [1, 1] });
    net.then("", Op::Flatten);
    net.then("linear", linear(6, 4, true, 160 + offset));
    net
}

pub fn inputs(net: &Network, n: usize, seed: u64) -> Tensor {
    let [c, h, w] = net.input_shape;
    tensor(&[n, c, h, w], seed, 1.0)
}

/// A depthwise-separable block: depthwise 3×3 stride-2 conv (groups = C), BatchNorm, ReLU6-free ReLU,
/// pointwise conv, BatchNorm, GELU, average pool and a linear head.
pub fn depthwise() -> Network {
    let mut net = Network::new("test-depthwise", [4, 6, 6]);
    net.then("stem", conv(4, 4, 3, 1, 1, true, 200));
    net.then("", Op::Tanh);
    let scale = 1.0 / 3.0;
    net.then(
        "dw",
        Op::Conv2d(Conv2d {
            weight: tensor(&[8, 1, 3, 3], 210, scale * 1.5),
            bias: None,
            stride: 2,
            padding: 1,
            groups: 4,
        }),
    );
    net.then("dw_bn", bn(8, 220));
    net.then("", Op::Relu);
    net.then("pw", conv(8, 6, 1, 1, 0, false, 230));
    net.then("pw_bn", bn(6, 240));
    net.then("", Op::Gelu);
    net.then(
        "",
        Op::AvgPool2d {
            kernel: 3,
            stride: 3,
        },
    );
    net.then("", Op::Flatten);
    net.then("fc", linear(6, 3, true, 250));
    net
}
