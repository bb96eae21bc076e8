//! Reports: JSON output schema, SVG plots, terminal tables.

mod atomic;
pub mod compare;
pub mod fit;
pub mod logdet;
pub mod plot;
pub mod run;
pub mod stats;

pub use atomic::{write_atomic, write_json};
