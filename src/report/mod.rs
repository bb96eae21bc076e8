//! Reports: JSON output schema, SVG plots, terminal tables.

pub mod compare;
pub mod fit;
pub mod logdet;
pub mod plot;
pub mod run;
