//! MEMDET on random SPD matrices whose sizes are not multiples of the block size: independence of n_b,
//! nested log-dets equal to dense log-dets of leading blocks, one source request per tile, transfer counts,
//! shifts, `.npy` sources in every layout.

mod support;
mod tolerance;

use faer::{Mat, MatMut};
use ntk_pipeline::linalg::npy::Triangle;
use ntk_pipeline::linalg::{
    memdet, Assume, DenseSource, MemdetOptions, NpySource, Shift, TileSource,
};
use ntk_pipeline::progress::Silent;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use support::*;
use tolerance::within;

/// Tolerances against dense faer references, each about 100× the largest error measured (see
/// `tests/tolerance`).
/// Nested ℓ_k of leading blocks: measured ≤ 8.2e-16.
const TOL_NESTED: f64 = 1e-13;
/// Scaled and shifted matrices: measured ≤ 1.4e-16.
const TOL_SHIFT: f64 = 2e-14;
/// `.npy` sources (every layout, f64 and f32): measured ≤ 5.7e-16.
const TOL_NPY: f64 = 5e-14;
/// LDLᵀ against Cholesky on SPD input: measured 0 (same operations), 1e-14 = about 100 rounding units.
const TOL_SYM_SPD: f64 = 1e-14;

fn opts(nb: usize) -> MemdetOptions {
    MemdetOptions {
        num_blocks: Some(nb),
        ..Default::default()
    }
}

#[test]
fn block_count_does_not_change_the_result() {
    for (seed, n) in [(1u32, 211usize), (2, 509)] {
        let a = random_spd(seed, n);
        let dense = llt_logdet(&a);
        let src = DenseSource::new(a);
        let mut results = Vec::new();
        for nb in [1, 2, 3, 4, 5, 7, 8, 13] {
            let r = memdet(&src, &opts(nb), &Silent).unwrap();
            assert!(
                n % r.info.block_size != 0 || r.info.num_blocks == 1,
                "size {n} should not be a multiple of b"
            );
            results.push((nb, r.logdet));
        }
        for &(nb, l) in &results {
            // Different block counts only reorder rounding: measured ≤ 1.3e-16, tolerance 1e-14.
            within(
                &format!("n={n} n_b={nb} vs n_b=1"),
                rel(l, results[0].1),
                1e-14,
            );
            // The dense reference (another algorithm): measured ≤ 1.0e-15, tolerance 1e-13.
            within(&format!("n={n} n_b={nb} vs dense"), rel(l, dense), 1e-13);
        }
    }
}

#[test]
fn nested_logdets_equal_dense_leading_blocks() {
    let n = 211;
    let d = 3;
    let a = random_spd(7, n);
    let src = DenseSource::new(a.clone()).with_granule(d);
    for nb in [1, 4, 9] {
        let r = memdet(&src, &opts(nb), &Silent).unwrap();
        assert!(
            r.info.num_blocks == 1 || r.info.block_size.is_multiple_of(d),
            "blocks must not split a granule"
        );
        let nested = r.nested(d);
        assert_eq!(nested.len(), n / d);
        for l in nested.iter().step_by(5).chain(nested.last()) {
            let lead = a.as_ref().submatrix(0, 0, l.rows, l.rows).to_owned();
            let want = llt_logdet(&lead);
            // Absolute for ℓ_k near 0, else relative: TOL_NESTED (below).
            within(
                &format!("nested k={} rows={} n_b={nb}", l.k, l.rows),
                (l.logdet - want).abs() / want.abs().max(1.0),
                TOL_NESTED,
            );
            assert_eq!(l.sign, 1.0);
        }
    }
}

/// Number of requests per (rows, cols) tile.
type CallCounts = HashMap<(Range<usize>, Range<usize>), usize>;

/// A source that records every request.
struct Counting {
    inner: DenseSource,
    calls: Mutex<CallCounts>,
}

impl TileSource for Counting {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn fill(
        &self,
        rows: Range<usize>,
        cols: Range<usize>,
        out: MatMut<'_, f64>,
    ) -> ntk_pipeline::Result<()> {
        *self
            .calls
            .lock()
            .unwrap()
            .entry((rows.clone(), cols.clone()))
            .or_default() += 1;
        self.inner.fill(rows, cols, out)
    }
}

#[test]
fn each_tile_is_requested_once_and_transfers_are_counted() {
    let n = 150;
    let src = Counting {
        inner: DenseSource::new(random_spd(3, n)),
        calls: Mutex::new(HashMap::new()),
    };
    for nb in 1..=8usize {
        src.calls.lock().unwrap().clear();
        let r = memdet(&src, &opts(nb), &Silent).unwrap();
        let (nb, b) = (r.info.num_blocks, r.info.block_size);
        let calls = src.calls.lock().unwrap();
        assert_eq!(calls.len(), nb * (nb + 1) / 2, "n_b={nb}: distinct tiles");
        for i in 0..nb {
            for j in i..nb {
                let key = (i * b..((i + 1) * b).min(n), j * b..((j + 1) * b).min(n));
                assert_eq!(
                    calls.get(&key),
                    Some(&1),
                    "n_b={nb}: tile ({i},{j}) requested {:?} times",
                    calls.get(&key)
                );
            }
        }
        let nb64 = nb as u64;
        assert_eq!(r.info.tiles_requested, nb64 * (nb64 + 1) / 2);
        assert_eq!(
            r.info.blocks_loaded,
            (nb64 - 1) * nb64 * (nb64 + 1) / 6,
            "n_b={nb}: loads"
        );
        assert_eq!(
            r.info.blocks_stored,
            nb64 * (nb64 - 1) / 2,
            "n_b={nb}: stores"
        );
        assert!(
            r.info.peak_resident_bytes <= r.info.planned_resident_bytes,
            "n_b={nb}: {:?}",
            r.info
        );
    }
}

#[test]
fn scale_and_shifts_are_applied() {
    let n = 97;
    let a = random_spd(5, n);
    let diag: Vec<f64> = (0..n).map(|i| 0.5 + i as f64 / n as f64).collect();
    let mut m = Mat::from_fn(n, n, |i, j| 0.25 * a[(i, j)]);
    for i in 0..n {
        m[(i, i)] += diag[i];
    }
    let want = llt_logdet(&m);
    let src = DenseSource::new(a.clone());
    for nb in [1, 3, 6] {
        let o = MemdetOptions {
            scale: 0.25,
            shift: Shift::Diagonal(diag.clone()),
            ..opts(nb)
        };
        let r = memdet(&src, &o, &Silent).unwrap();
        within(
            &format!("diagonal shift and scale n_b={nb}"),
            rel(r.logdet, want),
            TOL_SHIFT,
        );
    }
    let scalar = llt_logdet(&plus_identity(&a, 2.0));
    let r = memdet(
        &src,
        &MemdetOptions {
            shift: Shift::Scalar(2.0),
            ..opts(4)
        },
        &Silent,
    )
    .unwrap();
    within("scalar shift", rel(r.logdet, scalar), TOL_SHIFT);
}

#[test]
fn npy_sources_in_every_layout_agree() {
    let n = 61;
    let a = random_spd(9, n);
    let want = llt_logdet(&a);
    let dir = tempfile::tempdir().unwrap();
    // Keep only one triangle valid (the other filled with garbage) to test `triangle`.
    let upper = Mat::from_fn(n, n, |i, j| if i <= j { a[(i, j)] } else { f64::NAN });
    let lower = Mat::from_fn(n, n, |i, j| if i >= j { a[(i, j)] } else { 1e300 });
    for (name, mat, tri) in [
        ("full", &a, Triangle::Full),
        ("upper", &upper, Triangle::Upper),
        ("lower", &lower, Triangle::Lower),
    ] {
        for fortran in [false, true] {
            let path = dir.path().join(format!("{name}-{fortran}.npy"));
            write_npy(&path, mat, fortran);
            let src = NpySource::open(&path, tri).unwrap();
            for nb in [1, 4] {
                let r = memdet(&src, &opts(nb), &Silent).unwrap();
                within(
                    &format!("npy {name} fortran={fortran} n_b={nb}"),
                    rel(r.logdet, want),
                    TOL_NPY,
                );
            }
        }
    }
    // f32 input: the same matrix rounded to f32, computed in f64.
    let a32 = Mat::from_fn(n, n, |i, j| a[(i, j)] as f32 as f64);
    let path = dir.path().join("f32.npy");
    write_npy_f32(&path, &a32);
    let r = memdet(
        &NpySource::open(&path, Triangle::Full).unwrap(),
        &opts(3),
        &Silent,
    )
    .unwrap();
    within("f32 npy", rel(r.logdet, llt_logdet(&a32)), TOL_NPY);
}

#[test]
fn sym_and_spd_agree_on_spd_input() {
    let a = random_spd(11, 130);
    let src = DenseSource::new(a);
    for nb in [1, 2, 5] {
        let c = memdet(&src, &opts(nb), &Silent).unwrap();
        let l = memdet(
            &src,
            &MemdetOptions {
                assume: Assume::Sym,
                ..opts(nb)
            },
            &Silent,
        )
        .unwrap();
        within(
            &format!("sym vs spd n_b={nb}"),
            rel(l.logdet, c.logdet),
            TOL_SYM_SPD,
        );
        assert_eq!(l.sign, 1.0);
    }
}

/// Write a square f32 matrix as `.npy` (C order).
fn write_npy_f32(path: &std::path::Path, a: &Mat<f64>) {
    let n = a.nrows();
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {n}), }}").into_bytes();
    let total = 10 + header.len() + 1;
    header.resize(header.len() + (64 - total % 64) % 64, b' ');
    header.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&header);
    for i in 0..n {
        for j in 0..n {
            bytes.extend_from_slice(&(a[(i, j)] as f32).to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}
