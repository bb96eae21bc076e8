//! Reports: JSON output schema, SVG plots, terminal tables.

mod atomic;
pub mod compare;
pub mod fit;
pub mod logdet;
pub mod plot;
pub mod provenance;
pub mod run;

pub use atomic::write_atomic;
pub use provenance::write_json;
