//! Checkpoints: the one module that owns their format. Typed metadata, checksums, writing a
//! checkpoint durably, the newest intact checkpoint of a run, and the lock that gives a run
//! directory to one process at a time.
//!
//! A run directory holds `checkpoints/step-NNNNNNNN/`, each with exactly `model.bpk`,
//! `ema.bpk`, `optim.bin` and `state.json` ([`CheckpointMeta`]: the model, diffusion and
//! training settings, the data set, the position of the run, a CRC-32 of each of the three
//! other files, and a CRC-32 of the metadata itself). Every load checks the checksums, so a
//! flipped byte is an error, not a model that samples garbage; opening a run directory falls
//! back to the newest intact checkpoint and says which ones it skipped and why. Nothing a
//! checkpoint's metadata says makes ddpm read or write outside the checkpoint folder: file
//! names are the fixed ones above, and model sizes are bounded before anything is allocated.
//!
//! | file | job |
//! | --- | --- |
//! | `mod.rs` | the format: file names, [`CheckpointMeta`], errors, listing a run |
//! | `read.rs` | reading and verifying: [`read_meta`], [`open`], [`resolve`], loading weights |
//! | `write.rs` | writing: [`write_meta`], [`save`] (atomic, fsynced, retention) |
//! | `lock.rs` | [`RunLock`], an OS file lock on `run.lock` |
//! | `legacy.rs` | format 2 (the example's untyped description) and [`upgrade`] |
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use burn::tensor::Device;
//! use ddpm::core::{Sampler, SamplerKind, SampleOptions};
//!
//! let device = Device::flex();
//! let loaded = ddpm::checkpoint::load_predictor("runs/quick".as_ref(), true, &device)?;
//! for s in &loaded.skipped {
//!     eprintln!("skipped {}: {}", s.dir.display(), s.reason);
//! }
//! let diffusion = loaded.checkpoint.meta.diffusion()?;
//! let out = SamplerKind::Ddim.with_steps(50).sample(
//!     &diffusion, &loaded.model, [16, 1, 28, 28], &device, SampleOptions::new(0))?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use ddpm_core::{DdpmError, DiffusionConfig, GaussianDiffusion};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::data::Dataset;
use crate::models::{ModelError, ModelSpec};
use crate::train::{TrainConfig, TrainState};

mod legacy;
mod lock;
mod read;
mod write;

pub use legacy::upgrade;
pub use lock::RunLock;
pub use read::{
    Loaded, load_image_predictor, load_predictor, load_weights, open, read_meta, resolve, verify,
};
pub use write::{save, write_meta};

/// The metadata format this version writes. 4: typed metadata with checksums of the files and
/// of the metadata itself (`meta_crc32`); 3 (read and resumed): the same without the metadata
/// checksum; 2 (read for sampling and evaluation): the example's untyped description, no
/// checksums.
pub const FORMAT: u32 = 4;
/// The oldest format that can be resumed.
pub const RESUMABLE_FORMAT: u32 = 3;
/// The metadata file of a checkpoint.
pub const META_FILE: &str = "state.json";
/// The weights.
pub const MODEL_FILE: &str = "model.bpk";
/// The EMA of the weights.
pub const EMA_FILE: &str = "ema.bpk";
/// The optimizer state.
pub const OPTIM_FILE: &str = "optim.bin";
/// The lock file of a run directory.
pub const LOCK_FILE: &str = "run.lock";
/// The files besides [`META_FILE`] that every checkpoint of format 3 and later holds and lists
/// with their checksums: no more, no fewer.
pub const DATA_FILES: [&str; 3] = [EMA_FILE, MODEL_FILE, OPTIM_FILE];
/// The key of `state.json` holding the CRC-32 of the rest of the metadata (format 4).
pub const META_CRC_KEY: &str = "meta_crc32";

/// Why a checkpoint cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The folder holds no checkpoint.
    #[error(
        "no checkpoint found in {0}: expected a run directory with 'checkpoints/step-NNNNNNNN' \
         folders (written by training) or one such folder"
    )]
    NoCheckpoint(PathBuf),
    /// A file is damaged: truncated, a checksum mismatch, unreadable metadata.
    #[error(
        "{path} is damaged: {reason} (given a run directory instead, ddpm uses its newest intact \
         checkpoint)"
    )]
    Damaged {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The folder was written by something else, or for another model.
    #[error("{path} is not a checkpoint of this model: {reason}")]
    Foreign {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Written by a newer version of ddpm.
    #[error(
        "{path} was written by ddpm {version} (checkpoint format {format}); this is ddpm {} \
         (format {FORMAT}): upgrade ddpm to read it",
        env!("CARGO_PKG_VERSION")
    )]
    Newer {
        /// The checkpoint folder.
        path: PathBuf,
        /// Its format.
        format: u32,
        /// The version that wrote it.
        version: String,
    },
    /// A format-2 checkpoint cannot be resumed.
    #[error(
        "{0} is a checkpoint of an older ddpm (format 2, no checksums): it loads for sampling \
         and evaluation; to continue training it, upgrade it first with \
         ddpm::checkpoint::upgrade"
    )]
    Legacy(PathBuf),
    /// No checkpoint of the run is intact.
    #[error("no intact checkpoint in {run_dir}:\n{skipped}")]
    NoneIntact {
        /// The run directory.
        run_dir: PathBuf,
        /// Each checkpoint with the reason it was skipped, one per line.
        skipped: String,
    },
    /// The weights were saved without an EMA (a legacy `train --devices` run).
    #[error("{0} holds no EMA weights: load the raw weights (ema = false)")]
    NoEma(PathBuf),
    /// The model cannot be built from its description.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The diffusion cannot be built from its description.
    #[error(transparent)]
    Ddpm(#[from] DdpmError),
    /// Another process holds the run directory.
    #[error(
        "run directory {run_dir} is in use by {holder} (an OS lock on {}); wait for it to \
         finish: the lock is released when that process exits, however it exits",
        run_dir.join(LOCK_FILE).display()
    )]
    Locked {
        /// The run directory.
        run_dir: PathBuf,
        /// Who holds it.
        holder: String,
    },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Size and CRC-32 of a file of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// Length in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the contents.
    pub crc32: u32,
}

impl FileSum {
    /// Reads `path` and sums it.
    ///
    /// # Errors
    /// [`CheckpointError::Io`].
    pub fn of(path: &Path) -> Result<Self, CheckpointError> {
        let mut f = std::fs::File::open(path).map_err(io(path))?;
        if !f.metadata().map_err(io(path))?.is_file() {
            return Err(CheckpointError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("not a regular file"),
            });
        }
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut bytes = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(io(path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        Ok(Self {
            bytes,
            crc32: hasher.finalize(),
        })
    }
}

/// What `state.json` of a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The metadata format ([`FORMAT`] when written by this version).
    pub format: u32,
    /// The version of ddpm that wrote it.
    pub crate_version: String,
    /// The network.
    pub model: ModelSpec,
    /// The diffusion it was trained for.
    pub diffusion: DiffusionConfig,
    /// The training settings.
    pub train: TrainConfig,
    /// The data set, when a built-in one.
    pub dataset: Option<Dataset>,
    /// The number of classes of a class-conditional model (`None`: unconditional).
    pub num_classes: Option<usize>,
    /// The position of the run (step, RNG, data order, EMA updates).
    pub state: TrainState,
    /// Size and CRC-32 of every other file of the checkpoint, by name.
    pub files: BTreeMap<String, FileSum>,
}

impl CheckpointMeta {
    /// The diffusion this checkpoint was trained for.
    ///
    /// # Errors
    /// An invalid diffusion configuration (a damaged or hand-edited file).
    pub fn diffusion(&self) -> Result<GaussianDiffusion, DdpmError> {
        GaussianDiffusion::new(self.diffusion.clone())
    }
}

/// A checkpoint folder whose metadata was read and whose files match their checksums.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The folder.
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: CheckpointMeta,
}

/// A checkpoint that [`resolve`] passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The checkpoint folder.
    pub dir: PathBuf,
    /// Why it was not used.
    pub reason: String,
}

/// The checkpoint chosen for a path, with those skipped on the way.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The checkpoint to use.
    pub checkpoint: Checkpoint,
    /// Newer checkpoints of the run that were damaged, newest first.
    pub skipped: Vec<Skipped>,
}

impl Resolved {
    /// The run directory the checkpoint belongs to (`<run>/checkpoints/step-N` -> `<run>`).
    pub fn run_dir(&self) -> PathBuf {
        run_dir_of(&self.checkpoint.dir)
    }
}

/// `<run>/checkpoints/step-N` -> `<run>`; `<run>/final` (legacy `train --devices`) -> `<run>`.
pub fn run_dir_of(dir: &Path) -> PathBuf {
    let levels = if dir.parent().and_then(Path::file_name) == Some("checkpoints".as_ref()) {
        2
    } else {
        1
    };
    dir.ancestors()
        .nth(levels)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// The name of the checkpoint folder of `step`: `step-NNNNNNNN`.
pub fn folder_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Every checkpoint folder of `run_dir` that has its metadata file, as `(step, folder)`,
/// oldest first (intact or not: see [`open`]).
pub fn list(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(run_dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            e.path().join(META_FILE).is_file().then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Whether `path` is one checkpoint folder (rather than a run directory).
pub fn is_checkpoint_dir(path: &Path) -> bool {
    path.join(META_FILE).is_file() || path.join(legacy::LEGACY_PARALLEL_META).is_file()
}

/// CRC-32 of a metadata value (without its [`META_CRC_KEY`]) in a canonical form (object keys
/// sorted at every level, no white space), so that the checksum does not depend on how the
/// JSON was laid out: what format 4 stores under [`META_CRC_KEY`]. A tool that edits
/// `state.json` on purpose recomputes it with this function. (A checksum detects damage, not
/// tampering: what a checkpoint may ask for is bounded by the reader, not by the checksum.)
pub fn meta_checksum(value: &serde_json::Value) -> u32 {
    fn canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
        match v {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push(b'{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend(serde_json::to_vec(k).unwrap_or_default());
                    out.push(b':');
                    canonical(&map[k], out);
                }
                out.push(b'}');
            }
            serde_json::Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    canonical(item, out);
                }
                out.push(b']');
            }
            scalar => out.extend(serde_json::to_vec(scalar).unwrap_or_default()),
        }
    }
    let mut bytes = Vec::new();
    canonical(value, &mut bytes);
    crc32fast::hash(&bytes)
}
