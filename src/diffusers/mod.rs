//! The paper's own trained models, and ours, in the Hugging Face `diffusers` layout: a
//! directory with `config.json` (a `UNet2DModel`), `diffusion_pytorch_model.safetensors` and
//! `scheduler_config.json` (a `DDPMScheduler`), as `google/ddpm-cifar10-32`,
//! `google/ddpm-celebahq-256`, `-church-256`, `-bedroom-256`, `-cat-256` and their
//! `ddpm-ema-*` twins are published.
//!
//! The paper's network and ours map tensor for tensor (35,746,307 parameters for CIFAR-10,
//! 113,673,219 for the 256x256 models). Where diffusers' layer details may differ from the
//! paper's (sin/cos order and frequency shift of the timestep embedding, attention heads,
//! GroupNorm epsilon, downsampling padding) [`UNetConfig`] has a field for each, so the
//! imported network computes what diffusers computes; what has no equivalent is an error
//! naming the field.
//!
//! | file | job |
//! | --- | --- |
//! | `config.rs` | `config.json` <-> [`UNetConfig`] |
//! | `scheduler.rs` | `scheduler_config.json` <-> [`SchedulerSettings`] |
//! | `weights.rs` | safetensors <-> [`UNet`] weights (burn-store, key remapping) |
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use burn::tensor::Device;
//! use ddpm::core::{SampleOptions, SamplerKind};
//!
//! // e.g. `hf download google/ddpm-cifar10-32 --local-dir ddpm-cifar10-32`
//! let device = Device::flex();
//! let pretrained = ddpm::diffusers::load("ddpm-cifar10-32".as_ref(), &device)?;
//! let diffusion = pretrained.diffusion()?;
//! let [c, h, w] = pretrained.image_shape();
//! let out = SamplerKind::Ddim.with_steps(50).sample(
//!     &diffusion, &pretrained.model, [4, c, h, w], &device, SampleOptions::new(0))?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use ddpm_core::{DdpmError, GaussianDiffusion};
use ddpm_unet::{UNet, UNetConfig};
use thiserror::Error;

mod config;
mod scheduler;
mod weights;

pub use config::{DIFFUSERS_VERSION, unet_config_from_json, unet_config_to_json};
pub use scheduler::{SchedulerSettings, scheduler_from_json, scheduler_to_json};
pub use weights::{diffusers_name, load_unet, save_unet, tensor_manifest};

/// The model's configuration.
pub const CONFIG_FILE: &str = "config.json";
/// The model's weights.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// The scheduler's configuration.
pub const SCHEDULER_FILE: &str = "scheduler_config.json";
/// The probe [`write_probe`] writes beside an export: fixed inputs and the model's outputs.
pub const PROBE_FILE: &str = "io.safetensors";
/// The largest configuration file read (real ones are about 1 KiB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a diffusers directory cannot be read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DiffusersError {
    /// A file is missing or unreadable.
    #[error(
        "{path}: {reason} (a diffusers model directory holds {CONFIG_FILE}, {WEIGHTS_FILE} and \
         {SCHEDULER_FILE})"
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// `config.json` does not describe a `UNet2DModel`.
    #[error("{path} is not a UNet2DModel configuration ({found})")]
    NotUNet2D {
        /// The file.
        path: PathBuf,
        /// What it holds instead.
        found: String,
    },
    /// Fields without an equivalent here, all of them.
    #[error("{path} asks for what this U-Net does not implement:\n  {}", fields.join("\n  "))]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// Each field, its value and why.
        fields: Vec<String>,
    },
    /// The configuration maps to an invalid model or diffusion.
    #[error("{path}: {reason}")]
    Model {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The weights file cannot be read (truncated, not safetensors) or written.
    #[error("{path}: {reason}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The weights do not fit the configuration: every problem listed.
    #[error(
        "{path} does not fit its config.json ({} problems):\n  {}",
        problems.len(),
        problems.join("\n  ")
    )]
    Mismatch {
        /// The weights file.
        path: PathBuf,
        /// Each missing, unexpected or mis-shaped tensor.
        problems: Vec<String>,
    },
    /// A model of ours that `UNet2DModel` cannot express.
    #[error("cannot export as a diffusers UNet2DModel: {0}")]
    NotExportable(String),
    /// The diffusion of the scheduler is invalid.
    #[error(transparent)]
    Ddpm(#[from] DdpmError),
}

/// A model read from a diffusers directory.
#[derive(Debug)]
pub struct Pretrained {
    /// The network, in inference mode, on the requested device.
    pub model: UNet,
    /// Its configuration, as mapped from `config.json`.
    pub config: UNetConfig,
    /// The diffusion and sampling settings of `scheduler_config.json`.
    pub scheduler: SchedulerSettings,
    /// The directory.
    pub dir: PathBuf,
}

impl Pretrained {
    /// The diffusion the model was trained for.
    ///
    /// # Errors
    /// An invalid schedule (checked on load already).
    pub fn diffusion(&self) -> Result<GaussianDiffusion, DdpmError> {
        GaussianDiffusion::new(self.scheduler.diffusion.clone())
    }

    /// `[channels, height, width]` of the images the model was trained on (`sample_size`).
    pub fn image_shape(&self) -> [usize; 3] {
        let r = self.config.resolution;
        [self.config.in_channels, r, r]
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, DiffusersError> {
    let io = |reason: String| DiffusersError::Io {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| io(e.to_string()))?;
    if !meta.is_file() || meta.len() > MAX_CONFIG_BYTES {
        return Err(io(format!(
            "not a regular file of at most {MAX_CONFIG_BYTES} bytes"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| io(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| io(format!("not valid JSON ({e})")))
}

/// Reads `dir/config.json` as a [`UNetConfig`].
///
/// # Errors
/// As [`unet_config_from_json`]; [`DiffusersError::Io`].
pub fn read_unet_config(dir: &Path) -> Result<UNetConfig, DiffusersError> {
    let path = dir.join(CONFIG_FILE);
    unet_config_from_json(&read_json(&path)?, &path)
}

/// Reads `dir/scheduler_config.json` (or `dir/scheduler/scheduler_config.json`, a pipeline's
/// layout).
///
/// # Errors
/// As [`scheduler_from_json`]; [`DiffusersError::Io`].
pub fn read_scheduler(dir: &Path) -> Result<SchedulerSettings, DiffusersError> {
    let nested = dir.join("scheduler").join(SCHEDULER_FILE);
    let path = if !dir.join(SCHEDULER_FILE).is_file() && nested.is_file() {
        nested
    } else {
        dir.join(SCHEDULER_FILE)
    };
    scheduler_from_json(&read_json(&path)?, &path)
}

/// The model directory of `dir`: `dir` itself, or `dir/unet` (a pipeline's layout, as the
/// Hub's `google/ddpm-*` repositories also hold).
fn model_dir(dir: &Path) -> PathBuf {
    if !dir.join(CONFIG_FILE).is_file() && dir.join("unet").join(CONFIG_FILE).is_file() {
        dir.join("unet")
    } else {
        dir.to_path_buf()
    }
}

/// Loads the diffusers model directory `dir` on `device`: the configuration, the weights
/// (checked tensor for tensor) and the scheduler. Nothing is returned unless all three are
/// read completely.
///
/// # Errors
/// Each [`DiffusersError`] as its variant says.
pub fn load(dir: &Path, device: &Device) -> Result<Pretrained, DiffusersError> {
    let model_dir = model_dir(dir);
    let config = read_unet_config(&model_dir)?;
    let scheduler = read_scheduler(dir).or_else(|e| match read_scheduler(&model_dir) {
        Ok(s) => Ok(s),
        Err(_) => Err(e),
    })?;
    let weights = model_dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(DiffusersError::Io {
            path: weights,
            reason: "no weights (only the safetensors format is read: convert a .bin with \
                     diffusers' save_pretrained(safe_serialization=True))"
                .into(),
        });
    }
    let model = load_unet(&config, &weights, device)?.valid();
    Ok(Pretrained {
        model,
        config,
        scheduler,
        dir: dir.to_path_buf(),
    })
}

/// Writes `model` (built from `config`) and its diffusion as a diffusers directory `out`
/// (created if missing; its three files replaced), which `UNet2DModel.from_pretrained(out)`
/// and `DDPMScheduler.from_pretrained(out)` load without missing or unexpected keys.
///
/// # Errors
/// [`DiffusersError::NotExportable`], [`DiffusersError::Io`], [`DiffusersError::Weights`].
pub fn export(
    model: &UNet,
    config: &UNetConfig,
    scheduler: &SchedulerSettings,
    out: &Path,
) -> Result<(), DiffusersError> {
    let unet_json = unet_config_to_json(config)?;
    let scheduler_json = scheduler_to_json(scheduler)?;
    let io = |path: &Path, e: &dyn std::fmt::Display| DiffusersError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(out).map_err(|e| io(out, &e))?;
    save_unet(model, &out.join(WEIGHTS_FILE))?;
    for (name, value) in [(CONFIG_FILE, unet_json), (SCHEDULER_FILE, scheduler_json)] {
        let path = out.join(name);
        let text = serde_json::to_vec_pretty(&value).map_err(|e| io(&path, &e))?;
        crate::fsutil::write_atomic(&path, &text).map_err(|e| io(&path, &e))?;
    }
    Ok(())
}

/// Writes `dir/io.safetensors` with fixed inputs and `model`'s outputs for them: `x`
/// (`[2, c, r, r]` from `NoiseRng::new(0)`, `r` the configured resolution), `t` (`[2]`, i64:
/// steps 3 and `0.87 T`) and `eps`, so that an export can be checked against diffusers'
/// forward pass on another machine (`python3 tests/fixtures/diffusers/check_export.py DIR`).
/// Returns the largest |eps|.
///
/// # Errors
/// [`DiffusersError::Io`] when it cannot be written; the model's own errors.
pub fn write_probe(
    model: &UNet,
    config: &UNetConfig,
    num_timesteps: usize,
    dir: &Path,
    device: &Device,
) -> Result<f32, DiffusersError> {
    use safetensors::tensor::{Dtype, TensorView};
    let path = dir.join(PROBE_FILE);
    let fail = |reason: String| DiffusersError::Io {
        path: path.clone(),
        reason,
    };
    let r = config.resolution;
    let shape = [2, config.in_channels, r, r];
    let x = ddpm_core::NoiseRng::new(0).normal(shape, device);
    let steps = [3i64, (num_timesteps as f64 * 0.87) as i64];
    let t = burn::tensor::Tensor::<1, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(steps.to_vec(), [2]),
        device,
    );
    let eps = model
        .forward(x.clone(), t)
        .map_err(|e| fail(e.to_string()))?;
    let le = |v: Vec<f32>| -> Vec<u8> { v.iter().flat_map(|f| f.to_le_bytes()).collect() };
    let floats = |t: burn::tensor::Tensor<4>| t.into_data().convert::<f32>().try_to_vec::<f32>();
    let xs = le(floats(x).map_err(|e| fail(format!("{e:?}")))?);
    let eps_v = floats(eps).map_err(|e| fail(format!("{e:?}")))?;
    let peak = eps_v.iter().fold(0f32, |m, v| m.max(v.abs()));
    let es = le(eps_v);
    let ts: Vec<u8> = steps.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensors = vec![
        ("eps", TensorView::new(Dtype::F32, shape.to_vec(), &es)),
        ("t", TensorView::new(Dtype::I64, vec![2], &ts)),
        ("x", TensorView::new(Dtype::F32, shape.to_vec(), &xs)),
    ];
    let tensors = tensors
        .into_iter()
        .map(|(k, v)| v.map(|v| (k, v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    let bytes = safetensors::serialize(tensors, None).map_err(|e| fail(e.to_string()))?;
    crate::fsutil::write_atomic(&path, &bytes).map_err(|e| fail(e.to_string()))?;
    Ok(peak)
}
