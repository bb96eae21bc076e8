//! The one tolerance check of the reference tests: assert that an error is within its tolerance and print
//! both (`precision: <what>: <error> (tolerance <tol>)`, visible with `--nocapture`), so that the margin
//! between what is achieved and what is allowed can be re-measured at any time. Tolerances are set at
//! about 100× the error measured on the development machine: rounding differs between CPUs, thread counts
//! and summation orders by a small factor, while a real regression (a wrong term, a lost compensation, f32
//! where f64 belongs) costs orders of magnitude.
#![allow(dead_code)]

/// Assert `err <= tol` (NaN fails) and print both.
#[track_caller]
pub fn within(what: &str, err: f64, tol: f64) {
    eprintln!("precision: {what}: {err:.2e} (tolerance {tol:.0e})");
    assert!(
        err <= tol,
        "{what}: error {err:e} exceeds the tolerance {tol:e}"
    );
}

/// |a − b| / |b|.
pub fn rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}
