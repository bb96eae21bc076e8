//! The JSON sequential spec: any plain feed-forward stack of layers, e.g.
//!
//! ```json
//! {"input": [3, 32, 32],
//!  "layers": [{"type": "conv2d", "name": "features.0", "out": 32, "kernel": 3, "padding": 1},
//!             {"type": "relu"}, {"type": "maxpool2d", "kernel": 2}, {"type": "flatten"},
//!             {"type": "linear", "name": "classifier.0", "out": 10}]}
//! ```
//!
//! `name` is the tensor-name prefix in the weights (default: the layer's index, as in a PyTorch
//! `nn.Sequential`). The network's outputs are those of the last layer.

use super::{bn_op, conv_op, linear_op, out_size};
use crate::model::layers::Op;
use crate::model::params::ParamSource;
use crate::model::Network;
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// Layer types a spec may use.
pub const LAYER_TYPES: &[&str] = &[
    "conv2d",
    "linear",
    "batchnorm2d",
    "relu",
    "tanh",
    "gelu",
    "maxpool2d",
    "avgpool2d",
    "adaptiveavgpool2d",
    "flatten",
    "dropout",
];

/// One layer of a spec.
#[derive(Debug, Clone)]
pub enum LayerSpec {
    /// Convolution: output channels, square kernel, stride, zero padding, groups, bias.
    Conv2d {
        name: String,
        out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        bias: bool,
    },
    /// Fully connected layer to `out` features.
    Linear {
        name: String,
        out: usize,
        bias: bool,
    },
    /// Eval-mode BatchNorm over the current channels.
    BatchNorm2d { name: String },
    /// An activation or shape op without parameters (relu, tanh, gelu, flatten, dropout).
    Plain(Op),
    /// Max pooling.
    MaxPool2d { kernel: usize, stride: usize },
    /// Average pooling.
    AvgPool2d { kernel: usize, stride: usize },
    /// Adaptive average pooling to `output` (must divide the input size).
    AdaptiveAvgPool2d { output: [usize; 2] },
}

/// A parsed sequential spec.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Input shape [C, H, W].
    pub input: [usize; 3],
    /// The layers in order.
    pub layers: Vec<LayerSpec>,
}

/// Whether an `--arch` value names a spec file rather than a built-in architecture.
pub fn is_spec_path(arch: &str) -> bool {
    arch.to_ascii_lowercase().ends_with(".json")
}

/// Shape of the activation flowing through the stack while building.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Image([usize; 3]),
    Flat(usize),
}

impl Spec {
    /// Read and parse a spec file.
    pub fn from_file(path: &Path) -> Result<Spec> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("cannot read spec", path, e))?;
        Spec::parse(&text).map_err(|e| match e {
            Error::Model(msg) => Error::Model(format!("spec {}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parse spec JSON text.
    pub fn parse(text: &str) -> Result<Spec> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| Error::Model(format!("not valid JSON: {e}")))?;
        let root = root
            .as_object()
            .ok_or_else(|| Error::Model("the spec must be a JSON object".into()))?;
        let input = root
            .get("input")
            .ok_or_else(|| Error::Model("missing \"input\": [C, H, W]".into()))?;
        let input = usize_list(input, "input")?;
        let input: [usize; 3] = input.try_into().map_err(|v: Vec<usize>| {
            Error::Model(format!("\"input\" must be [C, H, W], got {v:?}"))
        })?;
        if input.contains(&0) {
            return Err(Error::Model(format!(
                "\"input\" sizes must be positive, got {input:?}"
            )));
        }
        let layers = root
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Model("missing \"layers\": a list of layer objects".into()))?;
        let layers = layers
            .iter()
            .enumerate()
            .map(|(i, l)| parse_layer(i, l))
            .collect::<Result<Vec<_>>>()?;
        if layers.is_empty() {
            return Err(Error::Model("\"layers\" is empty".into()));
        }
        Ok(Spec { input, layers })
    }

    /// Refuse sizes that cannot be allocated (see `spec_sizes.rs`), before anything is.
    pub fn check_sizes(&self) -> Result<()> {
        super::spec_sizes::check_sizes(self)
    }

    /// Build the network (called `arch`) with parameters from `params`, checking sizes first, then shapes
    /// layer by layer.
    pub fn build(&self, arch: &str, params: &mut dyn ParamSource) -> Result<Network> {
        self.check_sizes()?;
        let mut net = Network::new(arch, self.input);
        let mut shape = Shape::Image(self.input);
        for (i, layer) in self.layers.iter().enumerate() {
            let image = |what: &str| match shape {
                Shape::Image(s) => Ok(s),
                Shape::Flat(n) => Err(Error::Model(format!(
                    "layer {i} ({what}) needs an image (C, H, W) input but gets {n} flat features"
                ))),
            };
            match layer {
                LayerSpec::Conv2d {
                    name,
                    out,
                    kernel,
                    stride,
                    padding,
                    groups,
                    bias,
                } => {
                    let [c, h, w] = image("conv2d")?;
                    let what = format!("layer {i} (conv2d `{name}`)");
                    let op = conv_op(
                        params, name, c, *out, *kernel, *stride, *padding, *groups, *bias,
                    )?;
                    net.then(name.clone(), op);
                    let oh = out_size(h, *kernel, *stride, *padding, &what)?;
                    shape =
                        Shape::Image([*out, oh, out_size(w, *kernel, *stride, *padding, &what)?]);
                }
                LayerSpec::Linear { name, out, bias } => {
                    let n_in = match shape {
                        Shape::Flat(n) => n,
                        Shape::Image(s) => {
                            return Err(Error::Model(format!(
                                "layer {i} (linear `{name}`) gets an image of shape {s:?}; add a {{\"type\": \"flatten\"}} layer before it"
                            )))
                        }
                    };
                    net.then(name.clone(), linear_op(params, name, n_in, *out, *bias)?);
                    shape = Shape::Flat(*out);
                }
                LayerSpec::BatchNorm2d { name } => {
                    let [c, _, _] = image("batchnorm2d")?;
                    net.then(name.clone(), bn_op(params, name, c)?);
                }
                LayerSpec::Plain(op) => {
                    if matches!(op, Op::Flatten) {
                        if let Shape::Image(s) = shape {
                            shape = Shape::Flat(s.iter().product());
                        }
                    }
                    net.then("", op.clone());
                }
                LayerSpec::MaxPool2d { kernel, stride }
                | LayerSpec::AvgPool2d { kernel, stride } => {
                    let is_max = matches!(layer, LayerSpec::MaxPool2d { .. });
                    let kind = if is_max { "maxpool2d" } else { "avgpool2d" };
                    let [c, h, w] = image(kind)?;
                    let what = format!("layer {i} ({kind})");
                    shape = Shape::Image([
                        c,
                        out_size(h, *kernel, *stride, 0, &what)?,
                        out_size(w, *kernel, *stride, 0, &what)?,
                    ]);
                    let op = if is_max {
                        Op::MaxPool2d {
                            kernel: *kernel,
                            stride: *stride,
                        }
                    } else {
                        Op::AvgPool2d {
                            kernel: *kernel,
                            stride: *stride,
                        }
                    };
                    net.then("", op);
                }
                LayerSpec::AdaptiveAvgPool2d { output } => {
                    let [c, h, w] = image("adaptiveavgpool2d")?;
                    if h % output[0] != 0 || w % output[1] != 0 {
                        return Err(Error::Model(format!(
                            "layer {i} (adaptiveavgpool2d): output {output:?} must divide the input size [{h}, {w}]"
                        )));
                    }
                    net.then("", Op::AdaptiveAvgPool2d { output: *output });
                    shape = Shape::Image([c, output[0], output[1]]);
                }
            }
        }
        if let Shape::Image(s) = shape {
            return Err(Error::Model(format!(
                "the last layer gives an image of shape {s:?}; a network must end in flat logits (add flatten/linear)"
            )));
        }
        Ok(net)
    }
}

/// Parse layer number `i`.
fn parse_layer(i: usize, value: &Value) -> Result<LayerSpec> {
    let obj = value
        .as_object()
        .ok_or_else(|| Error::Model(format!("layer {i} is not a JSON object")))?;
    let kind = obj.get("type").and_then(Value::as_str).ok_or_else(|| {
        Error::Model(format!(
            "layer {i} has no \"type\"; known types: {}",
            LAYER_TYPES.join(", ")
        ))
    })?;
    let f = Fields { obj, i, kind };
    let layer = match kind.to_ascii_lowercase().as_str() {
        "conv2d" => {
            f.allow(&[
                "name", "out", "kernel", "stride", "padding", "groups", "bias",
            ])?;
            LayerSpec::Conv2d {
                name: f.name()?,
                out: f.positive("out", None)?,
                kernel: f.positive("kernel", None)?,
                stride: f.positive("stride", Some(1))?,
                padding: f.usize("padding", Some(0))?,
                groups: f.positive("groups", Some(1))?,
                bias: f.bool("bias", true)?,
            }
        }
        "linear" => {
            f.allow(&["name", "out", "bias"])?;
            LayerSpec::Linear {
                name: f.name()?,
                out: f.positive("out", None)?,
                bias: f.bool("bias", true)?,
            }
        }
        "batchnorm2d" => {
            f.allow(&["name"])?;
            LayerSpec::BatchNorm2d { name: f.name()? }
        }
        "maxpool2d" | "avgpool2d" => {
            f.allow(&["kernel", "stride"])?;
            let kernel = f.positive("kernel", None)?;
            let stride = f.positive("stride", Some(kernel))?;
            if kind.eq_ignore_ascii_case("maxpool2d") {
                LayerSpec::MaxPool2d { kernel, stride }
            } else {
                LayerSpec::AvgPool2d { kernel, stride }
            }
        }
        "adaptiveavgpool2d" => {
            f.allow(&["output"])?;
            let output = match obj.get("output") {
                Some(Value::Number(_)) => {
                    let n = f.positive("output", None)?;
                    [n, n]
                }
                Some(v) => usize_list(v, "output")?.try_into().map_err(|v: Vec<usize>| {
                    Error::Model(format!("layer {i} (adaptiveavgpool2d): \"output\" must be N or [H, W], got {v:?}"))
                })?,
                None => return Err(Error::Model(format!("layer {i} (adaptiveavgpool2d) needs \"output\""))),
            };
            if output.contains(&0) {
                return Err(Error::Model(format!(
                    "layer {i} (adaptiveavgpool2d): \"output\" must be positive"
                )));
            }
            LayerSpec::AdaptiveAvgPool2d { output }
        }
        "relu" | "tanh" | "gelu" | "flatten" | "dropout" => {
            f.allow(&["p", "name"])?;
            LayerSpec::Plain(match kind.to_ascii_lowercase().as_str() {
                "relu" => Op::Relu,
                "tanh" => Op::Tanh,
                "gelu" => Op::Gelu,
                "flatten" => Op::Flatten,
                _ => Op::Dropout,
            })
        }
        _ => {
            return Err(Error::Model(format!(
                "layer {i} has unknown type \"{kind}\"; known types: {}",
                LAYER_TYPES.join(", ")
            )))
        }
    };
    Ok(layer)
}

/// Typed access to the fields of layer `i` with messages naming the layer.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    i: usize,
    kind: &'a str,
}

impl Fields<'_> {
    fn err(&self, msg: String) -> Error {
        Error::Model(format!("layer {} ({}): {msg}", self.i, self.kind))
    }

    fn allow(&self, keys: &[&str]) -> Result<()> {
        for k in self.obj.keys() {
            if k != "type" && !keys.contains(&k.as_str()) {
                return Err(self.err(format!(
                    "unknown field \"{k}\"; allowed: type, {}",
                    keys.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn name(&self) -> Result<String> {
        match self.obj.get("name") {
            None => Ok(self.i.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(self.err(format!("\"name\" must be a string, got {v}"))),
        }
    }

    fn usize(&self, key: &str, default: Option<usize>) -> Result<usize> {
        match (self.obj.get(key), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.err(format!("needs \"{key}\""))),
            (Some(v), _) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                self.err(format!("\"{key}\" must be a non-negative integer, got {v}"))
            }),
        }
    }

    fn positive(&self, key: &str, default: Option<usize>) -> Result<usize> {
        let n = self.usize(key, default)?;
        if n == 0 {
            return Err(self.err(format!("\"{key}\" must be positive")));
        }
        Ok(n)
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.obj.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(format!("\"{key}\" must be true or false, got {v}"))),
        }
    }
}

/// A JSON list of non-negative integers.
fn usize_list(v: &Value, what: &str) -> Result<Vec<usize>> {
    v.as_array()
        .and_then(|a| {
            a.iter()
                .map(|x| x.as_u64().map(|n| n as usize))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| {
            Error::Model(format!(
                "\"{what}\" must be a list of non-negative integers, got {v}"
            ))
        })
}
