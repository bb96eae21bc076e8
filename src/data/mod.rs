//! Datasets: IDX (MNIST-type) and CIFAR binary readers, name resolution, download, test-time transforms.
//!
//! `load("mnist", &DataOptions::default())` finds the data by the resolution order in [`resolve`], reads
//! the split into memory as raw `u8` pixels + `u32` labels, and [`Dataset::images`] turns any subset into
//! a normalised `f32` tensor shaped for the network (MNIST-type data resized to 32×32 and replicated to 3
//! channels when the network expects 3×32×32).

mod cifar;
mod dataset;
pub mod download;
mod idx;
mod read;
pub mod resolve;
mod stream;
pub mod transform;

pub use dataset::{Dataset, Normalization};
pub use resolve::{Format, Locations};
pub use stream::Keep;
pub use transform::{augment_crop_flip, augment_crop_flip_fill};

use crate::progress::Progress;
use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::PathBuf;

/// Which part of a dataset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Split {
    /// The training set (the NTK is taken over it, with test-time transforms).
    #[default]
    Train,
    /// The test set.
    Test,
}

impl Split {
    /// The lower-case name used on the command line (`train` / `test`).
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = Error;

    /// Parses `train` or `test` (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => Err(Error::Usage(format!(
                "unknown split '{s}': use --split train or --split test"
            ))),
        }
    }
}

/// How to find and read a dataset.
#[derive(Debug, Clone, Default)]
pub struct DataOptions {
    /// Train or test split (default train).
    pub split: Split,
    /// `--data-dir`: looked in first (as `DIR/<name>` and as `DIR` itself).
    pub data_dir: Option<PathBuf>,
    /// `--download`: fetch the official files into the cache if the data is not found.
    pub download: bool,
}

/// Loads a dataset by name (`mnist`, `fashion-mnist`, `cifar10`, `cifar100`) or from a directory.
///
/// Uses the locations from the environment ([`Locations::from_env`]) and reports downloads on stderr
/// ([`crate::progress::for_stderr`]). See [`resolve`] for the search order.
pub fn load(name_or_dir: &str, opts: &DataOptions) -> Result<Dataset> {
    load_with(
        name_or_dir,
        opts,
        &Locations::from_env(),
        crate::progress::for_stderr().as_ref(),
    )
}

/// [`load`] with explicit search locations and progress reporting (tests, `--quiet`).
pub fn load_with(
    name_or_dir: &str,
    opts: &DataOptions,
    locations: &Locations,
    progress: &dyn Progress,
) -> Result<Dataset> {
    load_inner(name_or_dir, opts, locations, progress, None)
}

/// [`load_with`], keeping in memory only the pixels of the examples `keep` chooses once the split's size is
/// known (every label is kept): the images are decompressed as a stream, so neither the whole file nor
/// the whole decompressed split is ever held. The content checksum and, for plain directories, the
/// normalisation statistics are measured over every image on the way, so they equal a full read's.
pub fn load_kept(
    name_or_dir: &str,
    opts: &DataOptions,
    locations: &Locations,
    progress: &dyn Progress,
    keep: Keep,
) -> Result<Dataset> {
    load_inner(name_or_dir, opts, locations, progress, Some(keep))
}

/// [`load_with`] or [`load_kept`].
fn load_inner(
    name_or_dir: &str,
    opts: &DataOptions,
    locations: &Locations,
    progress: &dyn Progress,
    keep: Option<Keep>,
) -> Result<Dataset> {
    if let Some(known) = resolve::known(name_or_dir) {
        let dir = match resolve::find(known, opts, locations) {
            Ok(dir) => dir,
            Err(missing) if opts.download => {
                let cache = locations.cache_dir.as_ref().ok_or_else(|| {
                    Error::Data(format!(
                        "cannot download {}: no cache directory (set XDG_CACHE_HOME or HOME), and the data \
                         was not found; {missing}",
                        known.name
                    ))
                })?;
                let remote = download::remote(known);
                download::fetch(
                    known.name,
                    &remote,
                    locations.download_base.as_deref(),
                    cache,
                    progress,
                )?
            }
            Err(missing) => return Err(missing),
        };
        return read::read_known(known, &dir, opts.split, keep);
    }
    let path = PathBuf::from(name_or_dir);
    if resolve::looks_like_path(name_or_dir) || path.exists() {
        return read::read_dir(&path, opts.split, keep);
    }
    Err(resolve::unknown_name(name_or_dir))
}

/// The order in which examples are used: `dataset` (0, 1, 2, …) or `random` (a permutation of
/// `0..len` drawn from ChaCha8 seeded with `seed`; the same seed gives the same order on every machine).
pub fn sample_order(len: usize, order: &str, seed: u64) -> Result<Vec<usize>> {
    let mut idx: Vec<usize> = (0..len).collect();
    match order {
        "dataset" => {}
        "random" => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            idx.shuffle(&mut rng);
        }
        other => {
            return Err(Error::Usage(format!(
            "unknown sample order '{other}': use --order dataset or --order random (with --seed S)"
        )))
        }
    }
    Ok(idx)
}
