//! What the hand-written pass needs to know about a network before it runs: every node's output shape per
//! example, where its parameters sit in `Network::parameters()`, and which nodes need gradients.
//!
//! Feature maps are stored channel-major for the whole batch, `(C, N, H, W)`: a convolution over the batch is
//! then one matrix product `W · columns` whose result is already in that layout, and BatchNorm's per-channel
//! statistics run over one contiguous row of `N·H·W` values. After `Flatten` a node's output is `(N, F)`
//! row-major, in PyTorch's `(C, H, W)` feature order.

use crate::model::{Network, Op};
use crate::{Error, Result};

/// Output shape of a node, per example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A feature map, stored `(C, N, H, W)` for the batch.
    Map {
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
    /// A feature vector, stored `(N, F)` for the batch.
    Flat(usize),
}

impl Shape {
    /// Values per example.
    pub fn len(&self) -> usize {
        match *self {
            Shape::Map { c, h, w } => c * h * w,
            Shape::Flat(f) => f,
        }
    }

    /// Whether the shape holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Geometry of one convolution node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Input channels, height, width.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Square kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub padding: usize,
    /// Groups (C_in for depthwise).
    pub groups: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
}

impl ConvShape {
    /// Output positions per example.
    pub fn positions(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Input channels per group.
    pub fn c_in_group(&self) -> usize {
        self.c_in / self.groups
    }

    /// Output channels per group.
    pub fn c_out_group(&self) -> usize {
        self.c_out / self.groups
    }

    /// Patch length of one group, (C_in / groups)·k·k.
    pub fn patch_len(&self) -> usize {
        self.c_in_group() * self.k * self.k
    }

    /// Whether the convolution is the identity on positions (1×1, stride 1, no padding): its columns are
    /// the input itself.
    pub fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.padding == 0
    }

    /// Whether every group has one input and one output channel (depthwise).
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.c_in_group() == 1 && self.c_out_group() == 1
    }
}

/// The plan of one network: shapes, parameter positions, gradient needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Output shape of every node (node 0: the input).
    pub shapes: Vec<Shape>,
    /// Index in `Network::parameters()` of each node's first parameter (parametrised nodes only).
    pub first_param: Vec<Option<usize>>,
    /// Whether a node's output depends on parameters (only those nodes' gradients are computed).
    pub needs_grad: Vec<bool>,
    /// Index of the BatchNorm statistics slot of each BatchNorm node.
    pub bn_slot: Vec<Option<usize>>,
    /// Geometry of each convolution node.
    pub convs: Vec<Option<ConvShape>>,
}

impl Plan {
    /// Work out the plan of `network`, refusing layers the hand-written pass does not implement.
    pub fn new(network: &Network) -> Result<Self> {
        let n = network.nodes.len();
        let mut shapes = Vec::with_capacity(n);
        let mut first_param = vec![None; n];
        let mut bn_slot = vec![None; n];
        let mut convs = vec![None; n];
        let (mut params, mut bns) = (0, 0);
        for (k, node) in network.nodes.iter().enumerate() {
            let input = node.inputs.first().map(|&i| shapes[i]);
            let refuse = |why: String| {
                Error::Model(format!(
                    "the hand-written training pass does not support layer `{}` ({}): {why}; use --pass autograd",
                    if node.name.is_empty() { format!("#{k}") } else { node.name.clone() },
                    node.op.kind()
                ))
            };
            let shape = match (&node.op, input) {
                (Op::Input, _) => {
                    let [c, h, w] = network.input_shape;
                    Shape::Map { c, h, w }
                }
                (Op::Conv2d(_), Some(Shape::Map { c, h, w })) => {
                    let g = conv_shape(network, k, [c, h, w])?;
                    convs[k] = Some(g);
                    Shape::Map {
                        c: g.c_out,
                        h: g.out_h,
                        w: g.out_w,
                    }
                }
                (Op::Linear(l), Some(s)) => {
                    let (out, inp) = l.weight.dims2()?;
                    match s {
                        Shape::Flat(f) if f == inp => Shape::Flat(out),
                        other => {
                            return Err(refuse(format!(
                                "input {other:?} does not match weight (…, {inp})"
                            )))
                        }
                    }
                }
                (Op::BatchNorm2d(_), Some(s @ Shape::Map { .. })) => {
                    bn_slot[k] = Some(bns);
                    bns += 1;
                    s
                }
                (Op::Relu | Op::Tanh | Op::Gelu | Op::Dropout, Some(s)) => s,
                (Op::Add, Some(s)) => {
                    if node.inputs.iter().any(|&i| shapes[i] != s) {
                        return Err(refuse("inputs of different shapes".into()));
                    }
                    s
                }
                (
                    Op::MaxPool2d { kernel, stride } | Op::AvgPool2d { kernel, stride },
                    Some(Shape::Map { c, h, w }),
                ) => {
                    if kernel != stride || *kernel == 0 || h < *kernel || w < *kernel {
                        return Err(refuse(format!(
                            "kernel {kernel}, stride {stride} on {h}x{w} (only non-overlapping windows)"
                        )));
                    }
                    Shape::Map {
                        c,
                        h: h / kernel,
                        w: w / kernel,
                    }
                }
                (Op::AdaptiveAvgPool2d { output }, Some(Shape::Map { c, h, w })) => {
                    if output[0] == 0 || output[1] == 0 || h % output[0] != 0 || w % output[1] != 0
                    {
                        return Err(refuse(format!(
                            "input {h}x{w} not divisible by output {}x{}",
                            output[0], output[1]
                        )));
                    }
                    Shape::Map {
                        c,
                        h: output[0],
                        w: output[1],
                    }
                }
                (Op::Flatten, Some(s)) => Shape::Flat(s.len()),
                (_, s) => return Err(refuse(format!("input {s:?}"))),
            };
            if !node.op.parameters().is_empty() {
                first_param[k] = Some(params);
                params += node.op.parameters().len();
            }
            shapes.push(shape);
        }
        match shapes.last() {
            Some(Shape::Flat(_)) => {}
            other => {
                return Err(Error::Model(format!(
                    "the hand-written training pass needs (batch, classes) logits, the network ends in {other:?}; use --pass autograd"
                )))
            }
        }
        Ok(Self {
            shapes,
            first_param,
            needs_grad: crate::ntk::backward::depends_on_parameters(network),
            bn_slot,
            convs,
        })
    }

    /// Number of BatchNorm nodes.
    pub fn batch_norms(&self) -> usize {
        self.bn_slot.iter().flatten().count()
    }

    /// Bytes a [`super::HandPass`] of element type `T` holds once its last train-mode step
    /// ([`super::HandPass::gradients`]) ran at batch `n` and no larger batch ran before: activations and
    /// gradients of every node, the tiled convolutions' per-thread buffers (on the current rayon thread
    /// count), each grouped lowered convolution's saved patch matrices and the largest patch-matrix gradient
    /// among them, the weight-gradient transpose buffer of the batch-wide ones, the BatchNorm statistics. What [`super::HandPass::held_bytes`] then reports (`tests/hand_memory.rs`
    /// checks the two agree). `network` is the one the plan was made for (as for the other counts).
    pub fn train_bytes<T: super::Real>(&self, network: &Network, n: usize) -> usize {
        let batch_wide = |g: &&ConvShape| !Self::tiled(g);
        let saved: usize = self
            .lowered()
            .filter(batch_wide)
            .map(|g| g.groups * g.patch_len() * n * g.positions())
            .sum();
        let dcols =
            self.largest_patches(self.lowered_with_input_grad(network).filter(batch_wide), n);
        let small = self
            .convs
            .iter()
            .flatten()
            .filter(|g| !g.is_depthwise() && !Self::tiled(g))
            .map(|g| g.patch_len() * g.c_out_group())
            .max()
            .unwrap_or(0);
        let tiled = self.convs.iter().enumerate().filter_map(|(k, g)| {
            let g = g.filter(Self::tiled)?;
            let input = network.nodes[k].inputs.first().copied()?;
            Some((g, self.needs_grad[input]))
        });
        let tiles =
            super::conv_tiled::held_values_after_step::<T>(tiled, n, rayon::current_num_threads());
        let elems = 2 * n * self.values_per_example() + saved + dcols + small + tiles;
        elems * std::mem::size_of::<T>() + self.stats_bytes()
    }

    /// Bytes a pass holds once eval-mode forwards ([`super::HandPass::logits_eval`]) ran at batches of at
    /// most `n` (and nothing else ran): activations of every node, the patch-matrix scratch (the largest
    /// lowered convolution's), the BatchNorm statistics.
    pub fn eval_bytes<T>(&self, n: usize) -> usize {
        let cols = self.largest_patches(self.lowered(), n);
        (n * self.values_per_example() + cols) * std::mem::size_of::<T>() + self.stats_bytes()
    }

    /// Bytes a pass holds once the NTK's reverse passes ([`super::HandPass::reverse_rows`]) ran on at most
    /// `n` examples of `r` rows each (and nothing else ran): activations for `n`, gradients for `n·r` rows,
    /// the patch-matrix scratch of the eval-mode forward (`n` examples) and its gradient (`n·r` rows of the
    /// largest lowered convolution whose input needs a gradient), the BatchNorm statistics.
    pub fn reverse_bytes<T: super::Real>(&self, network: &Network, n: usize, r: usize) -> usize {
        let rows = n * r.max(1);
        let cols = self.largest_patches(self.lowered(), n);
        let elems = (n + rows) * self.values_per_example()
            + cols
            + self.input_grad_values::<T>(network, rows);
        elems * std::mem::size_of::<T>() + self.stats_bytes()
    }

    /// Bytes a pass holds once the NTK's matrix-free products ran, reverse ([`super::HandPass::reverse_rows`])
    /// and tangent ([`super::HandPass::tangent_rows`]) passes on at most `n` examples of `q` directions
    /// each (and nothing else ran): activations for `n`, gradients (or tangents) for `n·q` rows, the
    /// patch-matrix scratch (the largest of the eval-mode forward's, `n` examples, and the tangent pass's
    /// `conv(ẋ, W)`, `n·q` rows, of the lowered convolutions whose input carries a tangent), the
    /// patch-matrix gradient of the reverse pass, up to [`super::tangent::DIRECTION_BLOCK`] directions'
    /// parameter tangents of the largest convolution (`C_out·n·U` each), the BatchNorm statistics.
    pub fn product_bytes<T: super::Real>(&self, network: &Network, n: usize, q: usize) -> usize {
        let rows = n * q.max(1);
        let cols = self
            .largest_patches(self.lowered(), n)
            .max(self.largest_patches(self.lowered_with_input_grad(network), rows));
        let dcols = self.input_grad_values::<T>(network, rows);
        let own = self
            .convs
            .iter()
            .flatten()
            .map(|g| g.c_out * n * g.positions())
            .max()
            .unwrap_or(0)
            * q.clamp(1, super::tangent::DIRECTION_BLOCK);
        let elems = (n + rows) * self.values_per_example() + cols + dcols + own;
        elems * std::mem::size_of::<T>() + self.stats_bytes()
    }

    /// Values the reverse pass's input gradients of the lowered convolutions hold for `rows` rows: the
    /// tiled ones' per-thread tile buffers ([`super::conv_tiled`], on the current rayon thread count), and
    /// the largest whole patch-matrix gradient of the grouped ones.
    fn input_grad_values<T: super::Real>(&self, network: &Network, rows: usize) -> usize {
        let with_dx = || self.lowered_with_input_grad(network);
        let tiled: Vec<ConvShape> = with_dx().filter(|g| Self::tiled(g)).copied().collect();
        let tiles = super::conv_tiled::held_values_after_input_grads::<T>(
            &tiled,
            rows,
            rayon::current_num_threads(),
        );
        tiles + self.largest_patches(with_dx().filter(|g| !Self::tiled(g)), rows)
    }

    /// The largest patch matrix, for `n` columns blocks (examples or rows), of the convolutions `convs`.
    fn largest_patches<'a>(&self, convs: impl Iterator<Item = &'a ConvShape>, n: usize) -> usize {
        convs
            .map(|g| g.patch_len() * n * g.positions())
            .max()
            .unwrap_or(0)
    }

    /// The lowered convolutions whose input needs a gradient (their input gradient goes through the
    /// patch-matrix gradient).
    fn lowered_with_input_grad<'a>(
        &'a self,
        network: &'a Network,
    ) -> impl Iterator<Item = &'a ConvShape> + 'a {
        self.convs.iter().enumerate().filter_map(move |(k, g)| {
            let input = network.nodes[k].inputs.first().copied()?;
            g.as_ref()
                .filter(|g| self.lowers(g) && self.needs_grad[input])
        })
    }

    /// Values of every node's output for one example (node 0, the input, included).
    fn values_per_example(&self) -> usize {
        self.shapes.iter().map(Shape::len).sum()
    }

    /// Whether a train-mode convolution runs in example tiles ([`super::conv_tiled`]): lowered, one group.
    pub fn tiled(g: &ConvShape) -> bool {
        g.groups == 1 && !g.is_pointwise() && !g.is_depthwise()
    }

    /// Whether a convolution runs through a patch matrix (not 1×1 stride 1, not depthwise).
    fn lowers(&self, g: &ConvShape) -> bool {
        !g.is_pointwise() && !g.is_depthwise()
    }

    /// The convolutions that run through a patch matrix.
    fn lowered(&self) -> impl Iterator<Item = &ConvShape> {
        self.convs.iter().flatten().filter(|g| self.lowers(g))
    }

    /// Bytes of the BatchNorm statistics: three f64 values per channel of each BatchNorm node.
    fn stats_bytes(&self) -> usize {
        self.bn_slot
            .iter()
            .zip(&self.shapes)
            .filter(|(slot, _)| slot.is_some())
            .map(|(_, s)| match s {
                Shape::Map { c, .. } => 3 * 8 * c,
                Shape::Flat(f) => 3 * 8 * f,
            })
            .sum()
    }
}

/// The geometry of convolution node `k` on an input map `[C, H, W]`.
fn conv_shape(network: &Network, k: usize, [c_in, h, w]: [usize; 3]) -> Result<ConvShape> {
    let node = &network.nodes[k];
    let Op::Conv2d(conv) = &node.op else {
        return Err(Error::Internal(format!("node {k} is not a convolution")));
    };
    let (c_out, c_in_group, kh, kw) = conv.weight.dims4()?;
    let bad = |why: String| {
        Error::Model(format!(
            "the hand-written training pass does not support convolution `{}`: {why}; use --pass autograd",
            node.name
        ))
    };
    if kh != kw {
        return Err(bad(format!("non-square kernel {kh}x{kw}")));
    }
    let groups = conv.groups.max(1);
    if c_in % groups != 0 || c_out % groups != 0 || c_in / groups != c_in_group {
        return Err(bad(format!(
            "weight {:?} does not fit {c_in} input channels in {groups} groups",
            conv.weight.dims()
        )));
    }
    if h + 2 * conv.padding < kh || w + 2 * conv.padding < kh || conv.stride == 0 {
        return Err(bad(format!(
            "kernel {kh} larger than the padded {h}x{w} input"
        )));
    }
    Ok(ConvShape {
        c_in,
        h,
        w,
        c_out,
        k: kh,
        stride: conv.stride,
        padding: conv.padding,
        groups,
        out_h: (h + 2 * conv.padding - kh) / conv.stride + 1,
        out_w: (w + 2 * conv.padding - kh) / conv.stride + 1,
    })
}
