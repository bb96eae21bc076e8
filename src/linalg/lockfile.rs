//! Lock files naming the process that owns a scratch or checkpoint directory (`<pid> <host>`), so that a
//! later run can tell a directory of a live run from one left by a killed run, and remove the latter.
//!
//! A directory is stale only when its lock names this host and a pid that no longer exists: on a shared
//! filesystem a directory of a run on another node is never touched. A reused pid makes a dead run look
//! alive, which only delays the clean-up.

use crate::{Error, Result};
use std::path::Path;
use std::time::Duration;

/// The lock file's name inside a locked directory.
pub const LOCK_NAME: &str = "lock";

/// Prefix of MEMDET scratch directories (the parent may hold other files).
pub const SCRATCH_PREFIX: &str = "ntk-memdet-";

/// Scratch directories without a lock (made by older versions) are removed once older than this.
const UNLOCKED_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Process id.
    pub pid: i32,
    /// Host name.
    pub host: String,
}

impl Owner {
    /// This process on this host.
    pub fn me() -> Self {
        Self {
            pid: std::process::id() as i32,
            host: host_name(),
        }
    }

    /// True when the owner is a process of this host that no longer exists.
    pub fn is_dead_here(&self) -> bool {
        self.host == host_name() && !pid_alive(self.pid)
    }
}

/// This machine's host name (empty if unknown).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on success.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    if !ok {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Whether process `pid` exists (signal 0 checks without sending anything).
fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for the process.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Write `dir/lock` naming this process.
pub fn write_lock(dir: &Path) -> Result<()> {
    let me = Owner::me();
    let path = dir.join(LOCK_NAME);
    std::fs::write(&path, format!("{} {}\n", me.pid, me.host)).map_err(|e| {
        Error::Scratch(format!(
            "cannot write the lock file {}: {e}",
            path.display()
        ))
    })
}

/// The owner named by `dir/lock`, if the file exists and parses.
pub fn read_lock(dir: &Path) -> Option<Owner> {
    let text = std::fs::read_to_string(dir.join(LOCK_NAME)).ok()?;
    let mut parts = text.split_whitespace();
    let pid = parts.next()?.parse().ok()?;
    let host = parts.next().unwrap_or("").to_string();
    Some(Owner { pid, host })
}

/// Remove the scratch directories under `parent` left by runs that no longer exist. Failures are ignored:
/// this is housekeeping. Returns how many were removed.
pub fn remove_stale_scratch(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(SCRATCH_PREFIX) {
            continue;
        }
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let stale = match read_lock(&path) {
            Some(owner) => owner.is_dead_here(),
            None => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > UNLOCKED_MAX_AGE),
        };
        if stale && std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// A lock on a directory (a checkpoint) held by this process; the lock file is removed on drop.
#[derive(Debug)]
pub struct DirLock {
    path: std::path::PathBuf,
}

impl DirLock {
    /// Lock `dir`, refusing when a live process of this host holds it already. A lock of a dead process,
    /// or of another host (a job requeued on another node), is taken over.
    pub fn acquire(dir: &Path) -> Result<Self> {
        if let Some(owner) = read_lock(dir) {
            let me = Owner::me();
            if owner != me && owner.host == me.host && !owner.is_dead_here() {
                return Err(Error::Usage(format!(
                    "{} is in use by another run (pid {}); wait for it to end or use another directory",
                    dir.display(),
                    owner.pid
                )));
            }
        }
        write_lock(dir)?;
        Ok(Self {
            path: dir.join(LOCK_NAME),
        })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_pid_is_stale_and_a_live_one_is_not() {
        let parent = tempfile::tempdir().unwrap();
        let live = parent.path().join("ntk-memdet-live");
        let dead = parent.path().join("ntk-memdet-dead");
        let other_host = parent.path().join("ntk-memdet-elsewhere");
        for d in [&live, &dead, &other_host] {
            std::fs::create_dir(d).unwrap();
        }
        write_lock(&live).unwrap();
        // A child that has exited and been reaped: its pid no longer exists.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        std::fs::write(dead.join(LOCK_NAME), format!("{pid} {}\n", host_name())).unwrap();
        std::fs::write(other_host.join(LOCK_NAME), format!("{pid} not-this-host\n")).unwrap();
        assert_eq!(remove_stale_scratch(parent.path()), 1);
        assert!(live.exists() && other_host.exists() && !dead.exists());
    }
}
