//! Image transforms: the test-time transform (resize, channel replication, per-channel normalisation)
//! and the training augmentation (random 4-pixel-padded crop + horizontal flip).
//!
//! Resizing is bilinear with half-pixel centres, as torchvision/PyTorch `interpolate(mode="bilinear",
//! align_corners=False)`: output pixel `o` samples input coordinate `(o + 0.5)·in/out − 0.5`, clamped to
//! the image. For upsampling (28 → 32) this equals PIL's bilinear resize except that PIL rounds the
//! result to `u8`; we keep full precision (difference ≤ 0.5/255 before normalisation).

use super::dataset::Normalization;
use crate::{Error, Result};
use candle_core::{DType, Tensor};

/// One output coordinate: the two input neighbours and the weight of the second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tap {
    /// Lower neighbour.
    pub i0: usize,
    /// Upper neighbour (equal to `i0` at the last pixel).
    pub i1: usize,
    /// Weight of `i1`; `i0` gets `1 − w`.
    pub w: f64,
}

/// Bilinear taps mapping `inp` samples to `out` samples (half-pixel centres, clamped at the borders).
pub fn bilinear_taps(inp: usize, out: usize) -> Vec<Tap> {
    let scale = inp as f64 / out as f64;
    (0..out)
        .map(|o| {
            let x = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (x.floor() as usize).min(inp - 1);
            let i1 = (i0 + 1).min(inp - 1);
            Tap {
                i0,
                i1,
                w: if i1 == i0 { 0.0 } else { x - i0 as f64 },
            }
        })
        .collect()
}

/// The test-time transform from a native `[C, H, W]` image to a network input `[C', H', W']`.
#[derive(Debug, Clone)]
pub struct Resize {
    native: [usize; 3],
    target: [usize; 3],
    rows: Vec<Tap>,
    cols: Vec<Tap>,
}

impl Resize {
    /// Prepares the taps; `target` channels equal the native ones or are 3 for 1-channel images.
    pub fn new(native: [usize; 3], target: [usize; 3]) -> Self {
        Resize {
            native,
            target,
            rows: bilinear_taps(native[1], target[1]),
            cols: bilinear_taps(native[2], target[2]),
        }
    }

    /// Writes the transformed, normalised image `src` (CHW `u8`) into `dst` (`C'·H'·W'` values).
    pub fn apply(&self, src: &[u8], norm: &Normalization, dst: &mut [f32]) {
        self.apply_with(src, norm, dst, |v| v as f32);
    }

    /// [`Resize::apply`] into any element type: every value is computed in f64 (resize and normalisation)
    /// and converted once by `round` (`|v| v` keeps f64 exactly).
    pub fn apply_with<T>(
        &self,
        src: &[u8],
        norm: &Normalization,
        dst: &mut [T],
        round: fn(f64) -> T,
    ) {
        let [c, h, w] = self.native;
        let [tc, th, tw] = self.target;
        let same = h == th && w == tw;
        for oc in 0..tc {
            let ic = if tc == c { oc } else { 0 };
            let plane = &src[ic * h * w..(ic + 1) * h * w];
            let (mean, std) = (norm.mean[ic], norm.std[ic]);
            let out = &mut dst[oc * th * tw..(oc + 1) * th * tw];
            for (y, ry) in self.rows.iter().enumerate() {
                for (x, rx) in self.cols.iter().enumerate() {
                    let v = if same {
                        plane[y * w + x] as f64
                    } else {
                        let p = |r: usize, q: usize| plane[r * w + q] as f64;
                        let top = p(ry.i0, rx.i0) * (1.0 - rx.w) + p(ry.i0, rx.i1) * rx.w;
                        let bot = p(ry.i1, rx.i0) * (1.0 - rx.w) + p(ry.i1, rx.i1) * rx.w;
                        top * (1.0 - ry.w) + bot * ry.w
                    };
                    out[y * tw + x] = round((v / 255.0 - mean) / std);
                }
            }
        }
    }
}

/// Random crop (zero padding of 4 pixels on each side, crop back to H×W) and random horizontal flip
/// (probability ½) of every image in `images` `(N, C, H, W)`, drawn from `rng` (crop offsets, then the
/// flip, image by image). Pads with 0 in the tensor's value space: for normalised images that is the
/// channel mean; use [`augment_crop_flip_fill`] or `Dataset::augmented_images` to pad with black.
pub fn augment_crop_flip(images: &Tensor, rng: &mut impl rand::Rng) -> Result<Tensor> {
    let c = images.dims().get(1).copied().unwrap_or(0);
    augment_crop_flip_fill(images, &vec![0.0; c], rng)
}

/// [`augment_crop_flip`] with padding value `fill[c]` for channel `c`.
pub fn augment_crop_flip_fill(
    images: &Tensor,
    fill: &[f32],
    rng: &mut impl rand::Rng,
) -> Result<Tensor> {
    const PAD: usize = 4;
    let (n, c, h, w) = images.dims4().map_err(|_| {
        Error::Internal(format!(
            "augment_crop_flip needs an (N, C, H, W) tensor, got {:?}",
            images.dims()
        ))
    })?;
    if fill.len() != c {
        return Err(Error::Internal(format!(
            "augment_crop_flip: {} fill values for {c} channels",
            fill.len()
        )));
    }
    let data = images
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut out = vec![0f32; data.len()];
    let per = c * h * w;
    for (src, dst) in data
        .chunks_exact(per.max(1))
        .zip(out.chunks_exact_mut(per.max(1)))
    {
        let dy = rng.gen_range(0..=2 * PAD);
        let dx = rng.gen_range(0..=2 * PAD);
        let flip = rng.gen_bool(0.5);
        for ch in 0..c {
            for y in 0..h {
                // Row y of the crop is row y + dy of the padded image, i.e. source row y + dy − PAD.
                let sy = (y + dy).checked_sub(PAD).filter(|&r| r < h);
                for x in 0..w {
                    let cx = if flip { w - 1 - x } else { x };
                    let sx = (cx + dx).checked_sub(PAD).filter(|&q| q < w);
                    dst[(ch * h + y) * w + x] = match (sy, sx) {
                        (Some(r), Some(q)) => src[(ch * h + r) * w + q],
                        _ => fill[ch],
                    };
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, (n, c, h, w), images.device())?.to_dtype(images.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_identity_and_upsample_2x() {
        let id = bilinear_taps(5, 5);
        assert!(id.iter().enumerate().all(|(i, t)| t.i0 == i && t.w == 0.0));
        // 2 -> 4: source coordinates -0.25 (clamped 0), 0.25, 0.75, 1.25 (clamped to pixel 1).
        let t = bilinear_taps(2, 4);
        assert_eq!(
            t[0],
            Tap {
                i0: 0,
                i1: 1,
                w: 0.0
            }
        );
        assert_eq!(
            t[1],
            Tap {
                i0: 0,
                i1: 1,
                w: 0.25
            }
        );
        assert_eq!(
            t[2],
            Tap {
                i0: 0,
                i1: 1,
                w: 0.75
            }
        );
        assert_eq!(
            t[3],
            Tap {
                i0: 1,
                i1: 1,
                w: 0.0
            }
        );
    }
}
