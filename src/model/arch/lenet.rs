//! LeNet as in pytorch-cifar: `conv1` (C→6, 5×5), ReLU, 2×2 max pool, `conv2` (6→16, 5×5), ReLU, 2×2 max pool,
//! flatten, `fc1` (→120), ReLU, `fc2` (→84), ReLU, `fc3` (→classes). The flatten size follows the input.

use super::{conv_op, linear_op, out_size, Op};
use crate::model::params::ParamSource;
use crate::model::Network;
use crate::Result;

/// Build LeNet for `input_shape` (e.g. 1×28×28 or 3×32×32) and `num_classes`.
pub fn build(
    input_shape: [usize; 3],
    num_classes: usize,
    params: &mut dyn ParamSource,
) -> Result<Network> {
    let [c_in, h, w] = input_shape;
    let mut net = Network::new("lenet", input_shape);
    net.then(
        "conv1",
        conv_op(params, "conv1", c_in, 6, 5, 1, 0, 1, true)?,
    );
    net.then("", Op::Relu);
    net.then(
        "",
        Op::MaxPool2d {
            kernel: 2,
            stride: 2,
        },
    );
    net.then("conv2", conv_op(params, "conv2", 6, 16, 5, 1, 0, 1, true)?);
    net.then("", Op::Relu);
    net.then(
        "",
        Op::MaxPool2d {
            kernel: 2,
            stride: 2,
        },
    );
    let side = |n: usize| -> Result<usize> {
        let n = out_size(n, 5, 1, 0, "lenet conv1")?;
        let n = out_size(n, 2, 2, 0, "lenet pool1")?;
        let n = out_size(n, 5, 1, 0, "lenet conv2")?;
        out_size(n, 2, 2, 0, "lenet pool2")
    };
    let flat = 16 * side(h)? * side(w)?;
    net.then("", Op::Flatten);
    net.then("fc1", linear_op(params, "fc1", flat, 120, true)?);
    net.then("", Op::Relu);
    net.then("fc2", linear_op(params, "fc2", 120, 84, true)?);
    net.then("", Op::Relu);
    net.then("fc3", linear_op(params, "fc3", 84, num_classes, true)?);
    Ok(net)
}
