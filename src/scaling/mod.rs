//! Nested log-dets and the FLODANCE scaling-law fit.

pub mod calibrate;
pub mod constrained;
pub mod estimate;
pub mod flodance;
pub mod law;
pub mod lstsq;
pub mod nested;
pub mod nnls;
pub mod shape;
pub mod special;

pub use estimate::{estimate, Estimate, EstimateOptions};
pub use flodance::{fit, fit_concave, fit_xy, Fit, FitOptions};
pub use nested::{nested_logdets, Nested};
pub use shape::ShapeCheck;
