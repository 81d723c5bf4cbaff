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
use ddpm_core::{NoisePredictor, PredictorError};
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
}

/// What a checkpoint records about its network (serialized into `state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

    /// A short name: `unet`, `mlp`, or the custom name.
    pub fn name(&self) -> &str {
        match self {
            ModelSpec::Unet { .. } => "unet",
            ModelSpec::Mlp { .. } => "mlp",
            ModelSpec::Custom { name, .. } => name,
        }
    }

    /// Builds the network with fresh weights on `device` (an autodiff device to train it).
    ///
    /// # Errors
    /// An invalid configuration, or [`ModelError::Custom`].
    pub fn init(&self, device: &Device) -> Result<ImagePredictor, ModelError> {
        match self {
            ModelSpec::Unet { config } => Ok(ImagePredictor::Unet(config.init(device)?)),
            ModelSpec::Mlp { config } => Ok(ImagePredictor::Mlp(FlatMlp {
                mlp: config.init(device)?,
            })),
            ModelSpec::Custom { name, .. } => Err(ModelError::Custom(name.clone())),
        }
    }
}

/// The networks of the example's `--model` flag.
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
}

#[cfg(test)]
mod tests {
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
