//! [`NtkOperator`]: products with the empirical NTK `K = J Jᵀ / s` without forming it. `K V = J (Jᵀ V) / s`
//! for a block V of vectors: `Jᵀ V` by the batched reverse pass seeded with V, then `J (Jᵀ V)` by the
//! tangent pass, both on the hand-written engine ([`super::hand_products`], [`MatvecPass::Hand`]) where it
//! plans the network, else on candle's graph ([`super::pullback`], [`super::tangent`]). Each product costs
//! about one forward, one reverse and one tangent pass over the n examples per vector.
//!
//! Memory (what `--max-mem` bounds): half the bound for the block, per vector `8·factor_dim` bytes for
//! `Jᵀ V` (p × q f64), `8·n·d` each for the seeds and the `J W` result, and `p` values of the working
//! precision for the directions; the other half for one micro-batch of passes
//! ([`super::hand_products::HandProducts::pass_bytes`]), whose number of examples follows from it. The
//! parameters and inputs the hand-written engine copies into its precision are taken off the bound first.
//! [`NtkOperator::min_memory`] is the least bound that leaves one vector and one example.
//!
//! Every output mode is expressed through the full (all-logit) Jacobian J_full (n·d × p):
//! `full` is J_full itself; `sum` and `logit:K` are `S J_full` with S summing the logits or picking logit K;
//! `trace` is `Σ_c J_c J_cᵀ = J̃ J̃ᵀ` with `J̃ = [J_1 … J_d]` (n × d·p), so its factor dimension is d·p and
//! its products take d full-mode vectors per vector.

use crate::estimators::operator::LinearOp;
use crate::model::Network;
use crate::ntk::hand_products::HandProducts;
use crate::ntk::layout::ParamLayout;
use crate::ntk::pullback::vjp_params;
use crate::ntk::tangent::jvp;
use crate::ntk::{KernelSpec, Outputs, Precision};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use faer::{Mat, MatMut, MatRef};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of activations one reverse or tangent micro-batch may hold (about).
const ACTIVATION_BUDGET: usize = 512 << 20;

/// Which implementation runs the operator's Jacobian products (same values; `tests/ntk_matvec.rs`
/// compares them, `cargo bench --bench stats` times both with `STATS_BENCH_COMPARE_PASSES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatvecPass {
    /// The hand-written engine on plain buffers (networks [`crate::model::hand::Plan`] plans).
    Hand,
    /// candle's graph (any network the NTK engine supports; the baseline of the benchmark).
    Candle,
}

/// The engine behind an operator.
enum Engine {
    Hand64(HandProducts<f64>),
    Hand32(HandProducts<f32>),
    Candle,
}

/// The NTK of a network on n examples as a matrix-free operator (also its Jacobian products, for the
/// one-sided trace estimators).
pub struct NtkOperator {
    engine: Engine,
    /// Bytes the engine holds whatever the block (parameters and inputs in the working precision).
    fixed: usize,
    network: Network,
    layout: ParamLayout,
    inputs: Tensor,
    spec: KernelSpec,
    logits: usize,
    divisor: f64,
    act_bytes: usize,
    memory: usize,
    products: AtomicUsize,
    reverse: AtomicUsize,
    forward: AtomicUsize,
}

impl NtkOperator {
    /// The NTK of `network` on `inputs` (n, C, H, W) for `spec`; `memory_bytes` bounds the `Jᵀ V` block
    /// (p·q f64), so wide blocks are processed a few columns at a time.
    pub fn new(
        network: &Network,
        inputs: Tensor,
        spec: KernelSpec,
        memory_bytes: usize,
    ) -> Result<Self> {
        let pass = match crate::model::hand::Plan::new(network) {
            Ok(_) => MatvecPass::Hand,
            Err(_) => MatvecPass::Candle,
        };
        Self::with_pass(pass, network, inputs, spec, memory_bytes)
    }

    /// [`Self::new`] by a chosen pass (`Hand` refuses networks the hand-written engine does not plan).
    pub fn with_pass(
        pass: MatvecPass,
        network: &Network,
        inputs: Tensor,
        spec: KernelSpec,
        memory_bytes: usize,
    ) -> Result<Self> {
        crate::ntk::backward::check_supported(network)?;
        let network = network.to_dtype(dtype(&spec))?;
        let n = inputs.dim(0)?;
        if n == 0 {
            return Err(Error::Usage("the kernel needs at least one example".into()));
        }
        let probe = inputs.narrow(0, 0, 1)?.to_dtype(dtype(&spec))?;
        let cache = network.forward_cached(&probe)?;
        let logits = cache[network.output()].dim(1)?;
        if let Outputs::Logit(k) = spec.outputs {
            if k >= logits {
                return Err(Error::Usage(format!(
                    "--outputs logit:{k}: the network has only {logits} logits"
                )));
            }
        }
        let act_bytes = cache.iter().map(|t| t.elem_count() * 8).sum::<usize>();
        let layout = ParamLayout::new(&network);
        let engine = match (pass, spec.precision) {
            (MatvecPass::Hand, Precision::F64) => {
                Engine::Hand64(HandProducts::new(&network, &inputs, logits)?)
            }
            (MatvecPass::Hand, Precision::F32 | Precision::F32F64Acc) => {
                Engine::Hand32(HandProducts::new(&network, &inputs, logits)?)
            }
            (MatvecPass::Candle, _) => Engine::Candle,
        };
        let fixed = match &engine {
            Engine::Hand64(h) => h.fixed_bytes(),
            Engine::Hand32(h) => h.fixed_bytes(),
            Engine::Candle => 0,
        };
        Ok(Self {
            fixed,
            engine,
            divisor: spec.divisor(layout.total),
            network,
            layout,
            inputs,
            spec,
            logits,
            act_bytes,
            memory: memory_bytes,
            products: AtomicUsize::new(0),
            reverse: AtomicUsize::new(0),
            forward: AtomicUsize::new(0),
        })
    }

    /// Number of examples n.
    pub fn num_examples(&self) -> usize {
        self.inputs.dims()[0]
    }

    /// Number of logits d.
    pub fn num_logits(&self) -> usize {
        self.logits
    }

    /// Number of parameters p.
    pub fn num_params(&self) -> usize {
        self.layout.total
    }

    /// The scale s in `J Jᵀ / s`.
    pub fn divisor(&self) -> f64 {
        self.divisor
    }

    /// The kernel's definition.
    pub fn spec(&self) -> &KernelSpec {
        &self.spec
    }

    /// Kernel rows per example (d for `full`, 1 otherwise).
    fn rows(&self) -> usize {
        self.spec.rows_per_example(self.logits)
    }

    /// Full-mode vectors per kernel vector (d for `trace`, 1 otherwise).
    fn expand(&self) -> usize {
        match self.spec.outputs {
            Outputs::Trace => self.logits,
            _ => 1,
        }
    }

    /// Order of the kernel, m = n·rows.
    pub fn order(&self) -> usize {
        self.num_examples() * self.rows()
    }

    /// Dimension of the factor: K = F Fᵀ / s with F m × factor_dim (p, or d·p for `trace`).
    pub fn factor_dim(&self) -> usize {
        self.layout.total * self.expand()
    }

    /// Kernel–vector products so far (a block of q vectors counts q).
    pub fn products(&self) -> usize {
        self.products.load(Ordering::Relaxed)
    }

    /// Reverse-mode vector products `Jᵀ z` so far (including those inside kernel products).
    pub fn reverse_products(&self) -> usize {
        self.reverse.load(Ordering::Relaxed)
    }

    /// Forward-mode products `J w` so far (including those inside kernel products).
    pub fn forward_products(&self) -> usize {
        self.forward.load(Ordering::Relaxed)
    }

    /// Which pass runs the products.
    pub fn pass(&self) -> MatvecPass {
        match self.engine {
            Engine::Candle => MatvecPass::Candle,
            _ => MatvecPass::Hand,
        }
    }

    /// Bytes per kernel vector of a block: `Jᵀ V` (factor_dim f64), the seeds and the `J W` result
    /// (n·d·expand f64 each) and the directions (p·expand values of the working precision).
    fn column_bytes(&self) -> usize {
        let e = self.expand();
        let precision = match self.spec.precision {
            Precision::F64 => 8,
            Precision::F32 | Precision::F32F64Acc => 4,
        };
        8 * self.factor_dim()
            + 16 * self.num_examples() * self.logits * e
            + precision * self.factor_dim()
    }

    /// Bytes of one micro-batch of `len` examples and `cols` full-mode vectors.
    fn pass_bytes(&self, len: usize, cols: usize) -> usize {
        match &self.engine {
            Engine::Hand64(h) => h.pass_bytes(&self.network, len, cols),
            Engine::Hand32(h) => h.pass_bytes(&self.network, len, cols),
            // Activations of len·cols rows, about 3 copies.
            Engine::Candle => 3 * self.act_bytes * len * cols,
        }
    }

    /// Kernel vectors per block: the block's columns fit half the memory bound and one example's passes
    /// on them the other half (at least 1).
    pub fn block_columns(&self) -> usize {
        let half = self.working() / 2;
        let by_columns = (half / self.column_bytes().max(1)).max(1);
        largest(by_columns, |q| {
            self.pass_bytes(1, q * self.expand()) <= half
        })
    }

    /// Examples per pass for `cols` full-mode vectors, within the other half of the memory bound (and at
    /// most [`ACTIVATION_BUDGET`]).
    fn micro(&self, cols: usize) -> usize {
        let budget = ACTIVATION_BUDGET.min(self.working() / 2);
        largest(self.num_examples(), |len| {
            self.pass_bytes(len, cols) <= budget
        })
    }

    /// The least memory bound the operator keeps to: one vector's block columns and one example's passes
    /// on it, each in its half.
    pub fn min_memory(&self) -> usize {
        self.fixed + 2 * self.column_bytes().max(self.pass_bytes(1, self.expand()))
    }

    /// The memory bound less what the engine holds whatever the block.
    fn working(&self) -> usize {
        self.memory.saturating_sub(self.fixed)
    }

    /// The examples `start..start + len` in the working precision.
    fn batch(&self, start: usize, len: usize) -> Result<Tensor> {
        Ok(self
            .inputs
            .narrow(0, start, len)?
            .to_dtype(dtype(&self.spec))?)
    }

    /// `J_fullᵀ V` for V (n·d × Q) in example-major rows: p × Q.
    fn full_jt(&self, v: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let q = v.ncols();
        let mut u = Mat::<f64>::zeros(self.layout.total, q);
        let micro = self.micro(q);
        match &self.engine {
            Engine::Hand64(h) => h.jt(&self.network, &self.layout, v, micro, u.as_mut())?,
            Engine::Hand32(h) => h.jt(&self.network, &self.layout, v, micro, u.as_mut())?,
            Engine::Candle => self.candle_jt(v, micro, u.as_mut())?,
        }
        self.reverse.fetch_add(q, Ordering::Relaxed);
        Ok(u)
    }

    /// `J_fullᵀ V` on candle's graph, added to `u`.
    fn candle_jt(&self, v: MatRef<'_, f64>, micro: usize, mut u: MatMut<'_, f64>) -> Result<()> {
        let (n, d, q) = (self.num_examples(), self.logits, v.ncols());
        let mut start = 0;
        while start < n {
            let len = micro.min(n - start);
            let cache = self.network.forward_cached(&self.batch(start, len)?)?;
            let mut seed = vec![0.0; len * q * d];
            for i in 0..len {
                for t in 0..q {
                    for c in 0..d {
                        seed[(i * q + t) * d + c] = v[((start + i) * d + c, t)];
                    }
                }
            }
            let seed =
                Tensor::from_vec(seed, (len * q, d), &Device::Cpu)?.to_dtype(dtype(&self.spec))?;
            vjp_params(&self.network, &self.layout, &cache, seed, q, u.as_mut())?;
            start += len;
        }
        Ok(())
    }

    /// `J_full W` for W (p × Q): n·d × Q, example-major rows.
    fn full_j(&self, w: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let micro = self.micro(w.ncols());
        let y = match &self.engine {
            Engine::Hand64(h) => h.j(&self.network, &self.layout, w, micro)?,
            Engine::Hand32(h) => h.j(&self.network, &self.layout, w, micro)?,
            Engine::Candle => self.candle_j(w, micro)?,
        };
        self.forward.fetch_add(w.ncols(), Ordering::Relaxed);
        Ok(y)
    }

    /// `J_full W` on candle's graph.
    fn candle_j(&self, w: MatRef<'_, f64>, micro: usize) -> Result<Mat<f64>> {
        let (n, d, q) = (self.num_examples(), self.logits, w.ncols());
        let mut y = Mat::<f64>::zeros(n * d, q);
        let mut start = 0;
        while start < n {
            let len = micro.min(n - start);
            let tan = jvp(&self.network, &self.layout, &self.batch(start, len)?, w)?;
            let tan = tan.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            for i in 0..len {
                for t in 0..q {
                    for c in 0..d {
                        y[((start + i) * d + c, t)] = tan[(i * q + t) * d + c];
                    }
                }
            }
            start += len;
        }
        Ok(y)
    }

    /// The full-mode seeds of kernel vectors V (m × q): n·d × q·expand.
    fn seeds(&self, v: MatRef<'_, f64>) -> Mat<f64> {
        let (n, d, e) = (self.num_examples(), self.logits, self.expand());
        let q = v.ncols();
        let u = crate::ntk::centering_basis(d);
        Mat::from_fn(n * d, q * e, |row, col| {
            let (i, c) = (row / d, row % d);
            let t = col / e;
            match self.spec.outputs {
                Outputs::Full => v[(row, t)],
                // Seed U v_i: the contrasts' kernel is (I ⊗ Uᵀ) K (I ⊗ U).
                Outputs::Centered => (0..d - 1)
                    .map(|a| u[c * (d - 1) + a] * v[(i * (d - 1) + a, t)])
                    .sum(),
                Outputs::Sum => v[(i, t)],
                Outputs::Logit(k) => {
                    if c == k {
                        v[(i, t)]
                    } else {
                        0.0
                    }
                }
                Outputs::Trace => {
                    if c == col % e {
                        v[(i, t)]
                    } else {
                        0.0
                    }
                }
            }
        })
    }

    /// Kernel-space rows (m × q) of full-mode outputs Y (n·d × q·expand), the transpose of [`Self::seeds`].
    fn gather(&self, y: MatRef<'_, f64>, q: usize) -> Mat<f64> {
        let (d, e) = (self.logits, self.expand());
        let u = crate::ntk::centering_basis(d);
        Mat::from_fn(self.order(), q, |row, t| match self.spec.outputs {
            Outputs::Full => y[(row, t)],
            Outputs::Centered => {
                let (i, a) = (row / (d - 1), row % (d - 1));
                (0..d).map(|c| u[c * (d - 1) + a] * y[(i * d + c, t)]).sum()
            }
            Outputs::Sum => (0..d).map(|c| y[(row * d + c, t)]).sum(),
            Outputs::Logit(k) => y[(row * d + k, t)],
            Outputs::Trace => (0..e).map(|c| y[(row * d + c, t * e + c)]).sum(),
        })
    }

    /// `Fᵀ V` for kernel vectors V (m × q), F the factor with K = F Fᵀ / s: factor_dim × q
    /// (for `trace`, rows c·p + a hold `J_cᵀ`). One reverse pass per vector (d for `trace`).
    pub fn jt(&self, v: MatRef<'_, f64>) -> Result<Mat<f64>> {
        self.check_rows(v.nrows(), self.order(), "Jᵀ")?;
        let (p, e, q) = (self.layout.total, self.expand(), v.ncols());
        let u = self.full_jt(self.seeds(v).as_ref())?;
        Ok(Mat::from_fn(p * e, q, |row, t| {
            u[(row % p, t * e + row / p)]
        }))
    }

    /// `F W` for factor vectors W (factor_dim × q): m × q. One tangent pass per vector (d for `trace`).
    pub fn j(&self, w: MatRef<'_, f64>) -> Result<Mat<f64>> {
        self.check_rows(w.nrows(), self.factor_dim(), "J")?;
        let (p, e, q) = (self.layout.total, self.expand(), w.ncols());
        let wf = Mat::from_fn(p, q * e, |a, col| w[((col % e) * p + a, col / e)]);
        let y = self.full_j(wf.as_ref())?;
        Ok(self.gather(y.as_ref(), q))
    }

    /// `out = K V` for V (m × q), in blocks of [`Self::block_columns`] vectors.
    pub fn kv(&self, v: MatRef<'_, f64>, mut out: MatMut<'_, f64>) -> Result<()> {
        self.check_rows(v.nrows(), self.order(), "K")?;
        let q = v.ncols();
        let block = self.block_columns();
        let mut c0 = 0;
        while c0 < q {
            let w = block.min(q - c0);
            let seeds = self.seeds(v.subcols(c0, w));
            let u = self.full_jt(seeds.as_ref())?;
            let y = self.full_j(u.as_ref())?;
            let k = self.gather(y.as_ref(), w);
            for t in 0..w {
                for r in 0..k.nrows() {
                    out[(r, c0 + t)] = k[(r, t)] / self.divisor;
                }
            }
            c0 += w;
        }
        self.products.fetch_add(q, Ordering::Relaxed);
        Ok(())
    }

    fn check_rows(&self, got: usize, want: usize, what: &str) -> Result<()> {
        if got != want {
            return Err(Error::Internal(format!(
                "{what} product: {got} rows, expected {want}"
            )));
        }
        Ok(())
    }
}

impl LinearOp for NtkOperator {
    fn dim(&self) -> usize {
        self.order()
    }

    fn apply(&self, x: MatRef<'_, f64>, out: MatMut<'_, f64>) -> Result<()> {
        self.kv(x, out)
    }
}

/// The largest `x` in `1..=max` with `fits(x)` (1 when none fits); `fits` must be monotone (true up to some
/// point).
fn largest(max: usize, fits: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (1, max.max(1));
    if fits(hi) {
        return hi;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The candle dtype of a kernel's precision.
fn dtype(spec: &KernelSpec) -> DType {
    match spec.precision {
        Precision::F64 => DType::F64,
        Precision::F32 | Precision::F32F64Acc => DType::F32,
    }
}

impl crate::estimators::one_sided::Factored for NtkOperator {
    fn order(&self) -> usize {
        NtkOperator::order(self)
    }

    fn factor_dim(&self) -> usize {
        NtkOperator::factor_dim(self)
    }

    fn divisor(&self) -> f64 {
        self.divisor
    }

    fn jt(&self, v: MatRef<'_, f64>) -> Result<Mat<f64>> {
        NtkOperator::jt(self, v)
    }

    fn j(&self, w: MatRef<'_, f64>) -> Result<Mat<f64>> {
        NtkOperator::j(self, w)
    }
}
