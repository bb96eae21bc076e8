//! Built-in architectures (pytorch-cifar state-dict names) and the JSON sequential spec, all built through a
//! [`ParamSource`] so the same code serves loading weights and training from scratch.

pub mod lenet;
pub mod mlp;
pub mod mobilenet;
pub mod resnet;
pub mod spec;
pub mod spec_sizes;

use crate::model::layers::{BatchNorm2d, Conv2d, Linear, Op};
use crate::model::params::{Init, ParamSource};
use crate::model::{join_name, Network};
use crate::{Error, Result};

pub use resnet::{Block, ResNetConfig};

/// Names of the built-in architectures accepted by `--arch`.
pub const BUILTIN: &[&str] = &[
    "resnet9",
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet",
    "lenet",
    "mlp",
];

/// ε of every BatchNorm layer (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;

/// Build the architecture `arch` with parameters from `params`.
///
/// `arch` is a built-in name ([`BUILTIN`]), a generic ResNet name such as `resnet-basic-2-2-2-2` or
/// `resnet-bottleneck-3-4-23-3` (see [`ResNetConfig::parse`]), or a path to a JSON sequential spec
/// (`*.json`, see [`spec`]). `width` is the base width (ResNets: default 64, MLP: default 128; LeNet and
/// MobileNet have none). For a spec, `input_shape` must agree with the spec's own `input`.
pub fn build(
    arch: &str,
    width: Option<usize>,
    input_shape: [usize; 3],
    num_classes: usize,
    params: &mut dyn ParamSource,
) -> Result<Network> {
    if input_shape.contains(&0) || num_classes == 0 {
        return Err(Error::Model(format!(
            "cannot build `{arch}` for input shape {input_shape:?} and {num_classes} classes: sizes must be positive"
        )));
    }
    if spec::is_spec_path(arch) {
        if width.is_some() {
            return Err(no_width(arch));
        }
        let spec = spec::Spec::from_file(std::path::Path::new(arch))?;
        if spec.input != input_shape {
            return Err(Error::Model(format!(
                "spec {arch} declares input {:?} but input {:?} was requested",
                spec.input, input_shape
            )));
        }
        return spec.build(&format!("spec:{arch}"), params);
    }
    match arch {
        "mobilenet" => {
            if width.is_some() {
                return Err(no_width(arch));
            }
            mobilenet::build(input_shape, num_classes, params)
        }
        "lenet" => {
            if width.is_some() {
                return Err(no_width(arch));
            }
            lenet::build(input_shape, num_classes, params)
        }
        "mlp" => mlp::build(
            width.unwrap_or(mlp::DEFAULT_WIDTH),
            input_shape,
            num_classes,
            params,
        ),
        _ => match ResNetConfig::parse(arch) {
            Some(cfg) => resnet::build(
                arch,
                &cfg,
                width.unwrap_or(resnet::DEFAULT_WIDTH),
                input_shape,
                num_classes,
                params,
            ),
            None => Err(unknown_arch(arch)),
        },
    }
}

/// The input shape a network is built for: 3×32×32 for the ResNets and MobileNet (SPEC §5: MNIST-type sets
/// are resized to 32×32 and replicated to 3 channels), the data's own shape otherwise.
pub fn default_input_shape(arch: &str, data_shape: [usize; 3]) -> [usize; 3] {
    if arch == "mobilenet" || ResNetConfig::parse(arch).is_some() {
        [3, 32, 32]
    } else {
        data_shape
    }
}

/// Whether `arch` names a built-in or generic-ResNet architecture (spec files are not checked here).
pub fn is_known(arch: &str) -> bool {
    BUILTIN.contains(&arch) || ResNetConfig::parse(arch).is_some()
}

/// The error for an architecture name that is neither built in nor a spec file.
pub fn unknown_arch(arch: &str) -> Error {
    Error::Model(format!(
        "unknown architecture `{arch}`; built-in architectures are {}, generic ResNets are written \
         resnet-basic-N1-N2-N3-N4 or resnet-bottleneck-N1-N2-N3-N4, and a JSON sequential spec is given as a path \
         ending in .json",
        BUILTIN.join(", ")
    ))
}

fn no_width(arch: &str) -> Error {
    Error::Usage(format!(
        "--width does not apply to `{arch}` (only to the ResNets and mlp)"
    ))
}

/// Spatial size after a convolution or pooling window: ⌊(n + 2·padding − kernel) / stride⌋ + 1.
pub fn out_size(
    n: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    what: &str,
) -> Result<usize> {
    if n + 2 * padding < kernel || stride == 0 {
        return Err(Error::Model(format!(
            "{what}: window {kernel} (stride {stride}, padding {padding}) does not fit an input of size {n}"
        )));
    }
    Ok((n + 2 * padding - kernel) / stride + 1)
}

/// A Conv2d op with PyTorch's default initialisation, tensors `{name}.weight` (and `{name}.bias`).
#[allow(clippy::too_many_arguments)]
pub fn conv_op(
    params: &mut dyn ParamSource,
    name: &str,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
    bias: bool,
) -> Result<Op> {
    if groups == 0 || !c_in.is_multiple_of(groups) || !c_out.is_multiple_of(groups) {
        return Err(Error::Model(format!(
            "conv `{name}`: groups {groups} must divide both {c_in} input and {c_out} output channels"
        )));
    }
    let fan_in = c_in / groups * kernel * kernel;
    let weight = params.tensor(
        &join_name(name, "weight"),
        &[c_out, c_in / groups, kernel, kernel],
        Init::KaimingUniform { fan_in },
    )?;
    let bias = if bias {
        Some(params.tensor(
            &join_name(name, "bias"),
            &[c_out],
            Init::BiasUniform { fan_in },
        )?)
    } else {
        None
    };
    Ok(Op::Conv2d(Conv2d {
        weight,
        bias,
        stride,
        padding,
        groups,
    }))
}

/// A Linear op with PyTorch's default initialisation, tensors `{name}.weight` (out, in) and `{name}.bias`.
pub fn linear_op(
    params: &mut dyn ParamSource,
    name: &str,
    n_in: usize,
    n_out: usize,
    bias: bool,
) -> Result<Op> {
    let fan_in = n_in;
    let weight = params.tensor(
        &join_name(name, "weight"),
        &[n_out, n_in],
        Init::KaimingUniform { fan_in },
    )?;
    let bias = if bias {
        Some(params.tensor(
            &join_name(name, "bias"),
            &[n_out],
            Init::BiasUniform { fan_in },
        )?)
    } else {
        None
    };
    Ok(Op::Linear(Linear { weight, bias }))
}

/// An eval-mode BatchNorm2d op over `c` channels: `{name}.weight`, `.bias`, `.running_mean`, `.running_var`.
pub fn bn_op(params: &mut dyn ParamSource, name: &str, c: usize) -> Result<Op> {
    Ok(Op::BatchNorm2d(BatchNorm2d {
        weight: params.tensor(&join_name(name, "weight"), &[c], Init::Ones)?,
        bias: params.tensor(&join_name(name, "bias"), &[c], Init::Zeros)?,
        running_mean: params.tensor(&join_name(name, "running_mean"), &[c], Init::Zeros)?,
        running_var: params.tensor(&join_name(name, "running_var"), &[c], Init::Ones)?,
        eps: BN_EPS,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    /// Zero tensors of the asked shape: enough to count parameters and run shapes through.
    struct Zeros;
    impl ParamSource for Zeros {
        fn tensor(&mut self, _name: &str, shape: &[usize], _init: Init) -> Result<Tensor> {
            Ok(Tensor::zeros(shape, DType::F32, &Device::Cpu)?)
        }
    }

    fn count(arch: &str, width: Option<usize>, input: [usize; 3]) -> usize {
        build(arch, width, input, 10, &mut Zeros)
            .map(|n| n.num_params())
            .unwrap_or(0)
    }

    #[test]
    fn parameter_counts_match_pytorch_cifar() {
        // Known totals of pytorch-cifar's models with 10 classes (torchsummary / SPEC §5).
        assert_eq!(count("resnet18", None, [3, 32, 32]), 11_173_962);
        assert_eq!(count("mobilenet", None, [3, 32, 32]), 3_217_226);
        assert_eq!(count("resnet50", None, [3, 32, 32]), 23_520_842);
        assert_eq!(count("resnet34", None, [3, 32, 32]), 21_282_122);
        // ResNet9 = BasicBlock [1,1,1,1]: stem 3·w·9 + 2w; per stage s (planes q = w·2^s, input i) two 3×3
        // convs i·q·9 + q·q·9, two BNs 4q, shortcut i·q + 2q for s > 0; head 8w·10 + 10. w = 64: 4,903,242.
        let resnet9 = |w: usize| {
            let mut p = 27 * w + 2 * w + 80 * w + 10;
            let mut i = w;
            for s in 0..4 {
                let q = w << s;
                p += i * q * 9 + q * q * 9 + 4 * q + if s > 0 { i * q + 2 * q } else { 0 };
                i = q;
            }
            p
        };
        assert_eq!(count("resnet9", None, [3, 32, 32]), resnet9(64));
        assert_eq!(count("resnet9", Some(32), [3, 32, 32]), resnet9(32));
        assert_eq!(resnet9(64), 4_903_242);
        // LeNet: 6·3·25+6 + 16·6·25+16 + 400·120+120 + 120·84+84 + 84·10+10.
        assert_eq!(
            count("lenet", None, [3, 32, 32]),
            456 + 2416 + 48120 + 10164 + 850
        );
        assert_eq!(
            count("mlp", Some(100), [1, 28, 28]),
            784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10
        );
    }

    #[test]
    fn forward_shapes_and_errors() {
        let net = build("resnet9", Some(8), [3, 32, 32], 7, &mut Zeros).unwrap();
        assert_eq!(net.num_outputs().unwrap(), 7);
        let lenet = build("lenet", None, [1, 28, 28], 10, &mut Zeros).unwrap();
        assert_eq!(lenet.num_outputs().unwrap(), 10);
        assert!(
            matches!(build("resnet7", None, [3, 32, 32], 10, &mut Zeros), Err(Error::Model(m)) if m.contains("resnet7"))
        );
        assert!(build("lenet", Some(3), [3, 32, 32], 10, &mut Zeros).is_err());
        assert!(build("lenet", None, [3, 8, 8], 10, &mut Zeros).is_err());
    }
}
