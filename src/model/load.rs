//! Load a model: resolve `--model`, read the weights, decide the architecture (`--arch`, the weights'
//! metadata, or recognition from tensor names), build it from the weights and report every mismatch at once.

use crate::model::arch::{self, spec};
use crate::model::params::{Init, ParamSource};
use crate::model::recognise;
use crate::model::weights::{read_weights, resolve_model_path, Weights};
use crate::model::Network;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub use crate::model::weights::save_safetensors;

/// A network built from weight files, with where it came from.
#[derive(Debug)]
pub struct LoadedModel {
    /// The network, parameters in f32.
    pub network: Network,
    /// The weight file read.
    pub source: PathBuf,
    /// The weights' metadata (safetensors `__metadata__`; empty for `.pth`).
    pub metadata: HashMap<String, String>,
}

/// Load `model` (a file, or `ORG/NAME[/FILE]` in the Hugging Face cache).
///
/// The architecture is `arch` if given, else the metadata's `arch`, else recognised from tensor names and
/// shapes. Width, input shape and classes come from `width` / the metadata / the weights, falling back to
/// `input_shape_hint` (the data's image shape) and `num_classes_hint`.
pub fn load_model(
    model: &str,
    arch: Option<&str>,
    width: Option<usize>,
    input_shape_hint: Option<[usize; 3]>,
    num_classes_hint: Option<usize>,
) -> Result<LoadedModel> {
    let source = resolve_model_path(model)?;
    let weights = read_weights(&source)?;
    let network = build_from_weights(
        &weights,
        &source,
        arch,
        width,
        input_shape_hint,
        num_classes_hint,
    )?;
    Ok(LoadedModel {
        network,
        source,
        metadata: weights.metadata,
    })
}

/// Build a network from already-read `weights` (see [`load_model`] for how the architecture is chosen).
pub fn build_from_weights(
    weights: &Weights,
    source: &Path,
    arch: Option<&str>,
    width: Option<usize>,
    input_shape_hint: Option<[usize; 3]>,
    num_classes_hint: Option<usize>,
) -> Result<Network> {
    let meta = &weights.metadata;
    let shapes = weights.shapes();
    let (arch, origin, recognised_width) = match (arch, meta.get("arch")) {
        (Some(a), _) => (a.to_string(), "--arch", None),
        (None, Some(a)) => (a.clone(), "the weights' metadata", None),
        (None, None) => match recognise::recognise(&shapes) {
            Some(r) => (r.arch, "recognised from tensor names", r.width),
            None => {
                let mut names: Vec<&String> = shapes.keys().collect();
                names.sort();
                let shown: Vec<&str> = names.iter().take(8).map(|s| s.as_str()).collect();
                return Err(Error::Model(format!(
                    "{}: cannot tell the architecture from the tensor names ({}{}); pass --arch (one of {}, or a JSON spec)",
                    source.display(),
                    shown.join(", "),
                    if names.len() > 8 { ", ..." } else { "" },
                    arch::BUILTIN.join(", ")
                )));
            }
        },
    };
    if !spec::is_spec_path(&arch) && !arch.starts_with("spec:") && !arch::is_known(&arch) {
        return Err(match (arch::unknown_arch(&arch), origin) {
            (Error::Model(msg), "the weights' metadata") => Error::Model(format!(
                "{} (named in the metadata of {}): {msg}; pass --arch",
                arch,
                source.display()
            )),
            (e, _) => e,
        });
    }
    let mut loader = LoadingParams::new(&weights.tensors);
    let what;
    let built = if let Some(spec_path) = arch.strip_prefix("spec:").filter(|_| origin != "--arch") {
        // Written by `train` or `save_safetensors` for a spec network: the spec text travels in the metadata.
        let text = meta.get("spec").ok_or_else(|| {
            Error::Model(format!(
                "{}: metadata says arch `{arch}` but holds no \"spec\"; pass --arch {spec_path}",
                source.display()
            ))
        })?;
        let spec = spec::Spec::parse(text)?;
        what = format!("`{arch}` (from {origin})");
        spec.build(&arch, &mut loader)
    } else if spec::is_spec_path(&arch) {
        what = format!("spec {arch}");
        spec::Spec::from_file(Path::new(&arch))?.build(&format!("spec:{arch}"), &mut loader)
    } else {
        let has_width = recognise::default_width(&arch).is_some();
        let width = width.or_else(|| {
            let stored = meta_usize(meta, "width").or(recognised_width);
            stored
                .or_else(|| recognise::width(&arch, &shapes))
                .filter(|_| has_width)
        });
        let input = match meta.get("input_shape") {
            Some(s) => parse_shape(s).ok_or_else(|| {
                Error::Model(format!("{}: metadata input_shape \"{s}\" is not C,H,W", source.display()))
            })?,
            None => recognise::input_shape(&arch, &shapes, input_shape_hint)
                .or_else(|| input_shape_hint.map(|h| arch::default_input_shape(&arch, h)))
                .ok_or_else(|| {
                    Error::Model(format!(
                        "{}: cannot tell the input shape of `{arch}`; give data so its image shape can be used",
                        source.display()
                    ))
                })?,
        };
        let classes = meta_usize(meta, "num_classes")
            .or_else(|| recognise::num_classes(&arch, &shapes))
            .or(num_classes_hint)
            .ok_or_else(|| {
                Error::Model(format!(
                    "{}: cannot tell the number of classes of `{arch}`",
                    source.display()
                ))
            })?;
        let w = width.or_else(|| recognise::default_width(&arch));
        what = format!(
            "`{arch}` (from {origin}{}, input {input:?}, {classes} classes)",
            w.map(|w| format!(", width {w}")).unwrap_or_default()
        );
        arch::build(&arch, width, input, classes, &mut loader)
    };
    match built {
        Ok(net) => match loader.problems(true) {
            None => Ok(net),
            Some(list) => Err(Error::Model(format!(
                "the weights in {} do not fit architecture {what}:\n{list}\n(choose another architecture with --arch/--width)",
                source.display()
            ))),
        },
        Err(e) => match loader.problems(false) {
            None => Err(e),
            Some(list) => Err(Error::Model(format!(
                "the weights in {} do not fit architecture {what}: {e}\n{list}",
                source.display()
            ))),
        },
    }
}

fn meta_usize(meta: &HashMap<String, String>, key: &str) -> Option<usize> {
    meta.get(key).and_then(|v| v.trim().parse().ok())
}

/// Parse "C,H,W".
pub fn parse_shape(s: &str) -> Option<[usize; 3]> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse().ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

/// A [`ParamSource`] serving tensors from loaded weights. Missing and mis-shaped tensors are recorded (and
/// zeros of the expected shape handed out so building can go on); [`LoadingParams::problems`] lists them all,
/// together with the weights no layer asked for.
pub struct LoadingParams<'a> {
    tensors: &'a HashMap<String, Tensor>,
    used: HashSet<String>,
    missing: Vec<(String, Vec<usize>)>,
    misshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl<'a> LoadingParams<'a> {
    /// Serve tensors from `tensors`.
    pub fn new(tensors: &'a HashMap<String, Tensor>) -> Self {
        Self {
            tensors,
            used: HashSet::new(),
            missing: vec![],
            misshaped: vec![],
        }
    }

    /// Weight names no layer asked for, sorted.
    pub fn unexpected(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .tensors
            .keys()
            .filter(|n| !self.used.contains(*n))
            .map(|s| s.as_str())
            .collect();
        v.sort();
        v
    }

    /// A description of every missing and mis-shaped tensor, and (with `unexpected`, once building is complete)
    /// of the weights no layer asked for; `None` if there is nothing to report.
    pub fn problems(&self, unexpected: bool) -> Option<String> {
        const SHOW: usize = 25;
        let mut out = Vec::new();
        let section = |title: &str, lines: Vec<String>, out: &mut Vec<String>| {
            if lines.is_empty() {
                return;
            }
            out.push(format!("  {title} ({}):", lines.len()));
            for l in lines.iter().take(SHOW) {
                out.push(format!("    {l}"));
            }
            if lines.len() > SHOW {
                out.push(format!("    ... and {} more", lines.len() - SHOW));
            }
        };
        let missing = self
            .missing
            .iter()
            .map(|(n, s)| format!("{n} {s:?}"))
            .collect();
        section("missing tensors (name, expected shape)", missing, &mut out);
        let shaped = self
            .misshaped
            .iter()
            .map(|(n, e, f)| format!("{n}: expected {e:?}, found {f:?}"))
            .collect();
        section("tensors with the wrong shape", shaped, &mut out);
        let unexpected = if !unexpected {
            vec![]
        } else {
            self.unexpected()
        };
        let unexpected = unexpected
            .iter()
            .map(|n| format!("{n} {:?}", self.tensors[*n].dims()))
            .collect();
        section("unexpected tensors (name, shape)", unexpected, &mut out);
        (!out.is_empty()).then(|| out.join("\n"))
    }
}

impl ParamSource for LoadingParams<'_> {
    fn tensor(&mut self, name: &str, shape: &[usize], _init: Init) -> Result<Tensor> {
        let Some(t) = self.tensors.get(name) else {
            self.missing.push((name.to_string(), shape.to_vec()));
            return Ok(Tensor::zeros(shape, DType::F32, &Device::Cpu)?);
        };
        self.used.insert(name.to_string());
        if t.dims() != shape {
            self.misshaped
                .push((name.to_string(), shape.to_vec(), t.dims().to_vec()));
            return Ok(Tensor::zeros(shape, DType::F32, &Device::Cpu)?);
        }
        Ok(t.clone())
    }
}
