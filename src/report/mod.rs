//! Reports: JSON output schema, SVG plots, terminal tables.

pub mod fit;
pub mod logdet;
pub mod plot;
