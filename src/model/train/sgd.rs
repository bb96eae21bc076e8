//! SGD with momentum and weight decay (PyTorch semantics, no dampening, no Nesterov) and the cosine
//! learning-rate schedule.

use crate::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// Stochastic gradient descent with heavy-ball momentum and L2 weight decay, as `torch.optim.SGD`:
/// d = ∇ + λ·θ; b ← d on the first step, b ← μ·b + d afterwards; θ ← θ − lr·b.
#[derive(Debug, Clone)]
pub struct Sgd {
    /// Momentum μ (0.9 in the paper).
    pub momentum: f64,
    /// Weight decay λ (5e-4 in the paper), applied to every parameter.
    pub weight_decay: f64,
    buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    /// An optimizer with no momentum history yet.
    pub fn new(momentum: f64, weight_decay: f64) -> Self {
        Self {
            momentum,
            weight_decay,
            buffers: Vec::new(),
        }
    }

    /// The momentum buffer of each parameter (in `step`'s order; `None` before its first update).
    pub fn momentum_buffers(&self) -> &[Option<Tensor>] {
        &self.buffers
    }

    /// Replace the momentum buffers (resuming a run from its saved state).
    pub fn set_momentum_buffers(&mut self, buffers: Vec<Option<Tensor>>) {
        self.buffers = buffers;
    }

    /// Update every parameter that has a gradient in `grads` (parameters without one are left alone, as in
    /// PyTorch); `params` must be passed in the same order at every step.
    pub fn step(&mut self, params: &[(String, Var)], grads: &GradStore, lr: f64) -> Result<()> {
        self.buffers.resize(params.len(), None);
        for ((_, var), buf) in params.iter().zip(self.buffers.iter_mut()) {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let theta = var.as_tensor().detach();
            let mut d = grad.detach();
            if self.weight_decay != 0.0 {
                d = (d + (&theta * self.weight_decay)?)?;
            }
            if self.momentum != 0.0 {
                d = match buf.take() {
                    None => d,
                    Some(b) => ((b * self.momentum)? + d)?,
                };
                *buf = Some(d.clone());
            }
            var.set(&(theta - (d * lr)?)?)?;
        }
        Ok(())
    }
}

impl Sgd {
    /// [`Sgd::step`] on plain buffers: `values` are the current parameters (in `params` order) and `grads`
    /// their gradients; the same arithmetic in the same order, then each `Var` is set to its new value.
    pub fn step_values<T: crate::model::hand::Real>(
        &mut self,
        params: &[(String, Var)],
        values: Vec<Vec<T>>,
        grads: &[Vec<T>],
        lr: f64,
    ) -> Result<()> {
        self.buffers.resize(params.len(), None);
        let (wd, mu, lr) = (
            T::from_f64(self.weight_decay),
            T::from_f64(self.momentum),
            T::from_f64(lr),
        );
        for (((_, var), mut theta), (grad, buf)) in params
            .iter()
            .zip(values)
            .zip(grads.iter().zip(self.buffers.iter_mut()))
        {
            let mut d: Vec<T> = grad.clone();
            if self.weight_decay != 0.0 {
                d.iter_mut().zip(&theta).for_each(|(d, &t)| *d += t * wd);
            }
            if self.momentum != 0.0 {
                if let Some(b) = buf.take() {
                    let b = b.flatten_all()?.to_vec1::<T>()?;
                    d.iter_mut().zip(&b).for_each(|(d, &b)| *d = b * mu + *d);
                }
                *buf = Some(Tensor::from_slice(&d, var.shape(), var.device())?);
            }
            theta.iter_mut().zip(&d).for_each(|(t, &d)| *t -= d * lr);
            var.set(&Tensor::from_vec(theta, var.shape(), var.device())?)?;
        }
        Ok(())
    }
}

/// Cosine annealing from `lr0` to 0 over `total` steps: lr0 · (1 + cos(π·step/total)) / 2.
pub fn cosine_lr(lr0: f64, step: usize, total: usize) -> f64 {
    if total == 0 {
        return lr0;
    }
    let t = step.min(total) as f64 / total as f64;
    lr0 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Loss ½‖x Wᵀ + b − t‖² of a 3→2 linear model; gradients by hand: R = x Wᵀ + b − t, ∇W = Rᵀx, ∇b = Σ R.
    fn hand_grads(w: &[f64], b: &[f64], x: &[[f64; 3]], t: &[[f64; 2]]) -> (Vec<f64>, Vec<f64>) {
        let (mut gw, mut gb) = (vec![0.0; 6], vec![0.0; 2]);
        for (xi, ti) in x.iter().zip(t) {
            for o in 0..2 {
                let r = (0..3).map(|k| w[o * 3 + k] * xi[k]).sum::<f64>() + b[o] - ti[o];
                gb[o] += r;
                for k in 0..3 {
                    gw[o * 3 + k] += r * xi[k];
                }
            }
        }
        (gw, gb)
    }

    #[test]
    fn two_sgd_steps_match_hand_computation() {
        let dev = Device::Cpu;
        let x = [
            [1.0, -2.0, 0.5],
            [0.3, 0.7, -1.1],
            [2.0, 0.1, 0.4],
            [-0.5, 1.5, 1.0],
        ];
        let t = [[1.0, 0.0], [0.0, 1.0], [0.5, -0.5], [1.0, 1.0]];
        let w0 = vec![0.1, -0.2, 0.3, 0.05, 0.4, -0.1];
        let b0 = vec![0.2, -0.3];
        let params = vec![
            (
                "w".to_string(),
                Var::from_vec(w0.clone(), (2, 3), &dev).unwrap(),
            ),
            ("b".to_string(), Var::from_vec(b0.clone(), 2, &dev).unwrap()),
        ];
        let xt = Tensor::new(&x, &dev).unwrap();
        let tt = Tensor::new(&t, &dev).unwrap();
        let (lr, mu, wd) = (0.1, 0.9, 5e-4);
        let mut sgd = Sgd::new(mu, wd);
        let (mut w, mut b) = (w0, b0);
        let (mut buf_w, mut buf_b): (Option<Vec<f64>>, Option<Vec<f64>>) = (None, None);
        for step_lr in [lr, 0.5 * lr] {
            let y = xt.matmul(&params[0].1.as_tensor().t().unwrap()).unwrap();
            let r = (y.broadcast_add(params[1].1.as_tensor()).unwrap() - &tt).unwrap();
            let loss = (r.sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
            sgd.step(&params, &loss.backward().unwrap(), step_lr)
                .unwrap();
            // By hand: d = g + wd·θ; buf = d (first step) or mu·buf + d; θ -= lr·buf.
            let (gw, gb) = hand_grads(&w, &b, &x, &t);
            for (theta, g, buf) in [(&mut w, gw, &mut buf_w), (&mut b, gb, &mut buf_b)] {
                let d: Vec<f64> = g
                    .iter()
                    .zip(theta.iter())
                    .map(|(g, p)| g + wd * p)
                    .collect();
                let new_buf: Vec<f64> = match buf.take() {
                    None => d,
                    Some(old) => old.iter().zip(&d).map(|(o, d)| mu * o + d).collect(),
                };
                for (p, v) in theta.iter_mut().zip(&new_buf) {
                    *p -= step_lr * v;
                }
                *buf = Some(new_buf);
            }
            let got_w = params[0]
                .1
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let got_b = params[1].1.as_tensor().to_vec1::<f64>().unwrap();
            for (g, e) in got_w.iter().chain(&got_b).zip(w.iter().chain(&b)) {
                // Same f64 arithmetic in a different order: agreement to round-off.
                assert!((g - e).abs() < 1e-12, "got {g}, expected {e}");
            }
        }
    }

    #[test]
    fn cosine_schedule_endpoints_and_midpoint() {
        assert_eq!(cosine_lr(0.1, 0, 100), 0.1);
        assert!((cosine_lr(0.1, 50, 100) - 0.05).abs() < 1e-15);
        assert!(cosine_lr(0.1, 100, 100).abs() < 1e-15);
        assert!(cosine_lr(0.1, 25, 100) > cosine_lr(0.1, 26, 100));
    }
}
