//! The `eval` subcommand: a model's accuracy (and per-class counts) on a dataset split.

use crate::cli::EvalArgs;
use crate::data::{Dataset, Split};
use crate::model::hand::Inference;
use crate::model::layers::argmax_rows;
use crate::model::Network;
use crate::pipeline::inputs::prepare;
use crate::progress::Progress;
use crate::report::{check_outputs, write_json};
use crate::{Error, Result};
use serde::Serialize;

/// Examples per forward pass.
pub const BATCH: usize = 256;

/// Accuracy of one class.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassCount {
    /// Class label.
    pub class: usize,
    /// Examples with this label.
    pub count: usize,
    /// Of those, predicted correctly.
    pub correct: usize,
}

/// Result of an evaluation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Accuracy {
    /// Examples evaluated.
    pub n: usize,
    /// Correct top-1 predictions.
    pub correct: usize,
    /// correct / n.
    pub accuracy: f64,
    /// Per-class counts, by label.
    pub per_class: Vec<ClassCount>,
}

/// Top-1 accuracy of `network` on the examples `indices` of `dataset`, in batches of [`BATCH`].
pub fn evaluate(
    network: &Network,
    dataset: &Dataset,
    indices: &[usize],
    progress: &dyn Progress,
) -> Result<Accuracy> {
    evaluate_in_batches(network, dataset, indices, BATCH, progress)
}

/// [`evaluate`] in batches of `batch` examples (the accuracy does not depend on it).
pub fn evaluate_in_batches(
    network: &Network,
    dataset: &Dataset,
    indices: &[usize],
    batch: usize,
    progress: &dyn Progress,
) -> Result<Accuracy> {
    evaluate_with(
        &mut fast_pass(network),
        network,
        dataset,
        indices,
        batch,
        progress,
    )
}

/// The hand-written pass when it supports the network (f32 networks; several times faster), else `None`
/// (candle's graph forward).
fn fast_pass(network: &Network) -> Option<Inference<'_, f32>> {
    match network.dtype() {
        candle_core::DType::F32 => Inference::<f32>::new(network).ok(),
        _ => None,
    }
}

/// [`evaluate_in_batches`] on the pass `fast` (reused across calls: a second pass over other data then
/// holds no second set of buffers).
fn evaluate_with(
    fast: &mut Option<Inference<'_, f32>>,
    network: &Network,
    dataset: &Dataset,
    indices: &[usize],
    batch: usize,
    progress: &dyn Progress,
) -> Result<Accuracy> {
    let classes = dataset.num_classes();
    let d = network.num_outputs()?;
    if d != classes {
        return Err(Error::Model(format!(
            "the network `{}` has {d} outputs but {} has {classes} classes",
            network.arch,
            dataset.name()
        )));
    }
    let labels = dataset.labels();
    let mut per_class: Vec<ClassCount> = (0..classes)
        .map(|class| ClassCount {
            class,
            count: 0,
            correct: 0,
        })
        .collect();
    progress.start("eval", indices.len() as u64);
    for chunk in indices.chunks(batch.max(1)) {
        crate::signals::check()?;
        let x = dataset.images(chunk, network.input_shape)?;
        let predicted = match fast.as_mut() {
            Some(inf) => {
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                let logits = inf.logits(&xs, chunk.len())?;
                let d = logits.len() / chunk.len();
                logits.chunks(d).map(first_max).collect()
            }
            None => argmax_rows(&network.forward(&x)?)?,
        };
        for (&i, &p) in chunk.iter().zip(&predicted) {
            let label = labels[i] as usize;
            let entry = per_class.get_mut(label).ok_or_else(|| {
                Error::Data(format!(
                    "example {i} has label {label} but the dataset declares {classes} classes"
                ))
            })?;
            entry.count += 1;
            entry.correct += usize::from(p as usize == label);
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    let correct = per_class.iter().map(|c| c.correct).sum();
    let n = indices.len();
    Ok(Accuracy {
        n,
        correct,
        accuracy: correct as f64 / n.max(1) as f64,
        per_class,
    })
}

#[derive(Serialize)]
struct EvalReport<'a> {
    model: String,
    arch: &'a str,
    num_params: usize,
    data: &'a str,
    split: &'a str,
    #[serde(flatten)]
    accuracy: &'a Accuracy,
    /// Eval-mode accuracy on the training split (first --limit examples, dataset order), when the
    /// evaluated split is another one: the figure the training stop rule uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    train_accuracy: Option<TrainAccuracy>,
}

/// The training-split figures of `eval`.
#[derive(Serialize)]
struct TrainAccuracy {
    n: usize,
    correct: usize,
    accuracy: f64,
}

/// Execute `eval`.
pub fn run(args: &EvalArgs, progress: &dyn Progress) -> Result<()> {
    check_outputs(&[("--json", args.json.as_deref())])?;
    let total_mem = crate::linalg::parse_size(&args.max_mem)?;
    let prepared = prepare(&args.md, args.limit.unwrap_or(usize::MAX), progress)?;
    let total = prepared.order.len();
    let n = match args.limit {
        None => total,
        Some(l) if (1..=total).contains(&l) => l,
        Some(l) => {
            return Err(Error::Usage(format!(
                "--limit {l}: the {} {} split has {total} examples (choose 1..={total})",
                prepared.dataset.name(),
                prepared.dataset.split().as_str()
            )))
        }
    };
    let network = &prepared.model.network;
    // The training split's figures, when another split is evaluated: only the first `--limit` training
    // examples' images are read, before the first pass, so that one batch size (chosen with both splits
    // held) serves both passes on the one reused set of buffers.
    let train = if prepared.dataset.split() == Split::Train {
        None
    } else {
        let mut keep = |len: usize| Ok((0..args.limit.map_or(len, |l| l.min(len))).collect());
        let data = &args.md.data;
        match crate::pipeline::inputs::load_data_with(data, Split::Train, progress, Some(&mut keep))
        {
            Err(e) => {
                progress.note(&format!("note: no training accuracy ({e})"));
                None
            }
            Ok(train) => Some(train),
        }
    };
    let extra = train.as_ref().map_or(0, Dataset::resident_bytes);
    let batch =
        crate::pipeline::budget::eval_batch(&prepared, &args.max_mem, total_mem, extra, BATCH)?;
    let mut fast = fast_pass(network);
    let acc = evaluate_with(
        &mut fast,
        network,
        &prepared.dataset,
        &prepared.order[..n],
        batch,
        progress,
    )?;
    let train_accuracy = match &train {
        None => None,
        Some(train) => {
            let count = args.limit.map_or(train.len(), |l| l.min(train.len()));
            let indices: Vec<usize> = (0..count).collect();
            let a = evaluate_with(&mut fast, network, train, &indices, batch, progress)?;
            Some(TrainAccuracy {
                n: a.n,
                correct: a.correct,
                accuracy: a.accuracy,
            })
        }
    };
    let report = EvalReport {
        model: prepared.model.source.display().to_string(),
        arch: &network.arch,
        num_params: network.num_params(),
        data: prepared.dataset.name(),
        split: prepared.dataset.split().as_str(),
        accuracy: &acc,
        train_accuracy,
    };
    // The result goes to stdout first, so a failing write at the end loses nothing.
    println!(
        "{} ({}, {} parameters) on {} {}: accuracy {:.2}% ({}/{})",
        report.model,
        report.arch,
        report.num_params,
        report.data,
        report.split,
        100.0 * acc.accuracy,
        acc.correct,
        acc.n
    );
    if let Some(t) = &report.train_accuracy {
        println!(
            "training accuracy (eval mode, first {} training examples): {:.2}% ({}/{})",
            t.n,
            100.0 * t.accuracy,
            t.correct,
            t.n
        );
    }
    println!(
        "{:>6} {:>8} {:>8} {:>9}",
        "class", "count", "correct", "accuracy"
    );
    for c in &acc.per_class {
        let pct = if c.count > 0 {
            format!("{:.2}%", 100.0 * c.correct as f64 / c.count as f64)
        } else {
            "-".into()
        };
        println!("{:>6} {:>8} {:>8} {:>9}", c.class, c.count, c.correct, pct);
    }
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(())
}

/// Index of the first largest value of a row of logits.
fn first_max(row: &[f32]) -> u32 {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best as u32
}
