//! Where each parameter lives in the flat parameter vector θ ∈ R^p that Jacobian products use: nodes in
//! order, each node's `weight` then `bias` (the order of [`Network::parameters`]), every tensor flattened
//! row-major (a conv weight as (C_out, C_in/groups, k, k), a linear weight as (out, in)).

use crate::model::{Network, Op};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// One parametrised node's slice of θ.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeParams {
    /// Node index in the network.
    pub node: usize,
    /// First entry of the weight (BatchNorm: γ).
    pub weight: usize,
    /// Number of weight entries.
    pub weight_len: usize,
    /// Shape of the weight tensor.
    pub weight_shape: Vec<usize>,
    /// First entry of the bias (BatchNorm: β), if the node has one.
    pub bias: Option<usize>,
    /// Number of bias entries (0 without a bias).
    pub bias_len: usize,
}

/// The offsets of every parametrised node's parameters in θ.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamLayout {
    /// One entry per parametrised node, in node order.
    pub nodes: Vec<NodeParams>,
    /// p, the length of θ.
    pub total: usize,
}

impl ParamLayout {
    /// The layout of `network`'s parameters.
    pub fn new(network: &Network) -> Self {
        let mut nodes = Vec::new();
        let mut at = 0;
        for (k, node) in network.nodes.iter().enumerate() {
            let params = node.op.parameters();
            let Some((_, w)) = params.first() else {
                continue;
            };
            let weight_len = w.elem_count();
            let (bias, bias_len) = match params.get(1) {
                Some((_, b)) => (Some(at + weight_len), b.elem_count()),
                None => (None, 0),
            };
            nodes.push(NodeParams {
                node: k,
                weight: at,
                weight_len,
                weight_shape: w.dims().to_vec(),
                bias,
                bias_len,
            });
            at += weight_len + bias_len;
        }
        Self { nodes, total: at }
    }

    /// The entry of node `node`, if it has parameters.
    pub fn of(&self, node: usize) -> Option<&NodeParams> {
        self.nodes.iter().find(|p| p.node == node)
    }
}

/// The network with parameters θ + t·w (`w` in the layout's order): for finite-difference checks of
/// Jacobian products. Buffers (BatchNorm running statistics) are unchanged.
pub fn perturbed(network: &Network, w: &[f64], t: f64) -> Result<Network> {
    let layout = ParamLayout::new(network);
    if w.len() != layout.total {
        return Err(Error::Usage(format!(
            "a direction of {} entries for a network of {} parameters",
            w.len(),
            layout.total
        )));
    }
    let shift = |t0: &Tensor, at: usize| -> Result<Tensor> {
        let len = t0.elem_count();
        let d = Tensor::from_slice(&w[at..at + len], t0.dims(), &Device::Cpu)?;
        let base = t0.to_dtype(DType::F64)?;
        Ok((base + (d * t)?)?.to_dtype(t0.dtype())?)
    };
    let mut out = network.clone();
    for p in &layout.nodes {
        let node = &mut out.nodes[p.node];
        match &mut node.op {
            Op::Conv2d(c) => {
                c.weight = shift(&c.weight, p.weight)?;
                if let (Some(b), Some(at)) = (&c.bias, p.bias) {
                    c.bias = Some(shift(b, at)?);
                }
            }
            Op::Linear(l) => {
                l.weight = shift(&l.weight, p.weight)?;
                if let (Some(b), Some(at)) = (&l.bias, p.bias) {
                    l.bias = Some(shift(b, at)?);
                }
            }
            Op::BatchNorm2d(bn) => {
                bn.weight = shift(&bn.weight, p.weight)?;
                if let Some(at) = p.bias {
                    bn.bias = shift(&bn.bias, at)?;
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
