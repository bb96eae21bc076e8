//! CIFAR ResNets as in pytorch-cifar (kuangliu): 3×3 stride-1 stem conv without bias, `bn1`, ReLU, four
//! stages `layer1..4` of width w, 2w, 4w, 8w (strides 1, 2, 2, 2), 4×4 average pool, flatten, `linear`.

use super::{bn_op, conv_op, linear_op, out_size, Op};
use crate::model::params::ParamSource;
use crate::model::Network;
use crate::{Error, Result};

/// Base width of the ResNets when `--width` is not given.
pub const DEFAULT_WIDTH: usize = 64;

/// Residual block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Two 3×3 convolutions (`conv1`, `conv2`); expansion 1.
    Basic,
    /// 1×1, 3×3, 1×1 convolutions (`conv1..3`); expansion 4.
    Bottleneck,
}

impl Block {
    /// Output channels of a block of `planes` planes, divided by `planes`.
    pub fn expansion(self) -> usize {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }
}

/// A ResNet's block type and number of blocks in each of the four stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Block type.
    pub block: Block,
    /// Blocks per stage.
    pub blocks: [usize; 4],
}

impl ResNetConfig {
    /// `resnet9|18|34|50`, or `resnet-basic-A-B-C-D` / `resnet-bottleneck-A-B-C-D`; `None` otherwise.
    pub fn parse(arch: &str) -> Option<ResNetConfig> {
        let (block, blocks) = match arch {
            "resnet9" => (Block::Basic, [1, 1, 1, 1]),
            "resnet18" => (Block::Basic, [2, 2, 2, 2]),
            "resnet34" => (Block::Basic, [3, 4, 6, 3]),
            "resnet50" => (Block::Bottleneck, [3, 4, 6, 3]),
            _ => {
                let rest = arch.strip_prefix("resnet-")?;
                let (block, counts) = if let Some(c) = rest.strip_prefix("basic-") {
                    (Block::Basic, c)
                } else {
                    (Block::Bottleneck, rest.strip_prefix("bottleneck-")?)
                };
                let counts: Vec<usize> = counts
                    .split('-')
                    .map(|s| s.parse().ok())
                    .collect::<Option<_>>()?;
                let blocks: [usize; 4] = counts.try_into().ok()?;
                if blocks.contains(&0) {
                    return None;
                }
                (block, blocks)
            }
        };
        Some(ResNetConfig { block, blocks })
    }

    /// The built-in name for this configuration if there is one, else the generic `resnet-basic-…` form.
    pub fn name(&self) -> String {
        let builtin = match (self.block, self.blocks) {
            (Block::Basic, [1, 1, 1, 1]) => Some("resnet9"),
            (Block::Basic, [2, 2, 2, 2]) => Some("resnet18"),
            (Block::Basic, [3, 4, 6, 3]) => Some("resnet34"),
            (Block::Bottleneck, [3, 4, 6, 3]) => Some("resnet50"),
            _ => None,
        };
        match builtin {
            Some(name) => name.to_string(),
            None => {
                let kind = if self.block == Block::Basic {
                    "basic"
                } else {
                    "bottleneck"
                };
                let [a, b, c, d] = self.blocks;
                format!("resnet-{kind}-{a}-{b}-{c}-{d}")
            }
        }
    }
}

/// Build a CIFAR ResNet named `arch` with configuration `cfg` and base width `width`.
pub fn build(
    arch: &str,
    cfg: &ResNetConfig,
    width: usize,
    input_shape: [usize; 3],
    num_classes: usize,
    params: &mut dyn ParamSource,
) -> Result<Network> {
    if width == 0 {
        return Err(Error::Usage("--width must be positive".into()));
    }
    let [c_in, mut h, mut w] = input_shape;
    let mut net = Network::new(arch, input_shape);
    net.then(
        "conv1",
        conv_op(params, "conv1", c_in, width, 3, 1, 1, 1, false)?,
    );
    net.then("bn1", bn_op(params, "bn1", width)?);
    net.then("", Op::Relu);
    let mut channels = width;
    for (stage, &n_blocks) in cfg.blocks.iter().enumerate() {
        let planes = width << stage;
        for i in 0..n_blocks {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let prefix = format!("layer{}.{i}", stage + 1);
            channels = block(
                &mut net, params, &prefix, cfg.block, channels, planes, stride,
            )?;
            h = out_size(h, 3, stride, 1, &prefix)?;
            w = out_size(w, 3, stride, 1, &prefix)?;
        }
    }
    let (ph, pw) = (
        out_size(h, 4, 4, 0, "final 4x4 average pool")?,
        out_size(w, 4, 4, 0, "final 4x4 average pool")?,
    );
    net.then(
        "",
        Op::AvgPool2d {
            kernel: 4,
            stride: 4,
        },
    );
    net.then("", Op::Flatten);
    net.then(
        "linear",
        linear_op(params, "linear", channels * ph * pw, num_classes, true)?,
    );
    Ok(net)
}

/// Append one residual block after the current last node; returns its output channels.
fn block(
    net: &mut Network,
    params: &mut dyn ParamSource,
    prefix: &str,
    kind: Block,
    c_in: usize,
    planes: usize,
    stride: usize,
) -> Result<usize> {
    let input = net.output();
    let c_out = planes * kind.expansion();
    let name = |s: &str| format!("{prefix}.{s}");
    match kind {
        Block::Basic => {
            net.then(
                name("conv1"),
                conv_op(params, &name("conv1"), c_in, planes, 3, stride, 1, 1, false)?,
            );
            net.then(name("bn1"), bn_op(params, &name("bn1"), planes)?);
            net.then("", Op::Relu);
            net.then(
                name("conv2"),
                conv_op(params, &name("conv2"), planes, planes, 3, 1, 1, 1, false)?,
            );
            net.then(name("bn2"), bn_op(params, &name("bn2"), planes)?);
        }
        Block::Bottleneck => {
            net.then(
                name("conv1"),
                conv_op(params, &name("conv1"), c_in, planes, 1, 1, 0, 1, false)?,
            );
            net.then(name("bn1"), bn_op(params, &name("bn1"), planes)?);
            net.then("", Op::Relu);
            net.then(
                name("conv2"),
                conv_op(
                    params,
                    &name("conv2"),
                    planes,
                    planes,
                    3,
                    stride,
                    1,
                    1,
                    false,
                )?,
            );
            net.then(name("bn2"), bn_op(params, &name("bn2"), planes)?);
            net.then("", Op::Relu);
            net.then(
                name("conv3"),
                conv_op(params, &name("conv3"), planes, c_out, 1, 1, 0, 1, false)?,
            );
            net.then(name("bn3"), bn_op(params, &name("bn3"), c_out)?);
        }
    }
    let main = net.output();
    let shortcut = if stride != 1 || c_in != c_out {
        let conv = conv_op(
            params,
            &name("shortcut.0"),
            c_in,
            c_out,
            1,
            stride,
            0,
            1,
            false,
        )?;
        let sc = net.push(name("shortcut.0"), conv, vec![input]);
        net.push(
            name("shortcut.1"),
            bn_op(params, &name("shortcut.1"), c_out)?,
            vec![sc],
        )
    } else {
        input
    };
    net.push("", Op::Add, vec![main, shortcut]);
    net.then("", Op::Relu);
    Ok(c_out)
}
