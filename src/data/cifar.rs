//! CIFAR-10/100 binary reader. A record is the label byte(s) followed by 3072 pixel bytes in CHW order
//! (1024 red, 1024 green, 1024 blue, each row-major 32×32). CIFAR-10 has one label byte; CIFAR-100 has a
//! coarse and a fine label byte, and the fine label (0..100) is used.

use super::resolve::{Format, Located};
use super::Split;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Pixels per CIFAR image (3×32×32).
pub(crate) const PIXELS: usize = 3 * 32 * 32;

/// The folder the official archive unpacks into, and the files of `split`.
fn layout(format: Format, split: Split) -> (&'static str, Vec<String>) {
    match (format, split) {
        (Format::Cifar100, Split::Train) => ("cifar-100-binary", vec!["train.bin".into()]),
        (Format::Cifar100, Split::Test) => ("cifar-100-binary", vec!["test.bin".into()]),
        (_, Split::Train) => (
            "cifar-10-batches-bin",
            (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        ),
        (_, Split::Test) => ("cifar-10-batches-bin", vec!["test_batch.bin".into()]),
    }
}

/// Finds the split's files in `dir/<official folder>/` or directly in `dir`.
pub(crate) fn locate(format: Format, dir: &Path, split: Split) -> Located {
    let (folder, files) = layout(format, split);
    let mut incomplete = None;
    for base in [dir.join(folder), dir.to_path_buf()] {
        let paths: Vec<PathBuf> = files.iter().map(|f| base.join(f)).collect();
        let missing: Vec<String> = paths
            .iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if missing.is_empty() {
            return Located::Found(paths);
        }
        if missing.len() < paths.len() && incomplete.is_none() {
            incomplete = Some(missing);
        }
    }
    incomplete.map_or(Located::Absent, Located::Incomplete)
}

/// Images (`N·3072` bytes, CHW) and labels of a CIFAR split read from `files` in order.
pub(crate) fn read(
    format: Format,
    files: &[PathBuf],
    num_classes: usize,
) -> Result<(Vec<u8>, Vec<u32>)> {
    let label_bytes = if format == Format::Cifar100 { 2 } else { 1 };
    let record = label_bytes + PIXELS;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(Error::Data(format!(
                "{} is truncated or not a {} binary file: its size {} is not a positive multiple of the \
                 {record}-byte record ({label_bytes} label byte(s) + 3072 pixels)",
                path.display(),
                if label_bytes == 2 { "CIFAR-100" } else { "CIFAR-10" },
                bytes.len()
            )));
        }
        images.reserve(bytes.len() / record * PIXELS);
        for (i, rec) in bytes.chunks_exact(record).enumerate() {
            let label = rec[label_bytes - 1] as usize;
            let coarse_bad = label_bytes == 2 && rec[0] >= 20;
            if label >= num_classes || coarse_bad {
                return Err(Error::Data(format!(
                    "label out of range in {} record {i} (byte offset {}): label {label}{} but the dataset has \
                     {num_classes} classes; is this the right file (CIFAR-10 vs CIFAR-100)?",
                    path.display(),
                    i * record,
                    if coarse_bad { format!(", coarse label {} (>= 20)", rec[0]) } else { String::new() }
                )));
            }
            labels.push(label as u32);
            images.extend_from_slice(&rec[label_bytes..]);
        }
    }
    Ok((images, labels))
}

/// [`read`], keeping only the pixels of the examples `keep` chooses (see `stream`): the split's size comes
/// from the file sizes, then the records are streamed once. Returns the labels and the collector.
pub(crate) fn read_kept(
    format: Format,
    files: &[PathBuf],
    num_classes: usize,
    keep: super::stream::Keep,
) -> Result<(Vec<u32>, super::stream::Collector)> {
    use super::stream::{read_full, Collector};
    let label_bytes = if format == Format::Cifar100 { 2 } else { 1 };
    let record = label_bytes + PIXELS;
    let mut len = 0;
    for path in files {
        let size = std::fs::metadata(path)
            .map_err(|e| Error::io("cannot stat", path, e))?
            .len() as usize;
        if size == 0 || !size.is_multiple_of(record) {
            return Err(Error::Data(format!(
                "{} is truncated or not a {} binary file: its size {size} is not a positive multiple of the \
                 {record}-byte record ({label_bytes} label byte(s) + 3072 pixels)",
                path.display(),
                if label_bytes == 2 { "CIFAR-100" } else { "CIFAR-10" },
            )));
        }
        len += size / record;
    }
    let name = files
        .first()
        .map_or(String::new(), |p| p.display().to_string());
    let mut collector = Collector::new([3, 32, 32], len, keep(len)?, &name)?;
    let mut labels = Vec::with_capacity(len);
    let mut rec = vec![0u8; record];
    for path in files {
        let file = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
        let mut r = std::io::BufReader::new(file);
        for i in 0.. {
            let got = read_full(&mut r, &mut rec).map_err(|e| Error::io("cannot read", path, e))?;
            if got == 0 {
                break;
            }
            if got < record {
                return Err(Error::Data(format!(
                    "{} is truncated: it ends inside record {i}",
                    path.display()
                )));
            }
            let label = rec[label_bytes - 1] as usize;
            let coarse_bad = label_bytes == 2 && rec[0] >= 20;
            if label >= num_classes || coarse_bad {
                return Err(Error::Data(format!(
                    "label out of range in {} record {i} (byte offset {}): label {label}{} but the dataset has \
                     {num_classes} classes; is this the right file (CIFAR-10 vs CIFAR-100)?",
                    path.display(),
                    i * record,
                    if coarse_bad { format!(", coarse label {} (>= 20)", rec[0]) } else { String::new() }
                )));
            }
            if i % 4096 == 0 {
                crate::signals::check()?;
            }
            labels.push(label as u32);
            collector.push(&rec[label_bytes..]);
        }
    }
    Ok((labels, collector))
}
