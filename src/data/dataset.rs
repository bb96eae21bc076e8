//! [`Dataset`]: one split in memory (raw `u8` pixels, CHW per image, and `u32` labels) and the
//! test-time images of any subset.

use super::{transform, Split};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Per-channel normalisation `(x/255 − mean[c]) / std[c]`, evaluated in f64 with the constants exactly as
/// published (f64), then rounded once to the working precision.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    /// Mean of the [0, 1] pixels, one per native channel.
    pub mean: Vec<f64>,
    /// Standard deviation of the [0, 1] pixels, one per native channel (> 0).
    pub std: Vec<f64>,
}

/// One split of a dataset, held in memory.
#[derive(Debug, Clone)]
pub struct Dataset {
    name: String,
    pub(super) split: Split,
    pub(super) source: PathBuf,
    shape: [usize; 3],
    images: Vec<u8>,
    labels: Vec<u32>,
    num_classes: usize,
    pub(super) norm: Normalization,
    /// Sorted indices of the examples whose pixels `images` holds (`None`: every example's, in order): a
    /// run reads only the examples it uses (see `stream`).
    kept: Option<Vec<usize>>,
    /// sha256 of the split's content, when measured while reading (see `report::provenance`).
    content_sha256: Option<String>,
}

impl Dataset {
    /// A dataset from raw parts: `images` holds `labels.len()` images of `shape` = `[C, H, W]`, CHW order.
    pub fn new(
        name: impl Into<String>,
        shape: [usize; 3],
        images: Vec<u8>,
        labels: Vec<u32>,
        num_classes: usize,
        norm: Normalization,
    ) -> Result<Self> {
        let name = name.into();
        let per = shape.iter().product::<usize>();
        if per == 0 || images.len() != per * labels.len() {
            return Err(Error::Data(format!(
                "{name}: {} pixel bytes do not make {} images of shape {shape:?}",
                images.len(),
                labels.len()
            )));
        }
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= num_classes)
        {
            return Err(Error::Data(format!(
                "{name}: label out of range: example {i} has label {l}, but there are {num_classes} classes"
            )));
        }
        let ok_std = norm.std.iter().all(|s| s.is_finite() && *s > 0.0);
        if norm.mean.len() != shape[0] || norm.std.len() != shape[0] || !ok_std {
            return Err(Error::Data(format!(
                "{name}: normalisation {norm:?} does not fit {} channel(s) (need one finite mean and one \
                 positive std per channel)",
                shape[0]
            )));
        }
        Ok(Dataset {
            name,
            split: Split::Train,
            source: PathBuf::new(),
            shape,
            images,
            labels,
            num_classes,
            norm,
            kept: None,
            content_sha256: None,
        })
    }

    /// A dataset holding the pixels of the examples `kept` (sorted, distinct) only, with every label and
    /// the split's content sha256 measured while reading.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn from_kept(
        name: &str,
        shape: [usize; 3],
        images: Vec<u8>,
        kept: Vec<usize>,
        labels: Vec<u32>,
        num_classes: usize,
        norm: Normalization,
        content_sha256: String,
    ) -> Result<Self> {
        let per = shape.iter().product::<usize>();
        // Validate with a placeholder of the full size, then hold the kept pixels only.
        let mut ds = Dataset::new(name, shape, Vec::new(), Vec::new(), num_classes, norm)?;
        if images.len() != per * kept.len() || kept.last().is_some_and(|&i| i >= labels.len()) {
            return Err(Error::Internal(format!(
                "{name}: {} pixel bytes for {} kept examples of shape {shape:?}",
                images.len(),
                kept.len()
            )));
        }
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= num_classes)
        {
            return Err(Error::Data(format!(
                "{name}: label out of range: example {i} has label {l}, but there are {num_classes} classes"
            )));
        }
        ds.images = images;
        ds.labels = labels;
        ds.kept = Some(kept);
        ds.content_sha256 = Some(content_sha256);
        Ok(ds)
    }

    /// sha256 of the split's content when it was measured while reading (a dataset read for a run).
    pub fn content_sha256(&self) -> Option<&str> {
        self.content_sha256.as_deref()
    }

    /// Whether the pixels of example `i` are in memory (every example's, unless the dataset was read for
    /// a run that uses only some).
    pub fn holds(&self, i: usize) -> bool {
        match &self.kept {
            None => i < self.len(),
            Some(k) => k.binary_search(&i).is_ok(),
        }
    }

    /// Bytes this dataset holds in memory: pixels, labels and the kept index.
    pub fn resident_bytes(&self) -> u64 {
        let kept = self.kept.as_ref().map_or(0, Vec::capacity);
        (self.images.capacity() + 4 * self.labels.capacity() + 8 * kept) as u64
    }

    /// Dataset name (`mnist`, …, or the directory's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which split this is.
    pub fn split(&self) -> Split {
        self.split
    }

    /// The directory the data was read from (empty for [`Dataset::new`]).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Native image shape `[C, H, W]`.
    pub fn image_shape(&self) -> [usize; 3] {
        self.shape
    }

    /// All labels, in dataset order.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The normalisation the test-time transform applies.
    pub fn normalization(&self) -> &Normalization {
        &self.norm
    }

    /// Raw pixels of example `i` (CHW, `u8`), or `None` past the end.
    pub fn raw_image(&self, i: usize) -> Option<&[u8]> {
        let per = self.shape.iter().product::<usize>();
        let slot = match &self.kept {
            None => i,
            Some(k) => k.binary_search(&i).ok()?,
        };
        self.images.get(slot * per..(slot + 1) * per)
    }

    /// The examples at `indices` as a new dataset (same name, classes and normalisation).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        self.check_indices(indices)?;
        let mut images = Vec::with_capacity(indices.len() * self.shape.iter().product::<usize>());
        for &i in indices {
            images.extend_from_slice(self.raw_image(i).unwrap_or_default());
        }
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Dataset {
            images,
            labels,
            ..self.without_data()
        })
    }

    /// Test-time transformed images for `indices`: an `f32` tensor `(N, C, H, W)` with `[C, H, W]` =
    /// `input_shape`, normalised per channel. `input_shape` may differ from the native shape in size
    /// (bilinear resize, half-pixel centres) and, for 1-channel data, have 3 channels (replicated).
    pub fn images(&self, indices: &[usize], input_shape: [usize; 3]) -> Result<Tensor> {
        self.images_as(indices, input_shape, |v| v as f32)
    }

    /// [`Dataset::images`] as an `f64` tensor: resized and normalised in f64 and never rounded to f32, for
    /// f64 kernels.
    pub fn images_f64(&self, indices: &[usize], input_shape: [usize; 3]) -> Result<Tensor> {
        self.images_as(indices, input_shape, |v| v)
    }

    /// The test-time images with every f64 value converted by `round` to the tensor's element type.
    fn images_as<T: candle_core::WithDType + Default + Send>(
        &self,
        indices: &[usize],
        input_shape: [usize; 3],
        round: fn(f64) -> T,
    ) -> Result<Tensor> {
        self.check_indices(indices)?;
        self.check_input_shape(input_shape)?;
        let per_out = input_shape.iter().product::<usize>();
        let resize = transform::Resize::new(self.shape, input_shape);
        let mut out = vec![T::default(); indices.len() * per_out];
        out.par_chunks_mut(per_out.max(1))
            .zip(indices.par_iter())
            .for_each(|(dst, &i)| {
                let src = self.raw_image(i).unwrap_or_default();
                resize.apply_with(src, &self.norm, dst, round);
            });
        let [c, h, w] = input_shape;
        Ok(Tensor::from_vec(
            out,
            (indices.len(), c, h, w),
            &Device::Cpu,
        )?)
    }

    /// Training images for `indices`: [`Dataset::images`], then a random 4-pixel-padded crop and a random
    /// horizontal flip per image, padding with black (the normalised value of a 0 pixel), like
    /// torchvision's `RandomCrop(32, padding=4)` + `RandomHorizontalFlip()` before `Normalize`.
    pub fn augmented_images(
        &self,
        indices: &[usize],
        input_shape: [usize; 3],
        rng: &mut impl rand::Rng,
    ) -> Result<Tensor> {
        let clean = self.images(indices, input_shape)?;
        let fill: Vec<f32> = (0..input_shape[0])
            .map(|c| {
                let src = if input_shape[0] == self.shape[0] {
                    c
                } else {
                    0
                };
                (-self.norm.mean[src] / self.norm.std[src]) as f32
            })
            .collect();
        transform::augment_crop_flip_fill(&clean, &fill, rng)
    }

    fn check_indices(&self, indices: &[usize]) -> Result<()> {
        if let Some(i) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Data(format!(
                "example index {i} is out of range: {} ({} split) has {} examples",
                self.name,
                self.split.as_str(),
                self.len()
            )));
        }
        match indices.iter().find(|&&i| !self.holds(i)) {
            Some(i) => Err(Error::Internal(format!(
                "example {i} of {} was not read: the split was read for a run that uses other examples",
                self.name
            ))),
            None => Ok(()),
        }
    }

    fn check_input_shape(&self, s: [usize; 3]) -> Result<()> {
        let channels_ok = s[0] == self.shape[0] || (self.shape[0] == 1 && s[0] == 3);
        if !channels_ok || s[1] == 0 || s[2] == 0 {
            return Err(Error::Data(format!(
                "{} has images of shape {:?}; cannot feed them to a network expecting {s:?} (channels must \
                 match, or be 3 for 1-channel data; height and width are resized)",
                self.name, self.shape
            )));
        }
        Ok(())
    }

    fn without_data(&self) -> Dataset {
        Dataset {
            name: self.name.clone(),
            split: self.split,
            source: self.source.clone(),
            shape: self.shape,
            images: Vec::new(),
            labels: Vec::new(),
            num_classes: self.num_classes,
            norm: self.norm.clone(),
            kept: None,
            content_sha256: None,
        }
    }
}
