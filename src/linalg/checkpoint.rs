//! Checkpoints of a MEMDET run (`--checkpoint DIR`): the scratch store's tile file lives in DIR, and after
//! every completed block column a manifest records what is being factored, the block plan, how many block
//! columns are complete and the per-row pivots so far, so that `--resume` continues after the last complete
//! column with a bitwise identical result.
//!
//! Consistency at any instant: column j's tiles go to their own region of `tiles.f64` (beyond every
//! complete column's), the file is synced, and only then is `manifest.json` replaced (write to a temporary
//! file, fsync, rename, fsync the directory). A kill leaves either the old or the new manifest, and the tiles of every
//! column it calls complete are on disk. Work lost to a kill is at most one block column.
//!
//! Exactness: the pivots are stored as f64 bit patterns (and LDLᵀ's D values likewise); the log-det and the
//! nested ℓ_k are compensated sums over those per-row pivots computed at the end, so no running sum state
//! needs saving. The remaining columns read the same factor tiles back bit for bit and request the same
//! source tiles, so they compute the same values (with the same number of threads).

use super::growth::GrowthMonitor;
use super::pivots::Pivots;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the manifest inside a checkpoint directory.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Name of the factor-tile file inside a checkpoint directory.
pub const TILES_NAME: &str = "tiles.f64";
/// Version of the manifest format.
const FORMAT: u32 = 2;

/// Where and how to checkpoint one MEMDET run.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The checkpoint directory (created if missing; put it on a persistent disk).
    pub dir: PathBuf,
    /// Continue the checkpoint found in `dir` (a missing checkpoint starts from the beginning).
    pub resume: bool,
    /// What is being factored, as (name, value) pairs the caller chooses (matrix file identity, or model
    /// sha256, data, sample order, kernel spec); MEMDET adds the block plan and the tool version.
    pub identity: Vec<(String, String)>,
}

/// The state saved after each complete block column.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// What is being factored and how (every entry must match on resume).
    pub identity: BTreeMap<String, String>,
    /// Block columns complete (their tiles are in `tiles.f64`, their pivots below).
    pub columns_done: usize,
    /// Blocks per side.
    pub num_blocks: usize,
    /// Bit patterns of log|pivot| of the rows of the complete columns.
    pub logabs_bits: Vec<u64>,
    /// Signs (+1 / −1) of those pivots.
    pub signs: Vec<i8>,
    /// What an LDLᵀ (`--assume sym`) run keeps between block columns; `None` for Cholesky.
    pub ldlt: Option<LdltState>,
    /// Tiles requested from the source so far.
    pub tiles_requested: u64,
    /// Bit patterns of |pivot| of the rows of the complete columns (for the near-singular warning).
    pub magnitude_bits: Vec<u64>,
    /// Bit pattern of the largest |a_ii| of the diagonal tiles requested so far.
    pub max_diag_bits: u64,
}

/// The per-row pivot state a checkpoint saves after each complete column (its first `rows` rows).
pub struct PivotState<'a> {
    /// log|pivot| per row.
    pub logabs: &'a [f64],
    /// sign(pivot) per row.
    pub signs: &'a [f64],
    /// |pivot| per row.
    pub magnitudes: &'a [f64],
    /// Largest |a_ii| of the diagonal tiles requested so far.
    pub max_diag: f64,
    /// The LDLᵀ state (`None` for Cholesky).
    pub ldlt: Option<LdltState>,
}

/// What an LDLᵀ run carries from one block column to the next besides the per-row pivots: each finished
/// pivot block's B and permutation (the later columns apply them) and the element-growth monitor (which
/// decides whether the result can be trusted). Values are kept as f64 bit patterns, like the pivots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LdltState {
    /// Per complete pivot block: bit patterns of B's diagonal and subdiagonal, and the permutation.
    pub pivots: Vec<(Vec<u64>, Vec<u64>, Vec<usize>)>,
    /// The growth monitor after the complete columns, as [`GrowthMonitor::to_bits`] gives it.
    pub growth: ([u64; 3], usize),
}

impl LdltState {
    /// The state of `pivots` and `growth`, bit for bit.
    pub fn of(pivots: &[Pivots], growth: &GrowthMonitor) -> Self {
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect();
        Self {
            pivots: pivots
                .iter()
                .map(|p| (bits(&p.diag), bits(&p.sub), p.perm.clone()))
                .collect(),
            growth: growth.to_bits(),
        }
    }

    /// The saved pivot blocks and growth monitor, bit for bit.
    pub fn restore(&self) -> (Vec<Pivots>, GrowthMonitor) {
        let values = |v: &[u64]| v.iter().map(|&b| f64::from_bits(b)).collect();
        let pivots = self
            .pivots
            .iter()
            .map(|(d, s, perm)| Pivots {
                diag: values(d),
                sub: values(s),
                perm: perm.clone(),
            })
            .collect();
        (pivots, GrowthMonitor::from_bits(self.growth))
    }
}

impl Manifest {
    /// A manifest with no column done.
    pub fn empty(identity: BTreeMap<String, String>, num_blocks: usize) -> Self {
        Self {
            format: FORMAT,
            identity,
            columns_done: 0,
            num_blocks,
            logabs_bits: Vec::new(),
            signs: Vec::new(),
            ldlt: None,
            tiles_requested: 0,
            magnitude_bits: Vec::new(),
            max_diag_bits: 0,
        }
    }

    /// Record the state after `columns_done` columns, whose rows end at `rows`.
    pub fn record(
        &mut self,
        columns_done: usize,
        rows: usize,
        state: &PivotState<'_>,
        tiles_requested: u64,
    ) {
        self.columns_done = columns_done;
        self.logabs_bits = state.logabs[..rows].iter().map(|v| v.to_bits()).collect();
        self.signs = state.signs[..rows]
            .iter()
            .map(|&s| if s < 0.0 { -1 } else { 1 })
            .collect();
        self.magnitude_bits = state.magnitudes[..rows]
            .iter()
            .map(|v| v.to_bits())
            .collect();
        self.max_diag_bits = state.max_diag.to_bits();
        self.ldlt = state.ldlt.clone();
        self.tiles_requested = tiles_requested;
    }

    /// The saved |pivot| per row and the largest |a_ii| so far, as f64.
    pub fn magnitudes(&self) -> (Vec<f64>, f64) {
        let m = self
            .magnitude_bits
            .iter()
            .map(|&b| f64::from_bits(b))
            .collect();
        (m, f64::from_bits(self.max_diag_bits))
    }

    /// The saved pivot logs and signs as f64.
    pub fn pivots(&self) -> (Vec<f64>, Vec<f64>) {
        let logabs = self
            .logabs_bits
            .iter()
            .map(|&b| f64::from_bits(b))
            .collect();
        let signs = self.signs.iter().map(|&s| f64::from(s)).collect();
        (logabs, signs)
    }
}

/// Read `dir/manifest.json` if it exists.
pub fn load(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read the checkpoint manifest", path, e)),
    };
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
        Error::Input(format!(
            "the checkpoint manifest {} is not readable ({e}); it was not written by this tool, remove the directory to start afresh",
            path.display()
        ))
    })?;
    if manifest.format != FORMAT {
        return Err(Error::Input(format!(
            "the checkpoint manifest {} has format {}, this tool reads format {FORMAT}; finish it with the version that made it",
            path.display(),
            manifest.format
        )));
    }
    Ok(Some(manifest))
}

/// Replace `dir/manifest.json` atomically: temp file + fsync + rename + directory fsync.
pub fn save(dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST_NAME);
    let tmp = dir.join(format!(".{MANIFEST_NAME}.{}.tmp", std::process::id()));
    let _guard = crate::signals::remove_on_exit(&tmp);
    let text = serde_json::to_vec(manifest)
        .map_err(|e| Error::Internal(format!("serialising the checkpoint manifest: {e}")))?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Scratch(format!(
            "cannot write the checkpoint manifest {}: {e}; check the --checkpoint directory",
            path.display()
        ))
    })
}

/// Refuse to resume when `saved` was made for another computation: name every entry that differs.
pub fn check_identity(
    dir: &Path,
    saved: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Result<()> {
    let keys: std::collections::BTreeSet<&String> = saved.keys().chain(now.keys()).collect();
    let differences: Vec<String> = keys
        .into_iter()
        .filter(|k| saved.get(*k) != now.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.map_or("(none)".to_string(), |s| format!("{s:?}"));
            format!(
                "{k}: checkpoint {}, this command {}",
                show(saved.get(k)),
                show(now.get(k))
            )
        })
        .collect();
    if differences.is_empty() {
        return Ok(());
    }
    if let (Some(then), Some(now), 1) =
        (saved.get("threads"), now.get("threads"), differences.len())
    {
        if then != now {
            return Err(Error::Usage(format!(
                "--resume: the checkpoint in {} was made with {then} threads, this command runs {now}; a \
                 different thread count can change how parallel sums are grouped, so the result would not be \
                 bitwise that of an uninterrupted run: resume with --threads {then}",
                dir.display()
            )));
        }
    }
    Err(Error::Usage(format!(
        "--resume: the checkpoint in {} was made for a different computation ({}); rerun the command that \
         made it, or use another --checkpoint directory",
        dir.display(),
        differences.join("; ")
    )))
}

/// An open checkpoint: its directory (locked), and the manifest as saved so far.
#[derive(Debug)]
pub struct Session {
    dir: PathBuf,
    manifest: Manifest,
    _lock: super::lockfile::DirLock,
}

impl Session {
    /// Open (or start) the checkpoint `c` for the computation `identity` with `num_blocks` block columns.
    /// A checkpoint found without `--resume`, or one made for a different computation, is refused.
    pub fn open(
        c: &Checkpoint,
        identity: BTreeMap<String, String>,
        num_blocks: usize,
    ) -> Result<Self> {
        std::fs::create_dir_all(&c.dir).map_err(|e| {
            Error::Scratch(format!(
                "cannot create the checkpoint directory {}: {e}",
                c.dir.display()
            ))
        })?;
        let lock = super::lockfile::DirLock::acquire(&c.dir)?;
        let manifest = match load(&c.dir)? {
            Some(saved) if c.resume => {
                check_identity(&c.dir, &saved.identity, &identity)?;
                crate::progress::notice(&format!(
                    "resuming from {}: {} of {} block columns complete",
                    c.dir.display(),
                    saved.columns_done,
                    saved.num_blocks
                ));
                saved
            }
            Some(saved) => {
                return Err(Error::Usage(format!(
                    "{} already holds a checkpoint ({} of {} block columns complete); add --resume to continue it, \
                     or remove it / choose another --checkpoint directory to start afresh",
                    c.dir.display(),
                    saved.columns_done,
                    saved.num_blocks
                )))
            }
            None => {
                if c.resume {
                    crate::progress::notice(&format!(
                        "note: no checkpoint in {} yet; starting from the beginning",
                        c.dir.display()
                    ));
                }
                Manifest::empty(identity, num_blocks)
            }
        };
        Ok(Self {
            dir: c.dir.clone(),
            manifest,
            _lock: lock,
        })
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest as last saved (or found).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Save the state after `columns_done` complete columns whose rows end at `rows` (the tiles must be
    /// synced to disk already).
    pub fn commit(
        &mut self,
        columns_done: usize,
        rows: usize,
        state: &PivotState<'_>,
        tiles_requested: u64,
    ) -> Result<()> {
        self.manifest
            .record(columns_done, rows, state, tiles_requested);
        save(&self.dir, &self.manifest)
    }

    /// The run is complete: the manifest holds every pivot, so the tile file (the bulk) is removed.
    pub fn finish(&self) {
        let _ = std::fs::remove_file(self.dir.join(TILES_NAME));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_round_trips_pivots_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let logabs = [0.1f64, -3.5e-300, f64::MIN_POSITIVE, 1.0 / 3.0];
        let signs = [1.0, -1.0, 1.0, -1.0];
        let block = Pivots {
            diag: vec![2.0, -1.0 / 7.0],
            sub: vec![0.0, 0.0],
            perm: vec![1, 0],
        };
        let mut growth = GrowthMonitor::default();
        growth.add_tile(&[1.0 / 3.0, -2.0], true);
        growth.add_row(0.7, 1);
        let mut m = Manifest::empty(BTreeMap::new(), 2);
        let magnitudes = [2.5f64, 1e-300, 3.0, 4.0];
        let state = PivotState {
            logabs: &logabs,
            signs: &signs,
            magnitudes: &magnitudes,
            max_diag: 1.0 / 3.0,
            ldlt: Some(LdltState::of(&[block], &growth)),
        };
        m.record(1, 3, &state, 5);
        save(dir.path(), &m).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        let (l, s) = back.pivots();
        assert_eq!(l.len(), 3);
        for (a, b) in l.iter().zip(&logabs) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        assert_eq!(s, vec![1.0, -1.0, 1.0]);
        let (blocks, g) = back.ldlt.as_ref().unwrap().restore();
        assert_eq!(blocks[0].diag[1].to_bits(), (-1.0f64 / 7.0).to_bits());
        assert_eq!(blocks[0].perm, vec![1, 0]);
        assert_eq!(g.to_bits(), growth.to_bits());
        assert_eq!(back.tiles_requested, 5);
        let (mags, max_diag) = back.magnitudes();
        assert_eq!(mags.len(), 3);
        assert_eq!(mags[1].to_bits(), 1e-300f64.to_bits());
        assert_eq!(max_diag.to_bits(), (1.0f64 / 3.0).to_bits());
        // No temporary file is left next to the manifest.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_mismatch_names_what_differs() {
        let a: BTreeMap<String, String> = [("n", "40"), ("model_sha256", "ab")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut b = a.clone();
        b.insert("n".into(), "50".into());
        let err = check_identity(Path::new("/ck"), &a, &b)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("n: checkpoint \"40\", this command \"50\""),
            "{err}"
        );
        assert!(!err.contains("model_sha256"), "{err}");
        assert!(check_identity(Path::new("/ck"), &a, &a).is_ok());
    }
}
