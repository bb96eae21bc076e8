//! [`NtkOperator`]: products with the empirical NTK `K = J Jᵀ / s` without forming it. `K V = J (Jᵀ V) / s`
//! for a block V of vectors: `Jᵀ V` by the batched reverse pass seeded with V ([`super::pullback`]), then
//! `J (Jᵀ V)` by the tangent pass ([`super::tangent`]). Each product costs about one forward, one reverse
//! and one tangent pass over the n examples per vector, and p·q values of memory for `Jᵀ V`.
//!
//! Every output mode is expressed through the full (all-logit) Jacobian J_full (n·d × p):
//! `full` is J_full itself; `sum` and `logit:K` are `S J_full` with S summing the logits or picking logit K;
//! `trace` is `Σ_c J_c J_cᵀ = J̃ J̃ᵀ` with `J̃ = [J_1 … J_d]` (n × d·p), so its factor dimension is d·p and
//! its products take d full-mode vectors per vector.

use crate::estimators::operator::LinearOp;
use crate::model::Network;
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

/// The NTK of a network on n examples as a matrix-free operator (also its Jacobian products, for the
/// one-sided trace estimators).
pub struct NtkOperator {
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
        Ok(Self {
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

    /// Kernel vectors per block so that the p × (q·expand) reverse block fits half the memory bound.
    pub fn block_columns(&self) -> usize {
        (self.memory / 2 / (8 * self.factor_dim()).max(1)).max(1)
    }

    /// Examples per pass for `cols` full-mode vectors (activations of n·cols rows, about 3 copies), within
    /// the other half of the memory bound (and at most [`ACTIVATION_BUDGET`]).
    fn micro(&self, cols: usize) -> usize {
        let budget = ACTIVATION_BUDGET.min(self.memory / 2);
        (budget / (3 * self.act_bytes * cols).max(1)).clamp(1, self.num_examples())
    }

    /// The least memory bound the operator keeps to: one reverse column of the factor dimension and one
    /// example's activations, each in its half.
    pub fn min_memory(&self) -> usize {
        2 * (8 * self.factor_dim()).max(3 * self.act_bytes * self.expand())
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
        let (n, d, q) = (self.num_examples(), self.logits, v.ncols());
        let mut u = Mat::<f64>::zeros(self.layout.total, q);
        let micro = self.micro(q);
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
        self.reverse.fetch_add(q, Ordering::Relaxed);
        Ok(u)
    }

    /// `J_full W` for W (p × Q): n·d × Q, example-major rows.
    fn full_j(&self, w: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let (n, d, q) = (self.num_examples(), self.logits, w.ncols());
        let mut y = Mat::<f64>::zeros(n * d, q);
        let micro = self.micro(q);
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
        self.forward.fetch_add(q, Ordering::Relaxed);
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
