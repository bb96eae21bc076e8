//! The NTK's batched reverse pass on plain buffers: one eval-mode forward pass over `n` examples, then one
//! reverse pass over `n·r` rows, row `i·r + c` carrying seed `c` of example `i` (examples do not interact
//! in eval mode), so one pass yields every layer's output gradient for every (example, seed).
//!
//! Gradients are channel-major like the forward activations, `(C, n·r, H, W)` for feature maps and
//! `(n·r, F)` after `Flatten`; forward values (ReLU and max-pool masks, tanh/GELU derivatives) are read from
//! the example's own activation for each of its r rows.

use super::plan::{Plan, Shape};
use super::pointwise::Pointwise;
use super::pool::{Pool, Windows};
use super::real::Real;
use super::{conv, conv_tiled, pointwise, pool, windows, HandPass};
use crate::model::{Network, Op};
use crate::{Error, Result};
use rayon::prelude::*;

/// What the reverse pass hands to its visitor for one parametrised node.
pub struct Visit<'a, T> {
    /// Node index.
    pub node: usize,
    /// The node's input activation for the n examples, channel-major (C, n, H, W) or (n, F).
    pub input: &'a [T],
    /// Shape of the input per example.
    pub input_shape: Shape,
    /// The gradient of the node's output for the n·r rows, (C, n·r, H, W) or (n·r, F).
    pub grad: &'a [T],
    /// Shape of the output per example (= per row).
    pub output_shape: Shape,
}

/// (outer, inner) of a shape's channel-major layout: (C, H·W) for a map, (1, F) for a flat vector.
fn split(s: Shape) -> (usize, usize) {
    match s {
        Shape::Map { c, h, w } => (c, h * w),
        Shape::Flat(f) => (1, f),
    }
}

impl<T: Real> HandPass<T> {
    /// Eval-mode forward of the n examples `x` (N, C, H, W), then the reverse pass from `seeds` ((n·r) × d
    /// row-major), calling `visit` for every parametrised node (in reverse order) with its input and output
    /// gradient. `running` holds one (mean, variance) per BatchNorm node.
    #[allow(clippy::too_many_arguments)]
    pub fn reverse_rows(
        &mut self,
        network: &Network,
        params: &[Vec<T>],
        running: &[(Vec<f64>, Vec<f64>)],
        x: &[T],
        n: usize,
        r: usize,
        seeds: &[T],
        mut visit: impl FnMut(Visit<'_, T>) -> Result<()>,
    ) -> Result<()> {
        self.logits_eval(network, params, running, x, n)?;
        let out = network.output();
        let rows = n * r;
        for (k, s) in self.plan.shapes.iter().enumerate() {
            super::real::resize_exact(&mut self.grad[k], rows * s.len());
        }
        let d = self.plan.shapes[out].len();
        if seeds.len() != rows * d {
            return Err(Error::Internal(format!(
                "reverse pass: {} seed values for {rows} rows of {d}",
                seeds.len()
            )));
        }
        self.grad[out][..rows * d].copy_from_slice(seeds);
        self.written.iter_mut().for_each(|w| *w = false);
        self.written[out] = true;
        for k in (1..network.nodes.len()).rev() {
            if !self.written[k] {
                continue;
            }
            let node = &network.nodes[k];
            let dy = std::mem::take(&mut self.grad[k]);
            if self.plan.first_param[k].is_some() {
                let input = node.inputs[0];
                visit(Visit {
                    node: k,
                    input: &self.act[input][..n * self.plan.shapes[input].len()],
                    input_shape: self.plan.shapes[input],
                    grad: &dy[..rows * self.plan.shapes[k].len()],
                    output_shape: self.plan.shapes[k],
                })?;
            }
            self.reverse_node(network, params, k, n, r, &dy);
            self.grad[k] = dy;
        }
        Ok(())
    }

    /// Propagate node `k`'s row gradient `dy` to its inputs that need it.
    fn reverse_node(
        &mut self,
        network: &Network,
        params: &[Vec<T>],
        k: usize,
        n: usize,
        r: usize,
        dy: &[T],
    ) {
        let node = &network.nodes[k];
        let rows = n * r;
        if let Op::Add = node.op {
            for &j in &node.inputs {
                if self.plan.needs_grad[j] {
                    pointwise::pass_through(dy, &mut self.grad[j][..dy.len()], self.written[j]);
                    self.written[j] = true;
                }
            }
            return;
        }
        let input = node.inputs[0];
        if !self.plan.needs_grad[input] {
            return;
        }
        let add = self.written[input];
        let (out_shape, in_shape) = (self.plan.shapes[k], self.plan.shapes[input]);
        let windows = match node.op {
            Op::MaxPool2d { .. } | Op::AvgPool2d { .. } | Op::AdaptiveAvgPool2d { .. } => {
                Some(windows(&self.plan, network, k))
            }
            _ => None,
        };
        let p = |i: usize| &params[self.plan.first_param[k].unwrap_or(0) + i][..];
        let x = &self.act[input];
        let y = &self.act[k];
        let dx = &mut self.grad[input][..rows * in_shape.len()];
        match &node.op {
            Op::Input | Op::Add => {}
            Op::Conv2d(_) => {
                let g = self.plan.convs[k].expect("planned convolution");
                if Plan::tiled(&g) {
                    conv_tiled::input_grad(p(0), dy, &g, rows, &mut self.tiles, dx, add);
                } else {
                    conv::input_grad(p(0), dy, &g, rows, &mut self.scratch, dx, add);
                }
            }
            Op::Linear(_) => {
                let out = out_shape.len();
                let f = in_shape.len();
                super::product::product(
                    dx,
                    super::product::Operand::new(dy, rows, out),
                    super::product::Operand::new(p(0), out, f),
                    add,
                );
            }
            Op::BatchNorm2d(_) => {
                let slot = self.plan.bn_slot[k].unwrap_or(0);
                let stats = &self.stats[slot];
                let (_, hw) = split(out_shape);
                let gamma = p(0);
                dx.par_chunks_mut(rows * hw)
                    .zip(dy.par_chunks(rows * hw))
                    .enumerate()
                    .for_each(|(ch, (o, d))| {
                        let scale = T::from_f64(gamma[ch].to_f64() * stats.inv_std[ch]);
                        if add {
                            o.iter_mut().zip(d).for_each(|(o, &d)| *o += d * scale);
                        } else {
                            o.iter_mut().zip(d).for_each(|(o, &d)| *o = d * scale);
                        }
                    });
            }
            Op::Relu | Op::Tanh | Op::Gelu | Op::Dropout => {
                let rows_in = RowsOf {
                    n,
                    r,
                    shape: out_shape,
                };
                pointwise_rows(Pointwise::of(&node.op), rows_in, (x, y), dy, dx, add);
            }
            Op::MaxPool2d { .. } | Op::AvgPool2d { .. } | Op::AdaptiveAvgPool2d { .. } => {
                let (kind, g): (Pool, Windows) = windows.expect("pooling windows");
                let (c, plane) = split(in_shape);
                let (_, out_plane) = split(out_shape);
                repeated(c, n, r, plane, dx, |o, i, dst| {
                    let src = &dy[(o * rows + i.1) * out_plane..][..out_plane];
                    let at = o * n + i.0;
                    pool::backward_plane(
                        kind,
                        &x[at * plane..][..plane],
                        &y[at * out_plane..][..out_plane],
                        src,
                        g,
                        dst,
                        add,
                    );
                });
            }
            Op::Flatten => match in_shape {
                Shape::Map { c, h, w } => pool::unflatten(dy, c, rows, h * w, dx, add),
                Shape::Flat(_) => pointwise::pass_through(dy, dx, add),
            },
        }
        self.written[input] = true;
    }
}

/// Run `f(outer, (example, row), dst)` over the `(outer, n·r, inner)` layout of `dx`, one call per
/// (outer index, row) block of `inner` values, in parallel over the outer index.
/// n examples' activations seen by `n·r` rows (row `i·r + t` reads example i), of `shape` per row.
#[derive(Debug, Clone, Copy)]
pub(super) struct RowsOf {
    /// Examples.
    pub n: usize,
    /// Rows per example.
    pub r: usize,
    /// Shape per row.
    pub shape: Shape,
}

/// A pointwise node's diagonal derivative on `n·r` channel-major rows: `dst = f'(x)·src` (`+=` with
/// `add`), each row reading its example's primal input `x` and output `y`. The reverse pass's rule and,
/// since the derivative is diagonal, the tangent pass's too.
pub(super) fn pointwise_rows<T: Real>(
    f: Pointwise,
    rows: RowsOf,
    (x, y): (&[T], &[T]),
    src: &[T],
    dst: &mut [T],
    add: bool,
) {
    let RowsOf { n, r, shape } = rows;
    let (outer, inner) = split(shape);
    repeated(outer, n, r, inner, dst, |o, (i, row), dst| {
        let at = (o * n + i) * inner;
        let src = &src[(o * n * r + row) * inner..][..inner];
        pointwise::backward_block(f, &x[at..at + inner], &y[at..at + inner], src, dst, add);
    });
}

pub(super) fn repeated<T: Real>(
    outer: usize,
    n: usize,
    r: usize,
    inner: usize,
    dx: &mut [T],
    f: impl Fn(usize, (usize, usize), &mut [T]) + Sync,
) {
    dx[..outer * n * r * inner]
        .par_chunks_mut(n * r * inner)
        .enumerate()
        .for_each(|(o, block)| {
            for (row, dst) in block.chunks_mut(inner).enumerate() {
                f(o, (row / r, row), dst);
            }
        });
}
