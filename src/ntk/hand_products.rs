//! `Jᵀ V` and `J W` of the full (all-logit) Jacobian on the hand-written engine ([`crate::model::hand`]),
//! for [`super::NtkOperator`]: plain buffers of element type `T` (f64 for the reference precision, f32),
//! the examples processed `micro` at a time, results accumulated in f64.
//!
//! - `Jᵀ V`: [`HandPass::reverse_rows`] seeded with V's rows (row `i·q + t` = example i's part of vector
//!   t); at every parametrised node the output gradient is contracted with the input over the examples:
//!   conv weights direction by direction as the weight gradient of the convolution (one GEMM per group
//!   over the micro-batch's n·U columns; depthwise by direct loops), conv biases `Σ_{i,u} g`, linear
//!   weights in one product `[G_1 … G_q]ᵀ X` (the (n·q, O) gradients read as (n, q·O)), linear biases
//!   `Σ_i g`, BatchNorm γ `Σ_{i,u} g·x̂` and β `Σ_{i,u} g`.
//! - `J W`: [`HandPass::tangent_rows`] along the q directions.
//!
//! Scratch per micro-batch of `len` examples and q vectors ([`HandProducts::pass_bytes`]): the pass's
//! buffers ([`Plan::product_bytes`]), the seeds or tangents in and out (`len·q·d`), and the contraction's
//! own buffers: one direction's conv output gradient (`C_out·len·U`, largest conv), the patch matrix of the
//! largest lowered conv on `len` examples and its weight-gradient transpose, the stacked linear weight
//! gradient (`q·O·F`, largest linear layer), one weight and bias gradient. Per block (counted by the
//! operator): the directions of `J W`, `p·q` values of `T`. Fixed ([`HandProducts::fixed_bytes`]): the
//! parameters and the inputs in `T`.

use crate::model::hand::conv::{self, ConvScratch};
use crate::model::hand::product::{product, Operand};
use crate::model::hand::real::{resize_exact, sum2_f64};
use crate::model::hand::tangent::DIRECTION_BLOCK;
use crate::model::hand::{reverse::Visit, HandPass, Plan, Real, Shape};
use crate::model::{Network, Op};
use crate::ntk::layout::ParamLayout;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use faer::{Mat, MatMut, MatRef};
use rayon::prelude::*;
use std::sync::Mutex;

/// The hand-written products of one network on n examples, in precision `T`.
pub struct HandProducts<T> {
    plan: Plan,
    pass: Mutex<HandPass<T>>,
    contraction: Mutex<Contraction<T>>,
    params: Vec<Vec<T>>,
    running: Vec<(Vec<f64>, Vec<f64>)>,
    inputs: Vec<T>,
    per_example: usize,
    logits: usize,
}

/// The reused buffers of the `Jᵀ V` contractions.
#[derive(Default)]
struct Contraction<T> {
    scratch: ConvScratch<T>,
    gathered: Vec<T>,
    stacked: Vec<T>,
    weight: Vec<T>,
    bias: Vec<T>,
}

fn values<T: Real>(t: &Tensor) -> Result<Vec<T>> {
    Ok(t.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?)
}

impl<T: Real> HandProducts<T> {
    /// The products of `network` on `inputs` (n, C, H, W); refuses networks the hand-written pass does
    /// not plan (the caller then uses candle's graph).
    pub fn new(network: &Network, inputs: &Tensor, logits: usize) -> Result<Self> {
        let plan = Plan::new(network)?;
        let pass = HandPass::new(network)?;
        let params = network
            .parameters()
            .into_iter()
            .map(|(_, t)| values::<T>(t))
            .collect::<Result<Vec<_>>>()?;
        let buffers = network.buffers();
        let running = buffers
            .chunks(2)
            .map(|b| {
                let f = |t: &Tensor| values::<f64>(&t.to_dtype(DType::F64)?);
                Ok((f(b[0].1)?, f(b[1].1)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let inputs = values::<T>(inputs)?;
        let [c, h, w] = network.input_shape;
        Ok(Self {
            plan,
            pass: Mutex::new(pass),
            contraction: Mutex::new(Contraction::default()),
            params,
            running,
            inputs,
            per_example: c * h * w,
            logits,
        })
    }

    fn n(&self) -> usize {
        self.inputs.len() / self.per_example.max(1)
    }

    /// Bytes held while a micro-batch of `len` examples and `q` vectors runs (see the module docs).
    pub fn pass_bytes(&self, network: &Network, len: usize, q: usize) -> usize {
        let size = std::mem::size_of::<T>();
        let convs = self.plan.convs.iter().flatten();
        // The contraction gathers and contracts up to DIRECTION_BLOCK directions at once.
        let block = q.clamp(1, DIRECTION_BLOCK);
        let gathered = convs
            .clone()
            .map(|g| g.c_out * len * g.positions())
            .max()
            .unwrap_or(0)
            * block;
        let cols = convs
            .clone()
            .filter(|g| !g.is_pointwise() && !g.is_depthwise())
            .map(|g| g.patch_len() * len * g.positions())
            .max()
            .unwrap_or(0);
        // A block's dW (in the patch-gradient scratch, counted apart here).
        let small = convs
            .filter(|g| !g.is_depthwise())
            .map(|g| g.patch_len() * g.c_out_group())
            .max()
            .unwrap_or(0)
            * block;
        let linear = |f: &dyn Fn(usize, usize) -> usize| {
            network
                .nodes
                .iter()
                .filter_map(|node| match &node.op {
                    Op::Linear(l) => l.weight.dims2().ok().map(|(o, i)| f(o, i)),
                    _ => None,
                })
                .max()
                .unwrap_or(0)
        };
        let stacked = linear(&|o, i| q * o * i);
        let largest = self.params.iter().map(Vec::len).max().unwrap_or(0);
        let seeds = 2 * len * q * self.logits;
        self.plan.product_bytes::<T>(network, len, q)
            + size * (gathered + cols + small + stacked + 2 * largest + seeds)
    }

    /// Bytes held whatever the block: the parameters and the inputs in `T`, and the BatchNorm running
    /// statistics.
    pub fn fixed_bytes(&self) -> usize {
        let p: usize = self.params.iter().map(Vec::len).sum();
        let stats: usize = self.running.iter().map(|(m, v)| m.len() + v.len()).sum();
        std::mem::size_of::<T>() * (p + self.inputs.len()) + 8 * stats
    }

    /// Add `J_fullᵀ V` to `u` (p × Q, `layout` order) for V (n·d × Q, example-major rows).
    pub fn jt(
        &self,
        network: &Network,
        layout: &ParamLayout,
        v: MatRef<'_, f64>,
        micro: usize,
        mut u: MatMut<'_, f64>,
    ) -> Result<()> {
        let (n, d, q) = (self.n(), self.logits, v.ncols());
        let mut pass = lock(&self.pass)?;
        let mut work = lock(&self.contraction)?;
        let mut start = 0;
        while start < n {
            crate::signals::check()?;
            let len = micro.clamp(1, n - start);
            let mut seeds = vec![T::ZERO; len * q * d];
            seeds.par_chunks_mut(d).enumerate().for_each(|(row, s)| {
                let (i, t) = (row / q, row % q);
                for (c, v_c) in s.iter_mut().enumerate() {
                    *v_c = T::from_f64(v[((start + i) * d + c, t)]);
                }
            });
            let x = &self.inputs[start * self.per_example..(start + len) * self.per_example];
            pass.reverse_rows(
                network,
                &self.params,
                &self.running,
                x,
                len,
                q,
                &seeds,
                |visit| {
                    contract(
                        &self.plan,
                        network,
                        layout,
                        &self.params,
                        &self.running,
                        visit,
                        len,
                        q,
                        &mut work,
                        u.as_mut(),
                    )
                },
            )?;
            start += len;
        }
        Ok(())
    }

    /// `J_full W` for W (p × Q, `layout` order): n·d × Q, example-major rows.
    pub fn j(
        &self,
        network: &Network,
        layout: &ParamLayout,
        w: MatRef<'_, f64>,
        micro: usize,
    ) -> Result<Mat<f64>> {
        let (n, d, q) = (self.n(), self.logits, w.ncols());
        if w.nrows() != layout.total {
            return Err(Error::Internal(format!(
                "tangent pass: directions of {} rows for {} parameters",
                w.nrows(),
                layout.total
            )));
        }
        // Parameter tensors in `Network::parameters` order = the layout's weight-then-bias order.
        let mut directions = Vec::with_capacity(self.params.len());
        for node in &layout.nodes {
            let spans = [(node.weight, node.weight_len)]
                .into_iter()
                .chain(node.bias.map(|b| (b, node.bias_len)));
            for (at, len) in spans {
                let mut dir = vec![T::ZERO; q * len];
                dir.par_chunks_mut(len.max(1))
                    .enumerate()
                    .for_each(|(t, chunk)| {
                        for (e, v) in chunk.iter_mut().enumerate() {
                            *v = T::from_f64(w[(at + e, t)]);
                        }
                    });
                directions.push(dir);
            }
        }
        let mut y = Mat::<f64>::zeros(n * d, q);
        let mut pass = lock(&self.pass)?;
        let mut start = 0;
        while start < n {
            crate::signals::check()?;
            let len = micro.clamp(1, n - start);
            let x = &self.inputs[start * self.per_example..(start + len) * self.per_example];
            let out =
                pass.tangent_rows(network, &self.params, &self.running, x, len, q, &directions)?;
            for i in 0..len {
                for t in 0..q {
                    for c in 0..d {
                        y[((start + i) * d + c, t)] = out[(i * q + t) * d + c].to_f64();
                    }
                }
            }
            start += len;
        }
        Ok(y)
    }
}

fn lock<V>(m: &Mutex<V>) -> Result<std::sync::MutexGuard<'_, V>> {
    m.lock()
        .map_err(|_| Error::Internal("NTK products: a previous product panicked".into()))
}

/// Add one node's parameter gradients for the q seed vectors to `u` (p × q).
#[allow(clippy::too_many_arguments)]
fn contract<T: Real>(
    plan: &Plan,
    network: &Network,
    layout: &ParamLayout,
    params: &[Vec<T>],
    running: &[(Vec<f64>, Vec<f64>)],
    visit: Visit<'_, T>,
    n: usize,
    q: usize,
    work: &mut Contraction<T>,
    mut u: MatMut<'_, f64>,
) -> Result<()> {
    let k = visit.node;
    let at = layout
        .of(k)
        .ok_or_else(|| Error::Internal(format!("no parameter layout for node {k}")))?;
    let first = plan.first_param[k].unwrap_or(0);
    let rows = n * q;
    let mut add = |offset: usize, t: usize, values: &[T]| {
        let mut col = u.as_mut().col_mut(t);
        for (e, v) in values.iter().enumerate() {
            col[offset + e] += v.to_f64();
        }
    };
    match &network.nodes[k].op {
        Op::Conv2d(_) => {
            let g = plan.convs[k].ok_or_else(|| Error::Internal("conv plan".into()))?;
            let upos = g.positions();
            let own = g.c_out * n * upos;
            if work.gathered.len() < own {
                resize_exact(&mut work.gathered, own);
            }
            resize_exact(&mut work.weight, at.weight_len);
            resize_exact(&mut work.bias, at.bias_len);
            // Direction t's rows of the (C_out, n·q, U) gradient, as a (C_out, n, U) batch.
            let gather = |t: usize, dst: &mut [T]| {
                dst.par_chunks_mut(n * upos)
                    .enumerate()
                    .for_each(|(o, dst)| {
                        for i in 0..n {
                            dst[i * upos..][..upos].copy_from_slice(
                                &visit.grad[(o * rows + i * q + t) * upos..][..upos],
                            );
                        }
                    });
            };
            if g.groups == 1 && !g.is_depthwise() {
                // One patch matrix of the input for every direction, DIRECTION_BLOCK per GEMM.
                let wlen = at.weight_len;
                conv::weight_grad_sets(
                    visit.input,
                    q,
                    DIRECTION_BLOCK,
                    &g,
                    n,
                    &mut work.scratch,
                    &mut work.gathered,
                    |first, dy| {
                        for (j, one) in dy.chunks_mut(own).enumerate() {
                            gather(first + j, one);
                        }
                    },
                    |first, dw| {
                        for (j, one) in dw.chunks(wlen).enumerate() {
                            add(at.weight, first + j, one);
                        }
                    },
                );
                if let Some(b) = at.bias {
                    // Σ_{i,u} of direction t's gradient per output channel, in f64.
                    for t in 0..q {
                        let sums: Vec<T> = (0..g.c_out)
                            .into_par_iter()
                            .map(|o| {
                                T::from_f64(
                                    (0..n)
                                        .map(|i| {
                                            let row = &visit.grad[(o * rows + i * q + t) * upos..];
                                            row[..upos].iter().map(|v| v.to_f64()).sum::<f64>()
                                        })
                                        .sum(),
                                )
                            })
                            .collect();
                        add(b, t, &sums);
                    }
                }
            } else {
                for t in 0..q {
                    gather(t, &mut work.gathered[..own]);
                    let bias = at.bias.map(|_| &mut work.bias[..]);
                    conv::backward(
                        visit.input,
                        &params[first],
                        &work.gathered[..own],
                        &g,
                        n,
                        None,
                        &mut work.scratch,
                        &mut work.weight,
                        bias,
                        None,
                    );
                    add(at.weight, t, &work.weight);
                    if let Some(b) = at.bias {
                        add(b, t, &work.bias);
                    }
                }
            }
        }
        Op::Linear(_) => {
            let (o, f) = (visit.output_shape.len(), visit.input_shape.len());
            resize_exact(&mut work.stacked, q * o * f);
            // (n, q·O)ᵀ · (n, F): row t·O + o' is direction t's gradient of weight row o'.
            product(
                &mut work.stacked,
                Operand::new(visit.grad, n, q * o).t(),
                Operand::new(visit.input, n, f),
                false,
            );
            for t in 0..q {
                add(at.weight, t, &work.stacked[t * o * f..][..o * f]);
            }
            if let Some(b) = at.bias {
                let mut col = Vec::with_capacity(o);
                for t in 0..q {
                    col.clear();
                    col.extend((0..o).map(|c| {
                        T::from_f64(
                            (0..n)
                                .map(|i| visit.grad[(i * q + t) * o + c].to_f64())
                                .sum(),
                        )
                    }));
                    add(b, t, &col);
                }
            }
        }
        Op::BatchNorm2d(_) => {
            let slot = plan.bn_slot[k].unwrap_or(0);
            let Shape::Map { c, h, w } = visit.output_shape else {
                return Err(Error::Internal("BatchNorm on a flat input".into()));
            };
            let hw = h * w;
            let (mean, var) = running
                .get(slot)
                .ok_or_else(|| Error::Internal(format!("no running statistics for node {k}")))?;
            let eps = match &network.nodes[k].op {
                Op::BatchNorm2d(bn) => bn.eps,
                _ => 0.0,
            };
            // Σ_{i,u} g·x̂ and Σ_{i,u} g per (channel, direction), in f64.
            let sums: Vec<Vec<(f64, f64)>> = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let inv_std = 1.0 / (var[ch] + eps).sqrt();
                    let mu = mean[ch];
                    (0..q)
                        .map(|t| {
                            let (mut sg, mut sb) = (0.0, 0.0);
                            for i in 0..n {
                                let x = &visit.input[(ch * n + i) * hw..][..hw];
                                let g = &visit.grad[(ch * rows + i * q + t) * hw..][..hw];
                                let (a, b) = sum2_f64(
                                    x,
                                    g,
                                    |x, g| (x.to_f64() - mu) * g.to_f64(),
                                    |_, g| g.to_f64(),
                                );
                                sg += a * inv_std;
                                sb += b;
                            }
                            (sg, sb)
                        })
                        .collect()
                })
                .collect();
            for t in 0..q {
                let mut col = u.as_mut().col_mut(t);
                for (ch, s) in sums.iter().enumerate() {
                    col[at.weight + ch] += s[t].0;
                    if let Some(b) = at.bias {
                        col[b + ch] += s[t].1;
                    }
                }
            }
        }
        other => {
            return Err(Error::Internal(format!(
                "reverse pass visited parameter-free layer {}",
                other.kind()
            )))
        }
    }
    Ok(())
}
