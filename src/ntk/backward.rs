//! A hand-written, batched reverse pass through a [`Network`] in eval mode.
//!
//! The forward pass runs once on the n examples of a block. The reverse pass runs on `n·r` rows, row
//! `i·r + c` carrying the gradient of seed `c` for example `i` (examples do not interact in eval mode), so one
//! pass yields every layer's output gradient for every example and every logit. Forward values needed by the
//! backward rules (ReLU and max-pool masks, tanh/GELU derivatives) are computed on the n rows and repeated.
//! Conv data gradients are GEMMs plus col2im ([`crate::model::conv::conv2d_input_grad`]) for ungrouped convs,
//! and `conv2d`s of the (zero-dilated) output gradient with the flipped, transposed kernel for grouped ones;
//! candle's own `conv_transpose2d` is several times slower than either.

use crate::model::conv;
use crate::model::im2col::ConvGeometry;
use crate::model::{Conv2d, Network, Op};
use crate::{Error, Result};
use candle_core::{DType, Tensor};

/// Repeat each of the n rows of `t` `r` times consecutively: (n, …) → (n·r, …), row i·r + c = row i.
pub fn repeat_rows(t: &Tensor, r: usize) -> Result<Tensor> {
    if r == 1 {
        return Ok(t.clone());
    }
    let dims = t.dims().to_vec();
    let mut expanded = vec![dims[0], r];
    expanded.extend_from_slice(&dims[1..]);
    let mut flat = vec![dims[0] * r];
    flat.extend_from_slice(&dims[1..]);
    Ok(t.unsqueeze(1)?
        .broadcast_as(expanded)?
        .contiguous()?
        .reshape(flat)?)
}

/// Refuse networks the NTK engine cannot differentiate, naming the first offending layer.
pub fn check_supported(network: &Network) -> Result<()> {
    for (k, node) in network.nodes.iter().enumerate() {
        let why = match &node.op {
            Op::MaxPool2d { kernel, stride } | Op::AvgPool2d { kernel, stride }
                if kernel != stride =>
            {
                Some(format!(
                    "kernel {kernel} != stride {stride} (overlapping windows)"
                ))
            }
            Op::Conv2d(c) if c.weight.dims().get(2) != c.weight.dims().get(3) => {
                Some("non-square kernel".to_string())
            }
            Op::Conv2d(c) if c.weight.dims().get(2).is_some_and(|&k| c.padding + 1 > k) => {
                Some(format!("padding {} not smaller than the kernel", c.padding))
            }
            _ => None,
        };
        if let Some(why) = why {
            let name = if node.name.is_empty() {
                format!("#{k}")
            } else {
                node.name.clone()
            };
            return Err(Error::Model(format!(
                "the NTK engine does not support layer {name} ({}): {why}",
                node.op.kind()
            )));
        }
    }
    Ok(())
}

/// Which nodes depend on parameters (only their gradients are ever needed).
pub fn depends_on_parameters(network: &Network) -> Vec<bool> {
    let mut needs = vec![false; network.nodes.len()];
    for (k, node) in network.nodes.iter().enumerate() {
        needs[k] = !node.op.parameters().is_empty() || node.inputs.iter().any(|&j| needs[j]);
    }
    needs
}

/// Run the reverse pass from `seed` (shape (n·r, d)) given the forward outputs `cache` of the n examples
/// (from [`Network::forward_cached`]). `visit(node, grad_out)` is called for every parametrised node with
/// the gradient of the loss rows w.r.t. that node's output, shape (n·r, …), before it is propagated.
pub fn backward(
    network: &Network,
    cache: &[Tensor],
    seed: Tensor,
    r: usize,
    mut visit: impl FnMut(usize, &Tensor) -> Result<()>,
) -> Result<()> {
    let needs = depends_on_parameters(network);
    let mut grads: Vec<Option<Tensor>> = vec![None; network.nodes.len()];
    grads[network.output()] = Some(seed);
    for k in (1..network.nodes.len()).rev() {
        let Some(g) = grads[k].take() else { continue };
        let node = &network.nodes[k];
        if !node.op.parameters().is_empty() {
            visit(k, &g)?;
        }
        let wanted: Vec<usize> = node.inputs.iter().copied().filter(|&j| needs[j]).collect();
        if wanted.is_empty() {
            continue;
        }
        let input = &cache[node.inputs[0]];
        let output = &cache[k];
        let grad_in = vjp(&node.op, &node.name, input, output, &g, r).map_err(|e| match e {
            Error::Candle(err) => Error::Model(format!(
                "NTK backward of `{}` ({}): {err}",
                node.name,
                node.op.kind()
            )),
            other => other,
        })?;
        for j in wanted {
            grads[j] = Some(match grads[j].take() {
                Some(acc) => (acc + &grad_in)?,
                None => grad_in.clone(),
            });
        }
    }
    Ok(())
}

/// Vector–Jacobian product of one op: the gradient w.r.t. its (first) input. For `Add` the same gradient
/// goes to every input.
fn vjp(
    op: &Op,
    name: &str,
    input: &Tensor,
    output: &Tensor,
    g: &Tensor,
    r: usize,
) -> Result<Tensor> {
    let unsupported = |why: String| {
        Error::Model(format!(
            "the NTK engine does not support layer `{name}` ({}): {why}",
            op.kind()
        ))
    };
    Ok(match op {
        Op::Input | Op::Dropout | Op::Add => g.clone(),
        Op::Conv2d(c) if c.groups == 1 && c.weight.dim(2)? == c.weight.dim(3)? => {
            let (_, c_in, h, w) = input.dims4()?;
            let geometry = ConvGeometry {
                c_in,
                h,
                w,
                k: c.weight.dim(2)?,
                stride: c.stride,
                padding: c.padding,
            };
            conv::conv2d_input_grad(&c.weight, g, &geometry)?
        }
        Op::Conv2d(c) => {
            conv2d_input_grad(c, g, input.dim(2)?, input.dim(3)?).map_err(|e| match e {
                Error::Usage(why) => unsupported(why),
                other => other,
            })?
        }
        Op::Linear(l) => g.matmul(&l.weight)?,
        Op::BatchNorm2d(bn) => {
            let (scale, _) = bn.affine()?;
            g.broadcast_mul(&scale)?
        }
        Op::Relu => {
            let mask = output.gt(0.0)?.to_dtype(output.dtype())?;
            (g * repeat_rows(&mask, r)?)?
        }
        Op::Tanh => {
            let y = repeat_rows(output, r)?;
            (g * (1.0 - y.sqr()?)?)?
        }
        Op::Gelu => {
            // d/dx [x Φ(x)] = Φ(x) + x φ(x).
            let x = input;
            let cdf = ((x / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5;
            let pdf = (x.sqr()? * -0.5)?.exp()? * (1.0 / (2.0 * std::f64::consts::PI).sqrt());
            let deriv = (cdf? + (x * pdf?)?)?;
            (g * repeat_rows(&deriv, r)?)?
        }
        Op::MaxPool2d { kernel, stride } => {
            if kernel != stride {
                return Err(unsupported(format!(
                    "kernel {kernel} != stride {stride} (overlapping windows)"
                )));
            }
            let masks = first_max_masks(input, output, *kernel)?;
            pool_spread(g, &repeat_rows(&masks, r)?, *kernel, *kernel, input)?
        }
        Op::AvgPool2d { kernel, stride } => {
            if kernel != stride {
                return Err(unsupported(format!(
                    "kernel {kernel} != stride {stride} (overlapping windows)"
                )));
            }
            avg_spread(g, *kernel, *kernel, input)?
        }
        Op::AdaptiveAvgPool2d { output: out } => {
            let (h, w) = (input.dim(2)?, input.dim(3)?);
            if h % out[0] != 0 || w % out[1] != 0 {
                return Err(unsupported(format!(
                    "input {h}x{w} not divisible by output {}x{}",
                    out[0], out[1]
                )));
            }
            avg_spread(g, h / out[0], w / out[1], input)?
        }
        Op::Flatten => {
            let mut dims = input.dims().to_vec();
            dims[0] = g.dim(0)?;
            g.reshape(dims)?
        }
    })
}

/// Gradient w.r.t. the input of a conv: `conv2d` of the zero-dilated, padded output gradient with the flipped
/// kernel whose in/out channels are swapped (per group).
pub fn conv2d_input_grad(c: &Conv2d, g: &Tensor, in_h: usize, in_w: usize) -> Result<Tensor> {
    let (c_out, c_in_g, kh, kw) = c.weight.dims4()?;
    if kh != kw || c.padding > kh - 1 {
        return Err(Error::Usage(format!(
            "kernel {kh}x{kw} with padding {}",
            c.padding
        )));
    }
    let k = kh;
    let groups = c.groups;
    let c_in = c_in_g * groups;
    let flipped = c
        .weight
        .reshape((groups, c_out / groups, c_in_g, k, k))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((c_in, c_out / groups, k, k))?
        .flip(&[2, 3])?
        .contiguous()?;
    let g = dilate(g, c.stride)?;
    let left = k - 1 - c.padding;
    let (hd, wd) = (g.dim(2)?, g.dim(3)?);
    let right_h = (in_h + k - 1).checked_sub(hd + left);
    let right_w = (in_w + k - 1).checked_sub(wd + left);
    let (Some(right_h), Some(right_w)) = (right_h, right_w) else {
        return Err(Error::Internal(
            "conv input gradient: negative padding".into(),
        ));
    };
    let g = g
        .pad_with_zeros(2, left, right_h)?
        .pad_with_zeros(3, left, right_w)?;
    Ok(g.conv2d(&flipped, 0, 1, 1, groups)?)
}

/// Insert `s − 1` zeros between neighbouring pixels (the transpose of a stride-s sampling).
fn dilate(g: &Tensor, s: usize) -> Result<Tensor> {
    if s == 1 {
        return Ok(g.clone());
    }
    let (n, c, h, w) = g.dims4()?;
    let g = g
        .unsqueeze(4)?
        .pad_with_zeros(4, 0, s - 1)?
        .reshape((n, c, h, w * s))?
        .narrow(3, 0, (w - 1) * s + 1)?;
    let wd = (w - 1) * s + 1;
    let g = g
        .unsqueeze(3)?
        .pad_with_zeros(3, 0, s - 1)?
        .reshape((n, c, h * s, wd))?
        .narrow(2, 0, (h - 1) * s + 1)?;
    Ok(g.contiguous()?)
}

/// One-hot masks (n, C, Ho, k, Wo, k) of the first maximum of each non-overlapping k×k window, in PyTorch's
/// row-major window order (ties go to the first position, as in PyTorch).
pub fn first_max_masks(input: &Tensor, output: &Tensor, k: usize) -> Result<Tensor> {
    let (n, c, ho, wo) = output.dims4()?;
    let x = input
        .narrow(2, 0, ho * k)?
        .narrow(3, 0, wo * k)?
        .reshape((n, c, ho, k, wo, k))?;
    let mut taken = output.zeros_like()?;
    let mut masks = Vec::with_capacity(k * k);
    for a in 0..k {
        for b in 0..k {
            let xp = x
                .narrow(3, a, 1)?
                .narrow(5, b, 1)?
                .reshape((n, c, ho, wo))?;
            let hit = xp.eq(output)?.to_dtype(output.dtype())?;
            let first = (&hit * (1.0 - &taken)?)?;
            taken = (taken + &first)?;
            masks.push(first);
        }
    }
    // (k·k, n, C, Ho, Wo) → (n, C, Ho, a, Wo, b)
    let stacked = Tensor::stack(&masks, 4)?.reshape((n, c, ho, wo, k, k))?;
    Ok(stacked.permute((0, 1, 2, 4, 3, 5))?.contiguous()?)
}

/// Spread a pooled gradient (rows, C, Ho, Wo) over the windows with `masks` (rows, C, Ho, kh, Wo, kw),
/// padding back to the input's spatial size.
fn pool_spread(g: &Tensor, masks: &Tensor, kh: usize, kw: usize, input: &Tensor) -> Result<Tensor> {
    let (rows, c, ho, wo) = g.dims4()?;
    let spread = g.reshape((rows, c, ho, 1, wo, 1))?.broadcast_mul(masks)?;
    pad_to_input(spread.reshape((rows, c, ho * kh, wo * kw))?, input)
}

/// Average-pool gradient: each window position gets g / (kh·kw).
fn avg_spread(g: &Tensor, kh: usize, kw: usize, input: &Tensor) -> Result<Tensor> {
    let (rows, c, ho, wo) = g.dims4()?;
    let spread = (g.reshape((rows, c, ho, 1, wo, 1))? / (kh * kw) as f64)?
        .broadcast_as((rows, c, ho, kh, wo, kw))?
        .contiguous()?;
    pad_to_input(spread.reshape((rows, c, ho * kh, wo * kw))?, input)
}

/// Zero-pad the bottom/right of a gradient to the input's spatial size (pooling drops leftover rows/cols).
fn pad_to_input(g: Tensor, input: &Tensor) -> Result<Tensor> {
    let (h, w) = (input.dim(2)?, input.dim(3)?);
    let (gh, gw) = (g.dim(2)?, g.dim(3)?);
    let g = if gh < h {
        g.pad_with_zeros(2, 0, h - gh)?
    } else {
        g
    };
    Ok(if gw < w {
        g.pad_with_zeros(3, 0, w - gw)?
    } else {
        g
    })
}

/// The seed rows for a kernel with `r` rows per example: row i·r + c is e_c (full/trace), all ones (sum),
/// e_K (logit:K), or column c of the centering basis U (centered).
pub fn seed(n: usize, d: usize, outputs: crate::ntk::Outputs, dtype: DType) -> Result<Tensor> {
    use crate::ntk::Outputs;
    let dev = candle_core::Device::Cpu;
    let t = match outputs {
        Outputs::Full | Outputs::Trace => {
            let eye = Tensor::eye(d, DType::F64, &dev)?;
            repeat_block(&eye, n)?
        }
        Outputs::Sum => Tensor::ones((n, d), DType::F64, &dev)?,
        Outputs::Centered => {
            if d < 2 {
                return Err(Error::Usage(
                    "--outputs centered needs a network with at least 2 logits".into(),
                ));
            }
            let u = crate::ntk::centering_basis(d);
            let ut = Tensor::from_vec(u, (d, d - 1), &dev)?.t()?.contiguous()?;
            repeat_block(&ut, n)?
        }
        Outputs::Logit(k) => {
            if k >= d {
                return Err(Error::Usage(format!(
                    "--outputs logit:{k}: the network has only {d} logits"
                )));
            }
            let mut v = vec![0.0f64; n * d];
            for i in 0..n {
                v[i * d + k] = 1.0;
            }
            Tensor::from_vec(v, (n, d), &dev)?
        }
    };
    Ok(t.to_dtype(dtype)?)
}

/// Stack `n` copies of a (d, d) block vertically.
fn repeat_block(block: &Tensor, n: usize) -> Result<Tensor> {
    let (a, b) = block.dims2()?;
    Ok(block
        .unsqueeze(0)?
        .broadcast_as((n, a, b))?
        .contiguous()?
        .reshape((n * a, b))?)
}
