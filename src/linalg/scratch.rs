//! The on-disk scratch store of MEMDET: one file holding the finished tiles (k, j), k ≤ j, of every block
//! column but the last, column after column, each tile column-major. A later column re-reads this file's
//! prefix sequentially.
//!
//! Without a checkpoint the file lives in a private temporary directory holding a lock file with the pid
//! (removed on drop, so also on error and after a signal; a later run removes directories of dead pids).
//! With `--checkpoint DIR` it is `DIR/tiles.f64` and survives the process (see `checkpoint.rs`).

use super::budget::BlockPlan;
use super::checkpoint::TILES_NAME;
use super::lockfile;
use super::tile_buf::Tile;
use crate::signals::CleanupGuard;
use crate::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Tiles of the factor on disk, with byte counters and an optional size cap (to simulate a full disk).
pub struct ScratchStore {
    // Field order matters: the file is closed before the directory is removed, and the directory is
    // removed before it leaves the signal clean-up list.
    file: File,
    path: PathBuf,
    dir: Option<tempfile::TempDir>,
    _cleanup: Option<CleanupGuard>,
    location: PathBuf,
    plan: BlockPlan,
    column_offset: Vec<u64>,
    cap: Option<u64>,
    written: AtomicU64,
    read: AtomicU64,
    tiles_written: AtomicU64,
    tiles_read: AtomicU64,
}

impl std::fmt::Debug for ScratchStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchStore")
            .field("path", &self.path)
            .field("plan", &self.plan)
            .finish()
    }
}

impl ScratchStore {
    /// Create the store in a fresh temporary directory under `parent` (default: the OS temp dir), after
    /// removing the scratch directories there of runs that no longer exist.
    pub fn create(parent: Option<&Path>, plan: BlockPlan, cap: Option<u64>) -> Result<Self> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let removed = lockfile::remove_stale_scratch(&parent);
        if removed > 0 {
            crate::progress::notice(&format!(
                "note: removed {removed} scratch director{} of killed runs from {}",
                if removed == 1 { "y" } else { "ies" },
                parent.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix(lockfile::SCRATCH_PREFIX)
            .tempdir_in(&parent)
            .map_err(|e| {
                Error::Scratch(format!(
                "cannot create a scratch directory in {}: {e}; choose a writable directory with --scratch-dir",
                parent.display()
            ))
            })?;
        let cleanup = crate::signals::remove_on_exit(dir.path());
        lockfile::write_lock(dir.path())?;
        let path = dir.path().join(TILES_NAME);
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::Scratch(format!("cannot create {}: {e}", path.display())))?;
        let location = dir.path().to_path_buf();
        Ok(Self::with_file(
            file,
            path,
            Some(dir),
            Some(cleanup),
            location,
            plan,
            cap,
        ))
    }

    /// Open the persistent store `dir/tiles.f64` of a checkpoint (truncated unless `keep` is true, when
    /// the tiles of the complete columns are reused).
    pub fn open_checkpoint(
        dir: &Path,
        plan: BlockPlan,
        cap: Option<u64>,
        keep: bool,
    ) -> Result<Self> {
        let path = dir.join(TILES_NAME);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!keep)
            .open(&path)
            .map_err(|e| {
                Error::Scratch(format!(
                    "cannot open {}: {e}; check the --checkpoint directory",
                    path.display()
                ))
            })?;
        Ok(Self::with_file(
            file,
            path,
            None,
            None,
            dir.to_path_buf(),
            plan,
            cap,
        ))
    }

    fn with_file(
        file: File,
        path: PathBuf,
        dir: Option<tempfile::TempDir>,
        cleanup: Option<CleanupGuard>,
        location: PathBuf,
        plan: BlockPlan,
        cap: Option<u64>,
    ) -> Self {
        let mut column_offset = Vec::with_capacity(plan.num_blocks + 1);
        let mut offset = 0u64;
        for j in 0..plan.num_blocks {
            column_offset.push(offset);
            offset += 8 * plan.range(j).end as u64 * plan.len(j) as u64;
        }
        column_offset.push(offset);
        Self {
            file,
            path,
            dir,
            _cleanup: cleanup,
            location,
            plan,
            column_offset,
            cap,
            written: AtomicU64::new(0),
            read: AtomicU64::new(0),
            tiles_written: AtomicU64::new(0),
            tiles_read: AtomicU64::new(0),
        }
    }

    /// The directory holding the store (a private one is removed when the store is dropped).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(&self.location, |d| d.path())
    }

    /// Flush the written tiles to the disk (before a checkpoint manifest calls them complete).
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| self.io_error("sync", e))
    }

    /// Bytes the tiles of the first `columns` block columns occupy (where column `columns` starts).
    pub fn bytes_before_column(&self, columns: usize) -> u64 {
        self.column_offset[columns.min(self.plan.num_blocks)]
    }

    /// Byte offset and element count of tile (k, j), k ≤ j.
    fn locate(&self, k: usize, j: usize) -> (u64, usize) {
        let rows_before = self.plan.range(k).start as u64;
        let width = self.plan.len(j);
        let offset = self.column_offset[j] + 8 * rows_before * width as u64;
        (offset, self.plan.len(k) * width)
    }

    /// Store tile (k, j); `tile` must be len(k) × len(j).
    pub fn write(&self, k: usize, j: usize, tile: &Tile) -> Result<()> {
        let (offset, count) = self.locate(k, j);
        if tile.data().len() != count {
            return Err(Error::Internal(format!(
                "scratch write of tile ({k},{j}) with {} values, expected {count}",
                tile.data().len()
            )));
        }
        let bytes = 8 * count as u64;
        let total = self.written.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if let Some(cap) = self.cap {
            if total > cap {
                return Err(Error::Scratch(format!(
                    "scratch space exhausted in {}: {total} bytes needed, only {cap} available; free space, \
                     use another --scratch-dir, or raise --max-mem so that fewer blocks spill",
                    self.dir().display()
                )));
            }
        }
        self.file
            .write_all_at(as_bytes(tile.data()), offset)
            .map_err(|e| self.io_error("write", e))?;
        self.tiles_written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Load tile (k, j) into `tile` (reshaped to len(k) × len(j); its capacity must suffice).
    pub fn read(&self, k: usize, j: usize, tile: &mut Tile) -> Result<()> {
        let (offset, _) = self.locate(k, j);
        tile.reshape(self.plan.len(k), self.plan.len(j))?;
        self.file
            .read_exact_at(as_bytes_mut(tile.data_mut()), offset)
            .map_err(|e| self.io_error("read", e))?;
        self.read
            .fetch_add(8 * tile.data().len() as u64, Ordering::Relaxed);
        self.tiles_read.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Turn an OS error into a scratch error that says where and what to do.
    fn io_error(&self, what: &str, e: std::io::Error) -> Error {
        let hint = if e.raw_os_error() == Some(28) {
            "the disk is full; free space, use another --scratch-dir, or raise --max-mem"
        } else {
            "check the --scratch-dir"
        };
        Error::Scratch(format!(
            "cannot {what} {}: {e}; {hint}",
            self.path.display()
        ))
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Tiles written so far.
    pub fn tiles_written(&self) -> u64 {
        self.tiles_written.load(Ordering::Relaxed)
    }

    /// Tiles read so far.
    pub fn tiles_read(&self) -> u64 {
        self.tiles_read.load(Ordering::Relaxed)
    }
}

/// Bytes free for unprivileged users on the filesystem holding `dir` (None when it cannot be asked).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statvfs is a valid out-parameter; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Refuse to start when the filesystem of `dir` has less than `need` bytes free (the plan's scratch bytes
/// still to write): a full disk would otherwise show up hours into the run.
pub fn check_free_space(dir: &Path, need: u64) -> Result<()> {
    let Some(free) = free_bytes(dir) else {
        return Ok(());
    };
    if need > free {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(Error::Scratch(format!(
            "the plan needs {:.2} GiB of scratch in {} but only {:.2} GiB are free; free space, choose another \
             --scratch-dir (or --checkpoint directory), or raise --max-mem so that fewer blocks spill",
            gib(need),
            dir.display(),
            gib(free)
        )));
    }
    Ok(())
}

/// The bytes of an f64 slice (native endianness; the store is private to this process).
fn as_bytes(v: &[f64]) -> &[u8] {
    // SAFETY: f64 has no padding and u8 has alignment 1; the length is scaled by the element size.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// The bytes of a mutable f64 slice (every bit pattern is a valid f64).
fn as_bytes_mut(v: &mut [f64]) -> &mut [u8] {
    // SAFETY: as above, and any byte pattern written through the view is a valid f64.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}
