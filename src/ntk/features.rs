//! Per-block NTK features: one eval-mode forward pass over a block of examples, one batched reverse pass over
//! its `n·r` (example, seed) rows, and for every parametrised layer the factors its tile rule needs.
//!
//! Layer rules (chosen once per network by [`LayerPlan::new`], see `contract.rs` for the contractions):
//! - **explicit** columns of the Jacobian: conv weights by route A (`G_ic P_i`, one GEMM per row), conv biases
//!   (`Σ_u G_ic`), BatchNorm γ (`Σ_u g·x̂`) and β (`Σ_u g`);
//! - **dense** factors for linear layers: inputs `a_i` and output gradients `g_ic`
//!   (`K_l = (g·g') (a·a' + 1[bias])`);
//! - **spatial** factors for conv route B: patches `P_i` and output gradients `G_ic`
//!   (`K_l = Σ_{u,v} (G_ic G_jc'ᵀ)_{uv} (P_i P_jᵀ)_{uv}`), used where it needs fewer FLOPs than route A.
//!
//! Features are computed into f64 arrays. With `--precision f32` every value is an f32 (the passes run in
//! f32, and the features derived from them, route A's weight gradients and the channel sums, are computed
//! with f32 arithmetic), so [`Features::narrow`] to the f32 arrays the contraction then reads is exact.

use crate::linalg::gemm::matmul;
use crate::model::hand::real::{sum2_f64, sum_f64};
use crate::model::im2col::{im2col_of, patch_rows_of, ConvGeometry};
use crate::model::{Network, Op};
use crate::ntk::backward::{backward, seed};
use crate::ntk::planes::Planes;
use crate::ntk::KernelSpec;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// How one parametrised node contributes to the kernel.
#[derive(Debug, Clone)]
pub enum Rule {
    /// Conv weights by route A: explicit columns `[offset, offset + c_out·patch_len)` per group layout.
    ConvExplicit {
        /// Geometry of the conv on one example.
        geometry: ConvGeometry,
        /// Output channels.
        c_out: usize,
        /// Groups.
        groups: usize,
        /// First explicit column.
        offset: usize,
    },
    /// Conv weights by route B: stored as spatial factors number `slot`.
    ConvSpatial {
        /// Geometry of the conv on one example.
        geometry: ConvGeometry,
        /// Output channels.
        c_out: usize,
        /// Index into `Features::spatial`.
        slot: usize,
    },
    /// Linear layer: dense factors number `slot`.
    Linear {
        /// Index into `Features::dense`.
        slot: usize,
        /// Whether a bias adds `g·g'`.
        bias: bool,
    },
    /// BatchNorm γ and β: explicit columns `[offset, offset + 2C)`.
    BatchNorm {
        /// Channels.
        channels: usize,
        /// First explicit column.
        offset: usize,
    },
}

/// A layer's rule plus, for conv layers with a bias, the explicit columns of the bias.
#[derive(Debug, Clone)]
pub struct LayerRule {
    /// Node index in the network.
    pub node: usize,
    /// The weight rule.
    pub rule: Rule,
    /// First explicit column of the conv bias (C_out columns), if any.
    pub bias_offset: Option<usize>,
}

/// The per-network plan: which rule each parametrised node uses and how big the features are.
#[derive(Debug, Clone)]
pub struct LayerPlan {
    /// One entry per parametrised node, in node order.
    pub layers: Vec<LayerRule>,
    /// Number of explicit Jacobian columns.
    pub explicit_cols: usize,
    /// Number of dense (linear) layers.
    pub dense_slots: usize,
    /// Number of route-B conv layers.
    pub spatial_slots: usize,
    /// Rows per example in the features (d for full/trace, 1 otherwise).
    pub rows: usize,
    /// Bytes of features per example (f64).
    pub bytes_per_example: usize,
}

impl LayerPlan {
    /// Decide the rule of every parametrised node from one forward pass on `probe` (one example), with `rows`
    /// seed rows per example. Conv layers take route B when its FLOPs per example pair are lower.
    pub fn new(network: &Network, probe: &Tensor, rows: usize) -> Result<Self> {
        let cache = network.forward_cached(probe)?;
        let mut layers = Vec::new();
        let (mut explicit_cols, mut dense_slots, mut spatial_slots, mut per_example) =
            (0, 0, 0, 0usize);
        for (k, node) in network.nodes.iter().enumerate() {
            let input = node.inputs.first().map(|&i| &cache[i]);
            match (&node.op, input) {
                (Op::Conv2d(c), Some(x)) => {
                    let (c_out, _, kh, _) = c.weight.dims4()?;
                    let geometry = ConvGeometry {
                        c_in: x.dim(1)?,
                        h: x.dim(2)?,
                        w: x.dim(3)?,
                        k: kh,
                        stride: c.stride,
                        padding: c.padding,
                    };
                    let (u, kk) = (geometry.positions() as f64, geometry.patch_len() as f64);
                    let r = rows as f64;
                    let flops_a = r * r * c_out as f64 * kk / c.groups as f64;
                    let flops_b = u * u * kk + r * c_out as f64 * u * u + r * r * c_out as f64 * u;
                    let rule = if c.groups == 1 && flops_b < flops_a {
                        per_example += geometry.positions() * (geometry.patch_len() + rows * c_out);
                        spatial_slots += 1;
                        Rule::ConvSpatial {
                            geometry,
                            c_out,
                            slot: spatial_slots - 1,
                        }
                    } else {
                        let len = c_out * geometry.patch_len() / c.groups;
                        explicit_cols += len;
                        per_example += rows * len;
                        Rule::ConvExplicit {
                            geometry,
                            c_out,
                            groups: c.groups,
                            offset: explicit_cols - len,
                        }
                    };
                    let bias_offset = c.bias.as_ref().map(|_| {
                        explicit_cols += c_out;
                        per_example += rows * c_out;
                        explicit_cols - c_out
                    });
                    layers.push(LayerRule {
                        node: k,
                        rule,
                        bias_offset,
                    });
                }
                (Op::Linear(l), Some(_)) => {
                    let (out_dim, in_dim) = l.weight.dims2()?;
                    per_example += in_dim + rows * out_dim;
                    dense_slots += 1;
                    let rule = Rule::Linear {
                        slot: dense_slots - 1,
                        bias: l.bias.is_some(),
                    };
                    layers.push(LayerRule {
                        node: k,
                        rule,
                        bias_offset: None,
                    });
                }
                (Op::BatchNorm2d(bn), Some(_)) => {
                    let channels = bn.weight.elem_count();
                    explicit_cols += 2 * channels;
                    per_example += rows * 2 * channels;
                    let rule = Rule::BatchNorm {
                        channels,
                        offset: explicit_cols - 2 * channels,
                    };
                    layers.push(LayerRule {
                        node: k,
                        rule,
                        bias_offset: None,
                    });
                }
                _ => {}
            }
        }
        Ok(Self {
            layers,
            explicit_cols,
            dense_slots,
            spatial_slots,
            rows,
            bytes_per_example: per_example * std::mem::size_of::<f64>(),
        })
    }
}

/// Dense-layer factors of a block: inputs (n × in) and output gradients (n·r × out), row-major, in f64
/// (`T = f64`) or f32.
#[derive(Debug, Clone, Default)]
pub struct DenseFactors<T = f64> {
    /// Input dimension.
    pub in_dim: usize,
    /// Output dimension.
    pub out_dim: usize,
    /// Layer inputs a_i, row-major n × in.
    pub inputs: Vec<T>,
    /// Output gradients g_ic, row-major (n·r) × out.
    pub grads: Vec<T>,
}

/// Route-B conv factors of a block: patches (n·U × patch) and output gradients (n·r·C_out × U), row-major,
/// in f64 (`T = f64`) or f32.
#[derive(Debug, Clone, Default)]
pub struct SpatialFactors<T = f64> {
    /// Output positions U.
    pub positions: usize,
    /// Patch length C_in·k·k.
    pub patch_len: usize,
    /// Output channels.
    pub c_out: usize,
    /// Patches P_i stacked, row-major (n·U) × patch_len.
    pub patches: Vec<T>,
    /// Output gradients G_ic stacked, row-major (n·r·C_out) × U.
    pub grads: Vec<T>,
}

/// All features of one block of examples, in f64 (`T = f64`, what [`compute`] gives) or f32 (their
/// [`Features::narrow`]ing, what the f32 contraction reads).
#[derive(Debug, Clone)]
pub struct Features<T = f64> {
    /// Number of examples.
    pub n: usize,
    /// Rows per example.
    pub rows: usize,
    /// Number of explicit Jacobian columns (the length of one row's explicit feature vector).
    pub explicit_cols: usize,
    /// Explicit Jacobian rows, one contiguous vector of `explicit_cols` values per row i·r + c.
    pub explicit: Vec<T>,
    /// Dense factors per linear layer.
    pub dense: Vec<DenseFactors<T>>,
    /// Spatial factors per route-B conv layer.
    pub spatial: Vec<SpatialFactors<T>>,
}

impl<T> Features<T> {
    /// Bytes held by these features.
    pub fn bytes(&self) -> usize {
        let dense: usize = self
            .dense
            .iter()
            .map(|d| d.inputs.len() + d.grads.len())
            .sum();
        let spatial: usize = self
            .spatial
            .iter()
            .map(|s| s.patches.len() + s.grads.len())
            .sum();
        (self.explicit.len() + dense + spatial) * std::mem::size_of::<T>()
    }

    /// The explicit features as an (explicit_cols × n·r) matrix: column i·r + c is row (i, c) of the Jacobian.
    pub fn explicit_t(&self) -> MatRef<'_, T> {
        MatRef::from_column_major_slice(&self.explicit, self.explicit_cols, self.n * self.rows)
    }
}

impl Features<f64> {
    /// Every value rounded to f32: exact for the features of `--precision f32` (module docs), which the f32
    /// contraction reads in this form.
    pub fn narrow(&self) -> Features<f32> {
        let narrow = |v: &[f64]| -> Vec<f32> { v.par_iter().map(|&x| x as f32).collect() };
        Features {
            n: self.n,
            rows: self.rows,
            explicit_cols: self.explicit_cols,
            explicit: narrow(&self.explicit),
            dense: self
                .dense
                .iter()
                .map(|d| DenseFactors {
                    in_dim: d.in_dim,
                    out_dim: d.out_dim,
                    inputs: narrow(&d.inputs),
                    grads: narrow(&d.grads),
                })
                .collect(),
            spatial: self
                .spatial
                .iter()
                .map(|sp| SpatialFactors {
                    positions: sp.positions,
                    patch_len: sp.patch_len,
                    c_out: sp.c_out,
                    patches: narrow(&sp.patches),
                    grads: narrow(&sp.grads),
                })
                .collect(),
        }
    }
}

/// Compute the features of the examples `inputs` (n, C, H, W) for `spec`, processing `micro` examples per
/// forward/backward pass. `network` must already be in the working precision.
pub fn compute(
    network: &Network,
    plan: &LayerPlan,
    inputs: &Tensor,
    spec: &KernelSpec,
    micro: usize,
) -> Result<Features> {
    let hand = network.dtype() == DType::F64 && crate::model::hand::Plan::new(network).is_ok();
    let pass = if hand {
        FeaturePass::Hand
    } else {
        FeaturePass::Candle
    };
    compute_with(pass, network, plan, inputs, spec, micro)
}

/// Which implementation computes the forward and reverse passes of the features (same values; see
/// `tests/ntk_exactness.rs` and `cargo bench --bench ntk`, which times both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeaturePass {
    /// The hand-written pass of [`crate::model::hand`] on plain buffers (f64 networks of supported layers).
    Hand,
    /// candle's graph forward and the candle-tensor reverse pass of [`crate::ntk::backward`] (f32 kernels,
    /// other layers, and the baseline of the benchmark).
    Candle,
}

/// [`compute`] by a chosen pass (`Hand` needs an f64 network).
pub fn compute_with(
    pass: FeaturePass,
    network: &Network,
    plan: &LayerPlan,
    inputs: &Tensor,
    spec: &KernelSpec,
    micro: usize,
) -> Result<Features> {
    let mut feats = Features::zeros(plan, inputs.dim(0)?);
    match pass {
        FeaturePass::Hand => {
            let key = (micro, plan.rows);
            let mut ws = HandWorkspace::take_kept(network, key)?;
            let done = compute_hand(&mut ws, network, plan, inputs, spec, micro, &mut feats);
            HandWorkspace::keep(key, ws);
            done?
        }
        FeaturePass::Candle => {
            let dtype = spec.precision.pass_dtype();
            compute_candle(network, plan, inputs, spec, micro, dtype, &mut feats)?
        }
    }
    Ok(feats)
}

impl Features {
    /// Zeroed features of `n` examples for `plan` (the factor vectors are sized on their layer's first visit).
    fn zeros(plan: &LayerPlan, n: usize) -> Self {
        Features {
            n,
            rows: plan.rows,
            explicit_cols: plan.explicit_cols,
            explicit: vec![0.0; plan.explicit_cols * n * plan.rows],
            dense: vec![DenseFactors::default(); plan.dense_slots],
            spatial: vec![SpatialFactors::default(); plan.spatial_slots],
        }
    }
}

/// What the hand-written feature pass keeps between the micro-batches and nodes of a block: the pass (its activations, gradients and
/// convolution scratch), the f64 parameters and running statistics, and the extraction's buffers.
struct HandWorkspace {
    pass: crate::model::hand::HandPass<f64>,
    params: Vec<Vec<f64>>,
    running: Vec<(Vec<f64>, Vec<f64>)>,
    scratch: SideBuffers,
}

/// The hand-written pass of the last feature computation, kept for the next one: a chunk after the first
/// then writes into buffers already mapped instead of allocating and page-faulting every activation and
/// gradient of its micro-batch again. One slot for the whole process, taken while a computation runs, so
/// at most one workspace is ever alive between computations however many kernel sources exist side by side
/// (what `tiles::working::hand_working_bytes` counts); [`release_kept`] frees it.
static KEPT: std::sync::Mutex<Option<(WorkspaceKey, HandWorkspace)>> = std::sync::Mutex::new(None);

/// What a kept workspace was sized for: examples per pass and rows per example (with the pass's plan).
type WorkspaceKey = (usize, usize);

/// Free the kept feature workspace (a kernel source calls it when it is dropped, so what runs after the
/// kernel, e.g. the matrix-free estimators, does not sit beside an idle one).
pub fn release_kept() {
    drop(KEPT.lock().ok().and_then(|mut k| k.take()));
}

impl HandWorkspace {
    /// The kept workspace when it was sized for `key` (micro-batch, rows) and its pass planned for a network
    /// of the same plan as `network` (its parameters and running statistics are then re-read from
    /// `network`), so it holds exactly what a new one would grow to; else a new one, the kept one dropped
    /// first.
    fn take_kept(network: &Network, key: WorkspaceKey) -> Result<Self> {
        let kept = KEPT.lock().ok().and_then(|mut k| k.take());
        let plan = crate::model::hand::Plan::new(network)?;
        match kept {
            Some((at, mut ws)) if at == key && *ws.pass.plan() == plan => {
                let fresh = Self::values(network)?;
                (ws.params, ws.running) = fresh;
                Ok(ws)
            }
            other => {
                drop(other);
                Self::new(network)
            }
        }
    }

    /// Put `ws`, sized for `key`, in the slot for the next computation.
    fn keep(key: WorkspaceKey, ws: Self) {
        if let Ok(mut k) = KEPT.lock() {
            *k = Some((key, ws));
        }
    }

    /// The f64 parameters and running statistics of `network`.
    #[allow(clippy::type_complexity)]
    fn values(network: &Network) -> Result<(Vec<Vec<f64>>, Vec<(Vec<f64>, Vec<f64>)>)> {
        let params = network
            .parameters()
            .into_iter()
            .map(|(_, t)| to_f64_vec(t))
            .collect::<Result<Vec<_>>>()?;
        let running = network
            .buffers()
            .chunks(2)
            .map(|b| Ok((to_f64_vec(b[0].1)?, to_f64_vec(b[1].1)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok((params, running))
    }

    /// Plan the pass for `network` (an f64 network of the layers the hand-written pass implements).
    fn new(network: &Network) -> Result<Self> {
        let (params, running) = Self::values(network)?;
        Ok(Self {
            pass: crate::model::hand::HandPass::new(network)?,
            params,
            running,
            scratch: SideBuffers::default(),
        })
    }
}

/// Reused buffers of the feature extraction: what a layer rule builds on the side (route A's patch
/// columns, one example's gradient rows and their stacked product, BatchNorm's x̂). Each only grows, so a
/// node or micro-batch after the first writes into pages already mapped.
#[derive(Default)]
struct SideBuffers {
    patches: Vec<f64>,
    rows: Vec<f64>,
    stacked: Vec<f64>,
    xhat: Vec<f64>,
}

/// The first `len` values of `v`, grown (never shrunk) to hold them.
fn sized(v: &mut Vec<f64>, len: usize) -> &mut [f64] {
    if v.len() < len {
        crate::model::hand::real::resize_exact(v, len);
    }
    &mut v[..len]
}

/// The features by the hand-written pass: per micro-batch one eval-mode forward and one reverse pass over
/// its n·r rows on plain f64 buffers; [`extract`] reads each parametrised node's input and output gradient
/// where the pass left them (channel-major).
fn compute_hand(
    ws: &mut HandWorkspace,
    network: &Network,
    plan: &LayerPlan,
    inputs: &Tensor,
    spec: &KernelSpec,
    micro: usize,
    feats: &mut Features,
) -> Result<()> {
    use crate::model::hand::reverse::Visit;
    let n = inputs.dim(0)?;
    let r = plan.rows;
    let all = to_f64_vec(&inputs.to_dtype(DType::F64)?)?;
    let per = all.len() / n.max(1);
    // The logits per example from the pass's plan (`Network::num_outputs` would run a forward pass).
    let d = ws.pass.plan().shapes[network.output()].len();
    let HandWorkspace {
        pass,
        params,
        running,
        scratch,
    } = ws;
    let mut start = 0;
    while start < n {
        crate::signals::check()?;
        let len = micro.max(1).min(n - start);
        let seeds = to_f64_vec(&seed(len, d, spec.outputs, DType::F64)?)?;
        let x = &all[start * per..(start + len) * per];
        pass.reverse_rows(
            network,
            params,
            running,
            x,
            len,
            r,
            &seeds,
            |v: Visit<'_, f64>| {
                let rule = plan
                    .layers
                    .iter()
                    .find(|l| l.node == v.node)
                    .ok_or_else(|| Error::Internal(format!("no NTK rule for node {}", v.node)))?;
                extract(
                    feats,
                    rule,
                    &network.nodes[v.node].op,
                    Planes::channel_major(v.input, v.input_shape, len),
                    Planes::channel_major(v.grad, v.output_shape, len * r),
                    start,
                    spec.precision.accumulates_in_f32(),
                    scratch,
                )
            },
        )?;
        start += len;
    }
    Ok(())
}

/// The features by candle's graph forward and the candle-tensor reverse pass.
fn compute_candle(
    network: &Network,
    plan: &LayerPlan,
    inputs: &Tensor,
    spec: &KernelSpec,
    micro: usize,
    dtype: DType,
    feats: &mut Features,
) -> Result<()> {
    let n = inputs.dim(0)?;
    let r = plan.rows;
    let mut start = 0;
    while start < n {
        crate::signals::check()?;
        let len = micro.max(1).min(n - start);
        let x = inputs.narrow(0, start, len)?.to_dtype(dtype)?;
        let cache = network.forward_cached(&x)?;
        let d = cache[network.output()].dim(1)?;
        let seeds = seed(len, d, spec.outputs, dtype)?;
        backward(network, &cache, seeds, r, |node, grad| {
            let rule = plan
                .layers
                .iter()
                .find(|l| l.node == node)
                .ok_or_else(|| Error::Internal(format!("no NTK rule for node {node}")))?;
            let x = &cache[network.nodes[node].inputs[0]];
            let input = to_f64_vec(x)?;
            let g = to_f64_vec(grad)?;
            let f32acc = spec.precision.accumulates_in_f32();
            extract(
                feats,
                rule,
                &network.nodes[node].op,
                Planes::example_major(&input, shape_of(x)?, len),
                Planes::example_major(&g, shape_of(grad)?, len * r),
                start,
                f32acc,
                &mut SideBuffers::default(),
            )
        })?;
        start += len;
    }
    Ok(())
}

/// The per-example shape of a batch tensor (N, C, H, W) or (N, F).
fn shape_of(t: &Tensor) -> Result<crate::model::hand::Shape> {
    use crate::model::hand::Shape;
    Ok(match t.dims() {
        [_, c, h, w] => Shape::Map {
            c: *c,
            h: *h,
            w: *w,
        },
        [_, f] => Shape::Flat(*f),
        other => {
            return Err(Error::Internal(format!(
                "a layer's tensor of shape {other:?} in the feature pass"
            )))
        }
    })
}

/// Copy a tensor to a Vec<f64> (row-major, whatever its dtype).
fn to_f64_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Fill the features of one layer for examples `start..start + len` of the block from the layer input
/// (`len` rows) and output gradient (`len·r` rows, example-major order of (example, seed)): the derived
/// features (route A's weight gradients, channel sums, BatchNorm's x̂) in f64, or with f32 arithmetic when
/// `f32acc`.
#[allow(clippy::too_many_arguments)]
fn extract(
    feats: &mut Features,
    rule: &LayerRule,
    op: &Op,
    input: Planes<'_>,
    g: Planes<'_>,
    start: usize,
    f32acc: bool,
    side: &mut SideBuffers,
) -> Result<()> {
    let r = feats.rows;
    let len = input.count();
    if g.count() != len * r {
        return Err(Error::Internal(format!(
            "{} gradient rows for {len} examples of {r} rows",
            g.count()
        )));
    }
    // Explicit columns for rows (start·r ..), one slice per row.
    let row0 = start * r;
    match (&rule.rule, op) {
        (
            Rule::ConvExplicit {
                geometry,
                c_out,
                groups,
                offset,
            },
            Op::Conv2d(_),
        ) => {
            let (u, plen) = (geometry.positions(), geometry.patch_len());
            let (c_out, groups, offset) = (*c_out, *groups, *offset);
            let (cog, pg) = (c_out / groups, plen / groups);
            let ecols = feats.explicit_cols;
            let block = &mut feats.explicit[row0 * ecols..(row0 + len * r) * ecols];
            let SideBuffers {
                patches,
                rows,
                stacked,
                ..
            } = side;
            if groups == 1 {
                // Patch columns (patch × U) of every example first, then one product per example for its r
                // rows stacked, (r·C_out × U)·(U × patch): the patch matrix is packed once instead of r
                // times, and the product is r times taller.
                let cols = sized(patches, len * plen * u);
                cols.par_chunks_mut(plen * u)
                    .enumerate()
                    .for_each(|(e, out)| im2col_of(|c| input.plane(e, c), geometry, out));
                // Examples side by side, one per thread, each product on its thread (a product of
                // one example split over the threads synchronises them inside the GEMM), in waves of
                // `wave` examples so the per-thread buffers stay `wave` products' worth.
                let wave = extraction_wave(len);
                let (per_rows, per_out) = (r * c_out * u, r * c_out * plen);
                let stacked = sized(stacked, wave * per_out);
                let channel_major = g.contiguous(0..1).is_none();
                let rows = sized(rows, if channel_major { wave * per_rows } else { 0 });
                let par = if wave > 1 { Par::Seq } else { Par::rayon(0) };
                for first in (0..len).step_by(wave) {
                    let count = wave.min(len - first);
                    let blocks = block[first * r * ecols..(first + count) * r * ecols]
                        .par_chunks_mut(r * ecols);
                    let outs = stacked[..count * per_out].par_chunks_mut(per_out);
                    let mut rows_each: Vec<&mut [f64]> = if channel_major {
                        rows[..count * per_rows].chunks_mut(per_rows).collect()
                    } else {
                        (0..count).map(|_| <&mut [f64]>::default()).collect()
                    };
                    blocks
                        .zip(outs)
                        .zip(rows_each.par_iter_mut())
                        .enumerate()
                        .for_each(|(i, ((blk, out), rows))| {
                            let e = first + i;
                            let ex = e * r..(e + 1) * r;
                            let lhs = match g.contiguous(ex.clone()) {
                                Some(rows) => rows,
                                None => {
                                    g.copy_rows(ex, rows);
                                    &**rows
                                }
                            };
                            let lhs = MatRef::from_row_major_slice(lhs, r * c_out, u);
                            let rhs = MatRef::from_row_major_slice(
                                &cols[e * plen * u..][..plen * u],
                                plen,
                                u,
                            )
                            .transpose();
                            let dst = MatMut::from_row_major_slice_mut(out, r * c_out, plen);
                            product(dst, lhs, rhs, f32acc, par);
                            for (col, part) in blk.chunks_mut(ecols).zip(out.chunks(c_out * plen)) {
                                col[offset..offset + c_out * plen].copy_from_slice(part);
                            }
                        });
                }
            } else {
                // Patch rows (U × patch) of every example, then every (example, seed) row in parallel: a
                // block of one example still uses every thread.
                let patches = sized(patches, len * u * plen);
                patches
                    .par_chunks_mut(u * plen)
                    .enumerate()
                    .for_each(|(e, out)| patch_rows_of(|c| input.plane(e, c), geometry, out));
                block
                    .par_chunks_mut(ecols)
                    .enumerate()
                    .for_each(|(row, col)| {
                        let e = row / r;
                        let p = MatRef::from_row_major_slice(
                            &patches[e * u * plen..][..u * plen],
                            u,
                            plen,
                        );
                        let gm = g.matrix(row);
                        let seg = &mut col[offset..offset + c_out * pg];
                        for grp in 0..groups {
                            let dst = MatMut::from_row_major_slice_mut(
                                &mut seg[grp * cog * pg..(grp + 1) * cog * pg],
                                cog,
                                pg,
                            );
                            let lhs = gm.subrows(grp * cog, cog);
                            let rhs = p.subcols(grp * pg, pg);
                            product(dst, lhs, rhs, f32acc, Par::Seq);
                        }
                    });
            }
            if let Some(bias) = rule.bias_offset {
                write_channel_sums(feats, row0, bias, g, None, f32acc)?;
            }
        }
        (
            Rule::ConvSpatial {
                geometry,
                c_out,
                slot,
            },
            Op::Conv2d(_),
        ) => {
            let (u, plen) = (geometry.positions(), geometry.patch_len());
            let s = &mut feats.spatial[*slot];
            if s.patches.is_empty() {
                s.positions = u;
                s.patch_len = plen;
                s.c_out = *c_out;
                s.patches = vec![0.0; feats.n * u * plen];
                s.grads = vec![0.0; feats.n * r * c_out * u];
            }
            s.patches[start * u * plen..(start + len) * u * plen]
                .par_chunks_mut(u * plen)
                .enumerate()
                .for_each(|(e, out)| patch_rows_of(|c| input.plane(e, c), geometry, out));
            g.copy_rows(
                0..len * r,
                &mut s.grads[row0 * c_out * u..(row0 + len * r) * c_out * u],
            );
            if let Some(bias) = rule.bias_offset {
                write_channel_sums(feats, row0, bias, g, None, f32acc)?;
            }
        }
        (Rule::Linear { slot, .. }, Op::Linear(l)) => {
            let (out_dim, in_dim) = l.weight.dims2()?;
            let dn = &mut feats.dense[*slot];
            if dn.inputs.is_empty() {
                dn.in_dim = in_dim;
                dn.out_dim = out_dim;
                dn.inputs = vec![0.0; feats.n * in_dim];
                dn.grads = vec![0.0; feats.n * r * out_dim];
            }
            input.copy_rows(
                0..len,
                &mut dn.inputs[start * in_dim..(start + len) * in_dim],
            );
            g.copy_rows(
                0..len * r,
                &mut dn.grads[row0 * out_dim..(row0 + len * r) * out_dim],
            );
        }
        (Rule::BatchNorm { channels, offset }, Op::BatchNorm2d(bn)) => {
            // x̂ = (x − running mean)/sqrt(running var + ε), per channel of each example.
            let mean = to_f64_vec(&bn.running_mean)?;
            let inv_std: Vec<f64> = to_f64_vec(&bn.running_var)?
                .iter()
                .map(|&v| {
                    if f32acc {
                        (1.0 / (v as f32 + bn.eps as f32).sqrt()) as f64
                    } else {
                        1.0 / (v + bn.eps).sqrt()
                    }
                })
                .collect();
            let (channels, u) = (*channels, input.plane_len());
            let xhat = sized(&mut side.xhat, len * channels * u);
            xhat.par_chunks_mut(u.max(1))
                .enumerate()
                .for_each(|(i, dst)| {
                    let c = i % channels;
                    let src = input.plane(i / channels, c);
                    for (o, &x) in dst.iter_mut().zip(src) {
                        *o = if f32acc {
                            ((x as f32 - mean[c] as f32) * inv_std[c] as f32) as f64
                        } else {
                            (x - mean[c]) * inv_std[c]
                        };
                    }
                });
            let shape = crate::model::hand::Shape::Map {
                c: channels,
                h: 1,
                w: u,
            };
            let xhat = Planes::example_major(xhat, shape, len);
            // γ: Σ_u g·x̂ (x̂ of the row's example), β: Σ_u g.
            write_channel_sums(feats, row0, *offset, g, Some(xhat), f32acc)?;
            write_channel_sums(feats, row0, offset + channels, g, None, f32acc)?;
        }
        _ => {
            return Err(Error::Internal(
                "NTK rule does not match the layer type".into(),
            ))
        }
    }
    Ok(())
}

/// Route A's examples computed side by side in [`extract`] (one per thread, at most `len`); 1 computes one
/// example at a time with the GEMM itself parallel.
pub fn extraction_wave(len: usize) -> usize {
    rayon::current_num_threads().min(len).max(1)
}

/// `dst ← lhs · rhs`, in f64, or with `f32acc` as an f32 GEMM (operands rounded to f32, f32
/// accumulation) whose result is widened into `dst`. The f32 copies are row-major, read and written row
/// by row (the operands and `dst` here are row-major views).
fn product(
    dst: MatMut<'_, f64>,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
    f32acc: bool,
    par: Par,
) {
    if !f32acc {
        matmul(dst, Accum::Replace, lhs, rhs, 1.0, par);
        return;
    }
    let (m, k, n) = (lhs.nrows(), lhs.ncols(), rhs.ncols());
    let narrow = |a: MatRef<'_, f64>| -> Vec<f32> {
        let mut v = Vec::with_capacity(a.nrows() * a.ncols());
        for i in 0..a.nrows() {
            v.extend(a.row(i).iter().map(|&x| x as f32));
        }
        v
    };
    let (l, r) = (narrow(lhs), narrow(rhs));
    let mut d = vec![0.0f32; m * n];
    matmul(
        MatMut::from_row_major_slice_mut(&mut d, m, n),
        Accum::Replace,
        MatRef::from_row_major_slice(&l, m, k),
        MatRef::from_row_major_slice(&r, k, n),
        1.0f32,
        par,
    );
    let mut dst = dst;
    for i in 0..m {
        for (j, &v) in d[i * n..(i + 1) * n].iter().enumerate() {
            dst[(i, j)] = v as f64;
        }
    }
}

/// For each gradient row of `g` (C × U each), write Σ_u g[c,u]·w[c,u] into explicit column
/// `first_row + row` at rows `offset..offset + C`; `w` is 1, or the per-example `weight` (x̂, one row per
/// example, shared by its r gradient rows). Summed in f64, or in f32 when `f32acc`.
fn write_channel_sums(
    feats: &mut Features,
    first_row: usize,
    offset: usize,
    g: Planes<'_>,
    weight: Option<Planes<'_>>,
    f32acc: bool,
) -> Result<()> {
    let (rows, channels, r) = (g.count(), g.channels(), feats.rows);
    if let Some(w) = weight {
        if w.count() * r != rows || w.row_len() != g.row_len() {
            return Err(Error::Internal(format!(
                "channel-sum weight of {} rows × {} values for {rows} gradient rows × {}",
                w.count(),
                w.row_len(),
                g.row_len()
            )));
        }
    }
    let ecols = feats.explicit_cols;
    feats.explicit[first_row * ecols..(first_row + rows) * ecols]
        .par_chunks_mut(ecols)
        .enumerate()
        .for_each(|(row, col)| {
            for c in 0..channels {
                let gs = g.plane(row, c);
                let ws = weight.map(|w| w.plane(row / r, c));
                col[offset + c] = match (ws, f32acc) {
                    (None, false) => sum_f64(gs, |v| v),
                    (Some(ws), false) => sum2_f64(gs, ws, |a, b| a * b, |_, _| 0.0).0,
                    (None, true) => gs.iter().fold(0.0f32, |acc, &v| acc + v as f32) as f64,
                    (Some(ws), true) => gs
                        .iter()
                        .zip(ws)
                        .fold(0.0f32, |acc, (&a, &b)| acc + a as f32 * b as f32)
                        as f64,
                };
            }
        });
    Ok(())
}
