//! The pre-flight check of output paths, made by every subcommand before any work, so that a typo in
//! `--json` or `--plot` is reported in a second rather than after a multi-hour run.

use super::atomic::{parent_dir, resolve_output};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Check every output a subcommand will write, each given as `(flag, path)` (`None` when not asked for):
/// the path is not empty and not a directory, it may be written under [`super::AtomicFile`]'s rules (a
/// regular file or a new file; symbolic links followed), its directory exists and a file can be created
/// there, and no two outputs name the same file. Errors are usage errors (exit 2) naming the flag.
pub fn check_outputs(outputs: &[(&str, Option<&Path>)]) -> Result<()> {
    let mut seen: Vec<(&str, PathBuf)> = Vec::new();
    for &(flag, path) in outputs {
        let Some(path) = path else { continue };
        let target = check_output(flag, path)?;
        let key = canonical_key(&target);
        if let Some((other, _)) = seen.iter().find(|(_, k)| *k == key) {
            return Err(Error::Usage(format!(
                "{flag} {} and {other} name the same file; give each output its own path",
                path.display()
            )));
        }
        seen.push((flag, key));
    }
    Ok(())
}

/// Check one output path; returns its final target (symbolic links resolved).
fn check_output(flag: &str, path: &Path) -> Result<PathBuf> {
    let with_flag = |e: Error| match e {
        Error::Usage(msg) => Error::Usage(format!("{flag} {msg}")),
        other => other,
    };
    if path.as_os_str().is_empty() {
        return Err(Error::Usage(format!("{flag}: the path is empty")));
    }
    let target = resolve_output(path).map_err(with_flag)?;
    let dir = parent_dir(&target);
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Error::Usage(format!(
                "{flag} {}: {} is not a directory",
                path.display(),
                dir.display()
            )))
        }
        Err(e) => {
            return Err(Error::Usage(format!(
                "{flag} {}: its directory {} cannot be used ({e}); create it first",
                path.display(),
                dir.display()
            )))
        }
    }
    // The only reliable test of "a file can be created here" (read-only mounts, ACLs, root) is to try.
    tempfile::Builder::new()
        .prefix(".ntk-pipeline-probe-")
        .tempfile_in(dir)
        .map_err(|e| {
            Error::Usage(format!(
                "{flag} {}: cannot create a file in {} ({e}); choose a writable directory",
                path.display(),
                dir.display()
            ))
        })?;
    Ok(target)
}

/// A path to compare outputs by: the canonical directory joined with the file name.
fn canonical_key(target: &Path) -> PathBuf {
    let dir =
        std::fs::canonicalize(parent_dir(target)).unwrap_or_else(|_| parent_dir(target).into());
    match target.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}
