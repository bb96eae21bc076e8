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
