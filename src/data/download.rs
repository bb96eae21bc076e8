//! `--download`: fetch a dataset's official files over HTTP, verify their MD5, unpack them into the cache.
//!
//! Everything is first written to a temporary folder inside the cache root and moved to
//! `<cache>/<name>/` only after every file's checksum matched, so a failed or corrupt download leaves
//! nothing behind. `$NTK_PIPELINE_DOWNLOAD_BASE` (see [`super::Locations`]) replaces the official base URL,
//! e.g. for a mirror or a test server; the checksums stay the official ones. Tests that serve a synthetic
//! archive call [`fetch`] with a [`Remote`] carrying that archive's own checksum. Ctrl-C (when the CLI's
//! handler is installed) stops the transfer and removes the temporary folder; folders left by a killed
//! process are removed by the next download after a day.

use super::idx;
use super::resolve::{Format, Known};
use crate::progress::Progress;
use crate::{Error, Result};
use md5::{Digest, Md5};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a file's MD5 is computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The downloaded bytes.
    Download,
    /// The gunzipped content (MNIST publishes checksums of the uncompressed files).
    Content,
}

/// What to do with a verified file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpack {
    /// Extract a `.tar.gz` archive (its top-level folder lands in `<cache>/<name>/`).
    TarGz,
    /// Keep the file as it is (IDX `.gz` files are read compressed).
    Keep,
}

/// One file to download.
#[derive(Debug, Clone)]
pub struct RemoteFile {
    /// File name, appended to the base URL.
    pub name: String,
    /// Expected lower-case hex MD5.
    pub md5: String,
    /// What the MD5 covers.
    pub verify: Verify,
    /// How to store it.
    pub unpack: Unpack,
}

/// Where a dataset is published and which files make it up.
#[derive(Debug, Clone)]
pub struct Remote {
    /// Official base URL (ends with `/`).
    pub base_url: String,
    /// The files.
    pub files: Vec<RemoteFile>,
}

/// The official source of a known dataset.
pub fn remote(known: &Known) -> Remote {
    let file = |name: &str, md5: &str, verify, unpack| RemoteFile {
        name: name.to_string(),
        md5: md5.to_string(),
        verify,
        unpack,
    };
    match (known.format, known.name) {
        (Format::Cifar10, _) => Remote {
            base_url: "https://www.cs.toronto.edu/~kriz/".into(),
            files: vec![file(
                "cifar-10-binary.tar.gz",
                "c32a1d4ab5d03f1284b67883e8d87530",
                Verify::Download,
                Unpack::TarGz,
            )],
        },
        (Format::Cifar100, _) => Remote {
            base_url: "https://www.cs.toronto.edu/~kriz/".into(),
            files: vec![file(
                "cifar-100-binary.tar.gz",
                "03b5dce01913d631647c71ecec9e9cb8",
                Verify::Download,
                Unpack::TarGz,
            )],
        },
        (Format::Idx, "fashion-mnist") => Remote {
            // Checksums of the .gz files as published in the Fashion-MNIST README.
            base_url: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/".into(),
            files: [
                (
                    "train-images-idx3-ubyte.gz",
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                ),
                (
                    "train-labels-idx1-ubyte.gz",
                    "25c81989df183df01b3e8a0aad5dffbe",
                ),
                (
                    "t10k-images-idx3-ubyte.gz",
                    "bef4ecab320f06d8554ea6380940ec79",
                ),
                (
                    "t10k-labels-idx1-ubyte.gz",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
            ]
            .iter()
            .map(|(n, m)| file(n, m, Verify::Download, Unpack::Keep))
            .collect(),
        },
        (Format::Idx, _) => Remote {
            // A public mirror of the original files; checksums are over the uncompressed content.
            base_url: "https://ossci-datasets.s3.amazonaws.com/mnist/".into(),
            files: idx::MNIST_MD5
                .iter()
                .map(|(key, m)| {
                    let ndims = if key.ends_with("images") { 3 } else { 1 };
                    file(
                        &format!("{key}-idx{ndims}-ubyte.gz"),
                        m,
                        Verify::Content,
                        Unpack::Keep,
                    )
                })
                .collect(),
        },
    }
}

/// Downloads, verifies and unpacks `remote` into `cache_dir/name/`; returns that directory.
/// `base_override` replaces `remote.base_url`.
pub fn fetch(
    name: &str,
    remote: &Remote,
    base_override: Option<&str>,
    cache_dir: &Path,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    std::fs::create_dir_all(cache_dir)
        .map_err(|e| Error::io("cannot create cache directory", cache_dir, e))?;
    remove_stale_staging(cache_dir);
    let stage = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache_dir)
        .map_err(|e| Error::io("cannot create a temporary folder in", cache_dir, e))?;
    let _cleanup = crate::signals::remove_on_exit(stage.path());
    let unpacked = stage.path().join("unpacked");
    std::fs::create_dir(&unpacked).map_err(|e| Error::io("cannot create", &unpacked, e))?;
    let target = cache_dir.join(name);
    let base = base_override.unwrap_or(&remote.base_url);
    for f in &remote.files {
        let url = format!("{}/{}", base.trim_end_matches('/'), f.name);
        let tmp = stage.path().join(&f.name);
        let digest = http_get(&url, &tmp, &target, progress)?;
        let got = match f.verify {
            Verify::Download => digest,
            Verify::Content => idx::md5_hex(&idx::read_maybe_gz(&tmp)?),
        };
        if got != f.md5 {
            return Err(Error::Data(format!(
                "checksum mismatch for {url}: MD5{} is {got}, expected {}; the download is corrupt or not the \
                 official file, and nothing was kept. Try again, or fetch it by hand, check its MD5 and put it \
                 (unpacked) into {}",
                if f.verify == Verify::Content { " of the uncompressed content" } else { "" },
                f.md5,
                target.display()
            )));
        }
        match f.unpack {
            Unpack::TarGz => untar(&tmp, &unpacked)?,
            Unpack::Keep => {
                let dest = unpacked.join(&f.name);
                std::fs::rename(&tmp, &dest)
                    .map_err(|e| Error::io("cannot move download to", dest, e))?;
            }
        }
    }
    install(&unpacked, &target)?;
    Ok(target)
}

/// GETs `url` into `dest`, reporting progress; returns the hex MD5 of the bytes received.
fn http_get(url: &str, dest: &Path, target: &Path, progress: &dyn Progress) -> Result<String> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .build();
    let resp = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, _)) => {
            return Err(Error::Data(format!("download of {url} failed: the server answered HTTP {code}")))
        }
        Err(ureq::Error::Transport(t)) if t.kind() == ureq::ErrorKind::UnknownScheme => {
            return Err(Error::Data(format!(
                "cannot download {url}: this build of ntk-pipeline has no HTTPS support. Fetch the file by \
                 hand (e.g. with curl), check its MD5 and put it (unpacked) into {}, or set \
                 NTK_PIPELINE_DOWNLOAD_BASE to an http:// mirror",
                target.display()
            )))
        }
        Err(ureq::Error::Transport(t)) => {
            return Err(Error::Data(format!(
                "cannot download {url}: {t}. Check the network connection, or fetch the file by hand and put \
                 it (unpacked) into {}",
                target.display()
            )))
        }
    };
    let expected: Option<u64> = resp
        .header("Content-Length")
        .and_then(|v| v.trim().parse().ok());
    let file_name = url.rsplit('/').next().unwrap_or(url);
    progress.start(&format!("download {file_name}"), expected.unwrap_or(0));
    let result = copy_hashing(resp.into_reader(), dest, progress, url);
    progress.finish();
    let (digest, bytes) = result?;
    if let Some(len) = expected.filter(|&len| len != bytes) {
        return Err(Error::Data(format!(
            "download of {url} was cut short: received {bytes} of {len} bytes; nothing was kept, try again"
        )));
    }
    Ok(digest)
}

/// Copies `reader` into a new file `dest`, hashing on the way; returns (hex MD5, byte count).
fn copy_hashing(
    mut reader: impl Read,
    dest: &Path,
    progress: &dyn Progress,
    url: &str,
) -> Result<(String, u64)> {
    let file = std::fs::File::create(dest).map_err(|e| Error::io("cannot create", dest, e))?;
    let mut out = BufWriter::new(file);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Data(format!(
                    "download of {url} failed after {total} bytes: {e}; nothing was kept, try again"
                )))
            }
        };
        if crate::signals::requested() {
            return Err(Error::Interrupted);
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("cannot write", dest, e))?;
        total += n as u64;
        progress.advance(n as u64);
    }
    out.flush()
        .map_err(|e| Error::io("cannot write", dest, e))?;
    Ok((idx::hex(&hasher.finalize()), total))
}

/// Extracts the `.tar.gz` at `archive` into `dir` (entries escaping `dir` are refused by `tar`).
fn untar(archive: &Path, dir: &Path) -> Result<()> {
    let file = std::fs::File::open(archive).map_err(|e| Error::io("cannot open", archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    tar.unpack(dir).map_err(|e| {
        Error::Data(format!(
            "cannot unpack {}: {e} (corrupt archive?)",
            archive.display()
        ))
    })
}

/// Moves every entry of `unpacked` into `target` (created if needed).
fn install(unpacked: &Path, target: &Path) -> Result<()> {
    std::fs::create_dir_all(target).map_err(|e| Error::io("cannot create", target, e))?;
    let entries = std::fs::read_dir(unpacked).map_err(|e| Error::io("cannot list", unpacked, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("cannot list", unpacked, e))?;
        let dest = target.join(entry.file_name());
        if dest.is_dir() {
            return Err(Error::Data(format!(
                "{} already exists but does not hold the complete data; remove it and run --download again",
                dest.display()
            )));
        }
        std::fs::rename(entry.path(), &dest)
            .map_err(|e| Error::io("cannot move download to", &dest, e))?;
    }
    Ok(())
}

/// Removes temporary download folders left by a killed process (older than a day, so that a download
/// running in another process is never touched). Failures are ignored: this is housekeeping only.
fn remove_stale_staging(cache_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(24 * 3600));
        if stale
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with(".download-")
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
