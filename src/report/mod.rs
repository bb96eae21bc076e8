//! Reports: JSON output schema, SVG plots, terminal tables.

pub mod logdet;
