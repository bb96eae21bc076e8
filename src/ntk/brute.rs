//! The reference oracle: the NTK by brute force, one autograd backward pass per (example, logit) through
//! candle's own autograd, `K = J Jᵀ / s`. Slow; for tests and benchmarks only.

use crate::model::{Network, Node, Op};
use crate::ntk::{KernelSpec, Outputs};
use crate::Result;
use candle_core::{DType, Tensor, Var};
use faer::Mat;

/// The full Jacobian rows of `network` on `inputs` (n, C, H, W) in f64 for the rows of `spec.outputs`
/// (n·d rows for full/trace, n rows otherwise), columns in `Network::parameters` order.
pub fn jacobian(network: &Network, inputs: &Tensor, spec: &KernelSpec) -> Result<Mat<f64>> {
    let net = network.to_dtype(DType::F64)?;
    // Rebuild the network with every parameter a Var so that candle's autograd tracks it.
    let mut vars: Vec<Var> = Vec::new();
    let nodes: Vec<Node> = net
        .nodes
        .iter()
        .map(|node| {
            let mut op = node.op.clone();
            let mut track = |t: &mut Tensor| -> Result<()> {
                let v = Var::from_tensor(t)?;
                *t = v.as_tensor().clone();
                vars.push(v);
                Ok(())
            };
            match &mut op {
                Op::Conv2d(c) => {
                    track(&mut c.weight)?;
                    if let Some(b) = c.bias.as_mut() {
                        track(b)?;
                    }
                }
                Op::Linear(l) => {
                    track(&mut l.weight)?;
                    if let Some(b) = l.bias.as_mut() {
                        track(b)?;
                    }
                }
                Op::BatchNorm2d(bn) => {
                    track(&mut bn.weight)?;
                    track(&mut bn.bias)?;
                }
                _ => {}
            }
            Ok(Node {
                name: node.name.clone(),
                op,
                inputs: node.inputs.clone(),
            })
        })
        .collect::<Result<_>>()?;
    let tracked = Network {
        arch: net.arch.clone(),
        input_shape: net.input_shape,
        nodes,
    };
    let p: usize = vars.iter().map(|v| v.elem_count()).sum();
    let n = inputs.dim(0)?;
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for i in 0..n {
        let x = inputs.narrow(0, i, 1)?.to_dtype(DType::F64)?;
        let y = reference_forward(&tracked, &x)?.squeeze(0)?;
        let d = y.dim(0)?;
        let seeds: Vec<Tensor> = match spec.outputs {
            Outputs::Full | Outputs::Trace => (0..d)
                .map(|c| y.narrow(0, c, 1))
                .collect::<candle_core::Result<_>>()?,
            Outputs::Sum => vec![y.sum_all()?],
            Outputs::Centered => {
                let u = crate::ntk::centering_basis(d);
                let u = Tensor::from_vec(u, (d, d - 1), y.device())?;
                let contrasts = y.unsqueeze(0)?.matmul(&u)?.squeeze(0)?;
                (0..d - 1)
                    .map(|c| contrasts.narrow(0, c, 1))
                    .collect::<candle_core::Result<_>>()?
            }
            Outputs::Logit(k) => vec![y.narrow(0, k, 1)?],
        };
        for s in seeds {
            let grads = s.sum_all()?.backward()?;
            let mut row = Vec::with_capacity(p);
            for v in &vars {
                match grads.get(v.as_tensor()) {
                    Some(g) => row.extend(g.flatten_all()?.to_vec1::<f64>()?),
                    None => row.extend(std::iter::repeat_n(0.0, v.elem_count())),
                }
            }
            rows.push(row);
        }
    }
    Ok(Mat::from_fn(rows.len(), p, |r, c| rows[r][c]))
}

/// The NTK by brute force: `J Jᵀ / s` (and for `trace`, the sum of the d×d blocks' diagonals).
pub fn kernel(network: &Network, inputs: &Tensor, spec: &KernelSpec) -> Result<Mat<f64>> {
    let j = jacobian(network, inputs, spec)?;
    let s = spec.divisor(j.ncols());
    let full = &j * j.transpose() * (1.0 / s);
    Ok(match spec.outputs {
        Outputs::Trace => {
            let n = inputs.dim(0)?;
            let d = full.nrows() / n;
            Mat::from_fn(n, n, |a, b| {
                (0..d).map(|c| full[(a * d + c, b * d + c)]).sum()
            })
        }
        _ => full,
    })
}

/// Eval-mode forward pass built from candle primitives with exact autograd (see the module docs).
fn reference_forward(network: &Network, x: &Tensor) -> Result<Tensor> {
    let mut outs: Vec<Tensor> = Vec::with_capacity(network.nodes.len());
    for node in &network.nodes {
        let inputs: Vec<&Tensor> = node.inputs.iter().map(|&i| &outs[i]).collect();
        let out = match &node.op {
            Op::Input => x.clone(),
            Op::MaxPool2d { kernel, stride } if kernel == stride => {
                let t = inputs[0];
                let (n, c, h, w) = t.dims4()?;
                let (ho, wo) = (h / kernel, w / kernel);
                // First maximum of each window (PyTorch's tie rule) via argmax + gather, whose backward
                // is a scatter-add to that one position.
                let windows = t
                    .narrow(2, 0, ho * kernel)?
                    .narrow(3, 0, wo * kernel)?
                    .reshape((n, c, ho, *kernel, wo, *kernel))?
                    .permute((0, 1, 2, 4, 3, 5))?
                    .contiguous()?
                    .reshape((n, c, ho, wo, kernel * kernel))?;
                let first = windows.detach().argmax_keepdim(4)?;
                windows.gather(&first, 4)?.squeeze(4)?
            }
            Op::Gelu => {
                let t = inputs[0];
                let cdf = (((t / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5)?;
                (t * cdf)?
            }
            op => op.forward(&inputs)?,
        };
        outs.push(out);
    }
    Ok(outs.pop().unwrap_or_else(|| x.clone()))
}
