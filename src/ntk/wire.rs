//! [`Features`] as one flat `f64` buffer and back, so that a block of features computed by one process can
//! be sent to another (the distributed formation shares features between MPI ranks instead of computing
//! them twice). Sizes travel as `f64` too: exact for every count below 2^53.
//!
//! Layout: `[n, rows, explicit_cols, explicit.len(), dense layers, spatial layers]`, then per dense layer `[in_dim,
//! out_dim, inputs.len(), grads.len()]` and per spatial layer `[positions, patch_len, c_out, patches.len(),
//! grads.len()]`, then the values: `explicit`, each dense layer's `inputs` and `grads`, each spatial
//! layer's `patches` and `grads`, in that order.

use crate::ntk::features::{DenseFactors, Features, SpatialFactors};
use crate::{Error, Result};

/// `features` packed into one buffer (see the module docs for the layout).
pub fn pack(features: &Features) -> Vec<f64> {
    let mut out = header(features);
    out.reserve(features.bytes() / 8);
    for v in values(features) {
        out.extend_from_slice(v);
    }
    out
}

/// The header of [`pack`]'s layout alone: the counts that size every array.
pub fn header(features: &Features) -> Vec<f64> {
    let f = features;
    let mut head = vec![
        f.n as f64,
        f.rows as f64,
        f.explicit_cols as f64,
        f.explicit.len() as f64,
        f.dense.len() as f64,
        f.spatial.len() as f64,
    ];
    for d in &f.dense {
        head.extend([d.in_dim, d.out_dim, d.inputs.len(), d.grads.len()].map(|v| v as f64));
    }
    for s in &f.spatial {
        head.extend(
            [
                s.positions,
                s.patch_len,
                s.c_out,
                s.patches.len(),
                s.grads.len(),
            ]
            .map(|v| v as f64),
        );
    }
    head
}

/// The features that [`pack`] wrote into `buf`; an error (never a panic) when `buf` is not such a buffer.
pub fn unpack(buf: &[f64]) -> Result<Features> {
    let mut at = 0;
    let (features, header) = build(buf, |header, len| {
        let start = header + at;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= buf.len())
            .ok_or_else(|| malformed(format!("{len} values asked at {start} of {}", buf.len())))?;
        at += len;
        Ok(buf[start..end].to_vec())
    })?;
    let used = header + at;
    if used != buf.len() {
        return Err(malformed(format!(
            "{} values left over after {used}",
            buf.len().saturating_sub(used)
        )));
    }
    Ok(features)
}

/// Features sized by `header` (from [`header`]) with every value zero, ready to be filled array by array
/// through [`values_mut`] in [`values`]' order.
pub fn from_header(header: &[f64]) -> Result<Features> {
    let (features, used) = build(header, |_, len| Ok(vec![0.0; len]))?;
    if used != header.len() {
        return Err(malformed(format!(
            "a header of {used} values has {} more",
            header.len() - used
        )));
    }
    Ok(features)
}

/// Features from the header at the front of `buf`, each value array from `take(header length, len)` in
/// [`values`]' order; also returns the header's length.
fn build(
    buf: &[f64],
    mut take: impl FnMut(usize, usize) -> Result<Vec<f64>>,
) -> Result<(Features, usize)> {
    let mut reader = Reader { buf, at: 0 };
    let (n, rows, explicit_cols) = (reader.count()?, reader.count()?, reader.count()?);
    let explicit_len = reader.count()?;
    let (dense_layers, spatial_layers) = (reader.count()?, reader.count()?);
    let mut dense_sizes = Vec::new();
    for _ in 0..dense_layers {
        dense_sizes.push([
            reader.count()?,
            reader.count()?,
            reader.count()?,
            reader.count()?,
        ]);
    }
    let mut spatial_sizes = Vec::new();
    for _ in 0..spatial_layers {
        spatial_sizes.push([
            reader.count()?,
            reader.count()?,
            reader.count()?,
            reader.count()?,
            reader.count()?,
        ]);
    }
    let header = reader.at;
    let mut take = |len| take(header, len);
    let explicit = take(explicit_len)?;
    let mut dense = Vec::with_capacity(dense_layers);
    for [in_dim, out_dim, inputs, grads] in dense_sizes {
        dense.push(DenseFactors {
            in_dim,
            out_dim,
            inputs: take(inputs)?,
            grads: take(grads)?,
        });
    }
    let mut spatial = Vec::with_capacity(spatial_layers);
    for [positions, patch_len, c_out, patches, grads] in spatial_sizes {
        spatial.push(SpatialFactors {
            positions,
            patch_len,
            c_out,
            patches: take(patches)?,
            grads: take(grads)?,
        });
    }
    let features = Features {
        n,
        rows,
        explicit_cols,
        explicit,
        dense,
        spatial,
    };
    Ok((features, header))
}

/// The value arrays of `features`, in the order [`pack`] writes them (after the header): for sending them
/// as they are, without the copy that packing makes.
pub fn values(features: &Features) -> Vec<&[f64]> {
    let mut out: Vec<&[f64]> = vec![&features.explicit];
    for d in &features.dense {
        out.extend([&d.inputs[..], &d.grads[..]]);
    }
    for s in &features.spatial {
        out.extend([&s.patches[..], &s.grads[..]]);
    }
    out
}

/// The value arrays of `features`, writable, in [`values`]' order.
pub fn values_mut(features: &mut Features) -> Vec<&mut [f64]> {
    let mut out: Vec<&mut [f64]> = vec![&mut features.explicit];
    for d in &mut features.dense {
        out.push(&mut d.inputs);
        out.push(&mut d.grads);
    }
    for s in &mut features.spatial {
        out.push(&mut s.patches);
        out.push(&mut s.grads);
    }
    out
}

/// Reads counts and values off the front of a packed buffer.
struct Reader<'a> {
    buf: &'a [f64],
    at: usize,
}

impl Reader<'_> {
    /// The next value as a count (a non-negative integer below 2^53).
    fn count(&mut self) -> Result<usize> {
        let v = *self
            .buf
            .get(self.at)
            .ok_or_else(|| malformed(format!("ends at {} inside the header", self.at)))?;
        if !(0.0..9.0e15).contains(&v) || v.fract() != 0.0 {
            return Err(malformed(format!("{v} at {} is not a count", self.at)));
        }
        self.at += 1;
        Ok(v as usize)
    }
}

fn malformed(what: String) -> Error {
    Error::Internal(format!("packed NTK features are malformed: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Features {
        let ramp = |len: usize, from: f64| (0..len).map(|i| from + i as f64 * 0.5).collect();
        Features {
            n: 2,
            rows: 3,
            explicit_cols: 4,
            explicit: ramp(24, 1.0),
            dense: vec![DenseFactors {
                in_dim: 5,
                out_dim: 2,
                inputs: ramp(10, -3.0),
                grads: ramp(12, 7.0),
            }],
            spatial: vec![
                SpatialFactors {
                    positions: 4,
                    patch_len: 3,
                    c_out: 2,
                    patches: ramp(24, 0.25),
                    grads: ramp(48, -1.0),
                },
                SpatialFactors::default(),
            ],
        }
    }

    fn same(a: &Features, b: &Features) -> bool {
        let dense = |f: &Features| {
            f.dense
                .iter()
                .map(|d| (d.in_dim, d.out_dim, d.inputs.clone(), d.grads.clone()))
                .collect::<Vec<_>>()
        };
        let spatial = |f: &Features| {
            f.spatial
                .iter()
                .map(|s| {
                    let sizes = (s.positions, s.patch_len, s.c_out);
                    (sizes, s.patches.clone(), s.grads.clone())
                })
                .collect::<Vec<_>>()
        };
        (a.n, a.rows, a.explicit_cols, &a.explicit) == (b.n, b.rows, b.explicit_cols, &b.explicit)
            && dense(a) == dense(b)
            && spatial(a) == spatial(b)
    }

    #[test]
    fn pack_then_unpack_is_the_identity() {
        let f = sample();
        let buf = pack(&f);
        assert_eq!(buf.len(), 6 + 4 + 2 * 5 + f.bytes() / 8);
        assert!(same(&unpack(&buf).unwrap(), &f));
    }

    #[test]
    fn header_then_values_rebuild_the_features() {
        let f = sample();
        let mut g = from_header(&header(&f)).unwrap();
        for (dst, src) in values_mut(&mut g).into_iter().zip(values(&f)) {
            dst.copy_from_slice(src);
        }
        assert!(same(&g, &f));
        assert!(from_header(&header(&f)[..4]).is_err());
    }

    #[test]
    fn truncated_or_padded_buffers_are_errors() {
        let buf = pack(&sample());
        assert!(unpack(&buf[..buf.len() - 1]).is_err());
        assert!(unpack(&buf[..3]).is_err());
        assert!(unpack(&[buf.clone(), vec![0.0]].concat()).is_err());
        let mut bad = buf;
        bad[0] = 1.5;
        assert!(unpack(&bad).is_err());
    }
}
