//! Writing result files atomically: a temporary file in the target's directory, renamed over it on success,
//! so a failed or interrupted run leaves no half-written output.
//!
//! What an output path may be (checked up front by [`super::output_path::check_outputs`] and again here):
//! - a new file in an existing, writable directory: created with mode `0666 & !umask`, as `>` would;
//! - an existing regular file: replaced by the rename, keeping its permission bits;
//! - a symbolic link: followed to its final target, which is then written as above, so the link stays a link;
//! - anything else that exists (directory, device node such as `/dev/null`, FIFO, socket) is refused:
//!   renaming a temporary file onto it would destroy it.

use crate::{Error, Result};
use serde::Serialize;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Symbolic links followed before giving up (Linux's own limit is 40).
const MAX_LINKS: usize = 40;

/// A file being written to a temporary name next to its target; [`AtomicFile::commit`] renames it into place.
/// Dropped without commit, the temporary file is removed and the target is untouched.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    /// Removes the temporary file if a signal ends the process before the commit (after `tmp`, so that
    /// an ordinary drop removes the file first).
    _cleanup: crate::signals::CleanupGuard,
    /// The final target (symbolic links resolved).
    target: PathBuf,
    /// The path as the user gave it, for messages.
    shown: PathBuf,
}

impl AtomicFile {
    /// Start writing `path`: resolve symbolic links, refuse a target that is not a regular file, and create
    /// the temporary file in the target's directory.
    pub fn create(path: &Path) -> Result<Self> {
        let target = resolve_output(path)?;
        let dir = parent_dir(&target);
        let tmp = tempfile::Builder::new()
            .prefix(".ntk-pipeline-")
            .suffix(".tmp")
            .permissions(new_file_permissions())
            .tempfile_in(dir)
            .map_err(|e| Error::io("cannot create a temporary file next to", path, e))?;
        let cleanup = crate::signals::remove_on_exit(tmp.path());
        Ok(Self {
            tmp,
            _cleanup: cleanup,
            target,
            shown: path.to_path_buf(),
        })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Flush to disk and rename onto the target. The target is checked again, since it may have changed
    /// since [`AtomicFile::create`]; an existing regular file's permission bits are kept.
    pub fn commit(self) -> Result<()> {
        let shown = self.shown;
        let target = resolve_output(&shown)?;
        if target != self.target {
            return Err(Error::Usage(format!(
                "{} changed while it was being written (it now leads to {}); nothing was written",
                shown.display(),
                target.display()
            )));
        }
        if let Ok(meta) = std::fs::metadata(&target) {
            self.tmp
                .as_file()
                .set_permissions(meta.permissions())
                .map_err(|e| Error::io("cannot set the permissions of", &shown, e))?;
        }
        self.tmp
            .as_file()
            .sync_all()
            .map_err(|e| Error::io("cannot write", &shown, e))?;
        self.tmp
            .persist(&target)
            .map_err(|e| Error::io("cannot rename the temporary file to", &shown, e.error))?;
        Ok(())
    }
}

/// Write `bytes` to `path` atomically (see the module docs for what `path` may be).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut out = AtomicFile::create(path)?;
    out.file()
        .write_all(bytes)
        .map_err(|e| Error::io("cannot write", path, e))?;
    out.commit()
}

/// Serialise `value` as pretty JSON and write it atomically to `path`.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| {
        Error::Internal(format!("cannot serialise JSON for {}: {e}", path.display()))
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// The file an output path finally names: symbolic links followed (a dangling link names the file it
/// would create). Errors when that file exists and is not a regular file, or the links loop.
pub fn resolve_output(path: &Path) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        return Err(Error::Usage("an output path is empty".into()));
    }
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        let meta = match std::fs::symlink_metadata(&current) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(Error::io("cannot inspect", path, e)),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            let link = std::fs::read_link(&current)
                .map_err(|e| Error::io("cannot read the symbolic link", &current, e))?;
            current = parent_dir(&current).join(link);
        } else if kind.is_file() {
            return Ok(current);
        } else {
            return Err(not_a_regular_file(path, &current, &meta));
        }
    }
    Err(Error::Usage(format!(
        "{}: more than {MAX_LINKS} symbolic links (a loop?); give a plain file path",
        path.display()
    )))
}

/// The directory a file lives in (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The error for an existing output target that a rename would destroy.
fn not_a_regular_file(path: &Path, target: &Path, meta: &std::fs::Metadata) -> Error {
    let what = describe(meta);
    let via = if target == path {
        String::new()
    } else {
        format!(" (via symbolic link to {})", target.display())
    };
    Error::Usage(format!(
        "{}{via} is {what}, not a regular file: results are written to a temporary file and renamed into \
         place, which would replace it; give a file path",
        path.display()
    ))
}

/// "a directory", "a character device", ... for messages.
fn describe(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Permissions asked for at creation: 0666, which the kernel reduces by the umask, as for `>` in a shell.
fn new_file_permissions() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o666)
}
