//! Networks as a small graph of candle layers, evaluated in eval mode (BatchNorm with running statistics,
//! dropout off), with every node's output cached for the NTK engine.
//!
//! A [`Network`] is a list of [`Node`]s in topological order. Node 0 is the input; each later node applies
//! one [`Op`] to the outputs of earlier nodes; the last node's output is the logits, shape (batch, d).

pub mod arch;
pub mod conv;
pub mod hand;
pub mod im2col;
pub mod layers;
pub mod load;
pub mod params;
pub mod recognise;
pub mod train;
pub mod weights;

pub use layers::{BatchNorm2d, Conv2d, Linear, Op};
pub use params::{Init, ParamSource, SeededParams};

use crate::{Error, Result};
use candle_core::{DType, Tensor};

/// One step of the network: `op` applied to the outputs of the nodes listed in `inputs`.
#[derive(Debug, Clone)]
pub struct Node {
    /// Tensor-name prefix of this node's parameters in the weights (e.g. `layer1.0.conv1`); may be empty.
    pub name: String,
    /// What the node computes.
    pub op: Op,
    /// Indices of the nodes whose outputs feed this one (earlier nodes only).
    pub inputs: Vec<usize>,
}

/// A feed-forward network (a DAG in topological order) with named parameters.
#[derive(Debug, Clone)]
pub struct Network {
    /// Architecture description (e.g. `resnet9`, `spec:my.json`), stored in the weights' metadata.
    pub arch: String,
    /// Input shape [C, H, W] the network expects.
    pub input_shape: [usize; 3],
    /// The nodes; `nodes[0]` is `Op::Input`, the last node gives the logits.
    pub nodes: Vec<Node>,
}

impl Network {
    /// Start a network with only its input node.
    pub fn new(arch: impl Into<String>, input_shape: [usize; 3]) -> Self {
        let input = Node {
            name: String::new(),
            op: Op::Input,
            inputs: vec![],
        };
        Self {
            arch: arch.into(),
            input_shape,
            nodes: vec![input],
        }
    }

    /// Append a node fed by `inputs` and return its index.
    pub fn push(&mut self, name: impl Into<String>, op: Op, inputs: Vec<usize>) -> usize {
        self.nodes.push(Node {
            name: name.into(),
            op,
            inputs,
        });
        self.nodes.len() - 1
    }

    /// Append a node fed by the previous node and return its index.
    pub fn then(&mut self, name: impl Into<String>, op: Op) -> usize {
        let prev = self.nodes.len() - 1;
        self.push(name, op, vec![prev])
    }

    /// Index of the output (logits) node.
    pub fn output(&self) -> usize {
        self.nodes.len() - 1
    }

    /// Eval-mode forward pass; returns the logits (batch, d).
    /// Each node's output is dropped after its last use, so memory stays near the widest layer's activations.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let mut last_use: Vec<usize> = (0..self.nodes.len()).collect();
        for (j, node) in self.nodes.iter().enumerate() {
            for &i in &node.inputs {
                last_use[i] = last_use[i].max(j);
            }
        }
        let mut outs: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        for (j, node) in self.nodes.iter().enumerate() {
            let out = match node.op {
                Op::Input => x.clone(),
                _ => {
                    let inputs = node
                        .inputs
                        .iter()
                        .map(|&i| {
                            outs[i].as_ref().ok_or_else(|| {
                                Error::Internal(format!("node {j} reads node {i} too late"))
                            })
                        })
                        .collect::<Result<Vec<&Tensor>>>()?;
                    self.apply(node, &inputs)?
                }
            };
            outs[j] = Some(out);
            for &i in &node.inputs {
                if last_use[i] == j {
                    outs[i] = None;
                }
            }
        }
        outs.pop()
            .flatten()
            .ok_or_else(|| Error::Internal("empty network".into()))
    }

    /// Eval-mode forward pass returning every node's output (index = node index; entry 0 is `x`).
    pub fn forward_cached(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.check_input(x)?;
        let mut outs: Vec<Tensor> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let out = match node.op {
                Op::Input => x.clone(),
                _ => {
                    let inputs: Vec<&Tensor> = node.inputs.iter().map(|&i| &outs[i]).collect();
                    self.apply(node, &inputs)?
                }
            };
            outs.push(out);
        }
        Ok(outs)
    }

    /// The input must be (batch, C, H, W) with [C, H, W] = `input_shape`.
    fn check_input(&self, x: &Tensor) -> Result<()> {
        let [c, h, w] = self.input_shape;
        let dims = x.dims();
        if dims.len() != 4 || dims[1..] != [c, h, w] {
            return Err(Error::Input(format!(
                "network `{}` expects input (batch, {c}, {h}, {w}), got {:?}",
                self.arch, dims
            )));
        }
        Ok(())
    }

    /// One node's op on its inputs, with the node named in any error.
    fn apply(&self, node: &Node, inputs: &[&Tensor]) -> Result<Tensor> {
        node.op.forward(inputs).map_err(|e| {
            Error::Model(format!(
                "forward of node `{}` ({}): {e}",
                node.name,
                node.op.kind()
            ))
        })
    }

    /// Trainable parameters as (full tensor name, tensor), in node order (e.g. `conv1.weight`).
    pub fn parameters(&self) -> Vec<(String, &Tensor)> {
        let mut params = Vec::new();
        for node in &self.nodes {
            for (suffix, t) in node.op.parameters() {
                params.push((join_name(&node.name, suffix), t));
            }
        }
        params
    }

    /// Non-trainable state saved with the weights (BatchNorm running statistics).
    pub fn buffers(&self) -> Vec<(String, &Tensor)> {
        let mut bufs = Vec::new();
        for node in &self.nodes {
            for (suffix, t) in node.op.buffers() {
                bufs.push((join_name(&node.name, suffix), t));
            }
        }
        bufs
    }

    /// Number of trainable parameters p.
    pub fn num_params(&self) -> usize {
        self.parameters().iter().map(|(_, t)| t.elem_count()).sum()
    }

    /// Number of outputs d (logits), found by a forward pass of one zero input.
    pub fn num_outputs(&self) -> Result<usize> {
        let [c, h, w] = self.input_shape;
        let dtype = self.dtype();
        let x = Tensor::zeros((1, c, h, w), dtype, &candle_core::Device::Cpu)?;
        Ok(self.forward(&x)?.dims().last().copied().unwrap_or(0))
    }

    /// Floating-point type of the parameters (F32 unless converted).
    pub fn dtype(&self) -> DType {
        self.parameters()
            .first()
            .map(|(_, t)| t.dtype())
            .unwrap_or(DType::F32)
    }

    /// A copy of the network with every parameter and buffer converted to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Network> {
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                Ok(Node {
                    name: n.name.clone(),
                    op: n.op.to_dtype(dtype)?,
                    inputs: n.inputs.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Network {
            arch: self.arch.clone(),
            input_shape: self.input_shape,
            nodes,
        })
    }
}

/// `prefix.suffix`, or `suffix` when the prefix is empty.
pub fn join_name(prefix: &str, suffix: &str) -> String {
    if prefix.is_empty() {
        suffix.to_string()
    } else {
        format!("{prefix}.{suffix}")
    }
}
