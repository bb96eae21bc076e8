//! Dense linear algebra on large symmetric matrices seen through [`tile::TileSource`]: the MEMDET block
//! log-determinant engine, its scratch store and memory planning. Knows nothing about neural networks.

pub mod budget;
pub mod checkpoint;
mod column;
#[cfg(feature = "mpi")]
pub mod dist;
pub mod factor;
pub mod gemm;
pub mod growth;
pub mod lockfile;
pub mod memdet;
pub mod npy;
pub mod npy_write;
pub mod pivots;
pub mod plan_note;
pub mod scratch;
pub mod tile;
pub mod tile_buf;

pub use budget::{parse_size, BlockPlan};
pub use checkpoint::Checkpoint;
pub use factor::Assume;
pub use memdet::{
    memdet, LogDet, MemdetInfo, MemdetOptions, NestedLogdet, PhaseSeconds, Shift, GROWTH_LIMIT,
    NEAR_SINGULAR,
};
pub use npy::{NpySource, Triangle};
pub use tile::{DenseSource, TileSource};
