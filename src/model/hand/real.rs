//! The element type of the hand-written pass: f32 for training (as PyTorch), f64 where exactness is tested.

use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub, SubAssign};

/// A floating-point element the hand-written pass computes in; reductions are accumulated in f64
/// (`WithDType::to_f64` / `from_f64` convert).
pub trait Real:
    Copy
    + Default
    + Send
    + Sync
    + PartialOrd
    + 'static
    + From<f32>
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + Sum
    + candle_core::WithDType
{
    /// Zero.
    const ZERO: Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
}

impl Real for f64 {
    const ZERO: Self = 0.0;
}

/// `v.resize(len, 0)` growing the allocation to exactly `len` (not the doubling `Vec::resize` may choose),
/// so the bytes a pass holds are the ones [`super::Plan`] counts.
pub fn resize_exact<T: Real>(v: &mut Vec<T>, len: usize) {
    if len > v.capacity() {
        v.reserve_exact(len - v.len());
    }
    v.resize(len, T::ZERO);
}

/// `dst[i] = v[i]` or `dst[i] += v[i]` (when `add`), the two ways a gradient reaches a node's buffer.
#[inline]
pub fn put<T: Real>(dst: &mut T, v: T, add: bool) {
    if add {
        *dst += v;
    } else {
        *dst = v;
    }
}

/// Independent partial sums in [`sum_f64`] and [`sum2_f64`]: a serial f64 sum waits for each addition's
/// latency; eight running sums let the additions pipeline (and vectorise).
const LANES: usize = 8;

/// `Σ f(v)` over `values`, accumulated in f64 in [`LANES`] interleaved partial sums added at the end.
#[inline]
pub fn sum_f64<T: Real>(values: &[T], f: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `(Σ f(a, b), Σ g(a, b))` over the pairs of `a` and `b` (equal lengths), accumulated like [`sum_f64`].
#[inline]
pub fn sum2_f64<T: Real>(
    a: &[T],
    b: &[T],
    f: impl Fn(T, T) -> f64,
    g: impl Fn(T, T) -> f64,
) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "sum2_f64: operands of different lengths");
    let (mut fa, mut ga) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (mut ft, mut gt) = (0.0, 0.0);
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        ft += f(x, y);
        gt += g(x, y);
    }
    for (xa, xb) in ca.zip(cb) {
        for l in 0..LANES {
            fa[l] += f(xa[l], xb[l]);
            ga[l] += g(xa[l], xb[l]);
        }
    }
    (fa.iter().sum::<f64>() + ft, ga.iter().sum::<f64>() + gt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_equal_plain_sums() {
        // 8·12 + 5 values: full chunks and a remainder.
        let a: Vec<f32> = (0..101).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..101).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f64 = a.iter().map(|&v| (v as f64) * (v as f64)).sum();
        assert!((sum_f64(&a, |v| (v as f64) * (v as f64)) - plain).abs() < 1e-12);
        let (s, t) = sum2_f64(&a, &b, |x, y| x as f64 * y as f64, |_, y| y as f64);
        let want_s: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        let want_t: f64 = b.iter().map(|&y| y as f64).sum();
        assert!((s - want_s).abs() < 1e-12 && (t - want_t).abs() < 1e-12);
        assert_eq!(sum_f64::<f64>(&[], |v| v), 0.0);
    }
}
