//! The MLP predictor.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor};
use ddpm_core::{NoisePredictor, PredictorError, sinusoidal_embedding};
use thiserror::Error;

/// An invalid MLP configuration or input.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum MlpError {
    /// A configuration value is invalid.
    #[error("invalid MLP configuration: {0}")]
    InvalidConfig(String),
    /// The input does not have the configured number of features.
    #[error(
        "the input has shape {actual:?} but the MLP expects [batch, {expected}] with one timestep per example"
    )]
    Input {
        /// Configured data dimension.
        expected: usize,
        /// Shape of the input.
        actual: Vec<usize>,
    },
}

/// How the hidden layers of an [`MlpPredictor`] are connected.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum MlpLayout {
    /// `h <- silu(W h + P temb)`: a plain stack. Every hidden layer is a bottleneck: with
    /// `hidden < data_dim` the network cannot pass `x_t` through, which the noise prediction
    /// needs at large `t` (where `eps ~ x_t`).
    Plain,
    /// `h <- h + silu(W h + P temb)`, and the output adds a learned per-feature scale of the
    /// input (`out(h) + s * x_t`), so the identity on `x_t` is one parameter away at any
    /// width.
    Residual,
}

/// Hyper-parameters of an [`MlpPredictor`].
#[derive(Config, Debug, PartialEq)]
pub struct MlpPredictorConfig {
    /// Data dimension (2 for toy data, 784 for flattened MNIST).
    pub data_dim: usize,
    /// Width of the hidden layers.
    #[config(default = 128)]
    pub hidden: usize,
    /// Number of hidden layers (at least 1).
    #[config(default = 3)]
    pub depth: usize,
    /// Width of the sinusoidal timestep embedding.
    #[config(default = 32)]
    pub time_dim: usize,
    /// How the hidden layers are connected.
    #[config(default = "MlpLayout::Residual")]
    pub layout: MlpLayout,
}

impl MlpPredictorConfig {
    /// Validates the configuration and builds the MLP.
    ///
    /// # Errors
    /// [`MlpError::InvalidConfig`] when a width or the depth is zero or `time_dim` is below 2.
    pub fn init(&self, device: &Device) -> Result<MlpPredictor, MlpError> {
        if self.data_dim == 0 || self.hidden == 0 || self.depth == 0 || self.time_dim < 2 {
            return Err(MlpError::InvalidConfig(format!(
                "data_dim, hidden and depth must be at least 1 and time_dim at least 2, got {self:?}"
            )));
        }
        let h = self.hidden;
        Ok(MlpPredictor {
            time: LinearConfig::new(self.time_dim, h).init(device),
            input: LinearConfig::new(self.data_dim, h).init(device),
            hidden: (0..self.depth)
                .map(|_| LinearConfig::new(h, h).init(device))
                .collect(),
            time_hidden: (0..self.depth)
                .map(|_| LinearConfig::new(h, h).init(device))
                .collect(),
            output: LinearConfig::new(h, self.data_dim).init(device),
            skip: match self.layout {
                MlpLayout::Plain => None,
                MlpLayout::Residual => {
                    Some(Param::from_tensor(Tensor::zeros([self.data_dim], device)))
                }
            },
            data_dim: self.data_dim,
            time_dim: self.time_dim,
        })
    }
}

/// `eps_theta(x, t)` for `[batch, features]` data: the input and the timestep embedding are
/// projected to `hidden` and summed, then each hidden layer adds its own projection of the
/// time features before a SiLU, and a final linear layer maps back to `data_dim`. With
/// [`MlpLayout::Residual`] (the default) the hidden layers are residual updates and the output
/// adds a learned per-feature scale of the input.
#[derive(Module, Debug)]
pub struct MlpPredictor {
    /// Projection of the sinusoidal embedding.
    pub time: Linear,
    /// Projection of the input.
    pub input: Linear,
    /// Hidden layers.
    pub hidden: Vec<Linear>,
    /// Per-layer projections of the time features.
    pub time_hidden: Vec<Linear>,
    /// Output layer.
    pub output: Linear,
    /// Per-feature scale of the input added to the output (`None` for [`MlpLayout::Plain`]);
    /// its presence also switches the hidden layers to residual updates.
    pub skip: Option<Param<Tensor<1>>>,
    /// Data dimension.
    pub data_dim: usize,
    /// Width of the sinusoidal embedding.
    pub time_dim: usize,
}

impl MlpPredictor {
    /// # Shapes
    /// - `x`: `[batch, data_dim]`
    /// - `t`: `[batch]`
    /// - output: `[batch, data_dim]`
    ///
    /// # Errors
    /// [`MlpError::Input`] when `x` is not `[batch, data_dim]` or `t` not `[batch]`.
    pub fn forward(&self, x: Tensor<2>, t: Tensor<1, Int>) -> Result<Tensor<2>, MlpError> {
        let [b, d] = x.dims();
        if d != self.data_dim || t.dims()[0] != b {
            return Err(MlpError::Input {
                expected: self.data_dim,
                actual: vec![b, d],
            });
        }
        let temb = silu(self.time.forward(sinusoidal_embedding(t, self.time_dim))); // [b, hidden]
        let mut h = silu(self.input.forward(x.clone()) + temb.clone()); // [b, hidden]
        for (layer, proj) in self.hidden.iter().zip(&self.time_hidden) {
            let update = silu(layer.forward(h.clone()) + proj.forward(temb.clone())); // [b, hidden]
            h = match self.skip {
                Some(_) => h + update,
                None => update,
            };
        }
        let out = self.output.forward(h); // [b, data_dim]
        Ok(match &self.skip {
            Some(scale) => out + x * scale.val().unsqueeze_dim(0), // [b, data_dim]
            None => out,
        })
    }
}

impl NoisePredictor<2> for MlpPredictor {
    fn predict(&self, x_t: Tensor<2>, t: Tensor<1, Int>) -> Result<Tensor<2>, PredictorError> {
        self.forward(x_t, t)
            .map_err(|e| Box::new(e) as PredictorError)
    }
}
