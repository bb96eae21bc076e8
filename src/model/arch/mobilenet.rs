//! MobileNet (v1) as in pytorch-cifar: stem conv `conv1` (3×3, 32 channels, no bias), `bn1`, ReLU, then
//! `layers.{i}` depthwise-separable blocks, 2×2 average pool, flatten, `linear` (1024 → classes).

use super::{bn_op, conv_op, linear_op, out_size, Op};
use crate::model::params::ParamSource;
use crate::model::Network;
use crate::Result;

/// (output channels, stride) of each block, pytorch-cifar's `cfg`.
pub const CFG: [(usize, usize); 13] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
];

/// Build pytorch-cifar's MobileNet for `input_shape` and `num_classes`.
pub fn build(
    input_shape: [usize; 3],
    num_classes: usize,
    params: &mut dyn ParamSource,
) -> Result<Network> {
    let [c_in, mut h, mut w] = input_shape;
    let mut net = Network::new("mobilenet", input_shape);
    net.then(
        "conv1",
        conv_op(params, "conv1", c_in, 32, 3, 1, 1, 1, false)?,
    );
    net.then("bn1", bn_op(params, "bn1", 32)?);
    net.then("", Op::Relu);
    let mut channels = 32;
    for (i, &(c_out, stride)) in CFG.iter().enumerate() {
        let p = format!("layers.{i}");
        let name = |s: &str| format!("{p}.{s}");
        net.then(
            name("conv1"),
            conv_op(
                params,
                &name("conv1"),
                channels,
                channels,
                3,
                stride,
                1,
                channels,
                false,
            )?,
        );
        net.then(name("bn1"), bn_op(params, &name("bn1"), channels)?);
        net.then("", Op::Relu);
        net.then(
            name("conv2"),
            conv_op(params, &name("conv2"), channels, c_out, 1, 1, 0, 1, false)?,
        );
        net.then(name("bn2"), bn_op(params, &name("bn2"), c_out)?);
        net.then("", Op::Relu);
        h = out_size(h, 3, stride, 1, &p)?;
        w = out_size(w, 3, stride, 1, &p)?;
        channels = c_out;
    }
    let (ph, pw) = (
        out_size(h, 2, 2, 0, "final 2x2 average pool")?,
        out_size(w, 2, 2, 0, "final 2x2 average pool")?,
    );
    net.then(
        "",
        Op::AvgPool2d {
            kernel: 2,
            stride: 2,
        },
    );
    net.then("", Op::Flatten);
    net.then(
        "linear",
        linear_op(params, "linear", channels * ph * pw, num_classes, true)?,
    );
    Ok(net)
}
