//! `.npy` square matrices as a [`TileSource`]: f32/f64, either byte order, C or Fortran order, memory-mapped
//! so that a matrix larger than RAM works, optionally with only one triangle valid.

use super::tile::TileSource;
use crate::{Error, Result};
use faer::reborrow::ReborrowMut;
use faer::MatMut;
use memmap2::{Mmap, UncheckedAdvice};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Element type of an `.npy` array that we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    /// 4-byte IEEE float.
    F32,
    /// 8-byte IEEE float.
    F64,
}

impl NpyDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            NpyDtype::F32 => 4,
            NpyDtype::F64 => 8,
        }
    }
}

/// Which part of a stored matrix holds valid values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Triangle {
    /// The whole matrix (it is symmetric).
    #[value(skip)]
    Full,
    /// Only entries with row ≤ column are valid.
    Upper,
    /// Only entries with row ≥ column are valid.
    Lower,
}

impl Triangle {
    /// Parse `upper` / `lower` / `full`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "upper" | "u" => Ok(Triangle::Upper),
            "lower" | "l" => Ok(Triangle::Lower),
            "full" => Ok(Triangle::Full),
            other => Err(Error::Usage(format!(
                "--triangle {other:?}: expected `upper` or `lower`"
            ))),
        }
    }
}

/// The parsed header of an `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// Element type.
    pub dtype: NpyDtype,
    /// True when the data are little-endian.
    pub little_endian: bool,
    /// True for column-major (Fortran) layout.
    pub fortran_order: bool,
    /// Array shape.
    pub shape: Vec<usize>,
    /// Byte offset of the data.
    pub data_offset: usize,
}

/// Parse the header at the start of an `.npy` file (`bytes` may be the whole file or a prefix of it).
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<NpyHeader> {
    let bad =
        |what: &str| Error::Input(format!("{}: not a valid .npy file: {what}", path.display()));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header"));
            }
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
            (len, 12)
        }
        v => return Err(bad(&format!("unsupported format version {v}"))),
    };
    let end = start + header_len;
    if bytes.len() < end {
        return Err(bad("truncated header"));
    }
    let text = std::str::from_utf8(&bytes[start..end]).map_err(|_| bad("header is not text"))?;
    let descr = dict_value(text, "descr").ok_or_else(|| bad("header has no 'descr'"))?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let (little_endian, code) = match descr.split_at(1.min(descr.len())) {
        ("<", rest) => (true, rest),
        (">", rest) => (false, rest),
        ("|", rest) | ("=", rest) => (cfg!(target_endian = "little"), rest),
        _ => (cfg!(target_endian = "little"), descr),
    };
    let dtype = match code {
        "f8" => NpyDtype::F64,
        "f4" => NpyDtype::F32,
        other => {
            return Err(Error::Input(format!(
                "{}: unsupported dtype {descr:?} ({other}); save the matrix as float64 or float32",
                path.display()
            )))
        }
    };
    let fortran =
        dict_value(text, "fortran_order").ok_or_else(|| bad("header has no 'fortran_order'"))?;
    let fortran_order = match fortran.trim() {
        "True" => true,
        "False" => false,
        other => return Err(bad(&format!("fortran_order is {other:?}"))),
    };
    let shape_text = dict_value(text, "shape").ok_or_else(|| bad("header has no 'shape'"))?;
    let shape = shape_text
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(&format!("bad shape {shape_text:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(NpyHeader {
        dtype,
        little_endian,
        fortran_order,
        shape,
        data_offset: end,
    })
}

/// The raw text of `key`'s value in the header's Python dict literal (up to the next top-level comma).
fn dict_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pos = text
        .find(&format!("'{key}'"))
        .or_else(|| text.find(&format!("\"{key}\"")))?;
    let after = &text[pos + key.len() + 2..];
    let colon = after.find(':')?;
    let value = &after[colon + 1..];
    let mut depth = 0usize;
    for (i, c) in value.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            ',' | '}' if depth == 0 => return Some(&value[..i]),
            _ => {}
        }
    }
    Some(value)
}

/// A square `.npy` matrix, memory-mapped, read tile by tile (values converted to f64).
pub struct NpySource {
    path: PathBuf,
    map: Mmap,
    header: NpyHeader,
    dim: usize,
    triangle: Triangle,
    granule: usize,
}

impl std::fmt::Debug for NpySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpySource")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("triangle", &self.triangle)
            .finish()
    }
}

impl NpySource {
    /// Open and validate `path`: a 2-D square f32/f64 array whose data are all present.
    pub fn open(path: &Path, triangle: Triangle) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(Error::Input(format!(
                "{} is a directory; give a .npy file",
                path.display()
            )));
        }
        // SAFETY: the file is only read; if another process truncates it while mapped, reads may fault,
        // which is the documented risk of every memory-mapped reader.
        let map =
            unsafe { Mmap::map(&file) }.map_err(|e| Error::io("cannot memory-map", path, e))?;
        let header = parse_header(&map, path)?;
        if header.shape.len() != 2 || header.shape[0] != header.shape[1] {
            return Err(Error::Input(format!(
                "{}: expected a square 2-D matrix, found shape {:?}",
                path.display(),
                header.shape
            )));
        }
        let dim = header.shape[0];
        if dim == 0 {
            return Err(Error::Input(format!(
                "{}: the matrix is empty (0x0)",
                path.display()
            )));
        }
        let need = dim
            .checked_mul(dim)
            .and_then(|n| n.checked_mul(header.dtype.size()))
            .and_then(|n| n.checked_add(header.data_offset))
            .ok_or_else(|| {
                Error::Input(format!(
                    "{}: shape {dim}x{dim} is too large",
                    path.display()
                ))
            })?;
        if map.len() < need {
            return Err(Error::Input(format!(
                "{}: truncated: a {dim}x{dim} {:?} matrix needs {need} bytes, the file has {}",
                path.display(),
                header.dtype,
                map.len()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
            header,
            dim,
            triangle,
            granule: 1,
        })
    }

    /// Set the block granularity (e.g. d for an NTK saved as `.npy`).
    pub fn with_granule(mut self, granule: usize) -> Self {
        self.granule = granule.max(1);
        self
    }

    /// The parsed header.
    pub fn header(&self) -> &NpyHeader {
        &self.header
    }

    /// The stored element at (r, c), converted to f64.
    #[inline]
    fn raw(&self, r: usize, c: usize) -> f64 {
        let idx = if self.header.fortran_order {
            c * self.dim + r
        } else {
            r * self.dim + c
        };
        let data = &self.map[self.header.data_offset..];
        match self.header.dtype {
            NpyDtype::F64 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&data[idx * 8..idx * 8 + 8]);
                if self.header.little_endian {
                    f64::from_le_bytes(b)
                } else {
                    f64::from_be_bytes(b)
                }
            }
            NpyDtype::F32 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(&data[idx * 4..idx * 4 + 4]);
                let v = if self.header.little_endian {
                    f32::from_le_bytes(b)
                } else {
                    f32::from_be_bytes(b)
                };
                v as f64
            }
        }
    }

    /// The value of the symmetric matrix at (r, c), reading only the valid triangle.
    #[inline]
    fn get(&self, r: usize, c: usize) -> f64 {
        match self.triangle {
            Triangle::Upper if r > c => self.raw(c, r),
            Triangle::Lower if r < c => self.raw(c, r),
            _ => self.raw(r, c),
        }
    }

    /// Fast path for a tile that lies wholly in the valid triangle or wholly in its mirror: copy contiguous
    /// runs of the file. Returns false (doing nothing) for tiles that straddle the diagonal.
    fn fill_contiguous(
        &self,
        rows: &Range<usize>,
        cols: &Range<usize>,
        mut out: MatMut<'_, f64>,
    ) -> bool {
        let all_upper = rows.end <= cols.start + 1; // every r ≤ c
        let all_lower = rows.start + 1 >= cols.end; // every r ≥ c
        let mirror = match self.triangle {
            Triangle::Full => false,
            Triangle::Upper if all_upper => false,
            Triangle::Upper if rows.start >= cols.end => true,
            Triangle::Lower if all_lower => false,
            Triangle::Lower if rows.end <= cols.start => true,
            _ => return false,
        };
        // Element (r, c) is read at (c, r) when mirrored; runs are contiguous along the file's minor index.
        let row_runs = self.header.fortran_order == mirror;
        let (outer, inner) = if row_runs {
            (rows.clone(), cols.clone())
        } else {
            (cols.clone(), rows.clone())
        };
        let size = self.header.dtype.size();
        let data = &self.map[self.header.data_offset..];
        for (o, major) in outer.enumerate() {
            let start = (major * self.dim + inner.start) * size;
            let run = &data[start..start + inner.len() * size];
            for (k, bytes) in run.chunks_exact(size).enumerate() {
                let v = match (self.header.dtype, self.header.little_endian) {
                    (NpyDtype::F64, le) => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(bytes);
                        if le {
                            f64::from_le_bytes(b)
                        } else {
                            f64::from_be_bytes(b)
                        }
                    }
                    (NpyDtype::F32, le) => {
                        let mut b = [0u8; 4];
                        b.copy_from_slice(bytes);
                        (if le {
                            f32::from_le_bytes(b)
                        } else {
                            f32::from_be_bytes(b)
                        }) as f64
                    }
                };
                if row_runs {
                    out[(o, k)] = v;
                } else {
                    out[(k, o)] = v;
                }
            }
        }
        true
    }

    /// Tell the kernel that the pages holding A[rows, cols] (and its mirror) are no longer needed, so
    /// that reading a matrix larger than RAM does not grow our resident set. Failures are harmless.
    fn release(&self, rows: &Range<usize>, cols: &Range<usize>) {
        let size = self.header.dtype.size();
        let span = |a: &Range<usize>, b: &Range<usize>| {
            // Byte span of the stored block with major index in `a` and minor index in `b`.
            let first = (a.start * self.dim + b.start) * size;
            let last = ((a.end - 1) * self.dim + b.end) * size;
            (first, last)
        };
        let (outer, inner) = if self.header.fortran_order {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let mut spans = vec![span(outer, inner)];
        if self.triangle != Triangle::Full {
            spans.push(span(inner, outer));
        }
        let page = 4096;
        for (first, last) in spans {
            let start = (self.header.data_offset + first) / page * page;
            let end = (self.header.data_offset + last).min(self.map.len());
            if end > start {
                // SAFETY: the mapping is read-only and file-backed; MADV_DONTNEED only drops our page-table
                // entries, and any later access re-reads identical bytes from the file.
                let _ = unsafe {
                    self.map
                        .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
                };
            }
        }
    }
}

impl TileSource for NpySource {
    fn dim(&self) -> usize {
        self.dim
    }

    fn granule(&self) -> usize {
        self.granule
    }

    fn fill(&self, rows: Range<usize>, cols: Range<usize>, mut out: MatMut<'_, f64>) -> Result<()> {
        if rows.end > self.dim
            || cols.end > self.dim
            || out.nrows() != rows.len()
            || out.ncols() != cols.len()
        {
            return Err(Error::Internal(format!(
                "tile rows {rows:?} x cols {cols:?} does not fit a {0}x{0} matrix or its {1}x{2} buffer",
                self.dim,
                out.nrows(),
                out.ncols()
            )));
        }
        if rows.is_empty() || cols.is_empty() {
            return Ok(());
        }
        if self.fill_contiguous(&rows, &cols, out.rb_mut()) {
            self.release(&rows, &cols);
            return Ok(());
        }
        // Mixed tiles (straddling the diagonal with one triangle valid): element by element, walking the
        // file in its storage order.
        if self.header.fortran_order {
            for (j, c) in cols.clone().enumerate() {
                for (i, r) in rows.clone().enumerate() {
                    out[(i, j)] = self.get(r, c);
                }
            }
        } else {
            for (i, r) in rows.clone().enumerate() {
                for (j, c) in cols.clone().enumerate() {
                    out[(i, j)] = self.get(r, c);
                }
            }
        }
        self.release(&rows, &cols);
        Ok(())
    }
}
