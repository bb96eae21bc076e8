//! Reading a split's images as a stream and keeping only the pixels of the examples a run uses.
//!
//! A run on n examples of a 60,000-image split needs n images, not 60,000: the images file is decompressed
//! as it is read (never held whole, compressed or not), each image is hashed for the split's content
//! checksum and added to the per-channel sums (for directories without published statistics), and only the
//! kept examples' pixels are copied. The MD5 of known files is checked over the same stream. Labels (4 bytes
//! per example) are all kept.

use super::dataset::Normalization;
use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// Which examples' pixels to keep, chosen once the split's size is known: called with the number of
/// examples, it returns their indices (any order, duplicates allowed; indices past the end are an error).
pub type Keep<'a> = &'a mut dyn FnMut(usize) -> Result<Vec<usize>>;

/// What a streamed read gathers, image by image in dataset order.
pub(crate) struct Collector {
    /// Sorted, distinct indices of the examples kept.
    kept: Vec<usize>,
    /// Their pixels, in the order of `kept`.
    images: Vec<u8>,
    /// Position in `kept` of the next example to keep.
    next: usize,
    /// Bytes per image, and per channel plane.
    per: usize,
    plane: usize,
    /// sha256 of every image's raw bytes so far.
    content: Sha256,
    /// Per-channel sums of the [0, 1] pixels and of their squares.
    sum: Vec<f64>,
    sq: Vec<f64>,
    /// Images seen.
    seen: usize,
}

impl Collector {
    /// A collector of images of `shape` = `[C, H, W]` keeping the examples `keep` of a split of `len`.
    pub fn new(shape: [usize; 3], len: usize, mut keep: Vec<usize>, name: &str) -> Result<Self> {
        keep.sort_unstable();
        keep.dedup();
        if let Some(&i) = keep.last().filter(|&&i| i >= len) {
            return Err(Error::Data(format!(
                "example index {i} is out of range: {name} has {len} examples"
            )));
        }
        let per = shape.iter().product::<usize>();
        Ok(Self {
            images: Vec::with_capacity(keep.len() * per),
            kept: keep,
            next: 0,
            per,
            plane: shape[1] * shape[2],
            content: Sha256::new(),
            sum: vec![0.0; shape[0]],
            sq: vec![0.0; shape[0]],
            seen: 0,
        })
    }

    /// Bytes per image.
    pub fn per(&self) -> usize {
        self.per
    }

    /// The next image in dataset order (CHW bytes).
    pub fn push(&mut self, img: &[u8]) {
        self.content.update(img);
        for (ch, plane) in img.chunks(self.plane.max(1)).enumerate() {
            for &p in plane {
                let v = p as f64 / 255.0;
                self.sum[ch] += v;
                self.sq[ch] += v * v;
            }
        }
        if self.kept.get(self.next) == Some(&self.seen) {
            self.images.extend_from_slice(img);
            self.next += 1;
        }
        self.seen += 1;
    }

    /// The kept indices and pixels, the content sha256 (images, then `labels` as u32 little-endian) and the
    /// per-channel mean and standard deviation of the pixels (std 1 for constant channels).
    pub fn finish(self, labels: &[u32]) -> (Vec<usize>, Vec<u8>, String, Normalization) {
        let mut content = self.content;
        for l in labels {
            content.update(l.to_le_bytes());
        }
        let n = (self.seen * self.plane).max(1) as f64;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let std = self
            .sq
            .iter()
            .zip(&mean)
            .map(|(sq, m)| {
                let var = (sq / n - m * m).max(0.0);
                if var > 0.0 {
                    var.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        let sha = format!("{:x}", content.finalize());
        (self.kept, self.images, sha, Normalization { mean, std })
    }
}

/// A reader that hashes (MD5) what passes through it.
pub(crate) struct Md5Reader<R> {
    inner: R,
    digest: md5::Md5,
}

impl<R: Read> Md5Reader<R> {
    /// Hash everything read from `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            digest: md5::Md5::new(),
        }
    }

    /// Lower-case hex MD5 of the bytes read so far.
    pub fn hex(self) -> String {
        super::idx::hex(&self.digest.finalize())
    }
}

impl<R: Read> Read for Md5Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digest.update(&buf[..n]);
        Ok(n)
    }
}

/// `path` as a stream of its bytes, decompressed as it is read when it starts with the gzip magic bytes.
pub(crate) fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut magic = [0u8; 2];
    let got = read_full(&mut file, &mut magic).map_err(|e| Error::io("cannot read", path, e))?;
    let head = std::io::Cursor::new(magic[..got].to_vec());
    let raw = std::io::BufReader::new(head.chain(file));
    if got == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(raw)))
    } else {
        Ok(Box::new(raw))
    }
}

/// Read until `buf` is full or the stream ends; returns the bytes read.
pub(crate) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A read error of a (possibly gzipped) data file: a decompression failure names the file as corrupt.
pub(crate) fn stream_error(path: &Path, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => Error::Data(format!(
            "cannot decompress {}: {e} (the gzip file is truncated or corrupt; fetch it again)",
            path.display()
        )),
        _ => Error::io("cannot read", path, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collector_keeps_only_the_chosen_examples_and_hashes_all() {
        let shape = [1, 1, 2];
        let mut c = Collector::new(shape, 4, vec![2, 0, 2], "t").unwrap();
        for i in 0..4u8 {
            c.push(&[i, 10 * i]);
        }
        let (kept, images, sha, norm) = c.finish(&[1, 2, 3, 4]);
        assert_eq!(kept, vec![0, 2]);
        assert_eq!(images, vec![0, 0, 2, 20]);
        let mut h = Sha256::new();
        h.update([0u8, 0, 1, 10, 2, 20, 3, 30]);
        for l in [1u32, 2, 3, 4] {
            h.update(l.to_le_bytes());
        }
        assert_eq!(sha, format!("{:x}", h.finalize()));
        // Mean of the 8 pixels (0+0+1+10+2+20+3+30 = 66) / 255.
        let mean = 66.0 / 8.0 / 255.0;
        assert!((norm.mean[0] - mean).abs() < 1e-15);
        assert!(Collector::new(shape, 4, vec![4], "t").is_err());
    }
}
