//! IDX reader (MNIST, Fashion-MNIST): `u8` images `N×H×W` (magic 0x00000803) and `u8` labels `N`
//! (magic 0x00000801), big-endian dimensions, plain or gzipped (detected by the gzip magic bytes).

use super::resolve::Located;
use super::Split;
use crate::{Error, Result};
use md5::{Digest, Md5};
use std::io::Read;
use std::path::{Path, PathBuf};

/// MD5 of the *uncompressed* official MNIST files (as published with the dataset; also what the
/// shipped `datasets/mnist/*.gz` decompress to).
pub const MNIST_MD5: &[(&str, &str)] = &[
    ("train-images", "6bbc9ace898e44ae57da46a324031adb"),
    ("train-labels", "a25bea736e30d166cdddb491f175f624"),
    ("t10k-images", "2646ac647ad5339dbf082846283269ea"),
    ("t10k-labels", "27ae3e4e09519cfbb04c329615203637"),
];

/// The file-name prefix of a split (`train` / `t10k`).
fn prefix(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "t10k",
    }
}

/// The first existing spelling of `{prefix}-{kind}-idx{d}-ubyte` (also `.idx{d}-ubyte`, with or without `.gz`).
fn first_existing(dir: &Path, split: Split, kind: &str, ndims: u8) -> Option<PathBuf> {
    let p = prefix(split);
    let stems = [
        format!("{p}-{kind}-idx{ndims}-ubyte"),
        format!("{p}-{kind}.idx{ndims}-ubyte"),
    ];
    stems
        .iter()
        .flat_map(|s| [format!("{s}.gz"), s.clone()])
        .map(|f| dir.join(f))
        .find(|f| f.is_file())
}

/// Finds the images and labels files of `split` in `dir`.
pub(crate) fn locate(dir: &Path, split: Split) -> Located {
    let p = prefix(split);
    match (
        first_existing(dir, split, "images", 3),
        first_existing(dir, split, "labels", 1),
    ) {
        (Some(i), Some(l)) => Located::Found(vec![i, l]),
        (None, None) => Located::Absent,
        (Some(_), None) => Located::Incomplete(vec![format!("{p}-labels-idx1-ubyte[.gz]")]),
        (None, Some(_)) => Located::Incomplete(vec![format!("{p}-images-idx3-ubyte[.gz]")]),
    }
}

/// The whole file, decompressed if it starts with the gzip magic bytes.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len() * 5);
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::Data(format!(
                "cannot decompress {}: {e} (the gzip file is truncated or corrupt; fetch it again)",
                path.display()
            ))
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Lower-case hex MD5 of `bytes`.
pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

/// Lower-case hex of a digest.
pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses an IDX `u8` array with `ndims` dimensions: returns the dimensions and the data bytes.
pub(crate) fn parse<'a>(bytes: &'a [u8], ndims: u8, path: &Path) -> Result<(Vec<usize>, &'a [u8])> {
    let what = if ndims == 1 { "labels" } else { "images" };
    let expected_magic = 0x0800u32 | ndims as u32;
    if bytes.len() < 4 {
        return Err(Error::Data(format!(
            "{} is truncated: {} bytes, shorter than the 4-byte IDX header",
            path.display(),
            bytes.len()
        )));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != expected_magic {
        return Err(Error::Data(format!(
            "wrong magic number 0x{magic:08x} in {}: expected 0x{expected_magic:08x} (IDX u8 {what} with {ndims} \
             dimension(s)); is this the right file?",
            path.display()
        )));
    }
    let header = 4 + 4 * ndims as usize;
    if bytes.len() < header {
        return Err(Error::Data(format!(
            "{} is truncated inside its IDX header",
            path.display()
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let want = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let have = bytes.len() - header;
    match want {
        Some(w) if w == have => Ok((dims, &bytes[header..])),
        Some(w) if w > have => Err(Error::Data(format!(
            "{} is truncated: its header says {dims:?} = {w} bytes of {what}, the file holds {have}",
            path.display()
        ))),
        Some(w) => Err(Error::Data(format!(
            "{} has {} unexpected bytes after the {w} bytes its header {dims:?} announces",
            path.display(),
            have - w
        ))),
        None => Err(Error::Data(format!("{} has impossible dimensions {dims:?}", path.display()))),
    }
}

/// Images and labels of one IDX split.
pub(crate) struct IdxSplit {
    /// Image height and width.
    pub hw: [usize; 2],
    /// `N·H·W` pixels.
    pub images: Vec<u8>,
    /// `N` labels.
    pub labels: Vec<u32>,
}

/// Reads an images file and a labels file; with `md5` (pairs of file key and hex digest, e.g. the
/// MNIST constants) the uncompressed content of each file must match its key's digest.
pub(crate) fn read(
    images: &Path,
    labels: &Path,
    split: Split,
    md5: Option<&[(&str, &str)]>,
) -> Result<IdxSplit> {
    let img_bytes = read_maybe_gz(images)?;
    let lab_bytes = read_maybe_gz(labels)?;
    if let Some(table) = md5 {
        for (kind, path, bytes) in [
            ("images", images, &img_bytes),
            ("labels", labels, &lab_bytes),
        ] {
            let key = format!("{}-{kind}", prefix(split));
            if let Some((_, want)) = table.iter().find(|(k, _)| *k == key) {
                let got = md5_hex(bytes);
                if got != *want {
                    return Err(Error::Data(format!(
                        "checksum mismatch for {}: MD5 of the uncompressed content is {got}, expected {want} \
                         (the official file); the file is corrupt or not the official one. Restore it (the \
                         shipped copy: git checkout datasets/) or fetch it again with --download",
                        path.display()
                    )));
                }
            }
        }
    }
    let (idims, ipix) = parse(&img_bytes, 3, images)?;
    let (ldims, lab) = parse(&lab_bytes, 1, labels)?;
    if idims[0] != ldims[0] {
        return Err(Error::Data(format!(
            "{} holds {} images but {} holds {} labels",
            images.display(),
            idims[0],
            labels.display(),
            ldims[0]
        )));
    }
    Ok(IdxSplit {
        hw: [idims[1], idims[2]],
        images: ipix.to_vec(),
        labels: lab.iter().map(|&l| l as u32).collect(),
    })
}

/// The images file's MD5 must be `table`'s entry for `key` (when it has one).
fn check_md5(table: Option<&[(&str, &str)]>, key: &str, got: &str, path: &Path) -> Result<()> {
    let Some((_, want)) = table.and_then(|t| t.iter().find(|(k, _)| *k == key)) else {
        return Ok(());
    };
    if got == *want {
        return Ok(());
    }
    Err(Error::Data(format!(
        "checksum mismatch for {}: MD5 of the uncompressed content is {got}, expected {want} (the official \
         file); the file is corrupt or not the official one. Restore it (the shipped copy: git checkout \
         datasets/) or fetch it again with --download",
        path.display()
    )))
}

/// [`read`], keeping only the pixels of the examples `keep` chooses: the images file is decompressed as
/// it is streamed, image by image, into `stream::Collector` (which hashes every image and keeps the chosen
/// ones). Returns the image size, the labels and the collector.
pub(crate) fn read_kept(
    images: &Path,
    labels: &Path,
    split: Split,
    md5: Option<&[(&str, &str)]>,
    keep: super::stream::Keep,
) -> Result<([usize; 2], Vec<u32>, super::stream::Collector)> {
    use super::stream::{open_maybe_gz, read_full, stream_error, Collector, Md5Reader};
    let lab_bytes = read_maybe_gz(labels)?;
    let key = |kind: &str| format!("{}-{kind}", prefix(split));
    check_md5(md5, &key("labels"), &md5_hex(&lab_bytes), labels)?;
    let (ldims, lab) = parse(&lab_bytes, 1, labels)?;
    let labels_out: Vec<u32> = lab.iter().map(|&l| l as u32).collect();
    drop(lab_bytes);

    let mut r = Md5Reader::new(open_maybe_gz(images)?);
    let mut header = [0u8; 16];
    let got = read_full(&mut r, &mut header).map_err(|e| stream_error(images, e))?;
    // The header through `parse`'s checks (magic, truncation) when it is short or wrong; its dimensions.
    let magic =
        (got >= 4).then(|| u32::from_be_bytes([header[0], header[1], header[2], header[3]]));
    if got < 16 || magic != Some(0x803) {
        parse(&header[..got], 3, images)?;
    }
    let dims: Vec<usize> = header[4..]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    if dims[0] != ldims[0] {
        return Err(Error::Data(format!(
            "{} holds {} images but {} holds {} labels",
            images.display(),
            dims[0],
            labels.display(),
            ldims[0]
        )));
    }
    let (len, hw) = (dims[0], [dims[1], dims[2]]);
    let mut collector = Collector::new(
        [1, hw[0], hw[1]],
        len,
        keep(len)?,
        &images.display().to_string(),
    )?;
    let mut img = vec![0u8; collector.per()];
    for i in 0..len {
        let got = read_full(&mut r, &mut img).map_err(|e| stream_error(images, e))?;
        if got < img.len() {
            return Err(Error::Data(format!(
                "{} is truncated: its header says {dims:?} = {} bytes of images, the file ends inside image {i}",
                images.display(),
                len * img.len()
            )));
        }
        if i % 4096 == 0 {
            crate::signals::check()?;
        }
        collector.push(&img);
    }
    let mut extra = [0u8; 1];
    if read_full(&mut r, &mut extra).map_err(|e| stream_error(images, e))? > 0 {
        return Err(Error::Data(format!(
            "{} has unexpected bytes after the {} bytes of images its header {dims:?} announces",
            images.display(),
            len * img.len()
        )));
    }
    check_md5(md5, &key("images"), &r.hex(), images)?;
    Ok((hw, labels_out, collector))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_dims_and_data() {
        let b = idx(0x803, &[2, 1, 3], &[1, 2, 3, 4, 5, 6]);
        let (dims, data) = parse(&b, 3, Path::new("x")).unwrap();
        assert_eq!(dims, vec![2, 1, 3]);
        assert_eq!(data, &[1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn rejects_short_long_and_wrong_magic() {
        let p = Path::new("x");
        let short = parse(&idx(0x803, &[2, 1, 3], &[1, 2, 3]), 3, p)
            .unwrap_err()
            .to_string();
        assert!(short.contains("truncated"), "{short}");
        let long = parse(&idx(0x801, &[2], &[1, 2, 3]), 1, p)
            .unwrap_err()
            .to_string();
        assert!(long.contains("1 unexpected bytes"), "{long}");
        let magic = parse(&idx(0x801, &[2], &[1, 2]), 3, p)
            .unwrap_err()
            .to_string();
        assert!(magic.contains("wrong magic number 0x00000801"), "{magic}");
        let tiny = parse(&[0, 0], 1, p).unwrap_err().to_string();
        assert!(tiny.contains("truncated"), "{tiny}");
    }

    #[test]
    fn md5_of_known_string() {
        // RFC 1321 test suite.
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }
}
