//! `.npy` square matrices as a [`TileSource`]: f32/f64, either byte order, C or Fortran order, read tile by
//! tile with positioned reads (`pread`) so that a matrix larger than RAM works and a file that shrinks while
//! it is read is an error, not a SIGBUS; either with only one triangle valid (`--triangle`), or checked to be
//! symmetric as it is read.

use super::tile::TileSource;
use crate::{Error, Result};
use faer::MatMut;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt;
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
    /// The whole matrix, checked to be symmetric (see [`NpySource`]).
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

/// Relative tolerance of the symmetry check for f64 files: entries (i, j) and (j, i) may differ by at most
/// `1e-10 · max(|a_ij|, |a_ji|, sqrt(|a_ii·a_jj|))`. The last term is the entry's natural scale (Cauchy–Schwarz
/// for a PSD matrix) and the size of the rounding error of `J Jᵀ` formed by a non-symmetric GEMM (about
/// √p·ε·|J_i||J_j| ≈ 3e-13 for p = 10⁷ parameters), so rounding passes while any real asymmetry stops.
pub const SYMMETRY_TOL_F64: f64 = 1e-10;

/// The same for f32 files (f32 rounding of a p-term product is about √p·6e-8).
pub const SYMMETRY_TOL_F32: f64 = 1e-4;

/// A square `.npy` matrix read tile by tile with positioned reads (values converted to f64).
///
/// With [`Triangle::Full`] every tile (I, J) is compared with its mirror (J, I) as it is read (MEMDET asks for
/// each tile I ≤ J once, so the file is read once in all): the first pair of entries that differs by more than
/// the tolerance ([`SYMMETRY_TOL_F64`], [`SYMMETRY_TOL_F32`]) stops the run naming both, a NaN or ±Inf in
/// either triangle stops it too, and accepted pairs are averaged, so that the matrix factored (the symmetric
/// part) is the same for every block plan. With `Upper`/`Lower` only that triangle is read, for every plan.
pub struct NpySource {
    path: PathBuf,
    file: File,
    header: NpyHeader,
    dim: usize,
    triangle: Triangle,
    granule: usize,
    /// The diagonal (for the symmetry tolerance; `Full` only).
    diag: Vec<f64>,
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
        let mut file = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("cannot stat", path, e))?;
        if meta.is_dir() {
            return Err(Error::Input(format!(
                "{} is a directory; give a .npy file",
                path.display()
            )));
        }
        let len = meta.len();
        let mut prefix = Vec::new();
        (&mut file)
            .take(1 << 20)
            .read_to_end(&mut prefix)
            .map_err(|e| Error::io("cannot read", path, e))?;
        let header = parse_header(&prefix, path)?;
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
        if len < need as u64 {
            return Err(Error::Input(format!(
                "{}: truncated: a {dim}x{dim} {:?} matrix needs {need} bytes, the file has {len}",
                path.display(),
                header.dtype,
            )));
        }
        let mut source = Self {
            path: path.to_path_buf(),
            file,
            header,
            dim,
            triangle,
            granule: 1,
            diag: Vec::new(),
        };
        if triangle == Triangle::Full {
            let mut diag = vec![0.0; dim];
            for (i, d) in diag.iter_mut().enumerate() {
                source.read_run(i, i..i + 1, &mut Vec::new(), |_, v| *d = v)?;
            }
            source.diag = diag;
        }
        Ok(source)
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

    /// The relative tolerance of the symmetry check for this file's dtype.
    pub fn symmetry_tolerance(&self) -> f64 {
        match self.header.dtype {
            NpyDtype::F64 => SYMMETRY_TOL_F64,
            NpyDtype::F32 => SYMMETRY_TOL_F32,
        }
    }

    /// Read the stored run `major`, minor indices `minor` (contiguous in the file), calling `visit(minor
    /// index, value)` for each; `buf` is reused between calls. A short read (the file shrank) is an error.
    fn read_run(
        &self,
        major: usize,
        minor: Range<usize>,
        buf: &mut Vec<u8>,
        mut visit: impl FnMut(usize, f64),
    ) -> Result<()> {
        let size = self.header.dtype.size();
        buf.resize(minor.len() * size, 0);
        let offset = (self.header.data_offset + (major * self.dim + minor.start) * size) as u64;
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Input(format!(
                    "{}: the file shrank while it was being read (reading {} bytes at offset {offset}); \
                     do not modify the matrix file during a run",
                    self.path.display(),
                    buf.len()
                ))
            } else {
                Error::io("cannot read", &self.path, e)
            }
        })?;
        let le = self.header.little_endian;
        match self.header.dtype {
            NpyDtype::F64 => {
                for (k, b) in buf.chunks_exact(8).enumerate() {
                    let b: [u8; 8] = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
                    let v = if le {
                        f64::from_le_bytes(b)
                    } else {
                        f64::from_be_bytes(b)
                    };
                    visit(minor.start + k, v);
                }
            }
            NpyDtype::F32 => {
                for (k, b) in buf.chunks_exact(4).enumerate() {
                    let b: [u8; 4] = [b[0], b[1], b[2], b[3]];
                    let v = if le {
                        f32::from_le_bytes(b)
                    } else {
                        f32::from_be_bytes(b)
                    };
                    visit(minor.start + k, v as f64);
                }
            }
        }
        Ok(())
    }

    /// Read the stored entries (r, c), r ∈ rows, c ∈ cols, run by run in file order, calling `visit(r, c, v)`.
    fn read_region(
        &self,
        rows: &Range<usize>,
        cols: &Range<usize>,
        mut visit: impl FnMut(usize, usize, f64) -> Result<()>,
    ) -> Result<()> {
        let mut buf = Vec::new();
        let mut failed = None;
        if self.header.fortran_order {
            for c in cols.clone() {
                self.read_run(c, rows.clone(), &mut buf, |r, v| {
                    if failed.is_none() {
                        failed = visit(r, c, v).err();
                    }
                })?;
                if let Some(e) = failed.take() {
                    return Err(e);
                }
            }
        } else {
            for r in rows.clone() {
                self.read_run(r, cols.clone(), &mut buf, |c, v| {
                    if failed.is_none() {
                        failed = visit(r, c, v).err();
                    }
                })?;
                if let Some(e) = failed.take() {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// True when the stored entry (r, c) is in the valid triangle.
    fn valid(&self, r: usize, c: usize) -> bool {
        match self.triangle {
            Triangle::Full => true,
            Triangle::Upper => r <= c,
            Triangle::Lower => r >= c,
        }
    }

    /// Compare tile entry (r, c) = `a` with its mirror `b` = stored (c, r): both finite and within the
    /// tolerance, else the error naming them (as the upper-triangle pair i < j).
    fn check_pair(
        &self,
        r: usize,
        c: usize,
        a: f64,
        b: f64,
        mirror: (&Range<usize>, &Range<usize>),
    ) -> Result<()> {
        if !b.is_finite() {
            return Err(Error::NonFinite {
                value: b,
                row: c,
                col: r,
                rows: mirror.0.clone(),
                cols: mirror.1.clone(),
            });
        }
        let scale = a
            .abs()
            .max(b.abs())
            .max((self.diag[r] * self.diag[c]).abs().sqrt())
            .max(f64::MIN_POSITIVE);
        let tol = self.symmetry_tolerance();
        // `a` may be non-finite (MEMDET names it after the fill); then only b is checked here.
        if a.is_finite() && (a - b).abs() > tol * scale {
            let (i, j, upper, lower) = if r < c { (r, c, a, b) } else { (c, r, b, a) };
            return Err(Error::Input(format!(
                "{}: the matrix is not symmetric: A[{i},{j}] = {upper:e} but A[{j},{i}] = {lower:e} (relative \
                 difference {:.2e} > {tol:e}); if only one triangle is valid, say which with --triangle \
                 upper or --triangle lower",
                self.path.display(),
                (a - b).abs() / scale
            )));
        }
        Ok(())
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
        let (r0, c0) = (rows.start, cols.start);
        // Which parts are needed: the tile as stored when any of it is valid; its mirror when it is checked
        // (Full) or when some of it lies in the invalid triangle.
        let any_valid = match self.triangle {
            Triangle::Full => true,
            Triangle::Upper => rows.start < cols.end,
            Triangle::Lower => rows.end > cols.start,
        };
        let all_valid = match self.triangle {
            Triangle::Full => true,
            Triangle::Upper => rows.end <= cols.start + 1,
            Triangle::Lower => rows.start + 1 >= cols.end,
        };
        if any_valid {
            self.read_region(&rows, &cols, |r, c, v| {
                out[(r - r0, c - c0)] = v;
                Ok(())
            })?;
        }
        if self.triangle == Triangle::Full {
            self.read_region(&cols, &rows, |c, r, b| {
                let a = out[(r - r0, c - c0)];
                self.check_pair(r, c, a, b, (&cols, &rows))?;
                out[(r - r0, c - c0)] = a + 0.5 * (b - a);
                Ok(())
            })?;
        } else if !all_valid {
            self.read_region(&cols, &rows, |c, r, b| {
                if !self.valid(r, c) {
                    out[(r - r0, c - c0)] = b;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}
