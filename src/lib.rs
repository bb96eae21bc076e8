//! # ntk-pipeline
//!
//! The empirical Neural Tangent Kernel of a trained network on a real dataset, and its log-determinant:
//! exactly under a memory limit (MEMDET, tiles computed on demand and streamed into a block Cholesky/LDLᵀ
//! engine) and cheaply by FLODANCE (nested log-dets of a small sample, extrapolated with a neural scaling law).
//!
//! Data flows one way; each arrow is one trait or struct:
//!
//! ```text
//!  datasets/ ──► data::Dataset ──► model::Network ──► ntk::NtkTiles ──(TileSource)──► linalg::memdet ──► scaling::flodance ──► report
//!                                                        │                                  ▲
//!                                                        └──► estimators (SLQ, block-diag, pseudo-NTK) ─┘ compare
//! ```
//!
//! `linalg` knows nothing about networks; `ntk` knows nothing about factorisations; `pipeline` wires them.

pub mod cli;
pub mod data;
pub mod error;
pub mod estimators;
pub mod linalg;
pub mod model;
pub mod ntk;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod scaling;
pub mod signals;

pub use error::{Error, Result};
