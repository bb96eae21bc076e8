//! The working set of the hand-written feature pass (`features::compute_hand`), counted from the buffers
//! it allocates, so that [`NtkTiles`](super::NtkTiles) chooses its micro-batch by bytes rather than by an
//! estimate: the pass's own buffers ([`Plan::reverse_bytes`]: activations for the micro-batch, gradients
//! for its rows, the patch-matrix scratch), the f64 copy of the parameters and of the chunk's inputs, the
//! seeds, and the feature extraction's buffers (each as large as its largest use), all of which the pass
//! keeps between the nodes of a chunk.

use crate::model::hand::Plan;
use crate::model::Network;
use crate::ntk::features::{LayerPlan, Rule};

/// The most examples one forward/reverse pass of the features takes (larger micro-batches measured slower).
pub const MOST_MICRO: usize = 64;

/// Peak bytes `compute_hand` holds besides the chunk's features while it computes the features of `chunk`
/// examples `micro` at a time, for a network (`hand`'s plan, f64) with `logits` outputs and `layers`' rows.
pub fn hand_working_bytes(
    hand: &Plan,
    network: &Network,
    layers: &LayerPlan,
    chunk: usize,
    micro: usize,
    logits: usize,
) -> usize {
    let m = micro.clamp(1, chunk.max(1));
    let r = layers.rows.max(1);
    // The parameters as f64 vectors and the chunk's inputs as one f64 vector.
    let fixed = network.num_params() + chunk * hand.shapes[0].len();
    // The seed rows: held during the pass, and briefly twice while they are made.
    let seeds = m * r * logits;
    // The extraction's buffers, kept between nodes and chunks (`features::HandWorkspace`), each as large
    // as its largest use: route A's patches, a wave of examples' gradient rows re-laid out example-major
    // and their stacked products (`features::extraction_wave`), BatchNorm's x̂ (the extraction reads the pass's buffers in place otherwise).
    let (mut patches_most, mut rows_most, mut stacked_most, mut xhat_most) = (0, 0, 0, 0);
    for l in &layers.layers {
        let input = network.nodes[l.node].inputs.first().copied().unwrap_or(0);
        let in_len = hand.shapes[input].len();
        match &l.rule {
            Rule::ConvExplicit {
                geometry,
                c_out,
                groups,
                ..
            } => {
                patches_most = patches_most.max(m * geometry.positions() * geometry.patch_len());
                if *groups == 1 {
                    let wave = crate::ntk::features::extraction_wave(m);
                    rows_most = rows_most.max(wave * r * c_out * geometry.positions());
                    stacked_most = stacked_most.max(wave * r * c_out * geometry.patch_len());
                }
            }
            Rule::BatchNorm { .. } => xhat_most = xhat_most.max(m * in_len),
            Rule::ConvSpatial { .. } | Rule::Linear { .. } => {}
        }
    }
    let visit = patches_most + rows_most + stacked_most + xhat_most;
    8 * (fixed + 2 * seeds + visit) + hand.reverse_bytes::<f64>(network, m, r)
}

/// The largest micro-batch (at most [`MOST_MICRO`] and `chunk`) whose [`hand_working_bytes`] fit
/// `working` bytes; 1 when none does (the least share, `pipeline::budget::least_feature_share`, holds
/// one example's).
pub fn hand_micro(
    hand: &Plan,
    network: &Network,
    layers: &LayerPlan,
    chunk: usize,
    logits: usize,
    working: usize,
) -> usize {
    (1..=MOST_MICRO.min(chunk.max(1)))
        .take_while(|&m| hand_working_bytes(hand, network, layers, chunk, m, logits) <= working)
        .last()
        .unwrap_or(1)
}
