//! The `train` subcommand: train a built-in architecture on a dataset's training split, as in the paper
//! (SPEC §5): SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine schedule per step over the planned
//! epochs, batch 64, train-mode BatchNorm; crop+flip augmentation by default on 3-channel (CIFAR-type)
//! data only — MNIST-type (1-channel) data is not augmented by default, since mirrored digits are other
//! symbols (`--augment` overrides). `--init` starts from given weights, `--shuffle false` keeps the
//! dataset order, `--schedule constant` keeps the learning rate, `--pass autograd` uses candle's autograd.
//!
//! Stop rule (the paper's "until training accuracy exceeds 99.5 %", made exact): after every epoch whose
//! running accuracy (train-mode forward on the batches as trained, before each update) is at least
//! `--target-acc` − [`PRECHECK_MARGIN`], the eval-mode accuracy on all the training examples used
//! (running BatchNorm statistics, no augmentation) is measured; training stops when that reaches
//! `--target-acc`, otherwise after `--epochs`. At the end the eval-mode training accuracy and the test
//! accuracy are measured and logged. The weights and the log are saved (temp file + rename) after every
//! epoch, so an interrupted run leaves the last completed epoch; the log's `finished` field says whether
//! the run ended. Until it ends, `NAME.train-state.safetensors` holds what `--resume` needs to continue
//! bitwise identically (momentum, schedule position, random state; see `model::train::state`); it is
//! removed at the end.
//!
//! `--max-mem` (default 4GiB, hand pass): the data, the model, one step at `--batch-size` and the accuracy
//! passes are counted before the first step (`budget::train_memory`); the accuracy passes' batch adapts, the
//! training batch never does (a budget too small for it is refused, naming the least).

use crate::cli::{Augment, PassArg, Schedule, TrainArgs};
use crate::data::{Dataset, Split};
use crate::model::arch;
use crate::model::load::{parse_shape, save_safetensors};
use crate::model::recognise;
use crate::model::train::state::{self, state_path};
use crate::model::train::{cosine_lr, Sgd, TrainPass, Trainer, VarSource};
use crate::pipeline::eval::evaluate_in_batches;
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
/// The eval-mode check of the stop rule runs after epochs whose running accuracy is at least
/// `--target-acc` minus this (the running accuracy lags the end-of-epoch weights).
pub const PRECHECK_MARGIN: f64 = 0.01;
/// `--max-mem` when not given.
const DEFAULT_MAX_MEM: &str = "4GiB";
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
    /// Eval-mode accuracy on all training examples after the epoch, when the stop rule measured it.
    #[serde(default)]
    pub train_acc_eval: Option<f64>,
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
    /// Whether the examples were reshuffled every epoch.
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Learning-rate schedule (`cosine` or `constant`).
    #[serde(default)]
    pub schedule: String,
    /// Gradient pass (`hand` or `autograd`).
    #[serde(default)]
    pub pass: String,
    /// Initial weights (`--init`: path and sha256), if not a seeded initialisation.
    #[serde(default)]
    pub init: Option<String>,
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
    /// Eval-mode accuracy on all training examples used, at the end.
    #[serde(default)]
    pub final_train_acc_eval: Option<f64>,
    /// Eval-mode accuracy on the test split, at the end (None when the data has no test split).
    #[serde(default)]
    pub final_test_acc: Option<f64>,
}

fn yes() -> bool {
    true
}

/// Execute `train`.
pub fn run(args: &TrainArgs, progress: &dyn Progress) -> Result<()> {
    check_args(args)?;
    let log_path = log_path(&args.out);
    crate::report::check_outputs(&[
        ("--out", Some(args.out.as_path())),
        ("--out's training log", Some(log_path.as_path())),
    ])?;
    // Only the pixels of the examples trained on are held (the first --limit), read as a stream.
    let mut first = |len: usize| Ok((0..args.limit.map_or(len, |l| l.min(len))).collect());
    let data = crate::pipeline::inputs::load_data_with(
        &args.data,
        Split::Train,
        progress,
        Some(&mut first),
    )?;
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
    trainer.pass = match args.pass {
        PassArg::Hand => TrainPass::Hand,
        PassArg::Autograd => TrainPass::Autograd,
    };
    if trainer.pass == TrainPass::Hand {
        crate::model::hand::Plan::new(&trainer.network)?;
    }
    // The test split (for the final accuracy) is read now: its memory is counted before the first step.
    let test = load_test(args, progress);
    let eval_batch = plan_memory(&trainer, args, &data, test.as_ref(), progress)?;
    let init = match &args.init {
        Some(path) => Some(load_init(&trainer, path)?),
        None => None,
    };
    let width = args.width.or_else(|| recognise::default_width(&args.arch));
    let augmentation = match args.augment {
        Some(a) => a == Augment::CropFlip,
        None => data.image_shape()[0] == 3,
    };
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
        shuffle: args.shuffle,
        schedule: schedule_name(args.schedule).into(),
        pass: match args.pass {
            PassArg::Hand => "hand",
            PassArg::Autograd => "autograd",
        }
        .into(),
        init: init.clone(),
        target_acc: args.target_acc,
        stop_rule: format!(
            "eval-mode accuracy on all {n} training examples >= target, measured after each epoch whose \
             running train-mode accuracy is >= target - {PRECHECK_MARGIN}"
        ),
        epochs: Vec::new(),
        finished: false,
        stop_reason: None,
        seconds: 0.0,
        final_train_acc_eval: None,
        final_test_acc: None,
    };
    progress.note(&format!(
        "training {} ({} parameters, input {:?}) on {} examples of {}, {} epochs planned, augmentation {}",
        args.arch,
        log.num_params,
        input_shape,
        n,
        args.data.name()?,
        args.epochs,
        if augmentation { "crop+flip" } else { "off" }
    ));
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0x5eed_da7a);
    let batches_per_epoch = batches(n, args.batch_size);
    let total_steps = batches_per_epoch * args.epochs;
    let started = Instant::now();
    let mut step = 0;
    let mut first_epoch = 1;
    let state_file = state_path(&args.out);
    let identity = train_identity(args, n, input_shape, &data, augmentation, init.as_deref());
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
        if args.shuffle {
            order.shuffle(&mut rng);
        }
        let t0 = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let lr_at = |step: usize| match args.schedule {
            Schedule::Cosine => cosine_lr(args.lr, step, total_steps),
            Schedule::Constant => args.lr,
        };
        let lr_start = lr_at(step);
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
            lr = lr_at(step);
            let stats = trainer.step(&x, &labels, lr)?;
            loss_sum += stats.loss * batch.len() as f64;
            correct += stats.correct;
            seen += batch.len();
            step += 1;
            progress.advance(1);
            let done = step - (epoch - 1) * batches_per_epoch;
            if quiet_bar && done.is_multiple_of(STATUS_EVERY) {
                progress.note(&format!(
                    "epoch {epoch} step {done}/{batches_per_epoch}: loss {:.4}, acc {:.4}, lr {lr:.5}, {:.0} s",
                    loss_sum / seen as f64,
                    correct as f64 / seen as f64,
                    t0.elapsed().as_secs_f64()
                ));
            }
        }
        progress.finish();
        let train_acc = correct as f64 / seen as f64;
        let train_acc_eval = if train_acc >= args.target_acc - PRECHECK_MARGIN {
            Some(eval_accuracy(&trainer, &data, n, eval_batch, progress)?)
        } else {
            None
        };
        let entry = EpochLog {
            epoch,
            loss: loss_sum / seen as f64,
            train_acc,
            lr_start,
            lr_end: lr,
            train_acc_eval,
            seconds: t0.elapsed().as_secs_f64(),
        };
        progress.note(&format!(
            "epoch {epoch}: loss {:.4}, train accuracy {:.4} (running){}, lr {:.5} -> {:.5}, {:.0} s",
            entry.loss,
            entry.train_acc,
            train_acc_eval.map_or(String::new(), |a| format!(", {a:.4} (eval mode, all {n})")),
            entry.lr_start,
            entry.lr_end,
            entry.seconds
        ));
        let reached = train_acc_eval.is_some_and(|a| a >= args.target_acc);
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
        if log.finished {
            let last_eval = log.epochs.last().and_then(|e| e.train_acc_eval);
            log.final_train_acc_eval = Some(match last_eval {
                Some(a) => a,
                None => eval_accuracy(&trainer, &data, n, eval_batch, progress)?,
            });
            log.final_test_acc = match &test {
                Some(test) => {
                    let indices: Vec<usize> = (0..test.len()).collect();
                    let network = &trainer.network;
                    let batch = eval_batch;
                    Some(evaluate_in_batches(network, test, &indices, batch, progress)?.accuracy)
                }
                None => None,
            };
            log.seconds = seconds_before + started.elapsed().as_secs_f64();
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
    let fmt = |a: Option<f64>| a.map_or("–".to_string(), |a| format!("{a:.4}"));
    println!(
        "wrote {} ({} epochs, eval-mode training accuracy {}, test accuracy {}, {}) and {}",
        args.out.display(),
        log.epochs.len(),
        fmt(log.final_train_acc_eval),
        fmt(log.final_test_acc),
        log.stop_reason.as_deref().unwrap_or("unfinished"),
        log_path.display()
    );
    Ok(())
}

/// Eval-mode accuracy of the trained network on the first `n` training examples, `batch` at a time.
fn eval_accuracy(
    trainer: &Trainer,
    data: &Dataset,
    n: usize,
    batch: usize,
    progress: &dyn Progress,
) -> Result<f64> {
    let indices: Vec<usize> = (0..n).collect();
    Ok(evaluate_in_batches(&trainer.network, data, &indices, batch, progress)?.accuracy)
}

/// The data's test split (read as a stream), or None (with a note: no test accuracy) when it has none.
fn load_test(args: &TrainArgs, progress: &dyn Progress) -> Option<Dataset> {
    let mut all = |len: usize| Ok((0..len).collect());
    match crate::pipeline::inputs::load_data_with(&args.data, Split::Test, progress, Some(&mut all))
    {
        Ok(t) => Some(t),
        Err(e) => {
            progress.note(&format!("note: no test accuracy ({e})"));
            None
        }
    }
}

/// `--max-mem` (default 4GiB) for the hand pass: what training holds is counted, printed and refused
/// when it does not fit; returns the accuracy passes' batch. With `--pass autograd` (candle's graph, not
/// planned) the accuracy passes take `eval::BATCH` examples and no limit applies (`check_args` refuses an
/// explicit one).
fn plan_memory(
    trainer: &Trainer,
    args: &TrainArgs,
    data: &Dataset,
    test: Option<&Dataset>,
    progress: &dyn Progress,
) -> Result<usize> {
    if trainer.pass == TrainPass::Autograd {
        return Ok(crate::pipeline::eval::BATCH);
    }
    let max_mem = args.max_mem.as_deref().unwrap_or(DEFAULT_MAX_MEM);
    let total = crate::linalg::parse_size(max_mem)?;
    let held = data.resident_bytes() + test.map_or(0, Dataset::resident_bytes);
    let batch = args.batch_size;
    let mem = crate::pipeline::budget::train_memory(&trainer.network, batch, held, max_mem, total)?;
    let mib = |b: u64| b as f64 / 1048576.0;
    progress.note(&format!(
        "memory: {:.0} MiB of --max-mem {max_mem}: data {:.1}, model {:.1}, step at batch {batch} {:.1}, \
             accuracy passes of {} examples (or saving) {:.1} MiB",
        mib(mem.total()),
        mib(mem.data),
        mib(mem.model),
        mib(mem.step),
        mem.eval_batch,
        mib(mem.after_epoch)
    ));
    Ok(mem.eval_batch)
}

/// Copy the weights of `path` into the trainer's parameters and BatchNorm buffers; every tensor of the
/// network must be in the file with its shape, and the file must hold nothing else. Returns "PATH (sha256 H)".
fn load_init(trainer: &Trainer, path: &Path) -> Result<String> {
    let weights = crate::model::weights::read_weights(path)?;
    let mut unused: std::collections::BTreeSet<&String> = weights.tensors.keys().collect();
    let mut problems = Vec::new();
    let named = trainer
        .params
        .iter()
        .map(|(n, v)| (n, v))
        .chain(trainer.buffer_vars());
    for (name, var) in named {
        match weights.tensors.get(name) {
            None => problems.push(format!("missing `{name}`")),
            Some(t) if t.dims() != var.dims() => problems.push(format!(
                "`{name}` has shape {:?}, the network needs {:?}",
                t.dims(),
                var.dims()
            )),
            Some(t) => {
                unused.remove(name);
                var.set(&t.to_dtype(var.dtype())?)?;
            }
        }
    }
    problems.extend(unused.iter().map(|n| format!("unexpected `{n}`")));
    if !problems.is_empty() {
        return Err(Error::Model(format!(
            "--init {} does not fit the network `{}`: {}",
            path.display(),
            trainer.network.arch,
            problems.join("; ")
        )));
    }
    Ok(format!(
        "{} (sha256 {})",
        path.display(),
        crate::report::provenance::file_sha256(path)?
    ))
}

/// The command-line name of a schedule.
fn schedule_name(s: Schedule) -> &'static str {
    match s {
        Schedule::Cosine => "cosine",
        Schedule::Constant => "constant",
    }
}

/// What a saved training state must match to be resumed: every argument that changes the result.
fn train_identity(
    args: &TrainArgs,
    n: usize,
    input_shape: [usize; 3],
    data: &Dataset,
    augmentation: bool,
    init: Option<&str>,
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
        ("augmentation", augmentation.to_string()),
        ("shuffle", args.shuffle.to_string()),
        ("schedule", schedule_name(args.schedule).to_string()),
        ("init", init.unwrap_or("none").to_string()),
        ("pass", format!("{:?}", args.pass)),
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
    if let Some(m) = &args.max_mem {
        crate::linalg::parse_size(m)?;
    }
    if let (Some(m), PassArg::Autograd) = (&args.max_mem, args.pass) {
        return Err(Error::Usage(format!(
            "--max-mem {m} bounds the hand-written pass only (candle's autograd graph is not planned); drop \
             --max-mem or use --pass hand"
        )));
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
