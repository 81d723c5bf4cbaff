//! Checkpoints: typed metadata, checksums, the newest intact checkpoint of a run, and the lock
//! that gives a run directory to one process at a time.
//!
//! A run directory holds `checkpoints/step-NNNNNNNN/`, each with `model.bpk`, `ema.bpk`,
//! `optim.bin` and `state.json` ([`CheckpointMeta`]: the model, diffusion and training
//! settings, the data set, the position of the run and a CRC-32 of every other file). Every
//! load checks the checksums, so a flipped byte is an error, not a model that samples garbage;
//! opening a run directory falls back to the newest intact checkpoint and says which ones it
//! skipped and why.
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

use burn::module::Module;
use burn::tensor::Device;
use ddpm_core::{DdpmError, DiffusionConfig, GaussianDiffusion};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::data::Dataset;
use crate::models::{ImagePredictor, ModelError, ModelSpec};
use crate::train::{TrainConfig, TrainState};

/// The metadata format this version writes. 3: typed metadata with checksums; 2 (read for
/// sampling and evaluation): the example's untyped description, no checksums.
pub const FORMAT: u32 = 3;
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
         ddpm::checkpoint::upgrade (`mnist upgrade --checkpoint DIR`)"
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
    #[error("{0} holds no EMA weights: load the raw weights (ema = false, `--no-ema`)")]
    NoEma(PathBuf),
    /// The model cannot be built from its description.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The diffusion cannot be built from its description.
    #[error(transparent)]
    Ddpm(#[from] DdpmError),
    /// Another process holds the run directory.
    #[error(
        "run directory {run_dir} is in use by {holder} (lock file {}); wait for it to finish, \
         or delete the lock file if that process is gone",
        run_dir.join(LOCK_FILE).display()
    )]
    Locked {
        /// The run directory.
        run_dir: PathBuf,
        /// Who holds it.
        holder: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
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
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
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
    path.join(META_FILE).is_file() || path.join(LEGACY_PARALLEL_META).is_file()
}

/// The description beside the weights of a legacy (format 2) `train --devices` run.
const LEGACY_PARALLEL_META: &str = "model.json";

/// The example's format-2 model description.
#[derive(Deserialize)]
struct LegacyModel {
    model: String,
    dataset: Dataset,
    unet: Option<serde_json::Value>,
    mlp: Option<serde_json::Value>,
    diffusion: DiffusionConfig,
}

#[derive(Deserialize)]
struct LegacyMeta {
    train: TrainConfig,
    model: serde_json::Value,
    state: TrainState,
}

impl LegacyModel {
    fn spec(&self, path: &Path) -> Result<ModelSpec, CheckpointError> {
        let foreign = |reason: &str| CheckpointError::Foreign {
            path: path.to_path_buf(),
            reason: reason.into(),
        };
        let bad = |e: serde_json::Error| foreign(&format!("its model configuration: {e}"));
        match (self.model.as_str(), &self.unet, &self.mlp) {
            ("unet" | "unet-small", Some(c), _) => Ok(ModelSpec::Unet {
                config: crate::models::unet_config_from(c.clone()).map_err(bad)?,
            }),
            ("mlp", _, Some(c)) => Ok(ModelSpec::Mlp {
                config: crate::models::mlp_config_from(c.clone()).map_err(bad)?,
            }),
            _ => Err(foreign("its model description names no U-Net or MLP")),
        }
    }
}

/// Reads the metadata of checkpoint folder `dir` (format 3, or a format-2 one converted, with
/// no checksums), without checking the other files.
///
/// # Errors
/// [`CheckpointError::Damaged`] for unreadable JSON, [`CheckpointError::Newer`],
/// [`CheckpointError::Foreign`].
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let path = dir.join(META_FILE);
    if !path.is_file() && dir.join(LEGACY_PARALLEL_META).is_file() {
        return read_legacy_parallel(dir);
    }
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let damaged = |reason: String| CheckpointError::Damaged {
        path: path.clone(),
        reason,
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| damaged(format!("state.json is not valid JSON ({e})")))?;
    let format = value
        .get("format")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| CheckpointError::Foreign {
            path: path.clone(),
            reason: "state.json has no 'format' field".into(),
        })? as u32;
    match format {
        FORMAT => serde_json::from_value(value).map_err(|e| damaged(e.to_string())),
        2 => {
            let legacy: LegacyMeta = serde_json::from_value(value)
                .map_err(|e| damaged(format!("format-2 state.json: {e}")))?;
            let model: LegacyModel =
                serde_json::from_value(legacy.model).map_err(|e| CheckpointError::Foreign {
                    path: path.clone(),
                    reason: format!("its model description is not the mnist example's ({e})"),
                })?;
            Ok(CheckpointMeta {
                format: 2,
                crate_version: "0.1.0 (format 2)".into(),
                model: model.spec(&path)?,
                diffusion: model.diffusion,
                train: legacy.train,
                dataset: Some(model.dataset),
                num_classes: None,
                state: legacy.state,
                files: BTreeMap::new(),
            })
        }
        f if f > FORMAT => Err(CheckpointError::Newer {
            path: dir.to_path_buf(),
            format: f,
            version: value
                .get("crate_version")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
        }),
        f => Err(CheckpointError::Foreign {
            path: path.clone(),
            reason: format!(
                "checkpoint format {f} is too old to read (this version reads 2 and {FORMAT})"
            ),
        }),
    }
}

/// A format-2 `train --devices` folder: `model.json` + `model.bpk`, no EMA, no optimizer.
fn read_legacy_parallel(dir: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let path = dir.join(LEGACY_PARALLEL_META);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let model: LegacyModel =
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Damaged {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    Ok(CheckpointMeta {
        format: 2,
        crate_version: "0.1.0 (format 2, train --devices)".into(),
        model: model.spec(&path)?,
        diffusion: model.diffusion,
        train: TrainConfig::default(),
        dataset: Some(model.dataset),
        num_classes: None,
        state: TrainState::new(1, 0),
        files: BTreeMap::new(),
    })
}

/// Checks every file listed in `meta` against its size and CRC-32.
///
/// # Errors
/// [`CheckpointError::Damaged`] naming the first file that differs or is missing.
pub fn verify(dir: &Path, meta: &CheckpointMeta) -> Result<(), CheckpointError> {
    for (name, expected) in &meta.files {
        let path = dir.join(name);
        let damaged = |reason: String| CheckpointError::Damaged {
            path: path.clone(),
            reason,
        };
        let actual = FileSum::of(&path).map_err(|e| damaged(e.to_string()))?;
        if actual.bytes != expected.bytes {
            return Err(damaged(format!(
                "{} bytes where {} were written (truncated or replaced)",
                actual.bytes, expected.bytes
            )));
        }
        if actual.crc32 != expected.crc32 {
            return Err(damaged(format!(
                "checksum mismatch (CRC-32 {:08x}, written {:08x}): its contents changed on disk",
                actual.crc32, expected.crc32
            )));
        }
    }
    Ok(())
}

/// Opens checkpoint folder `dir`: reads its metadata and verifies its checksums.
///
/// # Errors
/// As [`read_meta`] and [`verify`].
pub fn open(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let meta = read_meta(dir)?;
    verify(dir, &meta)?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        meta,
    })
}

/// The checkpoint for `path`: the folder itself when it is one (strictly: a damaged one is an
/// error), else the newest intact checkpoint of the run directory `path`, with the newer ones
/// that were skipped and why.
///
/// # Errors
/// [`CheckpointError::NoCheckpoint`], [`CheckpointError::NoneIntact`], or the error of the
/// checkpoint folder given.
pub fn resolve(path: &Path) -> Result<Resolved, CheckpointError> {
    if is_checkpoint_dir(path) {
        return Ok(Resolved {
            checkpoint: open(path)?,
            skipped: Vec::new(),
        });
    }
    let final_dir = path.join("final");
    if final_dir.join(LEGACY_PARALLEL_META).is_file() {
        return resolve(&final_dir);
    }
    let all = list(path);
    if all.is_empty() {
        return Err(CheckpointError::NoCheckpoint(path.to_path_buf()));
    }
    let mut skipped = Vec::new();
    for (_, dir) in all.into_iter().rev() {
        match open(&dir) {
            Ok(checkpoint) => {
                return Ok(Resolved {
                    checkpoint,
                    skipped,
                });
            }
            Err(e) => skipped.push(Skipped {
                dir,
                reason: e.to_string(),
            }),
        }
    }
    let lines: Vec<String> = skipped
        .iter()
        .map(|s| format!("  {}: {}", s.dir.display(), s.reason))
        .collect();
    Err(CheckpointError::NoneIntact {
        run_dir: path.to_path_buf(),
        skipped: lines.join("\n"),
    })
}

fn weights_file(checkpoint: &Checkpoint, ema: bool) -> Result<PathBuf, CheckpointError> {
    let path = checkpoint.dir.join(if ema { EMA_FILE } else { MODEL_FILE });
    if ema && !path.is_file() && checkpoint.dir.join(LEGACY_PARALLEL_META).is_file() {
        return Err(CheckpointError::NoEma(checkpoint.dir.clone()));
    }
    Ok(path)
}

/// Loads the weights of `checkpoint` (`ema`: the EMA weights, what the paper samples from)
/// into `template`, a freshly built model of the same configuration. Works for any module: a
/// predictor of your own included.
///
/// # Errors
/// [`CheckpointError::Foreign`] when the file does not fit the template,
/// [`CheckpointError::NoEma`].
pub fn load_weights<M: Module>(
    checkpoint: &Checkpoint,
    template: M,
    ema: bool,
) -> Result<M, CheckpointError> {
    let path = weights_file(checkpoint, ema)?;
    template
        .try_load_file(&path)
        .map_err(|e| CheckpointError::Foreign {
            path,
            reason: format!("{e} (the weights belong to another model or are damaged)"),
        })
}

/// A model loaded from a checkpoint, with where it came from.
#[derive(Debug)]
pub struct Loaded {
    /// The network, in inference mode (dropout off), on the requested device.
    pub model: ImagePredictor,
    /// The checkpoint it came from.
    pub checkpoint: Checkpoint,
    /// Newer checkpoints of the run that were damaged and skipped.
    pub skipped: Vec<Skipped>,
}

/// Loads the network of `path` (a run directory: its newest intact checkpoint; or one
/// checkpoint folder) on `device`, rebuilt from the checkpoint's [`ModelSpec`].
///
/// # Errors
/// As [`resolve`]; [`CheckpointError::Model`] for a custom predictor (use [`load_weights`]).
pub fn load_predictor(path: &Path, ema: bool, device: &Device) -> Result<Loaded, CheckpointError> {
    let Resolved {
        checkpoint,
        skipped,
    } = resolve(path)?;
    let model = load_image_predictor(&checkpoint, ema, device)?.valid();
    Ok(Loaded {
        model,
        checkpoint,
        skipped,
    })
}

/// The [`ImagePredictor`] of an opened checkpoint on `device` (training mode kept).
///
/// # Errors
/// As [`load_weights`].
pub fn load_image_predictor(
    checkpoint: &Checkpoint,
    ema: bool,
    device: &Device,
) -> Result<ImagePredictor, CheckpointError> {
    let template = checkpoint.meta.model.init(device)?;
    if checkpoint.meta.format >= FORMAT {
        return load_weights(checkpoint, template, ema);
    }
    // Format 2 saved the bare U-Net or MLP (no enum variant in the parameter paths).
    Ok(match template {
        ImagePredictor::Unet(net) => ImagePredictor::Unet(load_weights(checkpoint, net, ema)?),
        ImagePredictor::Mlp(flat) => ImagePredictor::Mlp(crate::models::FlatMlp {
            mlp: load_weights(checkpoint, flat.mlp, ema)?,
        }),
    })
}

/// Writes the metadata of checkpoint folder `dir` after summing the files named in `files`.
///
/// # Errors
/// [`CheckpointError::Io`].
pub fn write_meta(
    dir: &Path,
    mut meta: CheckpointMeta,
    files: &[&str],
) -> Result<CheckpointMeta, CheckpointError> {
    meta.files.clear();
    for name in files {
        meta.files
            .insert(name.to_string(), FileSum::of(&dir.join(name))?);
    }
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| CheckpointError::Io {
        path: dir.join(META_FILE),
        source: std::io::Error::other(e),
    })?;
    crate::fsutil::write_atomic(&dir.join(META_FILE), &json).map_err(io(&dir.join(META_FILE)))?;
    Ok(meta)
}

/// Rewrites a format-2 checkpoint folder in the current format (weights in the
/// [`ImagePredictor`] layout, checksums), so that it can be resumed. The folder is replaced
/// atomically; a format-3 folder is left as it is.
///
/// # Errors
/// As [`open`] and [`load_weights`]; [`CheckpointError::Io`].
pub fn upgrade(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let old = open(dir)?;
    if old.meta.format >= FORMAT {
        return Ok(old);
    }
    if !dir.join(META_FILE).is_file() {
        return Err(CheckpointError::Foreign {
            path: dir.to_path_buf(),
            reason: "a `train --devices` folder has no optimizer state to resume from".into(),
        });
    }
    let device = Device::flex();
    let tmp = dir.with_file_name(format!(
        ".{}.upgrade",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    for (ema, file) in [(false, MODEL_FILE), (true, EMA_FILE)] {
        load_image_predictor(&old, ema, &device)?
            .save_file(tmp.join(file))
            .map_err(|e| CheckpointError::Io {
                path: tmp.join(file),
                source: std::io::Error::other(e.to_string()),
            })?;
    }
    std::fs::copy(dir.join(OPTIM_FILE), tmp.join(OPTIM_FILE)).map_err(io(&tmp))?;
    let meta = CheckpointMeta {
        format: FORMAT,
        crate_version: env!("CARGO_PKG_VERSION").into(),
        ..old.meta
    };
    write_meta(&tmp, meta, &[MODEL_FILE, EMA_FILE, OPTIM_FILE])?;
    let backup = dir.with_file_name(format!(
        ".{}.format2",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::rename(dir, &backup).map_err(io(dir))?;
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    let _ = std::fs::remove_dir_all(&backup);
    open(dir)
}

/// Exclusive use of a run directory by this process, released on drop.
///
/// The lock is a file `run.lock` created with `create_new` (atomic) holding the process id
/// and host name. A lock whose process is gone (checked through `/proc` on Linux) is taken
/// over; on other systems, or for a holder on another host, a stale lock must be deleted by
/// hand (the error says where it is).
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether process `pid` of this host still runs (`true` when it cannot be told).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

impl RunLock {
    /// Takes the lock of `run_dir` (created if missing).
    ///
    /// # Errors
    /// [`CheckpointError::Locked`] when another live process holds it, [`CheckpointError::Io`].
    pub fn acquire(run_dir: &Path) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
        let path = run_dir.join(LOCK_FILE);
        let me = format!("pid {} on {}", std::process::id(), host_name());
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(me.as_bytes()).map_err(io(&path))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let parsed = holder
                        .strip_prefix("pid ")
                        .and_then(|r| r.split_once(" on "))
                        .and_then(|(pid, host)| Some((pid.parse::<u32>().ok()?, host)));
                    let stale = match parsed {
                        Some((pid, host)) => {
                            host == host_name() && pid != std::process::id() && !process_alive(pid)
                        }
                        // An empty lock older than a few seconds: a writer killed between
                        // creating and writing it (a fresh one may be another process's,
                        // about to be written).
                        None => {
                            holder.trim().is_empty()
                                && std::fs::metadata(&path)
                                    .and_then(|m| m.modified())
                                    .ok()
                                    .and_then(|t| t.elapsed().ok())
                                    .is_some_and(|age| age.as_secs() >= 5)
                        }
                    };
                    if !stale {
                        return Err(CheckpointError::Locked {
                            run_dir: run_dir.to_path_buf(),
                            holder: if holder.is_empty() {
                                "another process".into()
                            } else {
                                holder
                            },
                        });
                    }
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(CheckpointError::Io { path, source: e }),
            }
        }
        Err(CheckpointError::Locked {
            run_dir: run_dir.to_path_buf(),
            holder: "a process that keeps re-creating the lock".into(),
        })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
