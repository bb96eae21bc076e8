//! Weight files: reading `.safetensors` (memory-mapped) and PyTorch `.pth` state dicts into f32 tensors,
//! writing `.safetensors` atomically, and finding `ORG/NAME[/FILE]` in the Hugging Face cache.

use crate::model::Network;
use crate::{Error, Result};
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The tensors (all f32, on the CPU) and string metadata of one weight file.
#[derive(Debug, Default)]
pub struct Weights {
    /// Tensor name → tensor; `num_batches_tracked` counters and a DataParallel `module.` prefix are removed.
    pub tensors: HashMap<String, Tensor>,
    /// `__metadata__` of a safetensors file (empty for `.pth`).
    pub metadata: HashMap<String, String>,
}

impl Weights {
    /// Tensor name → shape.
    pub fn shapes(&self) -> HashMap<String, Vec<usize>> {
        self.tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.dims().to_vec()))
            .collect()
    }
}

/// Keys under which training scripts commonly nest the state dict in a `.pth` checkpoint.
pub const CHECKPOINT_KEYS: &[&str] = &["state_dict", "net", "model", "model_state_dict", "module"];

/// File extensions taken to mean a PyTorch `torch.save` file.
const PYTORCH_EXTENSIONS: &[&str] = &["pth", "pt", "bin", "ckpt"];

/// Read a weight file: safetensors by extension or content, otherwise a PyTorch zip `.pth`/`.pt`/`.bin`.
pub fn read_weights(path: &Path) -> Result<Weights> {
    let mut magic = [0u8; 4];
    {
        use std::io::Read;
        let mut f =
            std::fs::File::open(path).map_err(|e| Error::io("cannot open model", path, e))?;
        let n = f
            .read(&mut magic)
            .map_err(|e| Error::io("cannot read model", path, e))?;
        if n < 4 {
            return Err(Error::Input(format!(
                "{}: file too short to hold model weights",
                path.display()
            )));
        }
    }
    // A safetensors file starts with its header length (u64 LE), whose first bytes can look like a pickle
    // protocol marker (e.g. 0x0280 = 640): trust the extension first.
    let named_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    // Legacy torch.save pickles its magic number 0x1950a86a20f9469cfc6c first: PROTO 2, LONG1 of 10 bytes.
    if !named_safetensors && magic == [0x80, 0x02, 0x8a, 0x0a] {
        return Err(Error::Input(format!(
            "{}: a legacy (pre-1.6, non-zip) torch.save file, which is not supported; re-save the state dict \
             with torch >= 1.6 (`torch.save(model.state_dict(), path)`) or convert it to safetensors",
            path.display()
        )));
    }
    let is_zip = &magic == b"PK\x03\x04";
    let named_pytorch = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PYTORCH_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
    if named_pytorch && !is_zip {
        return Err(Error::Input(format!(
            "{}: named like a PyTorch file, but it is not a zip archive (torch >= 1.6 saves zip archives, which \
             start with `PK`; this file starts with {:?}); give the state dict saved by \
             `torch.save(model.state_dict(), path)`, or a .safetensors file",
            path.display(),
            String::from_utf8_lossy(&magic)
        )));
    }
    let mut weights = if is_zip {
        read_pth(path)?
    } else {
        read_safetensors(path)?
    };
    weights
        .tensors
        .retain(|name, _| !name.ends_with("num_batches_tracked"));
    strip_prefix(&mut weights.tensors, "module.");
    if weights.tensors.is_empty() {
        let hint = if is_zip {
            format!(
                "; expected a state dict, or a checkpoint dict holding one under {} (a pickled whole module \
                 cannot be read: save `model.state_dict()` instead)",
                CHECKPOINT_KEYS.join("/")
            )
        } else {
            String::new()
        };
        return Err(Error::Model(format!(
            "{}: no tensors found in the weights{hint}",
            path.display()
        )));
    }
    Ok(weights)
}

/// Remove `prefix` from every name when all names carry it (DataParallel's `module.`).
fn strip_prefix(tensors: &mut HashMap<String, Tensor>, prefix: &str) {
    if !tensors.is_empty() && tensors.keys().all(|n| n.starts_with(prefix)) {
        *tensors = std::mem::take(tensors)
            .into_iter()
            .map(|(n, t)| (n[prefix.len()..].to_string(), t))
            .collect();
    }
}

/// Read a memory-mapped safetensors file, converting floating tensors to f32.
pub fn read_safetensors(path: &Path) -> Result<Weights> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::Input(format!(
            "{}: not a readable safetensors or PyTorch zip file: {e}",
            path.display()
        ))
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io("cannot open model", path, e))?;
    // SAFETY: the map is read-only and dropped before returning; the file is not expected to change meanwhile.
    let mmap =
        unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io("cannot map model", path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| bad(&e))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| bad(&e))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let t = view
            .load(&Device::Cpu)
            .map_err(|e| bad(&format!("tensor `{name}`: {e}")))?;
        let t = to_f32(t, &name, path)?;
        tensors.insert(name, t);
    }
    Ok(Weights { tensors, metadata })
}

/// Read a PyTorch (≥ 1.6, zip) state dict, also when nested under one of [`CHECKPOINT_KEYS`].
pub fn read_pth(path: &Path) -> Result<Weights> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::Input(format!(
            "{}: cannot read as a PyTorch state dict (zip format, torch >= 1.6): {e}",
            path.display()
        ))
    };
    let mut pth = candle_core::pickle::PthTensors::new(path, None).map_err(|e| bad(&e))?;
    for key in CHECKPOINT_KEYS {
        if !pth.tensor_infos().is_empty() {
            break;
        }
        if let Ok(nested) = candle_core::pickle::PthTensors::new(path, Some(key)) {
            pth = nested;
        }
    }
    let mut tensors = HashMap::new();
    for name in pth.tensor_infos().keys() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let t = pth
            .get(name)
            .map_err(|e| bad(&format!("tensor `{name}`: {e}")))?;
        if let Some(t) = t {
            tensors.insert(name.clone(), to_f32(t, name, path)?);
        }
    }
    Ok(Weights {
        tensors,
        metadata: HashMap::new(),
    })
}

/// Convert the stored floating tensor `name` (f16, bf16, f32, f64) to f32; integer tensors and tensors
/// holding NaN or ±Inf (which would make every kernel entry they touch meaningless) are errors.
fn to_f32(t: Tensor, name: &str, path: &Path) -> Result<Tensor> {
    let t = match t.dtype() {
        DType::F32 => t,
        DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
        other => {
            return Err(Error::Input(format!(
                "{}: tensor `{name}` has type {other:?} where floating-point weights were expected",
                path.display()
            )))
        }
    };
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        let count = values.iter().filter(|v| !v.is_finite()).count();
        return Err(Error::Model(format!(
            "{}: tensor `{name}` holds {count} non-finite value(s) (the first, {v}, at flat index {i}); the \
             weights are corrupt or the training diverged",
            path.display()
        )));
    }
    Ok(t)
}

/// Save the network's parameters and buffers as f32 safetensors with `metadata`, via a temporary file
/// renamed on success. Adds `arch`, `input_shape` ("C,H,W") and, when the last node is a Linear layer,
/// `num_classes` unless `metadata` already has them.
pub fn save_safetensors(
    network: &Network,
    path: &Path,
    mut metadata: HashMap<String, String>,
) -> Result<()> {
    let [c, h, w] = network.input_shape;
    metadata
        .entry("arch".into())
        .or_insert_with(|| network.arch.clone());
    metadata
        .entry("input_shape".into())
        .or_insert_with(|| format!("{c},{h},{w}"));
    if let Some(spec_path) = network.arch.strip_prefix("spec:") {
        // Embed the spec so the weights load without --arch (see `load::build_from_weights`).
        if let Ok(text) = std::fs::read_to_string(spec_path) {
            metadata.entry("spec".into()).or_insert(text);
        }
    }
    if let Some(crate::model::Node {
        op: crate::model::Op::Linear(l),
        ..
    }) = network.nodes.last()
    {
        metadata
            .entry("num_classes".into())
            .or_insert_with(|| l.weight.dims()[0].to_string());
    }
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in network.parameters().into_iter().chain(network.buffers()) {
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((name, t.dims().to_vec(), bytes));
    }
    let views = data
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Internal(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // In memory first: `serialize_to_file` renames its own 0600 temporary file over the path it is given,
    // which would bypass the atomic writer's rules (symlinks, device nodes, mode from the umask).
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Internal(format!("cannot serialise {}: {e}", path.display())))?;
    crate::report::write_atomic(path, &bytes)
}

/// The Hugging Face hub cache directory: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hf_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    hf_hub::Cache::default().path().clone()
}

/// Files tried, in order, when `--model ORG/NAME` names no file.
pub const HF_DEFAULT_FILES: &[&str] = &["model.safetensors", "pytorch_model.bin"];

/// Find `ORG/NAME[/FILE]` in the hub cache layout `models--ORG--NAME/{refs/main, snapshots/<commit>/FILE}`
/// with `hf_hub::Cache` (offline; nothing is downloaded). `None` when `model` does not have that form.
pub fn resolve_hf(model: &str, cache_dir: &Path) -> Option<Result<PathBuf>> {
    let parts: Vec<&str> = model.split('/').collect();
    if parts.len() < 2
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return None;
    }
    let id = format!("{}/{}", parts[0], parts[1]);
    let candidates: Vec<String> = if parts.len() > 2 {
        vec![parts[2..].join("/")]
    } else {
        HF_DEFAULT_FILES.iter().map(|s| s.to_string()).collect()
    };
    let repo = hf_hub::Cache::new(cache_dir.to_path_buf()).model(id.clone());
    if let Some(found) = candidates.iter().find_map(|f| repo.get(f)) {
        return Some(Ok(found));
    }
    Some(Err(Error::Model(format!(
        "`{model}` is not a file, and {} of {id} is not in the Hugging Face cache {} (offline lookup); download \
         it first (e.g. `huggingface-cli download {id}`) or set HF_HUB_CACHE / HF_HOME",
        candidates.join(" or "),
        cache_dir.display()
    ))))
}

/// Resolve `--model`: an existing file, else `ORG/NAME[/FILE]` in the Hugging Face cache.
pub fn resolve_model_path(model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        return Err(Error::Model(format!(
            "--model {model}: is a directory, not a weight file"
        )));
    }
    match resolve_hf(model, &hf_cache_dir()) {
        Some(found) => found,
        None => Err(Error::Model(format!(
            "--model {model}: no such file (give a .safetensors or .pth file, or ORG/NAME[/FILE] from the Hugging Face cache)"
        ))),
    }
}
