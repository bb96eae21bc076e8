//! The resumable state of a training run (`NAME.train-state.safetensors` next to the weights), written
//! atomically after every completed epoch: every parameter and BatchNorm buffer, the SGD momentum buffers, and
//! in the metadata the epochs and steps done (the cosine schedule's position), the shuffling/augmentation
//! generator's position, the training log so far and the arguments that must match on resume. Restoring all
//! of it makes `train --resume` bitwise identical to a run that was never stopped.

use crate::model::train::Trainer;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Metadata key prefix of the identity entries.
const ID_PREFIX: &str = "id.";

/// The non-tensor part of the state.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimizer steps taken (the cosine schedule's position).
    pub step: usize,
    /// Word position of the ChaCha8 generator used for shuffling and augmentation.
    pub rng_word_pos: u128,
    /// The training log so far (JSON).
    pub log_json: String,
    /// The arguments that must match on resume.
    pub identity: BTreeMap<String, String>,
}

/// `NAME.train-state.safetensors` next to `NAME.safetensors`.
pub fn state_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    out.with_file_name(format!("{stem}.train-state.safetensors"))
}

/// The f32 values of a tensor as little-endian bytes (training runs in f32).
fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    if t.dtype() != DType::F32 {
        return Err(Error::Internal(format!(
            "training state holds {:?} tensors; expected f32",
            t.dtype()
        )));
    }
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// Write the state of `trainer` with `progress` to `path` (temp file + fsync + rename).
pub fn save(trainer: &Trainer, progress: &Progress, path: &Path) -> Result<()> {
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, var) in &trainer.params {
        data.push((
            format!("param/{name}"),
            var.dims().to_vec(),
            f32_bytes(var.as_tensor())?,
        ));
    }
    for (name, var) in trainer.buffer_vars() {
        data.push((
            format!("buffer/{name}"),
            var.dims().to_vec(),
            f32_bytes(var.as_tensor())?,
        ));
    }
    for ((name, _), buf) in trainer.params.iter().zip(trainer.sgd.momentum_buffers()) {
        if let Some(b) = buf {
            data.push((format!("momentum/{name}"), b.dims().to_vec(), f32_bytes(b)?));
        }
    }
    let views = data
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Internal(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta: HashMap<String, String> = progress
        .identity
        .iter()
        .map(|(k, v)| (format!("{ID_PREFIX}{k}"), v.clone()))
        .collect();
    meta.insert("epochs_done".into(), progress.epochs_done.to_string());
    meta.insert("step".into(), progress.step.to_string());
    meta.insert("rng_word_pos".into(), progress.rng_word_pos.to_string());
    meta.insert("log".into(), progress.log_json.clone());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".ntk-pipeline-")
        .suffix(".state.tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io("cannot create a temporary file in", dir, e))?;
    let _cleanup = crate::signals::remove_on_exit(tmp.path());
    safetensors::serialize_to_file(views, Some(meta), tmp.path())
        .map_err(|e| Error::Input(format!("cannot write {}: {e}", path.display())))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io("cannot write", path, e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("cannot write", path, e.error))?;
    Ok(())
}

/// Read the state at `path` into `trainer` (built from the same arguments) and return its progress.
/// `identity` is checked first: a state made by different arguments is refused, naming what differs.
pub fn restore(
    trainer: &mut Trainer,
    path: &Path,
    identity: &BTreeMap<String, String>,
) -> Result<Progress> {
    let weights = crate::model::weights::read_safetensors(path)?;
    let meta = &weights.metadata;
    let saved: BTreeMap<String, String> = meta
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(ID_PREFIX)
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect();
    crate::linalg::checkpoint::check_identity(path, &saved, identity)?;
    let field = |k: &str| {
        meta.get(k).ok_or_else(|| {
            Error::Input(format!(
                "{}: the training state lacks `{k}`; it is damaged, remove it to start afresh",
                path.display()
            ))
        })
    };
    let number = |k: &str| -> Result<u128> {
        field(k)?.parse().map_err(|_| {
            Error::Input(format!(
                "{}: `{k}` is not a number; the training state is damaged",
                path.display()
            ))
        })
    };
    let tensor = |name: &str| -> Result<&Tensor> {
        weights.tensors.get(name).ok_or_else(|| {
            Error::Input(format!(
                "{}: the training state lacks tensor `{name}`",
                path.display()
            ))
        })
    };
    for (name, var) in &trainer.params {
        var.set(&tensor(&format!("param/{name}"))?.to_device(&Device::Cpu)?)?;
    }
    for (name, var) in trainer.buffer_vars() {
        var.set(tensor(&format!("buffer/{name}"))?)?;
    }
    let momentum = trainer
        .params
        .iter()
        .map(|(name, _)| weights.tensors.get(&format!("momentum/{name}")).cloned())
        .collect();
    trainer.sgd.set_momentum_buffers(momentum);
    Ok(Progress {
        epochs_done: number("epochs_done")? as usize,
        step: number("step")? as usize,
        rng_word_pos: number("rng_word_pos")?,
        log_json: field("log")?.clone(),
        identity: saved,
    })
}
