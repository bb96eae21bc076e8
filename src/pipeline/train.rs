//! The `train` subcommand: train a built-in architecture from scratch on a dataset's training split, as in
//! the paper (SPEC §5): SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine schedule per step over the
//! planned epochs, batch 64, train-mode BatchNorm, crop+flip augmentation for 3-channel (CIFAR-type) data
//! only — MNIST-type (1-channel) data is not augmented, since mirrored digits are different symbols.
//!
//! Stop rule: after every epoch, if the training accuracy measured over that epoch (train-mode forward on
//! the batches as they were trained, before each update) reaches `--target-acc`, stop; otherwise stop after
//! `--epochs`. The weights and the log are saved (temp file + rename) after every epoch, so an interrupted
//! run leaves the last completed epoch; the log's `finished` field says whether the run ended. Until it
//! ends, `NAME.train-state.safetensors` holds what `--resume` needs to continue bitwise identically
//! (momentum, schedule position, random state; see `model::train::state`); it is removed at the end.

use crate::cli::TrainArgs;
use crate::data::{Dataset, Split};
use crate::model::arch;
use crate::model::load::{parse_shape, save_safetensors};
use crate::model::recognise;
use crate::model::train::state::{self, state_path};
use crate::model::train::{cosine_lr, Sgd, Trainer, VarSource};
use crate::progress::Progress;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// SGD momentum (paper).
const MOMENTUM: f64 = 0.9;
/// SGD weight decay (paper).
const WEIGHT_DECAY: f64 = 5e-4;
/// Without a terminal (e.g. `nohup`), print a status line every this many steps instead of a bar.
const STATUS_EVERY: usize = 50;

/// One epoch of the training log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean cross-entropy over the epoch's examples.
    pub loss: f64,
    /// Training accuracy over the epoch (train-mode forward, before each update).
    pub train_acc: f64,
    /// Learning rate of the epoch's first and last step.
    pub lr_start: f64,
    /// Learning rate of the epoch's last step.
    pub lr_end: f64,
    /// Wall-clock seconds of the epoch.
    pub seconds: f64,
}

/// The JSON training log written next to the weights as `NAME.log.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainLog {
    /// Architecture name.
    pub arch: String,
    /// Base width, if the architecture has one.
    pub width: Option<usize>,
    /// Dataset name or directory as given.
    pub dataset: String,
    /// Number of training examples used (the first N of the training split).
    pub train_examples: usize,
    /// Input shape [C, H, W] of the network.
    pub input_shape: [usize; 3],
    /// Number of classes.
    pub num_classes: usize,
    /// Number of trainable parameters p.
    pub num_params: usize,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Planned epochs (the cosine schedule spans them).
    pub epochs_planned: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Whether crop+flip augmentation was used.
    pub augmentation: bool,
    /// Stop once the epoch's training accuracy reaches this.
    pub target_acc: f64,
    /// How training accuracy is measured for the stop rule.
    pub stop_rule: String,
    /// Per-epoch figures.
    pub epochs: Vec<EpochLog>,
    /// Whether the run ended (false while running or if interrupted).
    pub finished: bool,
    /// Why it stopped: `target accuracy reached` or `epoch limit`.
    pub stop_reason: Option<String>,
    /// Total wall-clock seconds so far.
    pub seconds: f64,
}

/// Execute `train`.
pub fn run(args: &TrainArgs, progress: &dyn Progress) -> Result<()> {
    check_args(args)?;
    let log_path = log_path(&args.out);
    crate::report::check_outputs(&[
        ("--out", Some(args.out.as_path())),
        ("--out's training log", Some(log_path.as_path())),
    ])?;
    let data = crate::pipeline::inputs::load_data(&args.data, Split::Train, progress)?;
    let n = args.limit.map_or(data.len(), |l| l.min(data.len()));
    if n < 2 {
        return Err(Error::Usage(format!(
            "need at least 2 training examples, {} has {n}",
            args.data.name()?
        )));
    }
    let input_shape = match &args.input_shape {
        Some(s) => parse_shape(s).ok_or_else(|| {
            Error::Usage(format!("--input-shape \"{s}\" is not C,H,W (e.g. 3,32,32)"))
        })?,
        None => arch::default_input_shape(&args.arch, data.image_shape()),
    };
    let mut source = VarSource::new(args.seed, DType::F32);
    let network = arch::build(
        &args.arch,
        args.width,
        input_shape,
        data.num_classes(),
        &mut source,
    )?;
    let mut trainer = Trainer::new(
        network,
        source.into_vars(),
        Sgd::new(MOMENTUM, WEIGHT_DECAY),
    )?;
    let width = args.width.or_else(|| recognise::default_width(&args.arch));
    let augmentation = data.image_shape()[0] == 3;
    let mut log = TrainLog {
        arch: args.arch.clone(),
        width,
        dataset: args.data.name()?.to_string(),
        train_examples: n,
        input_shape,
        num_classes: data.num_classes(),
        num_params: trainer.network.num_params(),
        seed: args.seed,
        epochs_planned: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        momentum: MOMENTUM,
        weight_decay: WEIGHT_DECAY,
        augmentation,
        target_acc: args.target_acc,
        stop_rule: "accuracy over the epoch's batches, train-mode forward before each update"
            .into(),
        epochs: Vec::new(),
        finished: false,
        stop_reason: None,
        seconds: 0.0,
    };
    progress.note(&format!(
        "training {} ({} parameters, input {:?}) on {} examples of {}, {} epochs planned, augmentation {}",
        args.arch,
        log.num_params,
        input_shape,
        n,
        args.data.name()?,
        args.epochs,
        if augmentation { "crop+flip" } else { "off (1-channel data)" }
    ));
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0x5eed_da7a);
    let batches_per_epoch = batches(n, args.batch_size);
    let total_steps = batches_per_epoch * args.epochs;
    let started = Instant::now();
    let mut step = 0;
    let mut first_epoch = 1;
    let state_file = state_path(&args.out);
    let identity = train_identity(args, n, input_shape, &data);
    if args.resume.resume {
        if !state_file.exists() {
            if read_finished(&log_path) {
                println!(
                    "{} is already finished (see {}); nothing to resume",
                    args.out.display(),
                    log_path.display()
                );
                return Ok(());
            }
            progress.note(&format!(
                "note: no training state {} yet; starting from the first epoch",
                state_file.display()
            ));
        } else {
            let saved = state::restore(&mut trainer, &state_file, &identity)?;
            log = serde_json::from_str(&saved.log_json).map_err(|e| {
                Error::Input(format!(
                    "{}: the saved training log is not readable ({e})",
                    state_file.display()
                ))
            })?;
            step = saved.step;
            first_epoch = saved.epochs_done + 1;
            rng.set_word_pos(saved.rng_word_pos);
            crate::report::provenance::record_resumed();
            progress.note(&format!(
                "resuming from {} after epoch {} (step {step})",
                state_file.display(),
                saved.epochs_done
            ));
        }
    }
    let seconds_before = log.seconds;
    for epoch in first_epoch..=args.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let t0 = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let lr_start = cosine_lr(args.lr, step, total_steps);
        let mut lr = lr_start;
        progress.start(
            &format!("epoch {epoch}/{}", args.epochs),
            batches_per_epoch as u64,
        );
        let quiet_bar = !std::io::stderr().is_terminal();
        for batch in order.chunks(args.batch_size).take(batches_per_epoch) {
            crate::signals::check()?;
            let x = if augmentation {
                data.augmented_images(batch, input_shape, &mut rng)?
            } else {
                data.images(batch, input_shape)?
            };
            let labels = batch_labels(&data, batch)?;
            lr = cosine_lr(args.lr, step, total_steps);
            let stats = trainer.step(&x, &labels, lr)?;
            loss_sum += stats.loss * batch.len() as f64;
            correct += stats.correct;
            seen += batch.len();
            step += 1;
            progress.advance(1);
            let done = step - (epoch - 1) * batches_per_epoch;
            if quiet_bar && done % STATUS_EVERY == 0 {
                progress.note(&format!(
                    "epoch {epoch} step {done}/{batches_per_epoch}: loss {:.4}, acc {:.4}, lr {lr:.5}, {:.0} s",
                    loss_sum / seen as f64,
                    correct as f64 / seen as f64,
                    t0.elapsed().as_secs_f64()
                ));
            }
        }
        progress.finish();
        let entry = EpochLog {
            epoch,
            loss: loss_sum / seen as f64,
            train_acc: correct as f64 / seen as f64,
            lr_start,
            lr_end: lr,
            seconds: t0.elapsed().as_secs_f64(),
        };
        progress.note(&format!(
            "epoch {epoch}: loss {:.4}, train accuracy {:.4}, lr {:.5} -> {:.5}, {:.0} s",
            entry.loss, entry.train_acc, entry.lr_start, entry.lr_end, entry.seconds
        ));
        let reached = entry.train_acc >= args.target_acc;
        log.epochs.push(entry);
        log.seconds = seconds_before + started.elapsed().as_secs_f64();
        if reached || epoch == args.epochs {
            log.finished = true;
            log.stop_reason = Some(
                if reached {
                    "target accuracy reached"
                } else {
                    "epoch limit"
                }
                .into(),
            );
        }
        save(&trainer, &log, args, &log_path)?;
        if log.finished {
            let _ = std::fs::remove_file(&state_file);
            break;
        }
        let progress_state = state::Progress {
            epochs_done: epoch,
            step,
            rng_word_pos: rng.get_word_pos(),
            log_json: serde_json::to_string(&log)
                .map_err(|e| Error::Internal(format!("serialising the training log: {e}")))?,
            identity: identity.clone(),
        };
        state::save(&trainer, &progress_state, &state_file)?;
    }
    let last = log.epochs.last().map(|e| e.train_acc).unwrap_or(0.0);
    println!(
        "wrote {} ({} epochs, training accuracy {:.4}, {}) and {}",
        args.out.display(),
        log.epochs.len(),
        last,
        log.stop_reason.as_deref().unwrap_or("unfinished"),
        log_path.display()
    );
    Ok(())
}

/// What a saved training state must match to be resumed: every argument that changes the result.
fn train_identity(
    args: &TrainArgs,
    n: usize,
    input_shape: [usize; 3],
    data: &Dataset,
) -> std::collections::BTreeMap<String, String> {
    [
        ("arch", args.arch.clone()),
        ("width", format!("{:?}", args.width)),
        ("data", format!("{:?}", args.data)),
        (
            "data_sha256",
            crate::report::provenance::record_dataset(data),
        ),
        ("train_examples", n.to_string()),
        ("input_shape", format!("{input_shape:?}")),
        ("epochs", args.epochs.to_string()),
        ("target_acc", args.target_acc.to_string()),
        ("lr", args.lr.to_string()),
        ("batch_size", args.batch_size.to_string()),
        ("seed", args.seed.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Whether the training log at `path` says the run ended.
fn read_finished(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["finished"] == true)
}

/// Reject arguments that cannot train.
fn check_args(args: &TrainArgs) -> Result<()> {
    if args.epochs == 0 {
        return Err(Error::Usage("--epochs must be at least 1".into()));
    }
    if args.batch_size < 2 {
        return Err(Error::Usage(
            "--batch-size must be at least 2 (train-mode BatchNorm needs 2 examples)".into(),
        ));
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        return Err(Error::Usage(format!(
            "--lr must be a positive number, got {}",
            args.lr
        )));
    }
    if !(args.target_acc.is_finite() && args.target_acc > 0.0 && args.target_acc <= 1.0) {
        return Err(Error::Usage(format!(
            "--target-acc must be in (0, 1], got {}",
            args.target_acc
        )));
    }
    Ok(())
}

/// Number of batches per epoch: full batches, plus the last partial one if it holds at least 2 examples
/// (train-mode BatchNorm needs 2).
fn batches(n: usize, batch_size: usize) -> usize {
    n / batch_size + usize::from(n % batch_size >= 2)
}

/// The labels of `batch` as a u32 tensor.
fn batch_labels(data: &Dataset, batch: &[usize]) -> Result<Tensor> {
    let labels = data.labels();
    let v: Vec<u32> = batch.iter().map(|&i| labels[i]).collect();
    Ok(Tensor::from_vec(v, batch.len(), &Device::Cpu)?)
}

/// `NAME.log.json` next to `NAME.safetensors` (or next to any other output name).
pub fn log_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    out.with_file_name(format!("{stem}.log.json"))
}

/// Save the weights (with metadata) and the log, each via a temporary file renamed on success.
fn save(trainer: &Trainer, log: &TrainLog, args: &TrainArgs, log_path: &Path) -> Result<()> {
    let last = log.epochs.last();
    let mut meta = HashMap::new();
    meta.insert("arch".to_string(), log.arch.clone());
    if let Some(w) = log.width {
        meta.insert("width".into(), w.to_string());
    }
    let [c, h, w] = log.input_shape;
    meta.insert("input_shape".into(), format!("{c},{h},{w}"));
    meta.insert("num_classes".into(), log.num_classes.to_string());
    meta.insert("dataset".into(), log.dataset.clone());
    meta.insert("train_examples".into(), log.train_examples.to_string());
    meta.insert("epochs".into(), log.epochs.len().to_string());
    meta.insert("epochs_planned".into(), log.epochs_planned.to_string());
    meta.insert(
        "train_acc".into(),
        last.map(|e| e.train_acc).unwrap_or(0.0).to_string(),
    );
    meta.insert("seed".into(), log.seed.to_string());
    meta.insert("finished".into(), log.finished.to_string());
    meta.insert(
        "trained_by".into(),
        format!("ntk-pipeline {} train", env!("CARGO_PKG_VERSION")),
    );
    if arch::spec::is_spec_path(&args.arch) {
        let text = std::fs::read_to_string(&args.arch)
            .map_err(|e| Error::io("cannot read", &args.arch, e))?;
        meta.insert("arch".into(), format!("spec:{}", args.arch));
        meta.insert("spec".into(), text);
    }
    save_safetensors(&trainer.network, &args.out, meta)?;
    crate::report::write_json(log_path, log)
}
