//! `--max-mem` for the whole process: the least each subcommand needs, checked before the work, and the
//! batch sizes that keep `eval` within its budget. (The split of a budget between the feature cache and
//! MEMDET, after what lives outside both, is `inputs::budget_split`.)

use crate::linalg::budget::{tile_share, BlockPlan};
use crate::linalg::TileSource;
use crate::model::Network;
use crate::ntk::NtkTiles;
use crate::pipeline::inputs::{Prepared, BASELINE_BYTES};
use crate::{Error, Result};

/// MiB, for messages.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// The part of a budget the features need at least for `tiles`: a cache of two examples' features in 3/4
/// of the share, and beside it the feature pass's working set for one example (it gets the other quarter
/// and, when larger, the rest from the cache: `Prepared::tiles_for`).
pub fn least_feature_share(tiles: &NtkTiles) -> u64 {
    let two = tiles.min_feature_budget() as u64;
    (two * 4)
        .div_ceil(3)
        .max(two + tiles.least_working_bytes() as u64)
}

/// The part of a budget MEMDET needs at least for an m×m matrix of granule g: its smallest plan (one
/// granule per block) within the 7/8 tile share.
pub fn least_memdet_share(m: usize, granule: usize) -> Result<u64> {
    let g = granule.max(1);
    let plan = BlockPlan::with_blocks(m, m.div_ceil(g), g)?;
    let need = plan.resident_bytes(false);
    // The smallest budget whose tile share holds `need`.
    let mut budget = need + need / 7;
    while budget > need && tile_share(budget - 1) >= need {
        budget -= 1;
    }
    while tile_share(budget) < need {
        budget += 1;
    }
    Ok(budget)
}

/// How the budget left after what lives outside is shared with the feature cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureShare {
    /// Half of it (the default of `--feature-mem`).
    Half,
    /// A fixed `--feature-mem`.
    Given,
    /// All of it (`ntk`, which runs no MEMDET).
    All,
}

impl FeatureShare {
    /// The share `--feature-mem` asks for.
    pub fn of(feature_mem: &Option<String>) -> Self {
        match feature_mem {
            Some(_) => FeatureShare::Given,
            None => FeatureShare::Half,
        }
    }
}

/// What the budget beside the feature share must hold, and how many kernels split the feature share.
#[derive(Debug, Clone, Copy)]
pub enum Beside {
    /// MEMDET's smallest plan for an m×m kernel (m is the tiles' order unless given, for a larger kernel
    /// of the same network).
    Memdet(Option<usize>),
    /// `stats`: `kernels` kernels (2 with `--against`) split the feature share equally, and the
    /// matrix-free estimators' parts need `estimators` bytes in all (0 without `--estimate`).
    Stats {
        /// Kernels formed side by side.
        kernels: u64,
        /// Bytes of the estimators' parts.
        estimators: u64,
    },
    /// Nothing (`ntk`, which gives the features everything).
    Nothing,
}

/// Refuse, before the kernel's work starts, shares that cannot hold the least the kernel needs: the
/// features of two examples per kernel (`feature_share`, of whose part per kernel the cache gets 3/4), and
/// what `beside` says the rest (`rest_share`) must hold, with `outside` bytes taken off first. The message
/// names the least `--max-mem` that would do with the features' `share` (with a given `--feature-mem`, the
/// one to give beside it), and with the default half split also the `--feature-mem` range that would make
/// the budget as given enough.
pub fn check_kernel_minimum(
    tiles: &NtkTiles,
    beside: Beside,
    max_mem: &str,
    share: FeatureShare,
    (feature_share, rest_share): (u64, u64),
    outside: u64,
) -> Result<()> {
    let (kernels, need_rest, rest_for) = match beside {
        Beside::Memdet(m) => (
            1,
            least_memdet_share(m.unwrap_or(tiles.dim()), tiles.granule())?,
            "MEMDET's smallest plan",
        ),
        Beside::Stats {
            kernels,
            estimators,
        } => (
            kernels.max(1),
            estimators,
            "the matrix-free estimators (per part one reverse column of the factor dimension and one \
             example's activations)",
        ),
        Beside::Nothing => (1, 0, ""),
    };
    let need_features = kernels * least_feature_share(tiles);
    if feature_share >= need_features && rest_share >= need_rest {
        return Ok(());
    }
    let mib_up = |b: u64| mib(b).ceil() as u64;
    let (least, how) = match share {
        FeatureShare::Half => {
            let least = outside + 2 * need_features.max(need_rest);
            // With the split given instead, this budget may already be enough.
            let total = outside + feature_share + rest_share;
            let (low, high) = (
                mib_up(need_features),
                mib(total.saturating_sub(outside + need_rest)).floor() as u64,
            );
            let how = if low <= high {
                format!(
                    " with the default half split, or --max-mem {max_mem} as it is with --feature-mem between \
                     {low} and {high} MiB"
                )
            } else {
                " with the default half split".to_string()
            };
            (least, how)
        }
        FeatureShare::Given => {
            // The `--feature-mem` to name, in whole MiB, and the budget that leaves the rest its least.
            let features = mib_up(feature_share.max(need_features));
            (
                outside + (features << 20) + need_rest,
                format!(" with --feature-mem {features} MiB"),
            )
        }
        FeatureShare::All => (outside + need_features, String::new()),
    };
    Err(Error::Budget(format!(
        "--max-mem {max_mem} cannot hold the least this kernel needs: {:.1} MiB outside the plan (data, model, \
         inputs, in-memory kernels, {} MiB for the binary and threads), a feature share of {:.1} MiB \
         (its 3/4 for the cache holds two examples' features{}; it gets {:.1} MiB){}; it needs at \
         least {} MiB{how}",
        mib(outside),
        BASELINE_BYTES >> 20,
        mib(need_features),
        if kernels > 1 {
            format!(" of each of the {kernels} kernels")
        } else {
            String::new()
        },
        mib(feature_share),
        if need_rest > 0 {
            format!(
                " and {:.1} MiB for {rest_for} (its share is {:.1} MiB)",
                mib(need_rest),
                mib(rest_share)
            )
        } else {
            String::new()
        },
        mib_up(least),
    )))
}

/// How many times candle's activation sum one example is taken to cost `eval`'s forward pass when the
/// hand-written pass does not apply (candle's graph forward; the hand pass is counted exactly by
/// [`eval_pass_bytes`]). Measured 2.7× for the hand pass on the shipped ResNet9 before it was counted
/// exactly, rounded up: an estimate.
const HAND_PASS_FACTOR: u64 = 3;

/// Bytes one example adds to `eval`'s forward pass of `network`: [`HAND_PASS_FACTOR`] × (f32 inputs and
/// every activation, measured on one example of `prepared` with candle's cached forward).
pub fn forward_bytes_per_example(network: &Network, prepared: &Prepared) -> Result<u64> {
    let probe = prepared.inputs(1)?;
    let acts = network.forward_cached(&probe)?;
    let bytes: usize = acts
        .iter()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
    Ok(HAND_PASS_FACTOR * (bytes + probe.elem_count() * 4) as u64)
}

/// `eval`'s batch size under `--max-mem` `total`: what lives outside the batches (the data as held, `extra`
/// bytes of other data held too, the sample order, the f32 model, [`BASELINE_BYTES`]) is taken off, the
/// rest holds the forward pass of batches of at most `most` examples; refused before the work when not even
/// one example fits. The hand-written pass (f32 networks of the layers it implements, what `eval` runs
/// then) is counted buffer by buffer ([`eval_pass_bytes`]); candle's forward is estimated
/// ([`forward_bytes_per_example`]).
pub fn eval_batch(
    prepared: &Prepared,
    max_mem: &str,
    total: u64,
    extra: u64,
    most: usize,
) -> Result<usize> {
    let network = &prepared.model.network;
    let outside = prepared.dataset.resident_bytes()
        + extra
        + 8 * prepared.order.capacity() as u64
        + 4 * network.num_params() as u64
        + BASELINE_BYTES;
    let hand = match network.dtype() {
        candle_core::DType::F32 => crate::model::hand::Plan::new(network).ok(),
        _ => None,
    };
    let per = match &hand {
        Some(_) => 0,
        None => forward_bytes_per_example(network, prepared)?,
    };
    let pass = |e: usize| match &hand {
        Some(plan) => eval_pass_bytes(network, plan, e),
        None => e as u64 * per,
    };
    if total < outside + pass(1) {
        return Err(Error::Budget(format!(
            "--max-mem {max_mem} cannot hold what eval needs: {:.1} MiB for the data, the model and {} MiB for \
             the binary and threads, plus {:.1} MiB for the forward pass of one example; it needs at least {:.0} MiB",
            mib(outside),
            BASELINE_BYTES >> 20,
            mib(pass(1)),
            mib(outside + pass(1)).ceil()
        )));
    }
    Ok((1..=most.max(1))
        .take_while(|&e| outside + pass(e) <= total)
        .last()
        .unwrap_or(1))
}

/// Bytes of an f32 eval-mode pass by the hand-written pass (`hand::Inference`) over batches of `e`
/// examples of `network` (planned by `plan`): its copy of the weights and of the BatchNorm running
/// statistics (f64), the pass's buffers ([`crate::model::hand::Plan::eval_bytes`]), the batch as a tensor
/// and as the pass's input, the logits.
pub fn eval_pass_bytes(network: &Network, plan: &crate::model::hand::Plan, e: usize) -> u64 {
    let p = network.num_params() as u64;
    let buffers: u64 = network
        .buffers()
        .iter()
        .map(|(_, t)| t.elem_count() as u64)
        .sum();
    let per_input = network.input_shape.iter().product::<usize>() as u64;
    let logits = network.num_outputs().unwrap_or(0) as u64;
    4 * p
        + 8 * buffers
        + plan.eval_bytes::<f32>(e) as u64
        + e as u64 * (2 * 4 * per_input + 4 * logits)
}

/// The most examples `train`'s accuracy passes take at once (`eval::BATCH`).
const TRAIN_EVAL_MOST: usize = crate::pipeline::eval::BATCH;

/// What `train` holds under `--max-mem`, counted before the first step (f32, the hand-written pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainMemory {
    /// The data as held: the training split's used examples and the test split.
    pub data: u64,
    /// The model: weights and BatchNorm buffers, momentum, gradients, the step's copy of the weights and
    /// the optimizer's per-tensor temporaries.
    pub model: u64,
    /// One training step at `--batch-size`: [`Plan::train_bytes`] and the batch's input copies.
    pub step: u64,
    /// The accuracy passes at `eval_batch` examples (their own copy of the weights, the eval-mode pass's
    /// buffers, the batch's inputs), or saving the training state, whichever is more.
    pub after_epoch: u64,
    /// Examples per accuracy pass.
    pub eval_batch: usize,
}

impl TrainMemory {
    /// Everything, with [`BASELINE_BYTES`].
    pub fn total(&self) -> u64 {
        self.data + self.model + self.step + self.after_epoch + BASELINE_BYTES
    }
}

/// Plan `train`'s memory under `--max-mem` `total` (as given: `max_mem`) for `network` trained at
/// `batch` with `data` bytes of data held: the accuracy passes get the largest batch (at most
/// [`TRAIN_EVAL_MOST`]) that fits. Refused before any step when even one example does not fit, naming
/// the least `--max-mem` (the training batch is the user's: a smaller one is suggested, never chosen).
pub fn train_memory(
    network: &Network,
    batch: usize,
    data: u64,
    max_mem: &str,
    total: u64,
) -> Result<TrainMemory> {
    use crate::model::hand::Plan;
    let plan = Plan::new(network)?;
    let p = network.num_params() as u64;
    let buffers: u64 = network
        .buffers()
        .iter()
        .map(|(_, t)| t.elem_count() as u64)
        .sum();
    let largest = network
        .parameters()
        .iter()
        .map(|(_, t)| t.elem_count() as u64)
        .max()
        .unwrap_or(0);
    let per_input = network.input_shape.iter().product::<usize>() as u64;
    // Weights + buffers (the Vars), momentum, gradients, the step's copy; SGD's temporaries for one tensor.
    let model = 4 * (p + buffers) + 4 * 3 * p + 4 * 3 * largest;
    // The batch as a tensor and as the pass's input vector (augmentation replaces one by the other), labels.
    let step =
        plan.train_bytes::<f32>(network, batch) as u64 + batch as u64 * (2 * 4 * per_input + 8);
    // Saving the training state holds the weights, buffers and momentum as bytes at once.
    let save = 4 * (2 * p + buffers) + 4 * largest;
    let eval = |e: usize| eval_pass_bytes(network, &plan, e);
    let fixed = data + model + step + BASELINE_BYTES;
    let fits = |e: usize| fixed + eval(e).max(save) <= total;
    if !fits(1) {
        let least = fixed + eval(1).max(save);
        return Err(Error::Budget(format!(
            "--max-mem {max_mem} cannot hold what train needs: {:.1} MiB for the data, {:.1} MiB for the model \
             (weights, momentum, gradients and the step's copy), {:.1} MiB for a training step at --batch-size \
             {batch}, {:.1} MiB for the accuracy passes (one example at a time) or saving the state, {} MiB \
             for the binary and threads; it needs at least {:.0} MiB (or a smaller --batch-size)",
            mib(data),
            mib(model),
            mib(step),
            mib(eval(1).max(save)),
            BASELINE_BYTES >> 20,
            mib(least).ceil()
        )));
    }
    let eval_batch = (1..=TRAIN_EVAL_MOST)
        .take_while(|&e| fits(e))
        .last()
        .unwrap_or(1);
    Ok(TrainMemory {
        data,
        model,
        step,
        after_epoch: eval(eval_batch).max(save),
        eval_batch,
    })
}

/// What `stats` keeps outside its feature and estimator shares for a kernel on `n` examples: the data,
/// the model and the inputs (twice: its own and the tile source's), the `--against` model (f32 and an f64
/// copy), the targets Y, the probe columns [1, Y] and their products K [1, Y] (m × (classes + 1) each at
/// most) and the kernel's diagonal.
pub fn stats_outside(
    prepared: &Prepared,
    n: usize,
    spec: &crate::ntk::KernelSpec,
    against_params: Option<usize>,
) -> Result<u64> {
    let rows = spec.rows_per_example(prepared.model.network.num_outputs()?) as u64;
    let m = n as u64 * rows;
    let columns = prepared.dataset.num_classes() as u64 + 1;
    Ok(prepared.resident_bytes_in(n, spec.precision)
        + prepared.input_bytes(n, spec.precision)
        + against_params.map_or(0, |p| 12 * p as u64)
        + 8 * m * (3 * columns + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memdet_least_share_holds_its_smallest_plan_and_no_less() {
        for (m, g) in [(400, 10), (1000, 1), (37, 3)] {
            let b = least_memdet_share(m, g).unwrap();
            let p = crate::linalg::budget::plan(m, g, None, Some(b), false).unwrap();
            assert_eq!(p.block_size, g.min(m));
            assert!(crate::linalg::budget::plan(m, g, None, Some(b - 1), false).is_err());
        }
    }
}
