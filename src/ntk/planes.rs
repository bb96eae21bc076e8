//! A layer's activations or output gradients as the feature extraction reads them: `count` rows (examples,
//! or (example, seed) rows) of `channels` planes of `plane` values each, in either layout a pass produces.
//! The hand-written pass stores a batch channel-major, (C, count, H·W), because its convolutions run over the
//! whole batch; candle's tensors are example-major, (count, C, H·W). Reading both in place saves a re-layout
//! copy of every node's input and gradient per micro-batch. A flat vector (count, F) is one plane of F values
//! per row, the same bytes in either layout.

use crate::model::hand::Shape;
use faer::MatRef;

/// Row-by-channel planes over a borrowed buffer (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Planes<'a> {
    data: &'a [f64],
    channels: usize,
    plane: usize,
    count: usize,
    channel_major: bool,
}

impl<'a> Planes<'a> {
    /// `count` rows of `shape` stored channel-major, (C, count, H, W) or (count, F).
    pub fn channel_major(data: &'a [f64], shape: Shape, count: usize) -> Self {
        Self::new(data, shape, count, true)
    }

    /// `count` rows of `shape` stored example-major, (count, C, H, W) or (count, F).
    pub fn example_major(data: &'a [f64], shape: Shape, count: usize) -> Self {
        Self::new(data, shape, count, false)
    }

    fn new(data: &'a [f64], shape: Shape, count: usize, channel_major: bool) -> Self {
        let (channels, plane) = match shape {
            Shape::Map { c, h, w } => (c, h * w),
            Shape::Flat(f) => (1, f),
        };
        assert_eq!(
            data.len(),
            count * channels * plane,
            "{count} rows of {channels}×{plane} values"
        );
        Self {
            data,
            channels,
            plane,
            count,
            channel_major: channel_major && channels > 1,
        }
    }

    /// Rows held.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Channels per row.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Values per channel (H·W, or F for a flat vector).
    pub fn plane_len(&self) -> usize {
        self.plane
    }

    /// Values per row.
    pub fn row_len(&self) -> usize {
        self.channels * self.plane
    }

    /// The plane of channel `c` of row `row`.
    pub fn plane(&self, row: usize, c: usize) -> &'a [f64] {
        let at = if self.channel_major {
            c * self.count + row
        } else {
            row * self.channels + c
        };
        &self.data[at * self.plane..][..self.plane]
    }

    /// Row `row` as a C × plane matrix (rows `count·plane` apart when channel-major).
    pub fn matrix(&self, row: usize) -> MatRef<'a, f64> {
        let stride = if self.channel_major {
            self.count * self.plane
        } else {
            self.plane
        };
        let first = self.plane(row, 0);
        let end = (self.channels - 1) * stride + self.plane;
        let base = first.as_ptr() as usize - self.data.as_ptr() as usize;
        assert!(base / std::mem::size_of::<f64>() + end <= self.data.len());
        // SAFETY: the view's last element, (channels − 1)·stride + plane − 1 past `first`, was just checked
        // to lie inside `data`, which outlives the view; it is read-only.
        unsafe {
            MatRef::from_raw_parts(
                first.as_ptr(),
                self.channels,
                self.plane,
                stride as isize,
                1,
            )
        }
    }

    /// The contiguous example-major bytes of rows `rows`, when this layout has them (example-major, or a
    /// single channel).
    pub fn contiguous(&self, rows: std::ops::Range<usize>) -> Option<&'a [f64]> {
        (!self.channel_major)
            .then(|| &self.data[rows.start * self.row_len()..rows.end * self.row_len()])
    }

    /// Rows `rows` copied example-major into `out` (rows.len() × C × plane).
    pub fn copy_rows(&self, rows: std::ops::Range<usize>, out: &mut [f64]) {
        let len = self.row_len();
        for (i, row) in rows.enumerate() {
            for c in 0..self.channels {
                out[i * len + c * self.plane..][..self.plane].copy_from_slice(self.plane(row, c));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both layouts of the same values give the same planes, matrices and example-major copies.
    #[test]
    fn both_layouts_read_the_same_values() {
        let (count, c, h, w) = (3, 4, 2, 5);
        let hw = h * w;
        let value = |row: usize, ch: usize, i: usize| (row * 1000 + ch * 100 + i) as f64;
        let mut em = vec![0.0; count * c * hw];
        let mut cm = vec![0.0; count * c * hw];
        for row in 0..count {
            for ch in 0..c {
                for i in 0..hw {
                    em[(row * c + ch) * hw + i] = value(row, ch, i);
                    cm[(ch * count + row) * hw + i] = value(row, ch, i);
                }
            }
        }
        let shape = Shape::Map { c, h, w };
        let (a, b) = (
            Planes::example_major(&em, shape, count),
            Planes::channel_major(&cm, shape, count),
        );
        for row in 0..count {
            for ch in 0..c {
                let want: Vec<f64> = (0..hw).map(|i| value(row, ch, i)).collect();
                assert_eq!(a.plane(row, ch), &want[..]);
                assert_eq!(b.plane(row, ch), &want[..]);
                for (i, &v) in want.iter().enumerate() {
                    assert_eq!(a.matrix(row)[(ch, i)], v);
                    assert_eq!(b.matrix(row)[(ch, i)], v);
                }
            }
        }
        let mut copied = vec![0.0; 2 * c * hw];
        b.copy_rows(1..3, &mut copied);
        assert_eq!(copied, em[c * hw..]);
        assert_eq!(a.contiguous(1..3), Some(&em[c * hw..]));
        assert_eq!(b.contiguous(1..3), None);
    }
}
