//! What `state.json` holds ([`CheckpointMeta`], [`FileSum`]), its own checksum, the bounded
//! read of its bytes, and the types a read returns ([`Checkpoint`], [`Skipped`], [`Resolved`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use ddpm_core::{DdpmError, DiffusionConfig, GaussianDiffusion};
use serde::{Deserialize, Serialize};

use super::error::CheckpointError;
use super::layout::run_dir_of;
use crate::data::Dataset;
use crate::models::ModelSpec;
use crate::train::config::{TrainConfig, TrainState};

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
    /// The metadata format ([`FORMAT`](super::FORMAT) when written by this version).
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
    /// The data trained on (source, image shape, class names); absent in checkpoints written
    /// before version 0.1's image folders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<crate::data::DataInfo>,
    /// The number of classes of a class-conditional model (`None`: unconditional).
    pub num_classes: Option<usize>,
    /// The position of the run (step, RNG, data order, EMA updates).
    pub state: TrainState,
    /// Size and CRC-32 of every other file of the checkpoint, by name.
    pub files: BTreeMap<String, FileSum>,
}

impl CheckpointMeta {
    /// `[channels, height, width]` of the images the model was trained on: the recorded
    /// data's, else the U-Net's channels and resolution, else MNIST's `[1, 28, 28]`.
    pub fn image_dims(&self) -> [usize; 3] {
        match (&self.data, &self.model) {
            (Some(info), _) => info.image_dims,
            (None, ModelSpec::Unet { config }) => {
                [config.in_channels, config.resolution, config.resolution]
            }
            (None, _) => [1, 28, 28],
        }
    }

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

/// A checkpoint that [`resolve`](super::resolve) passed over, and why.
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

/// The largest metadata file read (real ones are a few KiB).
pub const MAX_META_BYTES: u64 = 1 << 20;

/// The bytes of a metadata file, refusing anything but a regular file of at most
/// [`MAX_META_BYTES`].
pub(super) fn read_bounded(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    let f = std::fs::File::open(path).map_err(io(path))?;
    let meta = f.metadata().map_err(io(path))?;
    let damaged = |reason: String| CheckpointError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    if !meta.is_file() {
        return Err(damaged("not a regular file".into()));
    }
    if meta.len() > MAX_META_BYTES {
        return Err(damaged(format!(
            "{} bytes, more than the {MAX_META_BYTES} a checkpoint's metadata can have",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    f.take(MAX_META_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    Ok(bytes)
}

/// CRC-32 of a metadata value (without its [`META_CRC_KEY`](super::META_CRC_KEY)) in a canonical form (object keys
/// sorted at every level, no white space), so that the checksum does not depend on how the
/// JSON was laid out: what format 4 stores under [`META_CRC_KEY`](super::META_CRC_KEY). A tool that edits
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
