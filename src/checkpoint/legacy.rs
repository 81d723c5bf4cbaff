//! Format 2, the mnist example's untyped description of its model (ddpm 0.1.0 before typed
//! checkpoints): read for sampling and evaluation (and by `upgrade.rs`, which rewrites it in
//! the current format to be resumed). Nothing here runs for a checkpoint of format 3 or later.

use std::collections::BTreeMap;
use std::path::Path;

use ddpm_core::DiffusionConfig;
use serde::Deserialize;

use super::error::CheckpointError;
use super::format::LEGACY_PARALLEL_META;
use super::meta::{CheckpointMeta, read_bounded};
use crate::data::Dataset;
use crate::models::ModelSpec;
use crate::train::config::{TrainConfig, TrainState};

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
        data: None,
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
        data: None,
        num_classes: None,
        state: TrainState::new(1, 0),
        files: BTreeMap::new(),
    })
}
