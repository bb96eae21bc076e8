//! Writing result files atomically: a temporary file in the target's directory, renamed over it on success,
//! so a failed or interrupted run leaves no half-written output.

use crate::{Error, Result};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` atomically: a temporary file in the same directory, renamed on success.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".ntk-pipeline-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io("cannot create a temporary file next to", path, e))?;
    let _cleanup = crate::signals::remove_on_exit(tmp.path());
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| Error::io("cannot write", path, e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("cannot rename the temporary file to", path, e.error))?;
    Ok(())
}

/// Serialise `value` as pretty JSON and write it atomically to `path`.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| {
        Error::Internal(format!("cannot serialise JSON for {}: {e}", path.display()))
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}
