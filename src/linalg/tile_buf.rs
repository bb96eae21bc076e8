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

/// A rows × cols f64 matrix in one contiguous column-major allocation of fixed capacity.
#[derive(Debug)]
pub struct Tile {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
    bytes: u64,
    ledger: Arc<Ledger>,
}

impl Tile {
    /// A zeroed rows × cols tile with room for `capacity` values (≥ rows·cols).
    pub fn with_capacity(rows: usize, cols: usize, capacity: usize, ledger: &Arc<Ledger>) -> Self {
        let capacity = capacity.max(rows * cols);
        let bytes = 8 * capacity as u64;
        ledger.add(bytes);
        let mut data = vec![0.0; capacity];
        data.truncate(rows * cols);
        Self {
            rows,
            cols,
            data,
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
        if n > self.data.capacity() {
            return Err(Error::Internal(format!(
                "tile buffer too small for {rows}x{cols}"
            )));
        }
        self.data.resize(n, 0.0);
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
        &self.data
    }

    /// The values, column-major, mutable.
    pub fn data_mut(&mut self) -> &mut [f64] {
        &mut self.data
    }

    /// A faer view.
    pub fn mat(&self) -> MatRef<'_, f64> {
        MatRef::from_column_major_slice(&self.data, self.rows, self.cols)
    }

    /// A mutable faer view.
    pub fn mat_mut(&mut self) -> MatMut<'_, f64> {
        MatMut::from_column_major_slice_mut(&mut self.data, self.rows, self.cols)
    }
}

impl Drop for Tile {
    fn drop(&mut self) {
        self.ledger.sub(self.bytes);
    }
}
