//! Training from scratch: trainable parameters as candle `Var`s, a train-mode forward pass, SGD with
//! momentum and weight decay (PyTorch semantics), the cosine learning-rate schedule, and one training step.
//!
//! A network is built by the ordinary architecture builders with a [`VarSource`], so every parameter and
//! BatchNorm buffer in the [`Network`] shares storage with a `Var`: the optimizer updates the `Var`s in
//! place and the network sees the new values.

pub mod forward;
pub mod sgd;
pub mod state;

pub use forward::{batch_norm_train, forward_train, BatchStats, ConvMode};
pub use sgd::{cosine_lr, Sgd};

use crate::model::hand;
use crate::model::{join_name, Init, Network, Op, ParamSource};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// A [`ParamSource`] that creates fresh `Var`s with PyTorch's default initialisation, from a seed.
pub struct VarSource {
    rng: ChaCha8Rng,
    dtype: DType,
    vars: HashMap<String, Var>,
}

impl VarSource {
    /// A source drawing from a ChaCha8 generator seeded with `seed`; tensors have type `dtype`.
    pub fn new(seed: u64, dtype: DType) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            dtype,
            vars: HashMap::new(),
        }
    }

    /// The `Var`s created so far, by full tensor name.
    pub fn into_vars(self) -> HashMap<String, Var> {
        self.vars
    }
}

impl ParamSource for VarSource {
    fn tensor(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        if self.vars.contains_key(name) {
            return Err(Error::Internal(format!(
                "architecture asked twice for tensor `{name}`"
            )));
        }
        let n: usize = shape.iter().product();
        let values = crate::model::params::init_values(init, n, &mut self.rng);
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(self.dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.vars.insert(name.to_string(), var);
        Ok(out)
    }
}

/// Loss and number of correct predictions of one training step.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Mean cross-entropy over the batch (before the update).
    pub loss: f64,
    /// Number of examples whose largest logit was the label's (train-mode forward, before the update).
    pub correct: usize,
}

/// How a training step computes its gradients (the values agree; see `tests/train_hand.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrainPass {
    /// The hand-written pass of [`crate::model::hand`] on plain buffers (the fast one, default).
    #[default]
    Hand,
    /// candle's autograd over the train-mode forward of [`forward_train`] (the reference).
    Autograd,
}

/// The hand-written pass's buffers, in the network's element type.
enum HandWork {
    F32(hand::HandPass<f32>, Vec<Vec<f32>>),
    F64(hand::HandPass<f64>, Vec<Vec<f64>>),
}

/// A network being trained: its trainable `Var`s, its BatchNorm running-statistics `Var`s and the optimizer.
pub struct Trainer {
    /// The network; its tensors share storage with the `Var`s below.
    pub network: Network,
    /// Trainable parameters in `network.parameters()` order, with their full names.
    pub params: Vec<(String, Var)>,
    /// BatchNorm running statistics by full name (`…running_mean`, `…running_var`).
    buffers: HashMap<String, Var>,
    /// The optimizer state.
    pub sgd: Sgd,
    /// Momentum of the running-statistics update (PyTorch's 0.1).
    pub bn_momentum: f64,
    /// Convolution implementation of the autograd path's train-mode forward (default: the fast one).
    pub conv_mode: ConvMode,
    /// Which pass computes the gradients.
    pub pass: TrainPass,
    /// Buffers of the hand-written pass, made at its first step.
    hand: Option<HandWork>,
}

impl Trainer {
    /// Wrap a network built from `vars` (a [`VarSource`]'s `Var`s) with a fresh optimizer.
    pub fn new(network: Network, mut vars: HashMap<String, Var>, sgd: Sgd) -> Result<Self> {
        let mut take = |name: String| {
            vars.remove(&name)
                .map(|v| (name.clone(), v))
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "tensor `{name}` of the network was not created by the training source"
                    ))
                })
        };
        let param_names: Vec<String> = network.parameters().into_iter().map(|(n, _)| n).collect();
        let buffer_names: Vec<String> = network.buffers().into_iter().map(|(n, _)| n).collect();
        let params = param_names
            .into_iter()
            .map(&mut take)
            .collect::<Result<Vec<_>>>()?;
        let buffers = buffer_names
            .into_iter()
            .map(&mut take)
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(Self {
            network,
            params,
            buffers,
            sgd,
            bn_momentum: 0.1,
            conv_mode: ConvMode::Fast,
            pass: TrainPass::Hand,
            hand: None,
        })
    }

    /// The BatchNorm running-statistics `Var`s by full name.
    pub fn buffer_vars(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.buffers.iter()
    }

    /// One SGD step on the batch (`x`, `labels`) at learning rate `lr`: train-mode forward, cross-entropy,
    /// backward, parameter update, running-statistics update.
    pub fn step(&mut self, x: &Tensor, labels: &Tensor, lr: f64) -> Result<StepStats> {
        match self.pass {
            TrainPass::Autograd => self.autograd_step(x, labels, lr),
            TrainPass::Hand => match self.network.dtype() {
                DType::F64 => self.hand_step::<f64>(x, labels, lr),
                _ => self.hand_step::<f32>(x, labels, lr),
            },
        }
    }

    /// [`Trainer::step`] by the hand-written pass: parameters are read from the `Var`s, the gradients
    /// computed on plain buffers, and the updated parameters, momentum and running statistics written back,
    /// so everything else (saving, resuming, evaluation) sees one state.
    fn hand_step<T: hand::Real>(
        &mut self,
        x: &Tensor,
        labels: &Tensor,
        lr: f64,
    ) -> Result<StepStats>
    where
        HandWork: HandSlot<T>,
    {
        if self.hand.is_none() {
            self.hand = Some(HandWork::make::<T>(&self.network, &self.params)?);
        }
        let work = self
            .hand
            .as_mut()
            .and_then(HandSlot::<T>::get)
            .ok_or_else(|| Error::Internal("hand pass buffers of another element type".into()))?;
        let (pass, grads) = work;
        let values = self
            .params
            .iter()
            .map(|(_, v)| Ok(v.as_tensor().flatten_all()?.to_vec1::<T>()?))
            .collect::<Result<Vec<Vec<T>>>>()?;
        let xs = x.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?;
        let truth = labels.to_vec1::<u32>()?;
        let (loss, correct) = pass.gradients(&self.network, &values, &xs, &truth, grads)?;
        if !loss.is_finite() {
            return Err(Error::Model(format!(
                "training diverged: the loss is {loss}; try a smaller --lr"
            )));
        }
        self.sgd.step_values(&self.params, values, grads, lr)?;
        let stats = pass
            .batch_stats()
            .map(|(node, s)| {
                Ok(BatchStats {
                    node,
                    mean: Tensor::from_slice(&s.mean, s.mean.len(), &Device::Cpu)?,
                    var_unbiased: Tensor::from_slice(
                        &s.var_unbiased,
                        s.var_unbiased.len(),
                        &Device::Cpu,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.update_running_stats(&stats)?;
        Ok(StepStats { loss, correct })
    }

    /// [`Trainer::step`] by candle's autograd.
    fn autograd_step(&mut self, x: &Tensor, labels: &Tensor, lr: f64) -> Result<StepStats> {
        let (logits, stats) = forward_train(&self.network, x, self.conv_mode)?;
        let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
        let loss_value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !loss_value.is_finite() {
            return Err(Error::Model(format!(
                "training diverged: the loss is {loss_value}; try a smaller --lr"
            )));
        }
        let predicted = crate::model::layers::argmax_rows(&logits)?;
        let truth = labels.to_vec1::<u32>()?;
        let correct = predicted.iter().zip(&truth).filter(|(p, t)| p == t).count();
        let grads = loss.backward()?;
        self.sgd.step(&self.params, &grads, lr)?;
        self.update_running_stats(&stats)?;
        Ok(StepStats {
            loss: loss_value,
            correct,
        })
    }

    /// running ← (1 − m)·running + m·batch, for the mean and the unbiased variance (PyTorch's rule).
    pub fn update_running_stats(&self, stats: &[BatchStats]) -> Result<()> {
        let m = self.bn_momentum;
        for s in stats {
            let node = &self.network.nodes[s.node];
            if !matches!(node.op, Op::BatchNorm2d(_)) {
                return Err(Error::Internal(format!(
                    "node {} is not a BatchNorm",
                    s.node
                )));
            }
            for (suffix, batch) in [("running_mean", &s.mean), ("running_var", &s.var_unbiased)] {
                let name = join_name(&node.name, suffix);
                let var = self
                    .buffers
                    .get(&name)
                    .ok_or_else(|| Error::Internal(format!("no running statistic `{name}`")))?;
                let new = ((var.as_tensor().detach() * (1.0 - m))?
                    + (batch.to_dtype(var.dtype())? * m)?)?;
                var.set(&new)?;
            }
        }
        Ok(())
    }
}

/// Access to the hand-pass buffers of one element type.
trait HandSlot<T> {
    /// The pass and gradient buffers, if they are of type `T`.
    fn get(&mut self) -> Option<(&mut hand::HandPass<T>, &mut Vec<Vec<T>>)>;
    /// Wrap buffers of type `T`.
    fn wrap(pass: hand::HandPass<T>, grads: Vec<Vec<T>>) -> Self;
}

impl HandSlot<f32> for HandWork {
    fn get(&mut self) -> Option<(&mut hand::HandPass<f32>, &mut Vec<Vec<f32>>)> {
        match self {
            HandWork::F32(p, g) => Some((p, g)),
            HandWork::F64(..) => None,
        }
    }
    fn wrap(pass: hand::HandPass<f32>, grads: Vec<Vec<f32>>) -> Self {
        HandWork::F32(pass, grads)
    }
}

impl HandSlot<f64> for HandWork {
    fn get(&mut self) -> Option<(&mut hand::HandPass<f64>, &mut Vec<Vec<f64>>)> {
        match self {
            HandWork::F64(p, g) => Some((p, g)),
            HandWork::F32(..) => None,
        }
    }
    fn wrap(pass: hand::HandPass<f64>, grads: Vec<Vec<f64>>) -> Self {
        HandWork::F64(pass, grads)
    }
}

impl HandWork {
    /// Plan the pass and size one gradient buffer per parameter.
    fn make<T: hand::Real>(network: &Network, params: &[(String, Var)]) -> Result<Self>
    where
        HandWork: HandSlot<T>,
    {
        let pass = hand::HandPass::<T>::new(network)?;
        let grads = params
            .iter()
            .map(|(_, v)| vec![T::ZERO; v.elem_count()])
            .collect();
        Ok(HandSlot::wrap(pass, grads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BatchNorm2d;

    /// A network made of one BatchNorm over 2 channels of 2×2 images, then Flatten.
    fn bn_network() -> (Network, HashMap<String, Var>) {
        let mut src = VarSource::new(0, DType::F64);
        let mut t = |name: &str, init| src.tensor(name, &[2], init).unwrap();
        let bn = BatchNorm2d {
            weight: t("bn.weight", Init::Ones),
            bias: t("bn.bias", Init::Zeros),
            running_mean: t("bn.running_mean", Init::Zeros),
            running_var: t("bn.running_var", Init::Ones),
            eps: 1e-5,
        };
        let mut net = Network::new("bn-test", [2, 2, 2]);
        net.then("bn", Op::BatchNorm2d(bn));
        net.then("", Op::Flatten);
        (net, src.into_vars())
    }

    #[test]
    fn batchnorm_train_output_and_running_stats_match_hand_computation() {
        let (net, vars) = bn_network();
        let values: Vec<f64> = (0..24).map(|i| ((i * 7 % 11) as f64) * 0.3 - 1.0).collect();
        let x = Tensor::from_vec(values.clone(), (3, 2, 2, 2), &Device::Cpu).unwrap();
        let trainer = Trainer::new(net, vars, Sgd::new(0.9, 0.0)).unwrap();
        let (y, stats) = forward_train(&trainer.network, &x, ConvMode::Fast).unwrap();
        trainer.update_running_stats(&stats).unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let mean_t = trainer.network.buffers()[0].1.to_vec1::<f64>().unwrap();
        let var_t = trainer.network.buffers()[1].1.to_vec1::<f64>().unwrap();
        for c in 0..2 {
            // Channel c of (3, 2, 2, 2): entries n·8 + c·4 + 0..4.
            let vals: Vec<f64> = (0..3)
                .flat_map(|n| (0..4).map(move |k| n * 8 + c * 4 + k))
                .map(|i| values[i])
                .collect();
            let m = vals.iter().sum::<f64>() / 12.0;
            let ss = vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>();
            let (biased, unbiased) = (ss / 12.0, ss / 11.0);
            assert!(
                (mean_t[c] - 0.1 * m).abs() < 1e-12,
                "running mean {} vs {}",
                mean_t[c],
                0.1 * m
            );
            assert!(
                (var_t[c] - (0.9 + 0.1 * unbiased)).abs() < 1e-12,
                "running var {}",
                var_t[c]
            );
            for n in 0..3 {
                for k in 0..4 {
                    let i = n * 8 + c * 4 + k;
                    let expect = (values[i] - m) / (biased + 1e-5).sqrt();
                    assert!(
                        (y[i] - expect).abs() < 1e-12,
                        "y[{i}] = {} vs {expect}",
                        y[i]
                    );
                }
            }
        }
    }

    #[test]
    fn trainer_rejects_tensors_not_made_by_the_source() {
        let (net, mut vars) = bn_network();
        vars.remove("bn.running_var");
        assert!(Trainer::new(net, vars, Sgd::new(0.9, 0.0)).is_err());
    }
}
