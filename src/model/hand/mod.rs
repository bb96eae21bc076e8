//! The hand-written passes on plain buffers (used by training, evaluation and the NTK features):
//! train-mode forward (BatchNorm with batch statistics), softmax
//! cross-entropy and backward through a [`Network`], on plain buffers reused from step to step.
//!
//! Written for speed (issue: training at PyTorch's speed on CPU): feature maps are channel-major for the
//! whole batch (see [`plan`]), every convolution is one GEMM per group over the batch's `N·U` columns
//! ([`conv`]; in train mode in example tiles, [`conv_tiled`]; on AVX-512 machines 3×3 convolutions run
//! without a patch matrix: vectors over positions for rows of 12 or more in f32, [`conv_direct`], vectors
//! over output channels for strided and narrower ones and for the weight gradients, [`conv_blocked`]),
//! element-wise work runs in parallel chunks, and no buffer is allocated inside a step once the
//! first step at a batch size has sized them. Candle keeps the model's tensors and their loading; the
//! autograd path (`Trainer` with `TrainPass::Autograd`) stays as the reference the tests compare against.

pub mod conv;
pub mod conv_blocked;
pub mod conv_direct;
pub mod conv_tiled;
pub mod infer;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod plan;
pub mod pointwise;
pub mod pool;
pub mod product;
pub mod real;
pub mod reverse;
pub mod tangent;

pub use infer::Inference;
pub use norm::NormStats;
pub use plan::{Plan, Shape};
pub use real::Real;

use crate::model::{Network, Op};
use crate::{Error, Result};
use conv::ConvScratch;
use conv_tiled::TileScratch;
use pointwise::Pointwise;
use pool::{Pool, Windows};

/// Buffers and plan of the hand-written pass for one network (sized for the last batch size used).
pub struct HandPass<T> {
    plan: Plan,
    batch: usize,
    act: Vec<Vec<T>>,
    grad: Vec<Vec<T>>,
    written: Vec<bool>,
    scratch: ConvScratch<T>,
    /// Per-thread buffers of the train-mode convolutions that run in example tiles ([`conv_tiled`]).
    tiles: TileScratch<T>,
    /// Patch matrices of each grouped convolution from the last train-mode forward, reused by its backward
    /// (the one-group ones run in tiles and rebuild theirs).
    saved_cols: Vec<Vec<T>>,
    stats: Vec<NormStats>,
    eval_mode: bool,
    /// One direction's parameter tangents of a convolution over the n examples (the tangent pass).
    tangent_tmp: Vec<T>,
}

impl<T: Real> HandPass<T> {
    /// Plan the pass for `network`, refusing layers it does not implement.
    pub fn new(network: &Network) -> Result<Self> {
        let plan = Plan::new(network)?;
        let n = plan.shapes.len();
        Ok(Self {
            stats: vec![NormStats::default(); plan.batch_norms()],
            plan,
            batch: 0,
            act: vec![Vec::new(); n],
            grad: vec![Vec::new(); n],
            written: vec![false; n],
            scratch: ConvScratch::default(),
            tiles: TileScratch::default(),
            saved_cols: vec![Vec::new(); n],
            eval_mode: false,
            tangent_tmp: Vec::new(),
        })
    }

    /// The plan (shapes per node).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Bytes of every buffer the pass holds now (allocated capacities): what [`Plan::train_bytes`],
    /// [`Plan::eval_bytes`] and [`Plan::reverse_bytes`] count before the pass runs.
    pub fn held_bytes(&self) -> usize {
        let values: usize = self
            .act
            .iter()
            .chain(&self.grad)
            .chain(&self.saved_cols)
            .map(Vec::capacity)
            .sum::<usize>()
            + self.tangent_tmp.capacity();
        let stats: usize = self
            .stats
            .iter()
            .map(|s| s.mean.capacity() + s.inv_std.capacity() + s.var_unbiased.capacity())
            .sum();
        (values + self.scratch.held_values() + self.tiles.held_values()) * std::mem::size_of::<T>()
            + 8 * stats
    }

    /// Batch statistics of every BatchNorm node of the last step, in node order (with the node index).
    pub fn batch_stats(&self) -> impl Iterator<Item = (usize, &NormStats)> {
        self.plan
            .bn_slot
            .iter()
            .enumerate()
            .filter_map(|(k, s)| s.map(|s| (k, &self.stats[s])))
    }

    /// Forward and backward on one batch: `x` is (N, C, H, W) row-major, `params` the network's parameters
    /// in [`Network::parameters`] order; `grads` (same order and sizes) receives the gradient of the mean
    /// cross-entropy. Returns the loss and the number of correct predictions (train-mode forward).
    pub fn gradients(
        &mut self,
        network: &Network,
        params: &[Vec<T>],
        x: &[T],
        labels: &[u32],
        grads: &mut [Vec<T>],
    ) -> Result<(f64, usize)> {
        let n = labels.len();
        let [c, h, w] = network.input_shape;
        if x.len() != n * c * h * w || n < 2 {
            return Err(Error::Internal(format!(
                "hand pass: batch of {} values for {n} labels of shape {:?} (need N ≥ 2)",
                x.len(),
                network.input_shape
            )));
        }
        self.eval_mode = false;
        self.forward(network, params, x, n)?;
        for (k, s) in self.plan.shapes.iter().enumerate() {
            real::resize_exact(&mut self.grad[k], n * s.len());
        }
        let out = network.output();
        let d = self.plan.shapes[out].len();
        let mut dlogits = std::mem::take(&mut self.grad[out]);
        let (loss, correct) = loss::cross_entropy(&self.act[out], labels, d, &mut dlogits);
        self.grad[out] = dlogits;
        self.written.iter_mut().for_each(|w| *w = false);
        self.written[out] = true;
        for k in (1..network.nodes.len()).rev() {
            self.backward_node(network, params, grads, k, n);
        }
        Ok((loss, correct))
    }

    /// Eval-mode logits (N, d) of a batch `x` (N, C, H, W): BatchNorm normalises with `running`, one
    /// (mean, variance) pair per BatchNorm node in node order (e.g. from the network's buffers).
    pub fn logits_eval(
        &mut self,
        network: &Network,
        params: &[Vec<T>],
        running: &[(Vec<f64>, Vec<f64>)],
        x: &[T],
        n: usize,
    ) -> Result<&[T]> {
        if running.len() != self.stats.len() {
            return Err(Error::Internal(format!(
                "hand pass: {} running statistics for {} BatchNorm layers",
                running.len(),
                self.stats.len()
            )));
        }
        for (node, slot) in network.nodes.iter().zip(&self.plan.bn_slot) {
            if let (Some(slot), Op::BatchNorm2d(bn)) = (slot, &node.op) {
                let (mean, var) = &running[*slot];
                self.stats[*slot] = norm::running_stats(mean, var, bn.eps);
            }
        }
        self.eval_mode = true;
        let result = self.forward(network, params, x, n);
        self.eval_mode = false;
        result?;
        Ok(&self.act[network.output()][..n * self.plan.shapes[network.output()].len()])
    }

    /// The forward pass of a batch of `n` (train or eval mode by `self.eval_mode`).
    fn forward(&mut self, network: &Network, params: &[Vec<T>], x: &[T], n: usize) -> Result<()> {
        let [c, h, w] = network.input_shape;
        if x.len() != n * c * h * w {
            return Err(Error::Internal(format!(
                "hand pass: batch of {} values for {n} examples of shape {:?}",
                x.len(),
                network.input_shape
            )));
        }
        self.size_for(n);
        // Input: (N, C, H·W) → (C, N, H·W).
        let hw = h * w;
        for (ex, img) in x.chunks(c * hw).enumerate() {
            for ch in 0..c {
                self.act[0][(ch * n + ex) * hw..][..hw].copy_from_slice(&img[ch * hw..][..hw]);
            }
        }
        for k in 1..network.nodes.len() {
            self.forward_node(network, params, k, n)?;
        }
        Ok(())
    }

    /// Size the activations for a batch of `n` (no-op when they already are; the gradients are sized by
    /// the passes that use them, so an eval-mode forward holds none).
    fn size_for(&mut self, n: usize) {
        if self.batch == n {
            return;
        }
        for (k, s) in self.plan.shapes.iter().enumerate() {
            real::resize_exact(&mut self.act[k], n * s.len());
        }
        self.batch = n;
    }

    fn forward_node(
        &mut self,
        network: &Network,
        params: &[Vec<T>],
        k: usize,
        n: usize,
    ) -> Result<()> {
        let node = &network.nodes[k];
        let mut y = std::mem::take(&mut self.act[k]);
        let x = &self.act[node.inputs[0]];
        let p = |i: usize| &params[self.plan.first_param[k].unwrap_or(0) + i][..];
        match &node.op {
            Op::Input => {}
            Op::Conv2d(c) => {
                let g = self.plan.convs[k].ok_or_else(|| Error::Internal("conv plan".into()))?;
                let bias = c.bias.as_ref().map(|_| p(1));
                if !self.eval_mode && plan::Plan::tiled(&g) {
                    conv_tiled::forward(x, p(0), bias, &g, n, &mut self.tiles, &mut y);
                } else {
                    let keep = (!self.eval_mode).then_some(&mut self.saved_cols[k]);
                    conv::forward(x, p(0), bias, &g, n, &mut self.scratch, keep, &mut y);
                }
            }
            Op::Linear(l) => {
                let out = self.plan.shapes[k].len();
                let bias = l.bias.as_ref().map(|_| p(1));
                linear::forward(x, p(0), bias, n, out, &mut y);
            }
            Op::BatchNorm2d(bn) => {
                let slot = self.plan.bn_slot[k].unwrap_or(0);
                let len = n * map_plane(self.plan.shapes[k]);
                if !self.eval_mode {
                    norm::batch_stats(x, p(0).len(), bn.eps, len, &mut self.stats[slot]);
                }
                norm::apply(x, p(0), p(1), len, &self.stats[slot], &mut y);
            }
            Op::Relu => pointwise::forward(Pointwise::Relu, x, &mut y),
            Op::Tanh => pointwise::forward(Pointwise::Tanh, x, &mut y),
            Op::Gelu => pointwise::forward(Pointwise::Gelu, x, &mut y),
            Op::Dropout => pointwise::forward(Pointwise::Identity, x, &mut y),
            Op::MaxPool2d { .. } | Op::AvgPool2d { .. } | Op::AdaptiveAvgPool2d { .. } => {
                let (pool, g) = windows(&self.plan, network, k);
                pool::forward(pool, x, g, &mut y);
            }
            Op::Flatten => match self.plan.shapes[node.inputs[0]] {
                plan::Shape::Map { c, h, w } => pool::flatten(x, c, n, h * w, &mut y),
                plan::Shape::Flat(_) => y.copy_from_slice(x),
            },
            Op::Add => {
                let inputs: Vec<&[T]> = node.inputs.iter().map(|&i| &self.act[i][..]).collect();
                pointwise::sum(&inputs, &mut y);
            }
        }
        self.act[k] = y;
        Ok(())
    }

    fn backward_node(
        &mut self,
        network: &Network,
        params: &[Vec<T>],
        grads: &mut [Vec<T>],
        k: usize,
        n: usize,
    ) {
        let node = &network.nodes[k];
        let first = self.plan.first_param[k];
        if !self.written[k] {
            // Nothing downstream reached this node: its parameters get a zero gradient.
            if let Some(f) = first {
                for g in &mut grads[f..f + node.op.parameters().len()] {
                    g.iter_mut().for_each(|v| *v = T::ZERO);
                }
            }
            return;
        }
        let dy = std::mem::take(&mut self.grad[k]);
        if let Op::Add = node.op {
            for &j in &node.inputs {
                if self.plan.needs_grad[j] {
                    pointwise::pass_through(&dy, &mut self.grad[j], self.written[j]);
                    self.written[j] = true;
                }
            }
            self.grad[k] = dy;
            return;
        }
        let input = node.inputs[0];
        let wants = self.plan.needs_grad[input];
        let add = self.written[input];
        let x = &self.act[input];
        let y = &self.act[k];
        let p = |i: usize| &params[first.unwrap_or(0) + i][..];
        let dx = if wants {
            Some((&mut self.grad[input][..], add))
        } else {
            None
        };
        match &node.op {
            Op::Input => {}
            Op::Conv2d(c) => {
                let g = self.plan.convs[k].expect("planned convolution");
                let f = first.expect("conv parameters");
                let (dw, rest) = grads[f..].split_at_mut(1);
                let db = c.bias.as_ref().map(|_| &mut rest[0][..]);
                if plan::Plan::tiled(&g) {
                    if let Some(db) = db {
                        conv::bias_grad(&dy, g.c_out, n * g.positions(), db);
                    }
                    conv_tiled::backward(x, p(0), &dy, &g, n, &mut self.tiles, &mut dw[0], dx);
                } else {
                    let saved = Some(&self.saved_cols[k][..]);
                    let scratch = &mut self.scratch;
                    conv::backward(x, p(0), &dy, &g, n, saved, scratch, &mut dw[0], db, dx);
                }
            }
            Op::Linear(l) => {
                let f = first.expect("linear parameters");
                let out = self.plan.shapes[k].len();
                let (dw, rest) = grads[f..].split_at_mut(1);
                let db = l.bias.as_ref().map(|_| &mut rest[0][..]);
                linear::backward(x, p(0), &dy, n, out, &mut dw[0], db, dx);
            }
            Op::BatchNorm2d(_) => {
                let f = first.expect("batchnorm parameters");
                let slot = self.plan.bn_slot[k].unwrap_or(0);
                let len = n * map_plane(self.plan.shapes[k]);
                let (dg, rest) = grads[f..].split_at_mut(1);
                norm::backward(
                    x,
                    p(0),
                    &dy,
                    len,
                    &self.stats[slot],
                    &mut dg[0],
                    &mut rest[0],
                    dx,
                );
            }
            Op::Relu | Op::Tanh | Op::Gelu | Op::Dropout => {
                let f = match node.op {
                    Op::Relu => Pointwise::Relu,
                    Op::Tanh => Pointwise::Tanh,
                    Op::Gelu => Pointwise::Gelu,
                    _ => Pointwise::Identity,
                };
                if let Some((dx, add)) = dx {
                    pointwise::backward(f, x, y, &dy, dx, add);
                }
            }
            Op::MaxPool2d { .. } | Op::AvgPool2d { .. } | Op::AdaptiveAvgPool2d { .. } => {
                let (pool, g) = windows(&self.plan, network, k);
                if let Some((dx, add)) = dx {
                    pool::backward(pool, x, y, &dy, g, dx, add);
                }
            }
            Op::Flatten => {
                if let Some((dx, add)) = dx {
                    match self.plan.shapes[input] {
                        plan::Shape::Map { c, h, w } => pool::unflatten(&dy, c, n, h * w, dx, add),
                        plan::Shape::Flat(_) => pointwise::pass_through(&dy, dx, add),
                    }
                }
            }
            Op::Add => unreachable!("handled above"),
        }
        if wants {
            self.written[input] = true;
        }
        self.grad[k] = dy;
    }
}

/// The pooling kind and windows of pooling node `k`.
fn windows(plan: &Plan, network: &Network, k: usize) -> (Pool, Windows) {
    let node = &network.nodes[k];
    let plan::Shape::Map { h, w, .. } = plan.shapes[node.inputs[0]] else {
        unreachable!("the plan checked that pooling reads a feature map")
    };
    let (pool, kh, kw) = match node.op {
        Op::MaxPool2d { kernel, .. } => (Pool::Max, kernel, kernel),
        Op::AvgPool2d { kernel, .. } => (Pool::Mean, kernel, kernel),
        Op::AdaptiveAvgPool2d { output } => (Pool::Mean, h / output[0], w / output[1]),
        _ => unreachable!("not a pooling node"),
    };
    (pool, Windows { h, w, kh, kw })
}

/// H·W of a feature-map shape (1 for a flat one).
fn map_plane(s: Shape) -> usize {
    match s {
        Shape::Map { h, w, .. } => h * w,
        Shape::Flat(_) => 1,
    }
}
