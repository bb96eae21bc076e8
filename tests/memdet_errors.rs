//! Bad input and hostile conditions at the library level: every failure is a clear error (never a panic or
//! a wrong answer) and leaves no scratch files behind.

mod support;

use faer::Mat;
use ntk_pipeline::linalg::{memdet, Assume, DenseSource, MemdetOptions};
use ntk_pipeline::progress::{Progress, Silent};
use ntk_pipeline::Error;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use support::*;

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).unwrap().next().is_none()
}

#[test]
fn non_finite_tile_is_named() {
    let mut a = random_spd(1, 50);
    // Only tiles I ≤ J are read (the upper triangle), so the NaN goes above the diagonal.
    a[(12, 37)] = f64::NAN;
    let scratch = tempfile::tempdir().unwrap();
    let o = MemdetOptions {
        num_blocks: Some(4),
        scratch_dir: Some(scratch.path().into()),
        ..Default::default()
    };
    match memdet(&DenseSource::new(a.clone()), &o, &Silent) {
        Err(Error::NonFinite {
            row,
            col,
            rows,
            cols,
            value,
        }) => {
            assert!(value.is_nan());
            assert_eq!((row, col), (12, 37));
            assert_eq!((rows, cols), (0..13, 26..39));
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
    assert!(is_empty_dir(scratch.path()), "scratch left behind");
    a[(12, 37)] = a[(37, 12)];
    a[(40, 40)] = f64::INFINITY;
    let err = memdet(&DenseSource::new(a), &o, &Silent).unwrap_err();
    assert!(
        err.to_string()
            .contains("non-finite value inf at row 40, column 40"),
        "{err}"
    );
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn scratch_full_is_an_error_and_cleans_up() {
    let a = random_spd(2, 120);
    let scratch = tempfile::tempdir().unwrap();
    let o = MemdetOptions {
        num_blocks: Some(6),
        scratch_dir: Some(scratch.path().into()),
        scratch_cap: Some(20_000),
        ..Default::default()
    };
    let err = memdet(&DenseSource::new(a.clone()), &o, &Silent).unwrap_err();
    assert!(matches!(err, Error::Scratch(_)), "{err}");
    assert!(err.to_string().contains("scratch space exhausted"), "{err}");
    assert_eq!(err.exit_code(), 2);
    assert!(is_empty_dir(scratch.path()), "scratch left behind");
    // With enough room the same run succeeds.
    let ok = MemdetOptions {
        scratch_cap: Some(1 << 20),
        ..o
    };
    let r = memdet(&DenseSource::new(a), &ok, &Silent).unwrap();
    assert!(r.info.scratch_bytes <= 1 << 20);
    assert!(is_empty_dir(scratch.path()));
}

#[test]
fn unwritable_scratch_dir_is_reported() {
    let a = random_spd(3, 40);
    let o = MemdetOptions {
        num_blocks: Some(2),
        scratch_dir: Some("/nonexistent/scratch/dir".into()),
        ..Default::default()
    };
    let err = memdet(&DenseSource::new(a), &o, &Silent).unwrap_err();
    assert!(
        matches!(err, Error::Scratch(_)) && err.to_string().contains("/nonexistent/scratch/dir"),
        "{err}"
    );
}

#[test]
fn too_little_memory_is_refused() {
    let a = random_spd(4, 64);
    let o = MemdetOptions {
        max_mem: Some(1000),
        ..Default::default()
    };
    let err = memdet(&DenseSource::new(a.clone()), &o, &Silent).unwrap_err();
    assert!(matches!(err, Error::Budget(_)), "{err}");
    // A budget that fits picks several blocks and keeps the tile buffers within it.
    let o = MemdetOptions {
        max_mem: Some(20_000),
        ..Default::default()
    };
    let r = memdet(&DenseSource::new(a), &o, &Silent).unwrap();
    assert!(
        r.info.num_blocks > 1 && r.info.peak_resident_bytes <= 20_000,
        "{:?}",
        r.info
    );
}

#[test]
fn zero_pivot_under_sym_is_reported() {
    // [[0, 1], [1, 0]] is non-singular but needs pivoting.
    let a = Mat::from_fn(2, 2, |i, j| if i == j { 0.0 } else { 1.0 });
    let o = MemdetOptions {
        assume: Assume::Sym,
        ..Default::default()
    };
    match memdet(&DenseSource::new(a), &o, &Silent) {
        Err(Error::ZeroPivot { index: 0, value }) => assert_eq!(value, 0.0),
        other => panic!("expected ZeroPivot, got {other:?}"),
    }
}

/// Raises an interrupt flag once the factorisation has made some progress.
struct InterruptAfter {
    flag: Arc<AtomicBool>,
    after: u64,
    seen: std::sync::atomic::AtomicU64,
}

impl Progress for InterruptAfter {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, units: u64) {
        if self.seen.fetch_add(units, Ordering::SeqCst) + units >= self.after {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
    fn finish(&self) {}
}

#[test]
fn interrupt_stops_and_cleans_up() {
    let a = random_spd(5, 100);
    let scratch = tempfile::tempdir().unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    let progress = InterruptAfter {
        flag: Arc::clone(&flag),
        after: 10,
        seen: Default::default(),
    };
    let o = MemdetOptions {
        num_blocks: Some(5),
        scratch_dir: Some(scratch.path().into()),
        interrupt: Some(flag),
        ..Default::default()
    };
    let err = memdet(&DenseSource::new(a), &o, &progress).unwrap_err();
    assert!(matches!(err, Error::Interrupted), "{err}");
    assert!(is_empty_dir(scratch.path()), "scratch left behind");
}

#[test]
fn bad_options_are_usage_errors() {
    let a = DenseSource::new(random_spd(6, 10));
    for o in [
        MemdetOptions {
            scale: f64::NAN,
            ..Default::default()
        },
        MemdetOptions {
            shift: ntk_pipeline::linalg::Shift::Diagonal(vec![1.0; 3]),
            ..Default::default()
        },
        MemdetOptions {
            num_blocks: Some(0),
            ..Default::default()
        },
        MemdetOptions {
            assume: Assume::Sym,
            pivoting: true,
            nested: true,
            ..Default::default()
        },
    ] {
        let err = memdet(&a, &o, &Silent).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err}");
        assert_eq!(err.exit_code(), 2);
    }
}
