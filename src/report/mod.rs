//! Reports: JSON output schema, SVG plots, terminal tables.

mod atomic;
pub mod compare;
pub mod error_plot;
pub mod fit;
pub mod logdet;
pub mod plot;
pub mod results;
pub mod run;

pub use atomic::{write_atomic, write_json};
