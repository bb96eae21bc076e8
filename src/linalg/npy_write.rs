//! Writing a dense f64 matrix as a `.npy` file (format 1.0, little-endian `<f8`, C order), atomically:
//! through [`crate::report::AtomicFile`] (a temporary file renamed over the target only on success).

use crate::{Error, Result};
use faer::MatRef;
use std::io::Write;
use std::path::Path;

/// Write `matrix` to `path` as an f64 C-order `.npy` (temp name + rename; nothing is left on failure).
pub fn write_npy_f64(path: &Path, matrix: MatRef<'_, f64>) -> Result<()> {
    let mut out = crate::report::AtomicFile::create(path)?;
    let (rows, cols) = (matrix.nrows(), matrix.ncols());
    let mut header =
        format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + header + newline must be a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.div_ceil(64) * 64 - unpadded));
    header.push('\n');
    let mut write = || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out.file());
        w.write_all(b"\x93NUMPY\x01\x00")?;
        w.write_all(&(header.len() as u16).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for r in 0..rows {
            if crate::signals::requested() {
                return Err(std::io::Error::other("interrupted"));
            }
            for c in 0..cols {
                w.write_all(&matrix[(r, c)].to_le_bytes())?;
            }
        }
        w.flush()
    };
    write().map_err(|e| {
        if crate::signals::requested() {
            Error::Interrupted
        } else {
            Error::io("cannot write", path, e)
        }
    })?;
    out.commit()
}
