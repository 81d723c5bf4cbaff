//! Reading checkpoints: the metadata (checked against its own checksum and the format's fixed
//! list of files), the files (checked against theirs), the newest intact checkpoint of a run,
//! and the weights.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;

use super::error::CheckpointError;
use super::format::{
    DATA_FILES, EMA_FILE, FORMAT, LEGACY_PARALLEL_META, META_CRC_KEY, META_FILE, MODEL_FILE,
    RESUMABLE_FORMAT,
};
use super::layout::{is_checkpoint_dir, list};
use super::legacy;
use super::meta::{
    Checkpoint, CheckpointMeta, FileSum, Resolved, Skipped, meta_checksum, read_bounded,
};
use crate::models::ImagePredictor;

/// Reads the metadata of checkpoint folder `dir` (format 3 or 4, or a format-2 one converted,
/// with no checksums), without checking the other files. For format 4 the metadata's own
/// checksum is checked; for 3 and 4 the file list must name exactly [`DATA_FILES`] and the
/// position in the data must lie inside the data.
///
/// # Errors
/// [`CheckpointError::Damaged`] for unreadable JSON, a checksum mismatch or a missing file
/// entry, [`CheckpointError::Newer`], [`CheckpointError::Foreign`] (a file name that is not
/// part of the format, an unknown format number).
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let path = dir.join(META_FILE);
    if !path.is_file() && dir.join(LEGACY_PARALLEL_META).is_file() {
        return legacy::read_legacy_parallel(dir);
    }
    let bytes = read_bounded(&path)?;
    let damaged = |reason: String| CheckpointError::Damaged {
        path: path.clone(),
        reason,
    };
    let foreign = |reason: String| CheckpointError::Foreign {
        path: path.clone(),
        reason,
    };
    let mut value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| damaged(format!("state.json is not valid JSON ({e})")))?;
    let raw = value
        .get("format")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| foreign("state.json has no 'format' field".into()))?;
    let format = u32::try_from(raw)
        .map_err(|_| foreign(format!("format {raw} is not a format ddpm has written")))?;
    let meta: CheckpointMeta = match format {
        FORMAT => {
            let written = value
                .as_object_mut()
                .and_then(|o| o.remove(META_CRC_KEY))
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| damaged(format!("state.json has no '{META_CRC_KEY}' checksum")))?;
            let actual = meta_checksum(&value);
            if actual != written {
                return Err(damaged(format!(
                    "checksum mismatch (CRC-32 {actual:08x}, written {written:08x}): state.json \
                     changed on disk"
                )));
            }
            serde_json::from_value(value).map_err(|e| damaged(e.to_string()))?
        }
        3 => serde_json::from_value(value).map_err(|e| damaged(e.to_string()))?,
        2 => return legacy::from_format2(value, &path),
        f if f > FORMAT => {
            return Err(CheckpointError::Newer {
                path: dir.to_path_buf(),
                format: f,
                version: value
                    .get("crate_version")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("unknown")
                    .chars()
                    .take(64)
                    .collect(),
            });
        }
        f => {
            return Err(foreign(format!(
                "checkpoint format {f} is too old to read (this version reads 2 to {FORMAT})"
            )));
        }
    };
    check_meta(&meta, &path)?;
    Ok(meta)
}

/// What the format requires of metadata that parsed: the fixed file list, a diffusion that
/// can be built, a data position inside the data.
fn check_meta(meta: &CheckpointMeta, path: &Path) -> Result<(), CheckpointError> {
    check_file_list(meta, path)?;
    // The diffusion is built (bounded: `ddpm_core::MAX_TIMESTEPS`) to find a bad one here,
    // not at sampling time.
    if let Err(e) = meta.diffusion() {
        return Err(CheckpointError::Damaged {
            path: path.to_path_buf(),
            reason: format!("its diffusion cannot be built: {e}"),
        });
    }
    let s = &meta.state.sampler;
    if s.len == 0 || s.offset > s.len {
        return Err(CheckpointError::Damaged {
            path: path.to_path_buf(),
            reason: format!(
                "its data position (offset {} of {} examples) lies outside the data",
                s.offset, s.len
            ),
        });
    }
    Ok(())
}

/// The format's fixed file list: exactly [`DATA_FILES`], no other name.
fn check_file_list(meta: &CheckpointMeta, path: &Path) -> Result<(), CheckpointError> {
    if let Some(name) = meta
        .files
        .keys()
        .find(|n| !DATA_FILES.contains(&n.as_str()))
    {
        return Err(CheckpointError::Foreign {
            path: path.to_path_buf(),
            reason: format!(
                "its file list names {name:?}, which is not a file of the checkpoint format \
                 (only {}, inside the checkpoint folder)",
                DATA_FILES.join(", ")
            ),
        });
    }
    if let Some(missing) = DATA_FILES.iter().find(|n| !meta.files.contains_key(**n)) {
        return Err(CheckpointError::Damaged {
            path: path.to_path_buf(),
            reason: format!(
                "its file list has no checksum for {missing} (every checkpoint lists {})",
                DATA_FILES.join(", ")
            ),
        });
    }
    Ok(())
}

/// Checks every file listed in `meta` against its size and CRC-32. Only the format's own file
/// names are read, inside `dir`.
///
/// # Errors
/// [`CheckpointError::Damaged`] naming the first file that differs or is missing;
/// [`CheckpointError::Foreign`] for a name that is not a file of the format.
pub fn verify(dir: &Path, meta: &CheckpointMeta) -> Result<(), CheckpointError> {
    if meta.format >= RESUMABLE_FORMAT {
        check_file_list(meta, &dir.join(META_FILE))?;
    }
    for (name, expected) in &meta.files {
        if !DATA_FILES.contains(&name.as_str()) {
            return Err(CheckpointError::Foreign {
                path: dir.join(META_FILE),
                reason: format!("its file list names {name:?}, not a file of the format"),
            });
        }
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
/// checkpoint folder) on `device`, rebuilt from the checkpoint's
/// [`ModelSpec`](crate::models::ModelSpec).
///
/// # Errors
/// As [`resolve`]; [`CheckpointError::Model`] for a custom predictor (use [`load_weights`])
/// or a model too large for this machine.
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
    if checkpoint.meta.format >= RESUMABLE_FORMAT {
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
