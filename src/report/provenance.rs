//! Provenance: how a result was made. Every JSON document the tool writes carries a top-level `provenance`
//! object: tool version and git commit (when built from a checkout), the full command line, the model file's
//! sha256, the dataset's name and content checksum, threads and cores, start and end time (RFC 3339, UTC)
//! and whether the run resumed from a checkpoint.
//!
//! The pipeline records what it learns into one process-wide record ([`begin`], [`record_model`],
//! [`record_dataset`], [`record_resumed`]); [`write_json`] adds the record to each document as it writes it.

use crate::data::Dataset;
use crate::{Error, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

/// The git commit the binary was built from (set by build.rs when built from a checkout).
pub const GIT_COMMIT: Option<&str> = option_env!("NTK_PIPELINE_GIT_COMMIT");

/// The model file a run read.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRecord {
    /// The file as resolved (a local path or a Hugging Face cache path).
    pub path: String,
    /// sha256 of the file's bytes.
    pub sha256: String,
}

/// The dataset a run read.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetRecord {
    /// Dataset name (or directory).
    pub name: String,
    /// `train` or `test`.
    pub split: String,
    /// Examples in the split.
    pub examples: usize,
    /// sha256 of the split's content: every image's raw bytes then every label as u32 little-endian, in
    /// dataset order (independent of how the files are compressed).
    pub content_sha256: String,
}

/// What is known about the current run.
#[derive(Debug, Clone, Default)]
struct Record {
    command_line: Vec<String>,
    started: Option<SystemTime>,
    model: Option<ModelRecord>,
    dataset: Option<DatasetRecord>,
    resumed: bool,
}

static RECORD: Mutex<Option<Record>> = Mutex::new(None);

/// Apply `f` to the record (created on first use).
fn with_record<T>(f: impl FnOnce(&mut Record) -> T) -> T {
    let mut guard = RECORD.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(Record::default))
}

/// Start the record of this run: the command line and the start time.
pub fn begin() {
    with_record(|r| {
        r.command_line = std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        r.started = Some(SystemTime::now());
    });
}

/// Record the model file read from `path` (hashing it); returns its sha256.
pub fn record_model(path: &Path) -> Result<String> {
    let sha256 = file_sha256(path)?;
    with_record(|r| {
        r.model = Some(ModelRecord {
            path: path.display().to_string(),
            sha256: sha256.clone(),
        })
    });
    Ok(sha256)
}

/// Record the dataset split read; returns its content sha256.
pub fn record_dataset(data: &Dataset) -> String {
    let sha = match data.content_sha256() {
        // Measured while reading (a dataset read for a run holds only the examples it uses).
        Some(sha) => sha.to_string(),
        None => {
            let mut h = Sha256::new();
            for i in 0..data.len() {
                if let Some(img) = data.raw_image(i) {
                    h.update(img);
                }
            }
            for l in data.labels() {
                h.update(l.to_le_bytes());
            }
            format!("{:x}", h.finalize())
        }
    };
    with_record(|r| {
        r.dataset = Some(DatasetRecord {
            name: data.name().to_string(),
            split: data.split().as_str().to_string(),
            examples: data.len(),
            content_sha256: sha.clone(),
        })
    });
    sha
}

/// Record that (part of) the result came from a checkpoint.
pub fn record_resumed() {
    with_record(|r| r.resumed = true);
}

/// sha256 of a file's bytes, as lower-case hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The `provenance` object as of now (its `finished` time is now).
pub fn json() -> serde_json::Value {
    let r = with_record(|r| r.clone());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    serde_json::json!({
        "tool": "ntk-pipeline",
        "version": env!("CARGO_PKG_VERSION"),
        "git_commit": GIT_COMMIT,
        "command_line": r.command_line,
        "model": r.model,
        "dataset": r.dataset,
        "threads": rayon::current_num_threads(),
        "cores": cores,
        "started": r.started.map(rfc3339),
        "finished": rfc3339(SystemTime::now()),
        "resumed": r.resumed,
    })
}

/// Serialise `value` as pretty JSON with a top-level `provenance` object (when it is a JSON object) and
/// write it atomically to `path`.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut v = serde_json::to_value(value).map_err(|e| {
        Error::Internal(format!("cannot serialise JSON for {}: {e}", path.display()))
    })?;
    if let serde_json::Value::Object(obj) = &mut v {
        obj.insert("provenance".into(), json());
    }
    super::atomic::write_json(path, &v)
}

/// `t` as RFC 3339 in UTC with whole seconds, e.g. `2026-12-01T09:36:29Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_matches_known_dates() {
        let at = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        // `date -u -d @951782400` (a leap day) and `date -u -d @1798450589`.
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_798_450_589), "2026-12-28T09:36:29Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    }
}
