//! Reading one split into a [`Dataset`]: from a known dataset's directory, or from any directory given as
//! `--data DIR` (format detected from the files present).

use super::dataset::{Dataset, Normalization};
use super::resolve::{self, Format, Known, Located};
use super::stream::Keep;
use super::{cifar, idx, Split};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Reads `known`'s split from `dir` (which [`resolve::find`] or a download produced).
pub(crate) fn read_known(
    known: &Known,
    dir: &Path,
    split: Split,
    keep: Option<Keep>,
) -> Result<Dataset> {
    let files = match resolve::locate(known.format, dir, split) {
        Located::Found(f) => f,
        _ => {
            return Err(Error::Data(format!(
                "{} ({} split): {} is missing in {}",
                known.name,
                split.as_str(),
                resolve::expected_files(known.format, split),
                dir.display()
            )))
        }
    };
    let md5 = (known.name == "mnist").then_some(idx::MNIST_MD5);
    let norm = Normalization {
        mean: known.mean.to_vec(),
        std: known.std.to_vec(),
    };
    let mut ds = read_files(
        known.name,
        known.format,
        &files,
        split,
        Some(known.num_classes),
        norm,
        md5,
        keep,
    )?;
    ds.source = dir.to_path_buf();
    Ok(ds)
}

/// Reads a split from a directory given as `--data DIR`: CIFAR-10, CIFAR-100 or IDX, whichever is there.
/// A directory named like a known dataset (or its official folder) uses that dataset's class count and
/// normalisation; otherwise the classes are `max label + 1` for IDX and the normalisation is the
/// per-channel mean and standard deviation of the split's own pixels.
pub(crate) fn read_dir(dir: &Path, split: Split, mut keep: Option<Keep>) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(Error::Data(format!(
            "dataset directory {} does not exist (or is not a directory); known dataset names are {}",
            dir.display(),
            resolve::KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
        )));
    }
    let base = dir
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let named = match base.as_str() {
        "cifar-10-batches-bin" => resolve::known("cifar10"),
        "cifar-100-binary" => resolve::known("cifar100"),
        b => resolve::known(b),
    };
    let mut notes = Vec::new();
    for format in [Format::Cifar10, Format::Cifar100, Format::Idx] {
        match resolve::locate(format, dir, split) {
            Located::Found(files) => {
                let known = named.filter(|k| k.format == format);
                let name = known.map_or(base.clone(), |k| k.name.to_string());
                let mut ds = match known {
                    Some(k) => {
                        let norm = Normalization {
                            mean: k.mean.to_vec(),
                            std: k.std.to_vec(),
                        };
                        read_files(
                            &name,
                            format,
                            &files,
                            split,
                            Some(k.num_classes),
                            norm,
                            None,
                            keep.take(),
                        )?
                    }
                    None => {
                        let placeholder = Normalization {
                            mean: vec![0.0; 3],
                            std: vec![1.0; 3],
                        };
                        let kept = keep.is_some();
                        let mut ds = read_files(
                            &name,
                            format,
                            &files,
                            split,
                            None,
                            placeholder,
                            None,
                            keep.take(),
                        )?;
                        // A streamed read measured the statistics on the way (its dataset holds only the
                        // kept pixels).
                        if !kept {
                            ds.norm = own_statistics(&ds);
                        }
                        ds
                    }
                };
                ds.source = dir.to_path_buf();
                return Ok(ds);
            }
            Located::Incomplete(missing) => {
                notes.push(format!("incomplete: missing {}", missing.join(", ")))
            }
            Located::Absent => {}
        }
    }
    let expected: Vec<String> = [Format::Idx, Format::Cifar10, Format::Cifar100]
        .iter()
        .map(|&f| resolve::expected_files(f, split))
        .collect();
    Err(Error::Data(format!(
        "{} holds no {} split of a dataset{}; expected IDX files ({}), CIFAR-10 ({}) or CIFAR-100 ({})",
        dir.display(),
        split.as_str(),
        if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) },
        expected[0],
        expected[1],
        expected[2]
    )))
}

/// Reads the files of one split. `num_classes: None` means "infer" (max label + 1; 10/100 for CIFAR).
/// With `keep`, only the chosen examples' pixels are kept ([`read_files_kept`]).
#[allow(clippy::too_many_arguments)]
fn read_files(
    name: &str,
    format: Format,
    files: &[PathBuf],
    split: Split,
    num_classes: Option<usize>,
    norm: Normalization,
    md5: Option<&[(&str, &str)]>,
    keep: Option<Keep>,
) -> Result<Dataset> {
    if let Some(keep) = keep {
        return read_files_kept(name, format, files, split, num_classes, norm, md5, keep);
    }
    let (shape, images, labels, classes) = match format {
        Format::Idx => {
            let s = idx::read(&files[0], &files[1], split, md5)?;
            let inferred = s.labels.iter().max().map_or(1, |&m| m as usize + 1);
            let classes = num_classes.unwrap_or(inferred);
            if let Some((i, l)) = s
                .labels
                .iter()
                .enumerate()
                .find(|(_, &l)| l as usize >= classes)
            {
                return Err(Error::Data(format!(
                    "label out of range in {}: example {i} has label {l}, but {name} has {classes} classes",
                    files[1].display()
                )));
            }
            ([1, s.hw[0], s.hw[1]], s.images, s.labels, classes)
        }
        Format::Cifar10 | Format::Cifar100 => {
            let classes = num_classes.unwrap_or(if format == Format::Cifar10 { 10 } else { 100 });
            let (images, labels) = cifar::read(format, files, classes)?;
            ([3, 32, 32], images, labels, classes)
        }
    };
    let norm = if norm.mean.len() == shape[0] {
        norm
    } else {
        Normalization {
            mean: vec![0.0; shape[0]],
            std: vec![1.0; shape[0]],
        }
    };
    let mut ds = Dataset::new(name, shape, images, labels, classes, norm)?;
    ds.split = split;
    Ok(ds)
}

/// [`read_files`] streaming the images and keeping only the pixels of the examples `keep` chooses. Without
/// published statistics (`norm` of the wrong length, or a placeholder for a plain directory) the
/// normalisation is the split's own, measured over every image on the way.
#[allow(clippy::too_many_arguments)]
fn read_files_kept(
    name: &str,
    format: Format,
    files: &[PathBuf],
    split: Split,
    num_classes: Option<usize>,
    norm: Normalization,
    md5: Option<&[(&str, &str)]>,
    keep: Keep,
) -> Result<Dataset> {
    let (shape, labels, collector, classes) = match format {
        Format::Idx => {
            let (hw, labels, collector) = idx::read_kept(&files[0], &files[1], split, md5, keep)?;
            let inferred = labels.iter().max().map_or(1, |&m| m as usize + 1);
            let classes = num_classes.unwrap_or(inferred);
            if let Some((i, l)) = labels
                .iter()
                .enumerate()
                .find(|(_, &l)| l as usize >= classes)
            {
                return Err(Error::Data(format!(
                    "label out of range in {}: example {i} has label {l}, but {name} has {classes} classes",
                    files[1].display()
                )));
            }
            ([1, hw[0], hw[1]], labels, collector, classes)
        }
        Format::Cifar10 | Format::Cifar100 => {
            let classes = num_classes.unwrap_or(if format == Format::Cifar10 { 10 } else { 100 });
            let (labels, collector) = cifar::read_kept(format, files, classes, keep)?;
            ([3, 32, 32], labels, collector, classes)
        }
    };
    let (kept, images, sha, own) = collector.finish(&labels);
    // As `read_files` + `read_dir`: a plain directory (no class count given) gets its own statistics.
    let norm = match num_classes {
        None => own,
        Some(_) if norm.mean.len() == shape[0] => norm,
        Some(_) => Normalization {
            mean: vec![0.0; shape[0]],
            std: vec![1.0; shape[0]],
        },
    };
    let mut ds = Dataset::from_kept(name, shape, images, kept, labels, classes, norm, sha)?;
    ds.split = split;
    Ok(ds)
}

/// Per-channel mean and standard deviation of the [0, 1] pixels (f64 sums; std 1 for constant channels).
fn own_statistics(ds: &Dataset) -> Normalization {
    let [c, h, w] = ds.image_shape();
    let plane = h * w;
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    for img in (0..ds.len()).filter_map(|i| ds.raw_image(i)) {
        for ch in 0..c {
            for &p in &img[ch * plane..(ch + 1) * plane] {
                let v = p as f64 / 255.0;
                sum[ch] += v;
                sq[ch] += v * v;
            }
        }
    }
    let n = (ds.len() * plane).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = (0..c)
        .map(|ch| {
            let var = (sq[ch] / n - mean[ch] * mean[ch]).max(0.0);
            if var > 0.0 {
                var.sqrt()
            } else {
                1.0
            }
        })
        .collect();
    Normalization { mean, std }
}
