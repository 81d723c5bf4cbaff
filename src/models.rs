//! The predictors a checkpoint can name, described by serde data and rebuilt from it.
//!
//! [`ModelSpec`] is what a checkpoint records about its network; [`ImagePredictor`] is the
//! network it rebuilds for the two predictors of this workspace (the U-Net on images, the MLP on
//! flattened images), one type for both so that training, sampling and evaluation need no
//! match on the model kind. Predictors of your own are recorded as [`ModelSpec::Custom`] and
//! loaded with [`crate::checkpoint::load_weights`] into a template you build.

use std::fmt;
use std::str::FromStr;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use ddpm_core::{Condition, NoisePredictor, PredictorError};
use ddpm_mlp::{MlpPredictor, MlpPredictorConfig};
use ddpm_unet::{UNet, UNetConfig};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A model description that cannot be built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The U-Net configuration is invalid.
    #[error(transparent)]
    UNet(#[from] ddpm_unet::UNetError),
    /// The MLP configuration is invalid.
    #[error(transparent)]
    Mlp(#[from] ddpm_mlp::MlpError),
    /// A [`ModelSpec::Custom`] predictor: only its own crate can build it.
    #[error(
        "the checkpoint describes the custom predictor '{0}': build it yourself and load its \
         weights with ddpm::checkpoint::load_weights"
    )]
    Custom(String),
    /// An unknown preset name.
    #[error("unknown model '{0}': choose one of unet, unet-small, mlp")]
    UnknownPreset(String),
    /// Two copies of the model's weights (a template and the loaded weights) would not fit in
    /// this machine's memory.
    #[error(
        "the model has {params} parameters ({} MiB of f32 weights; loading needs twice that, \
         training about five times), more than this machine's {} MiB of memory can hold: a \
         damaged or hand-edited configuration, or a model for a larger machine",
        params.saturating_mul(4) >> 20,
        memory >> 20
    )]
    TooLarge {
        /// Parameters of the model.
        params: u64,
        /// This machine's memory in bytes.
        memory: u64,
    },
}

/// This machine's memory in bytes (`MemTotal` of `/proc/meminfo`), `None` where it cannot be
/// told.
pub fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// What a checkpoint records about its network (serialized into `state.json`). Reading fills
/// configuration fields that an older version did not write with their defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ModelSpec {
    /// ddpm-unet's U-Net on `[batch, channels, height, width]` images.
    Unet {
        /// Its configuration.
        config: UNetConfig,
    },
    /// ddpm-mlp's MLP on images flattened to `[batch, channels * height * width]`.
    Mlp {
        /// Its configuration (`data_dim` = channels x height x width).
        config: MlpPredictorConfig,
    },
    /// A predictor defined outside this workspace.
    Custom {
        /// A name of the caller's choice (its type, say).
        name: String,
        /// Whatever the caller needs to rebuild it.
        config: serde_json::Value,
    },
}

/// [`ModelSpec`]'s serialized form, read after [`fill_defaults`].
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum SpecRepr {
    Unet {
        config: UNetConfig,
    },
    Mlp {
        config: MlpPredictorConfig,
    },
    Custom {
        name: String,
        config: serde_json::Value,
    },
}

/// Adds to the JSON object `config` every field of `defaults` that it lacks: burn's `Config`
/// derive requires every field when reading, so a field added with a default in a later
/// version would otherwise make older checkpoints unreadable.
pub(crate) fn fill_defaults(config: &mut serde_json::Value, defaults: &impl Serialize) {
    let (Some(obj), Ok(serde_json::Value::Object(defaults))) =
        (config.as_object_mut(), serde_json::to_value(defaults))
    else {
        return;
    };
    for (key, value) in defaults {
        obj.entry(key).or_insert(value);
    }
}

/// Removes what checkpoints before 0.1's redesign recorded about execution rather than the
/// model: `kernels` (fused or decomposed kernels, now chosen with `UNet::with_kernels`).
fn drop_execution_fields(config: &mut serde_json::Value) {
    if let Some(obj) = config.as_object_mut() {
        obj.remove("kernels");
    }
}

/// A U-Net configuration from JSON, missing fields at their defaults.
pub(crate) fn unet_config_from(mut v: serde_json::Value) -> Result<UNetConfig, serde_json::Error> {
    drop_execution_fields(&mut v);
    fill_defaults(&mut v, &UNetConfig::new(1, 1, 1));
    serde_json::from_value(v)
}

/// An MLP configuration from JSON, missing fields at their defaults.
pub(crate) fn mlp_config_from(
    mut v: serde_json::Value,
) -> Result<MlpPredictorConfig, serde_json::Error> {
    fill_defaults(&mut v, &MlpPredictorConfig::new(1));
    serde_json::from_value(v)
}

impl<'de> Deserialize<'de> for ModelSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut v = serde_json::Value::deserialize(deserializer)?;
        let kind = v.get("kind").and_then(|k| k.as_str()).map(str::to_string);
        if let Some(config) = v.get_mut("config") {
            match kind.as_deref() {
                Some("unet") => {
                    drop_execution_fields(config);
                    fill_defaults(config, &UNetConfig::new(1, 1, 1))
                }
                Some("mlp") => fill_defaults(config, &MlpPredictorConfig::new(1)),
                _ => {}
            }
        }
        let repr: SpecRepr = serde_json::from_value(v).map_err(serde::de::Error::custom)?;
        Ok(match repr {
            SpecRepr::Unet { config } => ModelSpec::Unet { config },
            SpecRepr::Mlp { config } => ModelSpec::Mlp { config },
            SpecRepr::Custom { name, config } => ModelSpec::Custom { name, config },
        })
    }
}

impl ModelSpec {
    /// A predictor of your own, named `name`, with whatever `config` you need to rebuild it.
    ///
    /// # Errors
    /// `config` cannot be serialized to JSON.
    pub fn custom(
        name: impl Into<String>,
        config: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(ModelSpec::Custom {
            name: name.into(),
            config: serde_json::to_value(config)?,
        })
    }

    /// The same network, class-conditional with `num_classes` classes (`None`: unconditional);
    /// a custom spec is returned unchanged.
    pub fn with_classes(self, num_classes: Option<usize>) -> Self {
        match self {
            ModelSpec::Unet { config } => ModelSpec::Unet {
                config: UNetConfig {
                    num_classes,
                    ..config
                },
            },
            ModelSpec::Mlp { config } => ModelSpec::Mlp {
                config: MlpPredictorConfig {
                    num_classes,
                    ..config
                },
            },
            custom => custom,
        }
    }

    /// The classes of a class-conditional network (`None`: unconditional or custom).
    pub fn num_classes(&self) -> Option<usize> {
        match self {
            ModelSpec::Unet { config } => config.num_classes,
            ModelSpec::Mlp { config } => config.num_classes,
            ModelSpec::Custom { .. } => None,
        }
    }

    /// Whether the network reads examples of `dims` (`[channels, rows, cols]` for the U-Net;
    /// for the MLP any dims holding `data_dim` values); custom networks are not checked.
    ///
    /// # Errors
    /// What the network expects instead.
    pub fn accepts(&self, dims: &[usize]) -> Result<(), String> {
        match self {
            ModelSpec::Unet { config } => match dims {
                [c, h, w] if *c == config.in_channels && *h > 0 && *w > 0 => {
                    let f = config.size_factor();
                    if h.is_multiple_of(f) && w.is_multiple_of(f) {
                        Ok(())
                    } else {
                        Err(format!(
                            "the U-Net's {} levels need height and width divisible by {f}",
                            config.levels()
                        ))
                    }
                }
                _ => Err(format!(
                    "the U-Net reads [{}, height, width] images",
                    config.in_channels
                )),
            },
            // Flattened vectors, or images the `ImagePredictor` flattens.
            ModelSpec::Mlp { config } => {
                if dims.iter().product::<usize>() == config.data_dim && !dims.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "the MLP reads {} values per example",
                        config.data_dim
                    ))
                }
            }
            ModelSpec::Custom { .. } => Ok(()),
        }
    }

    /// A short name: `unet`, `mlp`, or the custom name.
    pub fn name(&self) -> &str {
        match self {
            ModelSpec::Unet { .. } => "unet",
            ModelSpec::Mlp { .. } => "mlp",
            ModelSpec::Custom { name, .. } => name,
        }
    }

    /// The number of parameters the network has, from its configuration alone (nothing is
    /// built).
    ///
    /// # Errors
    /// An invalid configuration, or [`ModelError::Custom`].
    pub fn num_params(&self) -> Result<u64, ModelError> {
        match self {
            ModelSpec::Unet { config } => Ok(config.num_params()?),
            ModelSpec::Mlp { config } => Ok(config.num_params()?),
            ModelSpec::Custom { name, .. } => Err(ModelError::Custom(name.clone())),
        }
    }

    /// Builds the network with fresh weights on `device` (an autodiff device to train it).
    /// Its size is checked first, so that a configuration read from a damaged or hostile
    /// checkpoint is an error rather than an allocation that aborts the process.
    ///
    /// # Errors
    /// An invalid configuration, [`ModelError::TooLarge`] when two copies of the weights
    /// exceed this machine's memory, or [`ModelError::Custom`].
    pub fn init(&self, device: &Device) -> Result<ImagePredictor, ModelError> {
        let params = self.num_params()?;
        if let Some(memory) = machine_memory()
            && params.saturating_mul(8) > memory
        {
            return Err(ModelError::TooLarge { params, memory });
        }
        match self {
            ModelSpec::Unet { config } => Ok(ImagePredictor::Unet(config.init(device)?)),
            ModelSpec::Mlp { config } => Ok(ImagePredictor::Mlp(FlatMlp {
                mlp: config.init(device)?,
            })),
            ModelSpec::Custom { name, .. } => Err(ModelError::Custom(name.clone())),
        }
    }
}

/// Named networks: laid out for 28 x 28 grey images ([`spec`](Self::spec)), sized for any
/// channels and square side by [`spec_for`](Self::spec_for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelPreset {
    /// The paper's U-Net at MNIST scale ([`UNetConfig::ddpm_mnist`], 1.1 M parameters).
    Unet,
    /// The same layout at `ch = 16` (about 4x cheaper): the quick preset's.
    UnetSmall,
    /// A residual MLP (4 x 1024) on flattened 28 x 28 images.
    Mlp,
}

impl ModelPreset {
    /// The description of this preset for images of `channels` x `size` x `size`: the
    /// U-Net's input and output channels, its resolution and attention at a quarter of it
    /// (the 7x7 of the 28x28 layout, 8x8 at 32x32); the MLP's input `channels * size^2`.
    /// `size` must be divisible by 4 for the U-Nets (their three levels).
    pub fn spec_for(self, dropout: f64, channels: usize, size: usize) -> ModelSpec {
        match self.spec(dropout) {
            ModelSpec::Unet { config } => ModelSpec::Unet {
                config: UNetConfig {
                    in_channels: channels,
                    out_channels: channels,
                    resolution: size,
                    attn_resolutions: vec![size / 4],
                    ..config
                },
            },
            ModelSpec::Mlp { config } => ModelSpec::Mlp {
                config: MlpPredictorConfig {
                    data_dim: channels * size * size,
                    ..config
                },
            },
            custom => custom,
        }
    }

    /// The description of this preset for single-channel 28 x 28 images, with `dropout` in the
    /// U-Net's residual blocks (ignored by the MLP).
    pub fn spec(self, dropout: f64) -> ModelSpec {
        match self {
            ModelPreset::Unet => ModelSpec::Unet {
                config: UNetConfig::ddpm_mnist().with_dropout(dropout),
            },
            ModelPreset::UnetSmall => ModelSpec::Unet {
                config: UNetConfig {
                    ch: 16,
                    ..UNetConfig::ddpm_mnist()
                }
                .with_dropout(dropout),
            },
            ModelPreset::Mlp => ModelSpec::Mlp {
                config: MlpPredictorConfig::new(784)
                    .with_hidden(1024)
                    .with_depth(4)
                    .with_time_dim(64),
            },
        }
    }
}

impl fmt::Display for ModelPreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelPreset::Unet => "unet",
            ModelPreset::UnetSmall => "unet-small",
            ModelPreset::Mlp => "mlp",
        })
    }
}

impl FromStr for ModelPreset {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unet" => Ok(ModelPreset::Unet),
            "unet-small" => Ok(ModelPreset::UnetSmall),
            "mlp" => Ok(ModelPreset::Mlp),
            other => Err(ModelError::UnknownPreset(other.to_string())),
        }
    }
}

/// The MLP seen as a predictor of images: `[b, c, h, w]` is flattened to `[b, c*h*w]` and back.
#[derive(Module, Debug)]
pub struct FlatMlp {
    /// The MLP on flattened images.
    pub mlp: MlpPredictor,
}

impl NoisePredictor<4> for FlatMlp {
    fn predict(&self, x_t: Tensor<4>, t: Tensor<1, Int>) -> Result<Tensor<4>, PredictorError> {
        let dims = x_t.dims();
        let flat = x_t.reshape([dims[0], dims[1] * dims[2] * dims[3]]); // [b, c*h*w]
        Ok(self.mlp.predict(flat, t)?.reshape(dims)) // [b, c, h, w]
    }
    fn predict_conditional(
        &self,
        x_t: Tensor<4>,
        t: Tensor<1, Int>,
        condition: &Condition,
    ) -> Result<Tensor<4>, PredictorError> {
        let dims = x_t.dims();
        let flat = x_t.reshape([dims[0], dims[1] * dims[2] * dims[3]]); // [b, c*h*w]
        Ok(self
            .mlp
            .predict_conditional(flat, t, condition)?
            .reshape(dims)) // [b, c, h, w]
    }
    fn num_classes(&self) -> Option<usize> {
        self.mlp.num_classes
    }
}

/// A network of this workspace on images: what [`ModelSpec::init`] builds and
/// [`crate::checkpoint::load_predictor`] loads.
///
/// # Shapes
/// - `x_t`: `[batch, channels, height, width]`, `t`: `[batch]`
/// - output: as `x_t`
#[derive(Module, Debug)]
// Built once per run and passed by reference: the size of the U-Net variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum ImagePredictor {
    /// The U-Net.
    Unet(UNet),
    /// The MLP on flattened images.
    Mlp(FlatMlp),
}

impl NoisePredictor<4> for ImagePredictor {
    fn predict(&self, x_t: Tensor<4>, t: Tensor<1, Int>) -> Result<Tensor<4>, PredictorError> {
        match self {
            ImagePredictor::Unet(m) => m.predict(x_t, t),
            ImagePredictor::Mlp(m) => m.predict(x_t, t),
        }
    }
    fn predict_conditional(
        &self,
        x_t: Tensor<4>,
        t: Tensor<1, Int>,
        condition: &Condition,
    ) -> Result<Tensor<4>, PredictorError> {
        match self {
            ImagePredictor::Unet(m) => m.predict_conditional(x_t, t, condition),
            ImagePredictor::Mlp(m) => m.predict_conditional(x_t, t, condition),
        }
    }
    fn num_classes(&self) -> Option<usize> {
        match self {
            ImagePredictor::Unet(m) => m.num_classes,
            ImagePredictor::Mlp(m) => m.mlp.num_classes,
        }
    }
}

#[cfg(test)]
mod tests {

    /// `kernels`, recorded by checkpoints before it became an execution option, is ignored.
    #[test]
    fn an_old_kernels_field_is_ignored() {
        let spec = ModelSpec::Unet {
            config: UNetConfig::ddpm_mnist(),
        };
        let mut v = serde_json::to_value(&spec).unwrap();
        assert!(v["config"].get("kernels").is_none());
        v["config"]["kernels"] = serde_json::json!("Decomposed");
        let back: ModelSpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back, spec);
        assert_eq!(
            unet_config_from(v["config"].clone()).unwrap(),
            UNetConfig::ddpm_mnist()
        );
    }

    use super::*;

    #[test]
    fn presets_round_trip_through_their_names_and_serde() {
        for p in [ModelPreset::Unet, ModelPreset::UnetSmall, ModelPreset::Mlp] {
            assert_eq!(p.to_string().parse::<ModelPreset>().unwrap(), p);
            let spec = p.spec(0.1);
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<ModelSpec>(&json).unwrap(), spec);
        }
        let err = "resnet".parse::<ModelPreset>().unwrap_err().to_string();
        assert!(
            err.contains("resnet") && err.contains("unet-small"),
            "{err}"
        );
    }

    /// A description written before `kernels` and `num_classes` existed still reads, as the
    /// unconditional model with the fused kernels.
    #[test]
    fn older_descriptions_read_with_the_new_fields_defaulted() {
        let old = r#"{"kind": "unet", "config": {"in_channels": 1, "out_channels": 1, "ch": 16,
            "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [7], "dropout": 0.0,
            "resamp_with_conv": true, "num_groups": 8, "resolution": 28}}"#;
        let spec: ModelSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec, ModelPreset::UnetSmall.spec(0.0));
        assert_eq!(spec.num_classes(), None);
        let conditional = spec.with_classes(Some(10));
        assert_eq!(conditional.num_classes(), Some(10));
        let net = conditional.init(&Device::flex()).unwrap();
        assert_eq!(net.num_classes(), Some(10));
        // The class embedding adds (10 + 1) x 4 ch parameters, nothing else.
        let plain = ModelPreset::UnetSmall
            .spec(0.0)
            .init(&Device::flex())
            .unwrap();
        assert_eq!(net.num_params() - plain.num_params(), 11 * 64);
    }

    #[test]
    fn the_flattened_mlp_predicts_images_of_the_input_shape() {
        let device = Device::flex();
        let net = ModelPreset::Mlp.spec(0.0).init(&device).unwrap();
        let x = Tensor::<4>::zeros([3, 1, 28, 28], &device);
        let t = ddpm_core::timestep_tensor(&[0, 10, 999], &device);
        assert_eq!(net.predict(x, t).unwrap().dims(), [3, 1, 28, 28]);
        // A custom spec is not buildable here, and says how to load it.
        let custom = ModelSpec::Custom {
            name: "mine".into(),
            config: serde_json::Value::Null,
        };
        let err = custom.init(&device).unwrap_err().to_string();
        assert!(
            err.contains("mine") && err.contains("load_weights"),
            "{err}"
        );
    }
}
