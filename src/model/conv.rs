//! 2-D convolution as matrix products on the im2col lowering ([`super::im2col`]), for f32 and f64: the
//! forward pass, the data gradient, and a candle `CustomOp2` whose backward pass uses them.
//!
//! candle differentiates `conv2d` with respect to its input through `conv_transpose2d`, and with respect to
//! its kernel through a convolution whose "kernel" is the whole output gradient; on the CPU both run far
//! below the speed of a matrix product (and its forward `conv2d` ran at 1–3 GFLOP/s here). Here each image
//! is lowered once to its column matrix cols = im2col(x) (C_in·k·k × Ho·Wo) and everything is a GEMM on it:
//! y = W·cols, ∂W = Σ_images ∂y·colsᵀ, ∂x = col2im(Wᵀ·∂y).
//! (col2im(Wᵀ·∂y) is the stride-1 convolution of the zero-dilated output gradient with the flipped,
//! in/out-transposed kernel, computed without multiplying the inserted zeros.)
//!
//! Users: model evaluation without autograd (`layers.rs`), training (`train::forward`), and the NTK's data
//! gradient ([`conv2d_input_grad`]).

use super::im2col::{col2im, im2col, ConvGeometry};
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

/// Floating-point element types the convolution supports (f32, f64).
pub trait Elem: WithDType + Default + std::ops::AddAssign {
    /// 1 in this type.
    const ONE: Self;
}

impl Elem for f32 {
    const ONE: Self = 1.0;
}

impl Elem for f64 {
    const ONE: Self = 1.0;
}

/// A row-major matrix operand: `data` holds rows × cols, read transposed when `transposed`.
#[derive(Clone, Copy)]
struct Operand<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl<'a, T> Operand<'a, T> {
    /// `data` as a rows × cols row-major matrix.
    fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            transposed: false,
        }
    }

    /// The transpose of this operand.
    fn t(self) -> Self {
        Self {
            transposed: !self.transposed,
            ..self
        }
    }

    /// (rows, cols) of the operand as used, and its (row stride, column stride).
    fn view(&self) -> ((usize, usize), (isize, isize)) {
        let (r, c) = (self.rows, self.cols);
        if self.transposed {
            ((c, r), (1, c as isize))
        } else {
            ((r, c), (c as isize, 1))
        }
    }
}

/// dst (m × n, row-major) = lhs · rhs, or dst += lhs · rhs when `accumulate`; single-threaded (the callers
/// parallelise over images).
fn matmul<T: Elem>(dst: &mut [T], lhs: Operand<'_, T>, rhs: Operand<'_, T>, accumulate: bool) {
    let ((m, k), (lrs, lcs)) = lhs.view();
    let ((k2, n), (rrs, rcs)) = rhs.view();
    assert!(k == k2, "matmul: inner dimensions {k} and {k2} differ");
    assert!(lhs.data.len() >= lhs.rows * lhs.cols && rhs.data.len() >= rhs.rows * rhs.cols);
    assert!(dst.len() >= m * n, "matmul: destination too small");
    // SAFETY: the asserts above guarantee every index gemm touches (i·rs + j·cs for i < rows, j < cols of
    // each operand as viewed) lies inside the slices; `dst` is borrowed mutably and does not alias them.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lcs,
            lrs,
            rhs.data.as_ptr(),
            rcs,
            rrs,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Convolution with square kernels and one group; other cases go through candle's own op.
#[derive(Debug, Clone, Copy)]
struct FastConv {
    stride: usize,
    padding: usize,
}

/// Batch size, output channels and geometry of conv(x, w) for x (N, C, H, W), w (Co, C, k, k).
fn geometry(
    x: &[usize],
    w: &[usize],
    stride: usize,
    padding: usize,
) -> Result<(usize, usize, ConvGeometry)> {
    let (&[n, c_in, h, wd], &[c_out, c_w, k, k2]) = (x, w) else {
        return Err(candle_core::Error::Msg(format!(
            "fast conv2d: shapes {x:?} and {w:?} are not 4-D"
        )));
    };
    if c_w != c_in || k != k2 || h + 2 * padding < k || wd + 2 * padding < k || stride == 0 {
        return Err(candle_core::Error::Msg(format!(
            "fast conv2d: kernel {w:?} (stride {stride}, padding {padding}) does not fit input {x:?}"
        )));
    }
    let g = ConvGeometry {
        c_in,
        h,
        w: wd,
        k,
        stride,
        padding,
    };
    Ok((n, c_out, g))
}

/// y = conv(x, w) for a batch x (n images of C_in × H × W) and w (c_out × C_in·k·k), batch-parallel.
pub fn forward<T: Elem>(x: &[T], w: &[T], c_out: usize, g: &ConvGeometry) -> Vec<T> {
    let (chw, kk, p) = (g.input_len(), g.patch_len(), g.positions());
    let n = x.len() / chw.max(1);
    let mut y = vec![T::default(); n * c_out * p];
    y.par_chunks_mut(c_out * p)
        .zip(x.par_chunks(chw))
        .for_each_init(
            || vec![T::default(); kk * p],
            |cols, (yn, xn)| {
                im2col(xn, g, cols);
                matmul(
                    yn,
                    Operand::new(w, c_out, kk),
                    Operand::new(cols, kk, p),
                    false,
                );
            },
        );
    y
}

/// ∂x of conv(x, w) given ∂y (n images of c_out × U): col2im(Wᵀ·∂y) per image, batch-parallel.
pub fn input_grad<T: Elem>(w: &[T], dy: &[T], c_out: usize, g: &ConvGeometry) -> Vec<T> {
    let (chw, kk, p) = (g.input_len(), g.patch_len(), g.positions());
    let n = dy.len() / (c_out * p).max(1);
    let mut dx = vec![T::default(); n * chw];
    dx.par_chunks_mut(chw)
        .zip(dy.par_chunks(c_out * p))
        .for_each_init(
            || vec![T::default(); kk * p],
            |dcols, (dxn, dyn_)| {
                matmul(
                    dcols,
                    Operand::new(w, c_out, kk).t(),
                    Operand::new(dyn_, c_out, p),
                    false,
                );
                col2im(dcols, g, dxn);
            },
        );
    dx
}

/// (∂x, ∂w) of conv(x, w) given ∂y, batch-parallel with per-thread partial sums of ∂w.
fn backward<T: Elem>(
    x: &[T],
    w: &[T],
    dy: &[T],
    c_out: usize,
    g: &ConvGeometry,
) -> (Vec<T>, Vec<T>) {
    let dx = input_grad(w, dy, c_out, g);
    (dx, weight_grad(x, dy, c_out, g))
}

/// ∂w = Σ_images ∂y·colsᵀ (c_out × C_in·k·k, row-major) of conv(x, w) given ∂y (n images of c_out × U),
/// batch-parallel with per-thread partial sums.
pub fn weight_grad<T: Elem>(x: &[T], dy: &[T], c_out: usize, g: &ConvGeometry) -> Vec<T> {
    let (chw, kk, p) = (g.input_len(), g.patch_len(), g.positions());
    x.par_chunks(chw)
        .zip(dy.par_chunks(c_out * p))
        .with_min_len(4)
        .fold(
            || (vec![T::default(); c_out * kk], vec![T::default(); kk * p]),
            |(mut dw, mut cols), (xn, dyn_)| {
                im2col(xn, g, &mut cols);
                let dy_op = Operand::new(dyn_, c_out, p);
                matmul(&mut dw, dy_op, Operand::new(&cols, kk, p).t(), true);
                (dw, cols)
            },
        )
        .map(|(dw, _)| dw)
        .reduce(
            || vec![T::default(); c_out * kk],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += *b);
                a
            },
        )
}

/// Gradient with respect to the input (rows, C_in, H, W) of an ungrouped square-kernel conv with `weight`
/// (C_out, C_in, k, k), given the output gradient `g` (rows, C_out, Ho, Wo): f64 stays f64, any other
/// dtype is computed in f32.
pub fn conv2d_input_grad(weight: &Tensor, g: &Tensor, geometry: &ConvGeometry) -> Result<Tensor> {
    fn typed<T: Elem>(weight: &Tensor, g: &Tensor, geo: &ConvGeometry) -> Result<Tensor> {
        let (rows, c_out, _, _) = g.dims4()?;
        let w = weight.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?;
        let dy = g.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?;
        let dx = input_grad(&w, &dy, c_out, geo);
        Tensor::from_vec(dx, (rows, geo.c_in, geo.h, geo.w), &Device::Cpu)
    }
    match g.dtype() {
        DType::F64 => typed::<f64>(weight, g, geometry),
        _ => typed::<f32>(weight, g, geometry),
    }
}

/// The contiguous elements of `s` viewed through `l`.
fn slice<'a, T: WithDType>(s: &'a [T], l: &Layout) -> Result<&'a [T]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fast conv2d: operand is not contiguous".into()))?;
    Ok(&s[start..end])
}

impl CustomOp2 for FastConv {
    fn name(&self) -> &'static str {
        "fast-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c_out, g) = geometry(l1.dims(), l2.dims(), self.stride, self.padding)?;
        let shape = Shape::from((n, c_out, g.out_h(), g.out_w()));
        match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => Ok((
                CpuStorage::F32(forward(slice(x, l1)?, slice(w, l2)?, c_out, &g)),
                shape,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(w)) => Ok((
                CpuStorage::F64(forward(slice(x, l1)?, slice(w, l2)?, c_out, &g)),
                shape,
            )),
            _ => Err(candle_core::Error::Msg(
                "fast conv2d supports f32 or f64 input and kernel of one type".into(),
            )),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, c_out, g) = geometry(x.dims(), w.dims(), self.stride, self.padding)?;
        fn run<T: Elem + WithDType>(
            x: &Tensor,
            w: &Tensor,
            dy: &Tensor,
            c: usize,
            g: &ConvGeometry,
        ) -> Result<(Tensor, Tensor)> {
            let flat = |t: &Tensor| t.detach().flatten_all()?.to_vec1::<T>();
            let (dx, dw) = backward(&flat(x)?, &flat(w)?, &flat(&dy.to_dtype(x.dtype())?)?, c, g);
            Ok((
                Tensor::from_vec(dx, x.shape(), &Device::Cpu)?,
                Tensor::from_vec(dw, w.shape(), &Device::Cpu)?,
            ))
        }
        let (dx, dw) = match x.dtype() {
            DType::F32 => run::<f32>(x, w, dy, c_out, &g)?,
            DType::F64 => run::<f64>(x, w, dy, c_out, &g)?,
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "fast conv2d: unsupported dtype {other:?}"
                )))
            }
        };
        Ok((Some(dx), Some(dw)))
    }
}

/// conv2d(x, w) (PyTorch semantics, no bias) whose gradients are computed with forward convolutions;
/// grouped convolutions are split per group, and shapes the fast path does not cover use candle's conv2d.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    let (c_out, _, kh, kw) = w.dims4()?;
    if kh != kw || !matches!(x.dtype(), DType::F32 | DType::F64) || x.dtype() != w.dtype() {
        return x.conv2d(w, padding, stride, 1, groups);
    }
    if groups == 1 {
        let op = FastConv { stride, padding };
        return x.contiguous()?.apply_op2(&w.contiguous()?, op);
    }
    let c_in = x.dim(1)?;
    if c_in % groups != 0 || c_out % groups != 0 {
        return x.conv2d(w, padding, stride, 1, groups);
    }
    let (xs, ws) = (c_in / groups, c_out / groups);
    let outs = (0..groups)
        .map(|i| {
            conv2d(
                &x.narrow(1, i * xs, xs)?,
                &w.narrow(0, i * ws, ws)?,
                stride,
                padding,
                1,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&outs, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// max |t| of an f64 tensor.
    fn max_abs(t: &Tensor) -> f64 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Gradients of sum(conv(x, w) ⊙ r) through the fast op and through candle's conv2d, in f64.
    /// Arguments: [batch, C_in, C_out, H = W, k, stride, padding, groups].
    fn compare([n, c_in, c_out, hw, k, stride, padding, groups]: [usize; 8]) {
        let dev = Device::Cpu;
        let x = Var::randn(0f64, 1.0, (n, c_in, hw, hw), &dev).unwrap();
        let w = Var::randn(0f64, 1.0, (c_out, c_in / groups, k, k), &dev).unwrap();
        let y_ref = x
            .as_tensor()
            .conv2d(w.as_tensor(), padding, stride, 1, groups)
            .unwrap();
        let r = Tensor::randn(0f64, 1.0, y_ref.shape(), &dev).unwrap();
        let y = conv2d(x.as_tensor(), w.as_tensor(), stride, padding, groups).unwrap();
        let diff = max_abs(&(&y - &y_ref).unwrap());
        assert!(diff < 1e-10, "forward differs by {diff}");
        let g_ref = (&y_ref * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w] {
            let a = g.get(v.as_tensor()).unwrap();
            let b = g_ref.get(v.as_tensor()).unwrap();
            let scale = max_abs(b);
            let d = max_abs(&(a - b).unwrap());
            // f64 round-off of sums of a few hundred products: 1e-10 relative is far above it.
            assert!(
                d <= 1e-10 * scale.max(1.0),
                "gradient differs by {d} (scale {scale})"
            );
        }
    }

    #[test]
    fn gradients_match_candle_stride1_pad1() {
        compare([2, 3, 4, 7, 3, 1, 1, 1]);
    }

    #[test]
    fn gradients_match_candle_stride2_even_and_odd_sizes() {
        compare([2, 3, 5, 8, 3, 2, 1, 1]);
        compare([3, 2, 4, 9, 3, 2, 1, 1]);
    }

    #[test]
    fn gradients_match_candle_1x1_stride2_no_padding() {
        compare([2, 4, 6, 8, 1, 2, 0, 1]);
        compare([2, 4, 6, 7, 1, 2, 0, 1]);
    }

    #[test]
    fn gradients_match_candle_5x5_unpadded_and_grouped() {
        compare([2, 1, 6, 12, 5, 1, 0, 1]);
        compare([2, 4, 4, 6, 3, 1, 1, 4]);
        compare([2, 4, 8, 6, 3, 2, 1, 2]);
    }

    /// Central finite differences of L = sum(conv(x, w) ⊙ r) for a few entries of x and w.
    #[test]
    fn gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let (stride, padding) = (2, 1);
        let x = Var::randn(0f64, 1.0, (1, 2, 5, 5), &dev).unwrap();
        let w = Var::randn(0f64, 1.0, (3, 2, 3, 3), &dev).unwrap();
        let loss = |x: &Tensor, w: &Tensor, r: &Tensor| -> f64 {
            let y = conv2d(x, w, stride, padding, 1).unwrap();
            (y * r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let y = conv2d(x.as_tensor(), w.as_tensor(), stride, padding, 1).unwrap();
        let r = Tensor::randn(0f64, 1.0, y.shape(), &dev).unwrap();
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let h = 1e-5;
        for (var, is_x) in [(&x, true), (&w, false)] {
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let grad = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for i in (0..base.len()).step_by(7) {
                let shifted = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    Tensor::from_vec(v, var.as_tensor().shape(), &dev).unwrap()
                };
                let (p, m) = (shifted(h), shifted(-h));
                let (lp, lm) = if is_x {
                    (loss(&p, w.as_tensor(), &r), loss(&m, w.as_tensor(), &r))
                } else {
                    (loss(x.as_tensor(), &p, &r), loss(x.as_tensor(), &m, &r))
                };
                let fd = (lp - lm) / (2.0 * h);
                // L is linear in each argument, so central differences are exact up to round-off (~1e-10).
                assert!(
                    (fd - grad[i]).abs() < 1e-7,
                    "entry {i}: finite difference {fd}, gradient {}",
                    grad[i]
                );
            }
        }
    }
}
