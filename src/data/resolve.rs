//! Dataset names and where their files are looked for.
//!
//! A known name (`mnist`, `fashion-mnist`, `cifar10`, `cifar100`) is searched for in this order; the first
//! directory holding the split's files wins:
//!
//! 1. `--data-dir D`: `D/<name>`, then `D` itself;
//! 2. `$NTK_PIPELINE_DATA/<name>`;
//! 3. `./datasets/<name>` (relative to the working directory);
//! 4. `<crate root>/datasets/<name>` (where the shipped MNIST lives; found from any working directory);
//! 5. `/usr/share/datasets/<name>` (Debian's `dataset-fashion-mnist` package installs there);
//! 6. the download cache `$XDG_CACHE_HOME/ntk-pipeline/<name>`, else `~/.cache/ntk-pipeline/<name>`.
//!
//! `--download` fetches into (6) when nothing is found.

use super::{cifar, download, idx, DataOptions, Split};
use crate::Error;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// On-disk format of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// IDX files (MNIST, Fashion-MNIST), plain or gzipped.
    Idx,
    /// CIFAR-10 binary batches (`data_batch_{1..5}.bin`, `test_batch.bin`).
    Cifar10,
    /// CIFAR-100 binary files (`train.bin`, `test.bin`; fine labels are used).
    Cifar100,
}

/// A dataset known by name: format, classes and the paper's normalisation constants.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// Canonical name (also the directory name looked for).
    pub name: &'static str,
    /// Other accepted spellings.
    pub aliases: &'static [&'static str],
    /// File format.
    pub format: Format,
    /// Number of classes.
    pub num_classes: usize,
    /// Per-channel mean of the [0, 1] pixels.
    pub mean: &'static [f64],
    /// Per-channel standard deviation of the [0, 1] pixels.
    pub std: &'static [f64],
}

const CIFAR_MEAN: &[f64] = &[0.4914, 0.4822, 0.4465];
const CIFAR_STD: &[f64] = &[0.2023, 0.1994, 0.2010];

/// The datasets known by name. CIFAR-100 uses the CIFAR-10 normalisation constants (the paper's).
pub const KNOWN: &[Known] = &[
    Known {
        name: "mnist",
        aliases: &[],
        format: Format::Idx,
        num_classes: 10,
        mean: &[0.1307],
        std: &[0.3081],
    },
    Known {
        name: "fashion-mnist",
        aliases: &["fashion_mnist", "fashionmnist"],
        format: Format::Idx,
        num_classes: 10,
        mean: &[0.2860],
        std: &[0.3530],
    },
    Known {
        name: "cifar10",
        aliases: &["cifar-10"],
        format: Format::Cifar10,
        num_classes: 10,
        mean: CIFAR_MEAN,
        std: CIFAR_STD,
    },
    Known {
        name: "cifar100",
        aliases: &["cifar-100"],
        format: Format::Cifar100,
        num_classes: 100,
        mean: CIFAR_MEAN,
        std: CIFAR_STD,
    },
];

/// The known dataset called `name` (case-insensitive, aliases accepted), if any.
pub fn known(name: &str) -> Option<&'static Known> {
    let lower = name.to_ascii_lowercase();
    KNOWN
        .iter()
        .find(|k| k.name == lower || k.aliases.contains(&lower.as_str()))
}

/// Whether `s` should be read as a directory path rather than a dataset name.
pub(crate) fn looks_like_path(s: &str) -> bool {
    s.contains('/') || s.contains(std::path::MAIN_SEPARATOR) || s.starts_with('.')
}

/// The error for a name that is neither a known dataset nor an existing directory.
pub(crate) fn unknown_name(name: &str) -> Error {
    let names: Vec<&str> = KNOWN.iter().map(|k| k.name).collect();
    Error::Data(format!(
        "unknown dataset '{name}': known datasets are {}; or pass a directory holding IDX or CIFAR binary \
         files (e.g. --data ./my-data)",
        names.join(", ")
    ))
}

/// The directories searched for known datasets (each entry is a root; `<root>/<name>` is looked in).
#[derive(Debug, Clone, Default)]
pub struct Locations {
    /// `$NTK_PIPELINE_DATA`.
    pub env_dir: Option<PathBuf>,
    /// `./datasets` (absolute).
    pub cwd_dir: Option<PathBuf>,
    /// `<crate root>/datasets`.
    pub crate_dir: Option<PathBuf>,
    /// `/usr/share/datasets`.
    pub system_dir: Option<PathBuf>,
    /// Download cache root (`$XDG_CACHE_HOME/ntk-pipeline` or `~/.cache/ntk-pipeline`).
    pub cache_dir: Option<PathBuf>,
    /// `$NTK_PIPELINE_DOWNLOAD_BASE`: replaces the official base URL of every download.
    pub download_base: Option<String>,
}

impl Locations {
    /// The locations from this process's environment and working directory.
    pub fn from_env() -> Self {
        let cwd = std::env::current_dir().ok();
        Self::from_lookup(|k| std::env::var_os(k), cwd.as_deref())
    }

    /// The locations for the environment variables given by `var` and the working directory `cwd`.
    pub fn from_lookup(var: impl Fn(&str) -> Option<OsString>, cwd: Option<&Path>) -> Self {
        let nonempty = |k: &str| var(k).filter(|v| !v.is_empty());
        let cache_dir = match nonempty("XDG_CACHE_HOME").map(PathBuf::from) {
            Some(x) if x.is_absolute() => Some(x.join("ntk-pipeline")),
            _ => nonempty("HOME").map(|h| PathBuf::from(h).join(".cache").join("ntk-pipeline")),
        };
        Locations {
            env_dir: nonempty("NTK_PIPELINE_DATA").map(PathBuf::from),
            cwd_dir: cwd.map(|c| c.join("datasets")),
            crate_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets")),
            system_dir: Some(PathBuf::from("/usr/share/datasets")),
            cache_dir,
            download_base: nonempty("NTK_PIPELINE_DOWNLOAD_BASE")
                .and_then(|s| s.into_string().ok()),
        }
    }

    /// Only a cache directory: nothing shipped or installed is seen (for tests).
    pub fn cache_only(cache_dir: impl Into<PathBuf>) -> Self {
        Locations {
            cache_dir: Some(cache_dir.into()),
            ..Default::default()
        }
    }

    /// The candidate directories for dataset `name`, in search order, without duplicates.
    pub fn candidates(&self, data_dir: Option<&Path>, name: &str) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        if let Some(d) = data_dir {
            out.push(d.join(name));
            out.push(d.to_path_buf());
        }
        let roots = [
            &self.env_dir,
            &self.cwd_dir,
            &self.crate_dir,
            &self.system_dir,
            &self.cache_dir,
        ];
        for root in roots.into_iter().flatten() {
            out.push(root.join(name));
        }
        let mut seen = Vec::new();
        out.retain(|p| {
            let key = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            let fresh = !seen.contains(&key);
            seen.push(key);
            fresh
        });
        out
    }
}

/// What a directory holds for one split of one format.
#[derive(Debug)]
pub(crate) enum Located {
    /// All files needed, in reading order.
    Found(Vec<PathBuf>),
    /// Some files are there, these are missing.
    Incomplete(Vec<String>),
    /// None of the files are there.
    Absent,
}

/// Looks for the files of `format`/`split` in `dir`.
pub(crate) fn locate(format: Format, dir: &Path, split: Split) -> Located {
    match format {
        Format::Idx => idx::locate(dir, split),
        Format::Cifar10 | Format::Cifar100 => cifar::locate(format, dir, split),
    }
}

/// A short description of the files a split of `format` consists of (for error messages).
pub(crate) fn expected_files(format: Format, split: Split) -> String {
    match (format, split) {
        (Format::Idx, Split::Train) => {
            "train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]".into()
        }
        (Format::Idx, Split::Test) => {
            "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]".into()
        }
        (Format::Cifar10, Split::Train) => {
            "data_batch_1.bin … data_batch_5.bin (directly or in cifar-10-batches-bin/)".into()
        }
        (Format::Cifar10, Split::Test) => {
            "test_batch.bin (directly or in cifar-10-batches-bin/)".into()
        }
        (Format::Cifar100, Split::Train) => "train.bin (directly or in cifar-100-binary/)".into(),
        (Format::Cifar100, Split::Test) => "test.bin (directly or in cifar-100-binary/)".into(),
    }
}

/// The first candidate directory holding `known`'s split; otherwise an error listing every path looked
/// in and how to get the data.
pub(crate) fn find(known: &Known, opts: &DataOptions, loc: &Locations) -> Result<PathBuf, Error> {
    let mut report = Vec::new();
    for dir in loc.candidates(opts.data_dir.as_deref(), known.name) {
        let note = match locate(known.format, &dir, opts.split) {
            Located::Found(_) => return Ok(dir),
            Located::Incomplete(missing) => format!("incomplete: missing {}", missing.join(", ")),
            Located::Absent if dir.is_dir() => "no data files".to_string(),
            Located::Absent => "does not exist".to_string(),
        };
        report.push(format!("  {} ({note})", dir.display()));
    }
    let remote = download::remote(known);
    let cache = loc
        .cache_dir
        .as_ref()
        .map(|c| c.join(known.name).display().to_string())
        .unwrap_or_else(|| "the cache (set XDG_CACHE_HOME or HOME)".into());
    let mut how = format!(
        "run with --download (fetches {} from {}, MD5-checked, into {cache})",
        remote
            .files
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        remote.base_url
    );
    if let [f] = remote.files.as_slice() {
        if f.unpack == download::Unpack::TarGz {
            how.push_str(&format!(
                ", or by hand: download {}{}, check that its MD5 is {}, and unpack it with `mkdir -p \
                 {cache} && tar xzf {} -C {cache}`",
                remote.base_url, f.name, f.md5, f.name
            ));
        }
    }
    if known.name == "fashion-mnist" {
        how.push_str(", or install the Debian package: apt-get install dataset-fashion-mnist");
    }
    Err(Error::Data(format!(
        "{} ({} split) not found. Looked in:\n{}\nTo get it: {how}; or put {} into one of these directories \
         (or into a directory given with --data-dir, or $NTK_PIPELINE_DATA/{}).",
        known.name,
        opts.split.as_str(),
        report.join("\n"),
        expected_files(known.format, opts.split),
        known.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_follow_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let l = Locations::from_lookup(
            env(&[
                ("XDG_CACHE_HOME", "/xdg"),
                ("HOME", "/home/u"),
                ("NTK_PIPELINE_DATA", "/data"),
                ("NTK_PIPELINE_DOWNLOAD_BASE", "http://127.0.0.1:9/x"),
            ]),
            Some(Path::new("/work")),
        );
        assert_eq!(l.cache_dir.as_deref(), Some(Path::new("/xdg/ntk-pipeline")));
        assert_eq!(l.env_dir.as_deref(), Some(Path::new("/data")));
        assert_eq!(l.download_base.as_deref(), Some("http://127.0.0.1:9/x"));
        let c = l.candidates(Some(Path::new("/dd")), "mnist");
        let want = [
            "/dd/mnist",
            "/dd",
            "/data/mnist",
            "/work/datasets/mnist",
            concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/mnist"),
            "/usr/share/datasets/mnist",
            "/xdg/ntk-pipeline/mnist",
        ];
        assert_eq!(c, want.iter().map(PathBuf::from).collect::<Vec<_>>());
        // A relative or empty XDG_CACHE_HOME is ignored (XDG spec): fall back to ~/.cache.
        let l =
            Locations::from_lookup(env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/home/u")]), None);
        assert_eq!(
            l.cache_dir.as_deref(),
            Some(Path::new("/home/u/.cache/ntk-pipeline"))
        );
        assert_eq!((l.env_dir, l.cwd_dir, l.download_base), (None, None, None));
    }

    #[test]
    fn names_and_aliases() {
        assert_eq!(known("CIFAR-10").map(|k| k.name), Some("cifar10"));
        assert_eq!(
            known("fashion_mnist").map(|k| k.name),
            Some("fashion-mnist")
        );
        assert!(known("imagenet").is_none());
        assert!(looks_like_path("./x") && looks_like_path("a/b") && !looks_like_path("mnist"));
    }
}
