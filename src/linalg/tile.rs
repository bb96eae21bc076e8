//! [`TileSource`]: an m×m symmetric matrix read block by block, the LDL engine's only view of its input.

use crate::Result;
use faer::{Mat, MatMut};
use std::ops::Range;

/// An m×m symmetric matrix that can be read block by block. The LDL engine's only view of its input.
pub trait TileSource: Sync {
    /// The matrix order m.
    fn dim(&self) -> usize;
    /// Natural block granularity (d for an NTK: blocks never split an example's logits).
    fn granule(&self) -> usize {
        1
    }
    /// Write A[rows, cols] into `out` (rows.len() × cols.len()).
    fn fill(&self, rows: Range<usize>, cols: Range<usize>, out: MatMut<'_, f64>) -> Result<()>;
    /// Units of work of filling A[rows, cols], for progress reports (default 1). A source whose tiles take
    /// long to form counts parts that finish one by one (an NTK: its chunk pairs).
    fn fill_units(&self, _rows: Range<usize>, _cols: Range<usize>) -> u64 {
        1
    }
    /// Seconds that filling tiles worth `units` [`fill_units`](Self::fill_units) should take on this machine,
    /// from a short calibration made now, with a line saying what was timed (`None`, the default: not
    /// estimated, for sources whose tiles cost little next to the factorisation).
    fn calibrate_fill(&self, _units: u64) -> Result<Option<(f64, String)>> {
        Ok(None)
    }
    /// [`fill`](Self::fill), calling `done(units)` as parts of the tile are finished (in total
    /// [`fill_units`](Self::fill_units)); the default reports the whole tile at the end.
    fn fill_reporting(
        &self,
        rows: Range<usize>,
        cols: Range<usize>,
        out: MatMut<'_, f64>,
        done: &dyn Fn(u64),
    ) -> Result<()> {
        let units = self.fill_units(rows.clone(), cols.clone());
        self.fill(rows, cols, out)?;
        done(units);
        Ok(())
    }
}

/// An in-memory dense matrix as a tile source.
#[derive(Debug, Clone)]
pub struct DenseSource {
    matrix: Mat<f64>,
    granule: usize,
}

impl DenseSource {
    /// Wrap a square matrix (granule 1).
    pub fn new(matrix: Mat<f64>) -> Self {
        assert_eq!(
            matrix.nrows(),
            matrix.ncols(),
            "DenseSource needs a square matrix"
        );
        Self { matrix, granule: 1 }
    }

    /// Set the block granularity (e.g. d for an NTK held in memory).
    pub fn with_granule(mut self, granule: usize) -> Self {
        self.granule = granule.max(1);
        self
    }

    /// The wrapped matrix.
    pub fn matrix(&self) -> &Mat<f64> {
        &self.matrix
    }
}

impl TileSource for DenseSource {
    fn dim(&self) -> usize {
        self.matrix.nrows()
    }

    fn granule(&self) -> usize {
        self.granule
    }

    /// Copies with all rayon threads (column partitions): for an in-core run the copy and its first-touch
    /// page faults are MEMDET's whole overhead over factoring the matrix in place.
    fn fill(&self, rows: Range<usize>, cols: Range<usize>, out: MatMut<'_, f64>) -> Result<()> {
        use rayon::prelude::*;
        let block = self
            .matrix
            .as_ref()
            .submatrix(rows.start, cols.start, rows.len(), cols.len());
        let parts = rayon::current_num_threads().min(cols.len()).max(1);
        out.par_col_partition_mut(parts)
            .zip(block.par_col_partition(parts))
            .for_each(|(mut dst, src)| dst.copy_from(src));
        Ok(())
    }
}
