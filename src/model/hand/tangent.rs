//! The NTK's forward-mode (tangent) pass on plain buffers: `J W`, the directional derivatives of the logits
//! of n examples along q parameter directions at once, without forming J.
//!
//! One eval-mode forward over the n examples, then the tangents on `n·q` rows, row `i·q + t` carrying
//! direction t of example i (the row layout of [`super::reverse`]), channel-major `(C, n·q, H, W)` for
//! feature maps and `(n·q, F)` after `Flatten`. They live in the pass's gradient buffers (the two passes
//! never run at once). Each node's tangent is `∂op/∂input · ẋ + ∂op/∂θ · θ̇_t`:
//! - conv: `conv(ẋ, W)` over the n·q rows, plus `conv(x, Ẇ_t) + ḃ_t` over the n examples for each t,
//!   scattered onto rows `i·q + t` (grouped and depthwise convolutions by the same kernels as the forward);
//! - linear: `ẋ Wᵀ` plus `x [Ẇ_1 … Ẇ_q]ᵀ` (one product whose (n, q·O) result is already the (n·q, O) rows)
//!   and `ḃ_t`; eval-mode BatchNorm: `γ·inv_std·ẋ + γ̇_t x̂ + β̇_t`;
//! - ReLU, tanh, GELU: the derivative at the example's primal input times `ẋ` (the same diagonal factor
//!   the reverse pass applies); max-pool: `ẋ` at the first maximum of each window (PyTorch's tie rule, as
//!   in the reverse pass); average pools, flatten, dropout (the identity) and residual add are linear and
//!   applied to the tangents as they are.
//!
//! Nodes that depend on no parameter have a zero tangent and are skipped; a network whose logits depend
//! on no parameter gets zero tangents.

use super::plan::Shape;
use super::pointwise::Pointwise;
use super::real::{resize_exact, Real};
use super::reverse::{pointwise_rows, repeated, RowsOf};
use super::{conv, linear, pointwise, pool, windows, HandPass};
use crate::model::{Network, Op};
use crate::{Error, Result};
use rayon::prelude::*;

impl<T: Real> HandPass<T> {
    /// Eval-mode forward of the n examples `x` (N, C, H, W), then the tangent pass along q directions:
    /// `directions[j]` holds q copies (direction-major, `q × len`) of parameter tensor j's shape, in
    /// [`Network::parameters`] order. Returns the logits' tangents, `(n·q) × d` row-major, row `i·q + t`
    /// being `J(x_i) θ̇_t`. `running` holds one (mean, variance) per BatchNorm node.
    #[allow(clippy::too_many_arguments)]
    pub fn tangent_rows(
        &mut self,
        network: &Network,
        params: &[Vec<T>],
        running: &[(Vec<f64>, Vec<f64>)],
        x: &[T],
        n: usize,
        q: usize,
        directions: &[Vec<T>],
    ) -> Result<&[T]> {
        if directions.len() != params.len()
            || directions
                .iter()
                .zip(params)
                .any(|(d, p)| d.len() != q * p.len())
        {
            return Err(Error::Internal(format!(
                "tangent pass: {} direction tensors for {} parameter tensors and {q} directions",
                directions.len(),
                params.len()
            )));
        }
        self.logits_eval(network, params, running, x, n)?;
        let rows = n * q;
        for (k, s) in self.plan.shapes.iter().enumerate() {
            resize_exact(&mut self.grad[k], rows * s.len());
        }
        self.written.iter_mut().for_each(|w| *w = false);
        for k in 1..network.nodes.len() {
            if !self.plan.needs_grad[k] {
                continue;
            }
            let mut out = std::mem::take(&mut self.grad[k]);
            let len = rows * self.plan.shapes[k].len();
            let done = self.tangent_node(network, params, directions, k, n, q, &mut out[..len]);
            self.grad[k] = out;
            done?;
            self.written[k] = true;
        }
        let out = network.output();
        let len = rows * self.plan.shapes[out].len();
        if !self.written[out] {
            self.grad[out][..len].fill(T::ZERO);
        }
        Ok(&self.grad[out][..len])
    }

    /// The tangent of node `k` into `out` (n·q rows), from its inputs' tangents (those `written`).
    #[allow(clippy::too_many_arguments)]
    fn tangent_node(
        &mut self,
        network: &Network,
        params: &[Vec<T>],
        directions: &[Vec<T>],
        k: usize,
        n: usize,
        q: usize,
        out: &mut [T],
    ) -> Result<()> {
        let node = &network.nodes[k];
        let rows = n * q;
        if let Op::Add = node.op {
            let mut first = true;
            for &j in node.inputs.iter().filter(|&&j| self.written[j]) {
                pointwise::pass_through(&self.grad[j][..out.len()], out, !first);
                first = false;
            }
            return Ok(());
        }
        let input = node.inputs[0];
        let (in_shape, out_shape) = (self.plan.shapes[input], self.plan.shapes[k]);
        let dx = self.written[input].then(|| &self.grad[input][..rows * in_shape.len()]);
        let first = self.plan.first_param[k];
        let p = |i: usize| &params[first.unwrap_or(0) + i][..];
        let dir = |i: usize| &directions[first.unwrap_or(0) + i][..];
        let x = &self.act[input][..n * in_shape.len()];
        let y = &self.act[k][..n * out_shape.len()];
        let missing = || {
            Error::Internal(format!(
                "tangent pass: node {k} ({}) depends on parameters but its input has no tangent",
                node.op.kind()
            ))
        };
        match &node.op {
            Op::Input | Op::Add => {}
            Op::Conv2d(c) => {
                let g = self.plan.convs[k].ok_or_else(|| Error::Internal("conv plan".into()))?;
                match dx {
                    Some(dx) => {
                        conv::forward(dx, p(0), None, &g, rows, &mut self.scratch, None, out)
                    }
                    None => out.fill(T::ZERO),
                }
                let own = g.c_out * n * g.positions();
                let blen = g.c_out;
                let bias = |t: usize| c.bias.as_ref().map(|_| &dir(1)[t * blen..][..blen]);
                if g.groups == 1 && !g.is_depthwise() {
                    // One patch matrix of x for every direction, DIRECTION_BLOCK directions per GEMM.
                    conv::forward_sets(
                        x,
                        dir(0),
                        q,
                        DIRECTION_BLOCK,
                        &g,
                        n,
                        &mut self.scratch,
                        &mut self.tangent_tmp,
                        |first, values| {
                            for (j, one) in values.chunks(own).enumerate() {
                                let t = first + j;
                                scatter_rows(one, bias(t), g.c_out, n, q, t, g.positions(), out);
                            }
                        },
                    );
                } else {
                    if self.tangent_tmp.len() < own {
                        resize_exact(&mut self.tangent_tmp, own);
                    }
                    let wlen = p(0).len();
                    for t in 0..q {
                        let tmp = &mut self.tangent_tmp[..own];
                        let weight = &dir(0)[t * wlen..][..wlen];
                        conv::forward(x, weight, bias(t), &g, n, &mut self.scratch, None, tmp);
                        scatter_rows(tmp, None, g.c_out, n, q, t, g.positions(), out);
                    }
                }
            }
            Op::Linear(l) => {
                let o = out_shape.len();
                let f = in_shape.len();
                match dx {
                    Some(dx) => linear::forward(dx, p(0), None, rows, o, out),
                    None => out.fill(T::ZERO),
                }
                // x (n × F) · [Ẇ_1 … Ẇ_q]ᵀ (F × q·O): row i holds (t, o) at t·O + o, i.e. row i·q + t.
                super::product::product(
                    out,
                    super::product::Operand::new(x, n, f),
                    super::product::Operand::new(dir(0), q * o, f).t(),
                    true,
                );
                if l.bias.is_some() {
                    let db = &dir(1)[..q * o];
                    out.par_chunks_mut(q * o).for_each(|row| {
                        row.iter_mut().zip(db).for_each(|(v, &b)| *v += b);
                    });
                }
            }
            Op::BatchNorm2d(_) => {
                let slot = self.plan.bn_slot[k].unwrap_or(0);
                let stats = &self.stats[slot];
                let hw = match out_shape {
                    Shape::Map { h, w, .. } => h * w,
                    Shape::Flat(_) => 1,
                };
                let (gamma, dgamma, dbeta) = (p(0), dir(0), dir(1));
                let ch = gamma.len();
                out.par_chunks_mut(rows * hw)
                    .enumerate()
                    .for_each(|(c, block)| {
                        let (mean, inv_std) = (stats.mean[c], stats.inv_std[c]);
                        let scale = T::from_f64(gamma[c].to_f64() * inv_std);
                        for (row, dst) in block.chunks_mut(hw).enumerate() {
                            let (i, t) = (row / q, row % q);
                            let (dg, db) = (dgamma[t * ch + c], dbeta[t * ch + c]);
                            let xs = &x[(c * n + i) * hw..][..hw];
                            let through = dx.map(|dx| &dx[(c * rows + row) * hw..][..hw]);
                            for (u, o) in dst.iter_mut().enumerate() {
                                let xhat = T::from_f64((xs[u].to_f64() - mean) * inv_std);
                                let own = dg * xhat + db;
                                *o = match through {
                                    Some(d) => scale * d[u] + own,
                                    None => own,
                                };
                            }
                        }
                    });
            }
            Op::Relu | Op::Tanh | Op::Gelu | Op::Dropout => {
                let dx = dx.ok_or_else(missing)?;
                // The derivative is diagonal, so the reverse rule f'(x)·dy is also the tangent rule.
                let rows_in = RowsOf {
                    n,
                    r: q,
                    shape: out_shape,
                };
                pointwise_rows(Pointwise::of(&node.op), rows_in, (x, y), dx, out, false);
            }
            Op::MaxPool2d { .. } | Op::AvgPool2d { .. } | Op::AdaptiveAvgPool2d { .. } => {
                let dx = dx.ok_or_else(missing)?;
                let (kind, g) = windows(&self.plan, network, k);
                match kind {
                    pool::Pool::Mean => pool::forward(kind, dx, g, out),
                    pool::Pool::Max => {
                        let (c, plane) = (in_shape.len() / (g.h * g.w), g.h * g.w);
                        let out_plane = out_shape.len() / c;
                        repeated(c, n, q, out_plane, out, |o, (i, row), dst| {
                            let at = o * n + i;
                            pool::max_tangent_plane(
                                &x[at * plane..][..plane],
                                &y[at * out_plane..][..out_plane],
                                &dx[(o * rows + row) * plane..][..plane],
                                g,
                                dst,
                            );
                        });
                    }
                }
            }
            Op::Flatten => {
                let dx = dx.ok_or_else(missing)?;
                match in_shape {
                    Shape::Map { c, h, w } => pool::flatten(dx, c, rows, h * w, out),
                    Shape::Flat(_) => out.copy_from_slice(dx),
                }
            }
        }
        Ok(())
    }
}

/// Directions per GEMM of a convolution's parameter tangents ([`conv::forward_sets`]): the pass holds
/// this many directions' `C_out·n·U` tangents at once (`Plan::product_bytes` counts them).
pub const DIRECTION_BLOCK: usize = 16;

/// `out[(o, i·q + t, u)] += tmp[(o, i, u)] + bias[o]`: add one direction's tangents of the n examples
/// (`(C, n, U)`, plus that direction's bias tangent when given) onto its rows of the `(C, n·q, U)` tangents.
#[allow(clippy::too_many_arguments)]
fn scatter_rows<T: Real>(
    tmp: &[T],
    bias: Option<&[T]>,
    channels: usize,
    n: usize,
    q: usize,
    t: usize,
    u: usize,
    out: &mut [T],
) {
    out[..channels * n * q * u]
        .par_chunks_mut(n * q * u)
        .enumerate()
        .for_each(|(o, block)| {
            let b = bias.map_or(T::ZERO, |b| b[o]);
            for i in 0..n {
                let src = &tmp[(o * n + i) * u..][..u];
                let dst = &mut block[(i * q + t) * u..][..u];
                dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s + b);
            }
        });
}
