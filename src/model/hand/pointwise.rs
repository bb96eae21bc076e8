//! Element-wise layers (ReLU, tanh, GELU, dropout as the identity) and residual sums, forward and backward,
//! on flat buffers.

use super::real::{put, Real};
use rayon::prelude::*;

/// Values per parallel task of the element-wise loops.
const CHUNK: usize = 1 << 14;

/// Which element-wise function.
#[derive(Debug, Clone, Copy)]
pub enum Pointwise {
    /// max(x, 0).
    Relu,
    /// tanh(x).
    Tanh,
    /// x·Φ(x) (exact erf form).
    Gelu,
    /// The identity (dropout in this pass, which carries no drop probability).
    Identity,
}

impl Pointwise {
    /// The element-wise function of an element-wise node (ReLU, tanh, GELU; anything else, i.e.
    /// dropout, is the identity).
    pub fn of(op: &crate::model::Op) -> Self {
        match op {
            crate::model::Op::Relu => Pointwise::Relu,
            crate::model::Op::Tanh => Pointwise::Tanh,
            crate::model::Op::Gelu => Pointwise::Gelu,
            _ => Pointwise::Identity,
        }
    }
}

/// Φ(x), the standard normal CDF.
fn phi(x: f64) -> f64 {
    0.5 * (1.0 + candle_core::cpu::erf::erf_f64(x / std::f64::consts::SQRT_2))
}

/// y = f(x).
pub fn forward<T: Real>(f: Pointwise, x: &[T], y: &mut [T]) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, i)| match f {
            Pointwise::Relu => o.iter_mut().zip(i).for_each(|(o, &v)| {
                *o = if v > T::ZERO { v } else { T::ZERO };
            }),
            Pointwise::Tanh => o
                .iter_mut()
                .zip(i)
                .for_each(|(o, &v)| *o = T::from_f64(v.to_f64().tanh())),
            Pointwise::Gelu => o.iter_mut().zip(i).for_each(|(o, &v)| {
                let v = v.to_f64();
                *o = T::from_f64(v * phi(v));
            }),
            Pointwise::Identity => o.copy_from_slice(i),
        });
}

/// dx = f'(x)·dy, replaced or added (`add`); `x` is the input and `y` the output of the forward pass.
pub fn backward<T: Real>(f: Pointwise, x: &[T], y: &[T], dy: &[T], dx: &mut [T], add: bool) {
    dx.par_chunks_mut(CHUNK).enumerate().for_each(|(j, o)| {
        let (at, len) = (j * CHUNK, o.len());
        backward_block(
            f,
            &x[at..][..len],
            &y[at..][..len],
            &dy[at..][..len],
            o,
            add,
        );
    });
}

/// [`backward`] on one block, on the calling thread (the NTK reverse pass calls it once per (channel, row)
/// block from its own parallel loop; [`backward`] once per parallel chunk).
pub fn backward_block<T: Real>(f: Pointwise, x: &[T], y: &[T], dy: &[T], dx: &mut [T], add: bool) {
    let mut each = |g: &dyn Fn(T, T, T) -> T| {
        for i in 0..dx.len() {
            let v = g(x[i], y[i], dy[i]);
            put(&mut dx[i], v, add);
        }
    };
    match f {
        // The hot case: one branch-free loop per accumulation mode, so it vectorises.
        Pointwise::Relu => {
            let pairs = dx.iter_mut().zip(y[..dy.len()].iter().zip(dy));
            let relu = |y: T, d: T| if y > T::ZERO { d } else { T::ZERO };
            if add {
                pairs.for_each(|(o, (&y, &d))| *o += relu(y, d));
            } else {
                pairs.for_each(|(o, (&y, &d))| *o = relu(y, d));
            }
        }
        Pointwise::Tanh => each(&|_, y, d| d * (T::from(1.0) - y * y)),
        Pointwise::Gelu => each(&|x, _, d| {
            let v = x.to_f64();
            let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
            d * T::from_f64(phi(v) + v * pdf)
        }),
        Pointwise::Identity => {
            for i in 0..dx.len() {
                put(&mut dx[i], dy[i], add);
            }
        }
    }
}

/// y = Σ inputs (all of y's length).
pub fn sum<T: Real>(inputs: &[&[T]], y: &mut [T]) {
    y.par_chunks_mut(CHUNK).enumerate().for_each(|(j, o)| {
        let at = j * CHUNK;
        let len = o.len();
        o.copy_from_slice(&inputs[0][at..][..len]);
        for other in &inputs[1..] {
            o.iter_mut()
                .zip(&other[at..][..len])
                .for_each(|(a, &b)| *a += b);
        }
    });
}

/// dx = dy, replaced or added (`add`).
pub fn pass_through<T: Real>(dy: &[T], dx: &mut [T], add: bool) {
    dx.par_chunks_mut(CHUNK).enumerate().for_each(|(j, o)| {
        let src = &dy[j * CHUNK..][..o.len()];
        if add {
            o.iter_mut().zip(src).for_each(|(a, &b)| *a += b);
        } else {
            o.copy_from_slice(src);
        }
    });
}
