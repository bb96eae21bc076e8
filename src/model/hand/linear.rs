//! Fully connected layer on a batch of rows: `y (N, O) = x (N, F) · Wᵀ + b`; backward `dW = dyᵀ · x`,
//! `db = Σ_n dy`, `dx = dy · W`.

use super::product::{product, Operand};
use super::real::Real;

/// y = x Wᵀ + b for `n` rows.
pub fn forward<T: Real>(
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    n: usize,
    out: usize,
    y: &mut [T],
) {
    let f = weight.len() / out;
    product(
        &mut y[..n * out],
        Operand::new(x, n, f),
        Operand::new(weight, out, f).t(),
        false,
    );
    if let Some(b) = bias {
        for row in y[..n * out].chunks_mut(out) {
            row.iter_mut().zip(b).for_each(|(v, &b)| *v += b);
        }
    }
}

/// Gradients: `dw`, `dbias` replaced; `dx` (when given) replaced or added to (`add`).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    x: &[T],
    weight: &[T],
    dy: &[T],
    n: usize,
    out: usize,
    dw: &mut [T],
    dbias: Option<&mut [T]>,
    dx: Option<(&mut [T], bool)>,
) {
    let f = weight.len() / out;
    product(
        dw,
        Operand::new(dy, n, out).t(),
        Operand::new(x, n, f),
        false,
    );
    if let Some(db) = dbias {
        for (o, d) in db.iter_mut().enumerate() {
            *d = T::from_f64((0..n).map(|i| dy[i * out + o].to_f64()).sum());
        }
    }
    if let Some((dx, add)) = dx {
        product(
            &mut dx[..n * f],
            Operand::new(dy, n, out),
            Operand::new(weight, out, f),
            add,
        );
    }
}
