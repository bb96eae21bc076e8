//! Dense linear algebra on large symmetric matrices seen through [`tile::TileSource`]: the MEMDET block
//! log-determinant engine, its scratch store and memory planning. Knows nothing about neural networks.

pub mod tile;

pub use tile::{DenseSource, TileSource};
