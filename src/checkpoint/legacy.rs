//! Format 2, the mnist example's untyped description of its model (ddpm 0.1.0 before typed
//! checkpoints): read for sampling and evaluation, and [`upgrade`]d to the current format to
//! be resumed. Nothing here runs for a checkpoint of format 3 or later.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use ddpm_core::DiffusionConfig;
use serde::Deserialize;

use super::read::{load_image_predictor, open, read_bounded};
use super::{
    Checkpoint, CheckpointError, CheckpointMeta, EMA_FILE, FORMAT, META_FILE, MODEL_FILE,
    OPTIM_FILE, RESUMABLE_FORMAT, io, write_meta,
};
use crate::data::Dataset;
use crate::models::ModelSpec;
use crate::train::{TrainConfig, TrainState};

/// The description beside the weights of a legacy (format 2) `train --devices` run.
pub(super) const LEGACY_PARALLEL_META: &str = "model.json";

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

/// The metadata of a format-2 `state.json` (already parsed), converted.
pub(super) fn from_format2(
    value: serde_json::Value,
    path: &Path,
) -> Result<CheckpointMeta, CheckpointError> {
    let legacy: LegacyMeta =
        serde_json::from_value(value).map_err(|e| CheckpointError::Damaged {
            path: path.to_path_buf(),
            reason: format!("format-2 state.json: {e}"),
        })?;
    let model: LegacyModel =
        serde_json::from_value(legacy.model).map_err(|e| CheckpointError::Foreign {
            path: path.to_path_buf(),
            reason: format!("its model description is not the mnist example's ({e})"),
        })?;
    Ok(CheckpointMeta {
        format: 2,
        crate_version: "0.1.0 (format 2)".into(),
        model: model.spec(path)?,
        diffusion: model.diffusion,
        train: legacy.train,
        dataset: Some(model.dataset),
        num_classes: None,
        state: legacy.state,
        files: BTreeMap::new(),
    })
}

/// A format-2 `train --devices` folder: `model.json` + `model.bpk`, no EMA, no optimizer.
pub(super) fn read_legacy_parallel(dir: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let path = dir.join(LEGACY_PARALLEL_META);
    let bytes = read_bounded(&path)?;
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

/// Rewrites a format-2 checkpoint folder in the current format (weights in the
/// [`ImagePredictor`](crate::models::ImagePredictor) layout, checksums), so that it can be
/// resumed. The folder is replaced atomically; a folder of format 3 or later is left as it is.
///
/// # Errors
/// As [`open`] and [`load_weights`](super::load_weights); [`CheckpointError::Io`].
pub fn upgrade(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let old = open(dir)?;
    if old.meta.format >= RESUMABLE_FORMAT {
        return Ok(old);
    }
    if !dir.join(META_FILE).is_file() {
        return Err(CheckpointError::Foreign {
            path: dir.to_path_buf(),
            reason: "a `train --devices` folder of format 2 has no optimizer state to resume \
                     from"
                .into(),
        });
    }
    // The weights only pass through: any backend of this build will do.
    #[cfg(feature = "flex")]
    let device = Device::flex();
    #[cfg(not(feature = "flex"))]
    let device = Device::default();
    let tmp = dir.with_file_name(format!(
        ".{}.upgrade",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let written = (|| {
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
        write_meta(&tmp, meta)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let backup = dir.with_file_name(format!(
        ".{}.format2",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::rename(dir, &backup).map_err(io(dir))?;
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    let _ = std::fs::remove_dir_all(&backup);
    open(dir)
}
