//! Nested log-dets and the FLODANCE scaling-law fit.

pub mod flodance;
pub mod lstsq;
pub mod nested;
pub mod special;

pub use flodance::{fit, fit_xy, Fit, FitOptions};
pub use nested::{nested_logdets, Nested};
