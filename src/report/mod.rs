//! Reports: JSON output schema, SVG plots, terminal tables, and the atomic writer with its pre-flight check.

mod atomic;
pub mod compare;
pub mod error_plot;
pub mod fit;
pub mod logdet;
mod output_path;
pub mod plot;
pub mod provenance;
pub mod results;
pub mod run;
pub mod stats;
pub mod table2;

pub use atomic::{resolve_output, write_atomic, AtomicFile};
pub use output_path::check_outputs;
pub use provenance::write_json;
