//! Contiguous column-major tile buffers whose bytes are accounted in a [`Ledger`], so that MEMDET can report
//! (and tests can bound) its peak resident memory.

use crate::{Error, Result};
use faer::{MatMut, MatRef};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Current and peak bytes held in tile buffers.
#[derive(Debug, Default)]
pub struct Ledger {
    current: AtomicU64,
    peak: AtomicU64,
}

impl Ledger {
    /// Record `bytes` more in use.
    pub fn add(&self, bytes: u64) {
        let now = self.current.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    /// Record `bytes` released.
    pub fn sub(&self, bytes: u64) {
        self.current.fetch_sub(bytes, Ordering::SeqCst);
    }

    /// Largest number of bytes in use at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
}

/// Alignment of a tile's first value, in f64s: 64 bytes, one cache line and one AVX-512 register, as faer
/// aligns its own matrices (a large `Vec` from the allocator starts 16 bytes into a page). Transparent huge
/// pages were tried for tiles and rejected: with power-of-two column strides they made faer's Cholesky of
/// a 4096² tile about 1.6× slower here (physically contiguous columns collide in the cache sets).
const ALIGN: usize = 8;

/// A rows × cols f64 matrix in one contiguous, cache-line-aligned column-major allocation of fixed capacity.
#[derive(Debug)]
pub struct Tile {
    rows: usize,
    cols: usize,
    /// Backing store: `capacity + ALIGN` values, of which `[offset, offset + rows·cols)` is the matrix.
    buf: Vec<f64>,
    offset: usize,
    capacity: usize,
    bytes: u64,
    ledger: Arc<Ledger>,
}

impl Tile {
    /// A zeroed rows × cols tile with room for `capacity` values (≥ rows·cols).
    pub fn with_capacity(rows: usize, cols: usize, capacity: usize, ledger: &Arc<Ledger>) -> Self {
        let capacity = capacity.max(rows * cols);
        let bytes = 8 * capacity as u64;
        ledger.add(bytes);
        let buf = vec![0.0; capacity + ALIGN];
        let offset = buf.as_ptr().align_offset(8 * ALIGN).min(ALIGN);
        Self {
            rows,
            cols,
            buf,
            offset,
            capacity,
            bytes,
            ledger: Arc::clone(ledger),
        }
    }

    /// A zeroed rows × cols tile.
    pub fn new(rows: usize, cols: usize, ledger: &Arc<Ledger>) -> Self {
        Self::with_capacity(rows, cols, rows * cols, ledger)
    }

    /// Change the shape (contents unspecified); fails if the capacity is too small.
    pub fn reshape(&mut self, rows: usize, cols: usize) -> Result<()> {
        let n = rows * cols;
        if n > self.capacity {
            return Err(Error::Internal(format!(
                "tile buffer too small for {rows}x{cols}"
            )));
        }
        self.rows = rows;
        self.cols = cols;
        Ok(())
    }

    /// Number of rows.
    pub fn nrows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn ncols(&self) -> usize {
        self.cols
    }

    /// The values, column-major.
    pub fn data(&self) -> &[f64] {
        &self.buf[self.offset..self.offset + self.rows * self.cols]
    }

    /// The values, column-major, mutable.
    pub fn data_mut(&mut self) -> &mut [f64] {
        let len = self.rows * self.cols;
        &mut self.buf[self.offset..self.offset + len]
    }

    /// A faer view.
    pub fn mat(&self) -> MatRef<'_, f64> {
        MatRef::from_column_major_slice(self.data(), self.rows, self.cols)
    }

    /// A mutable faer view.
    pub fn mat_mut(&mut self) -> MatMut<'_, f64> {
        let (rows, cols) = (self.rows, self.cols);
        MatMut::from_column_major_slice_mut(self.data_mut(), rows, cols)
    }
}

impl Drop for Tile {
    fn drop(&mut self) {
        self.ledger.sub(self.bytes);
    }
}
