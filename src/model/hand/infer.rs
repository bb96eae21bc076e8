//! Eval-mode inference by the hand-written pass: the network's parameters and BatchNorm running statistics
//! copied once into plain buffers, then logits batch by batch (what `eval` and the training stop rule use;
//! several times faster than candle's graph forward).

use super::{HandPass, Real};
use crate::model::Network;
use crate::Result;
use candle_core::Tensor;

/// A network ready for eval-mode forward passes on plain buffers.
pub struct Inference<'a, T> {
    network: &'a Network,
    pass: HandPass<T>,
    params: Vec<Vec<T>>,
    running: Vec<(Vec<f64>, Vec<f64>)>,
}

impl<'a, T: Real> Inference<'a, T> {
    /// Copy the parameters and running statistics of `network` (refusing layers the pass lacks).
    pub fn new(network: &'a Network) -> Result<Self> {
        let pass = HandPass::new(network)?;
        let values = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(t.flatten_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1()?)
        };
        let params = network
            .parameters()
            .into_iter()
            .map(|(_, t)| Ok(t.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()?))
            .collect::<Result<Vec<_>>>()?;
        let buffers = network.buffers();
        let running = buffers
            .chunks(2)
            .map(|pair| Ok((values(pair[0].1)?, values(pair[1].1)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            network,
            pass,
            params,
            running,
        })
    }

    /// Eval-mode logits (N, d), row-major, of the batch `x` (N, C, H, W) of `n` examples.
    pub fn logits(&mut self, x: &[T], n: usize) -> Result<&[T]> {
        self.pass
            .logits_eval(self.network, &self.params, &self.running, x, n)
    }
}
