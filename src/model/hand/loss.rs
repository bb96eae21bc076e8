//! Softmax cross-entropy over a batch of logits (N, d), in f64: the mean loss, the number of correct
//! predictions, and the logits' gradient (softmax − one-hot)/N.

use super::real::Real;

/// Mean loss, correct predictions (largest logit = label; the first of equal maxima), and `dlogits`.
pub fn cross_entropy<T: Real>(
    logits: &[T],
    labels: &[u32],
    d: usize,
    dlogits: &mut [T],
) -> (f64, usize) {
    let n = labels.len();
    let (mut loss, mut correct) = (0.0, 0usize);
    for (i, &label) in labels.iter().enumerate() {
        let row = &logits[i * d..][..d];
        let (mut best, mut arg) = (f64::NEG_INFINITY, 0);
        for (j, v) in row.iter().enumerate() {
            if v.to_f64() > best {
                best = v.to_f64();
                arg = j;
            }
        }
        correct += usize::from(arg == label as usize);
        let sum: f64 = row.iter().map(|v| (v.to_f64() - best).exp()).sum();
        let log_z = best + sum.ln();
        loss += log_z - row[label as usize].to_f64();
        for (j, g) in dlogits[i * d..][..d].iter_mut().enumerate() {
            let p = (row[j].to_f64() - log_z).exp();
            *g = T::from_f64((p - f64::from(u8::from(j == label as usize))) / n as f64);
        }
    }
    (loss / n as f64, correct)
}
