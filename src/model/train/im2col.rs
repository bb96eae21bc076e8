//! The arithmetic of [`super::fast_conv`]: im2col, col2im and a row-major matrix product on slices, for
//! f32 and f64, one image at a time (the caller parallelises over the batch).

use gemm::Parallelism;

/// Floating-point element types the fast convolution supports (f32, f64).
pub trait Elem: Copy + Default + Send + Sync + 'static + std::ops::AddAssign {
    /// 1 in this type.
    const ONE: Self;
}

impl Elem for f32 {
    const ONE: Self = 1.0;
}

impl Elem for f64 {
    const ONE: Self = 1.0;
}

/// Geometry of one convolution: input (C_in, H, W), square kernel k, stride, padding, output (Ho, Wo).
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub padding: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
}

impl Geometry {
    /// Rows of the column matrix: C_in·k·k.
    pub fn rows(&self) -> usize {
        self.c_in * self.k * self.k
    }

    /// Columns of the column matrix: Ho·Wo.
    pub fn cols(&self) -> usize {
        self.ho * self.wo
    }

    /// Input row/column read by output index `o` at kernel offset `a`, if inside the image.
    fn source(&self, o: usize, a: usize, size: usize) -> Option<usize> {
        (o * self.stride + a)
            .checked_sub(self.padding)
            .filter(|&i| i < size)
    }
}

/// cols[(c·k + a)·k + b, oy·Wo + ox] = x[c, oy·s − p + a, ox·s − p + b] (0 outside the image).
pub fn im2col<T: Elem>(x: &[T], g: &Geometry, cols: &mut [T]) {
    let (k, p) = (g.k, g.cols());
    for c in 0..g.c_in {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for a in 0..k {
            for b in 0..k {
                let row = &mut cols[((c * k + a) * k + b) * p..][..p];
                for oy in 0..g.ho {
                    let dst = &mut row[oy * g.wo..(oy + 1) * g.wo];
                    match g.source(oy, a, g.h) {
                        None => dst.fill(T::default()),
                        Some(iy) => {
                            let src = &plane[iy * g.w..(iy + 1) * g.w];
                            for (ox, d) in dst.iter_mut().enumerate() {
                                *d = g.source(ox, b, g.w).map_or(T::default(), |ix| src[ix]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: dx[c, iy, ix] += Σ cols entries that were read from it. `dx` must be zeroed.
pub fn col2im<T: Elem>(cols: &[T], g: &Geometry, dx: &mut [T]) {
    let (k, p) = (g.k, g.cols());
    for c in 0..g.c_in {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for a in 0..k {
            for b in 0..k {
                let row = &cols[((c * k + a) * k + b) * p..][..p];
                for oy in 0..g.ho {
                    let Some(iy) = g.source(oy, a, g.h) else {
                        continue;
                    };
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    for (ox, v) in row[oy * g.wo..(oy + 1) * g.wo].iter().enumerate() {
                        if let Some(ix) = g.source(ox, b, g.w) {
                            dst[ix] += *v;
                        }
                    }
                }
            }
        }
    }
}

/// A row-major matrix operand: `data` holds rows × cols, read transposed when `transposed`.
#[derive(Clone, Copy)]
pub struct Operand<'a, T> {
    /// The elements, row-major.
    pub data: &'a [T],
    /// Stored rows.
    pub rows: usize,
    /// Stored columns.
    pub cols: usize,
    /// Use the transpose.
    pub transposed: bool,
}

impl<T> Operand<'_, T> {
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

/// dst (m × n, row-major) = lhs · rhs, or dst += lhs · rhs when `accumulate`; single-threaded.
pub fn matmul<T: Elem>(dst: &mut [T], lhs: Operand<'_, T>, rhs: Operand<'_, T>, accumulate: bool) {
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
