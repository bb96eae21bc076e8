//! A two-hidden-layer perceptron: flatten, `fc1` (→ width), ReLU, `fc2` (→ width), ReLU, `fc3` (→ classes).

use super::{linear_op, Op};
use crate::model::params::ParamSource;
use crate::model::Network;
use crate::{Error, Result};

/// Hidden width when `--width` is not given.
pub const DEFAULT_WIDTH: usize = 128;

/// Build the MLP with hidden width `width` for `input_shape` and `num_classes`.
pub fn build(
    width: usize,
    input_shape: [usize; 3],
    num_classes: usize,
    params: &mut dyn ParamSource,
) -> Result<Network> {
    if width == 0 {
        return Err(Error::Usage("--width must be positive".into()));
    }
    let flat: usize = input_shape.iter().product();
    let mut net = Network::new("mlp", input_shape);
    net.then("", Op::Flatten);
    net.then("fc1", linear_op(params, "fc1", flat, width, true)?);
    net.then("", Op::Relu);
    net.then("fc2", linear_op(params, "fc2", width, width, true)?);
    net.then("", Op::Relu);
    net.then("fc3", linear_op(params, "fc3", width, num_classes, true)?);
    Ok(net)
}
