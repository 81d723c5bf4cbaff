//! The MLP predictor.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use ddpm_core::{Condition, NoisePredictor, PredictorError, sinusoidal_embedding};
use thiserror::Error;

/// An invalid MLP configuration or input.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum MlpError {
    /// A configuration value is invalid.
    #[error("invalid MLP configuration: {0}")]
    InvalidConfig(String),
    /// Class labels that do not fit the model.
    #[error("{0}")]
    Classes(String),
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
    /// Class-conditional with this many classes: a class embedding (`num_classes + 1` rows,
    /// the last the null class) is added to the projected timestep embedding. `None`:
    /// unconditional.
    #[config(default = "None")]
    pub num_classes: Option<usize>,
}

/// The most hidden layers an MLP may have.
pub const MAX_DEPTH: usize = 1024;
/// The most parameters an MLP may have (2^33, 32 GiB of f32 weights).
pub const MAX_PARAMS: u64 = 1 << 33;

impl MlpPredictorConfig {
    /// The number of trainable parameters, counted from the configuration alone (nothing is
    /// allocated), after the checks of [`init`](Self::init).
    ///
    /// # Errors
    /// [`MlpError::InvalidConfig`] as [`init`](Self::init) says.
    pub fn num_params(&self) -> Result<u64, MlpError> {
        if self.data_dim == 0
            || self.hidden == 0
            || self.depth == 0
            || self.time_dim < 2
            || self.num_classes == Some(0)
        {
            return Err(MlpError::InvalidConfig(format!(
                "data_dim, hidden, depth and num_classes must be at least 1 and time_dim at least 2, got {self:?}"
            )));
        }
        if self.depth > MAX_DEPTH {
            return Err(MlpError::InvalidConfig(format!(
                "depth {} is more than {MAX_DEPTH} hidden layers",
                self.depth
            )));
        }
        let w = |v: usize| v as u128; // usize fits u128; products of two fit too
        let (d, h, td) = (w(self.data_dim), w(self.hidden), w(self.time_dim));
        let dense = |i: u128, o: u128| i.checked_mul(o).and_then(|p| p.checked_add(o));
        let layers = dense(h, h).and_then(|l| l.checked_mul(2 * w(self.depth)));
        let parts = [
            dense(td, h),
            dense(d, h),
            layers,
            dense(h, d),
            Some(match self.layout {
                MlpLayout::Plain => 0,
                MlpLayout::Residual => d,
            }),
            self.num_classes
                .map_or(Some(0), |k| (w(k) + 1).checked_mul(h)),
        ];
        let total = parts
            .iter()
            .try_fold(0u128, |acc, p| acc.checked_add((*p)?))
            .and_then(|t| u64::try_from(t).ok())
            .filter(|&t| t <= MAX_PARAMS);
        total.ok_or_else(|| {
            MlpError::InvalidConfig(format!(
                "the MLP would have more than {MAX_PARAMS} parameters (data_dim {}, hidden {}, \
                 depth {}, time_dim {})",
                self.data_dim, self.hidden, self.depth, self.time_dim
            ))
        })
    }

    /// Validates the configuration and builds the MLP.
    ///
    /// # Errors
    /// [`MlpError::InvalidConfig`] when a width or the depth is zero, `time_dim` is below 2,
    /// the depth is above [`MAX_DEPTH`] or the parameters would exceed [`MAX_PARAMS`].
    pub fn init(&self, device: &Device) -> Result<MlpPredictor, MlpError> {
        self.num_params()?;
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
            class_emb: self
                .num_classes
                .map(|k| EmbeddingConfig::new(k + 1, h).init(device)),
            data_dim: self.data_dim,
            time_dim: self.time_dim,
            num_classes: self.num_classes,
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
    /// Class embedding of a class-conditional model (`num_classes + 1` rows).
    pub class_emb: Option<Embedding>,
    /// Data dimension.
    pub data_dim: usize,
    /// Width of the sinusoidal embedding.
    pub time_dim: usize,
    /// Classes of a class-conditional model.
    #[module(skip)]
    pub num_classes: Option<usize>,
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
        self.forward_classes(x, t, None)
    }

    /// [`forward`](Self::forward) of a class-conditional model: one label per example in
    /// `0..=num_classes` (`num_classes`: the null class; `None`: the null class for all).
    ///
    /// # Errors
    /// As [`forward`](Self::forward); [`MlpError::Classes`] for labels out of range, of another
    /// count than the batch, or given to an unconditional model.
    pub fn forward_classes(
        &self,
        x: Tensor<2>,
        t: Tensor<1, Int>,
        classes: Option<&[usize]>,
    ) -> Result<Tensor<2>, MlpError> {
        let [b, d] = x.dims();
        if d != self.data_dim || t.dims()[0] != b {
            return Err(MlpError::Input {
                expected: self.data_dim,
                actual: vec![b, d],
            });
        }
        let mut pre = self.time.forward(sinusoidal_embedding(t, self.time_dim)); // [b, hidden]
        match (&self.class_emb, self.num_classes) {
            (Some(emb), Some(k)) => {
                let labels: Vec<i64> = match classes {
                    Some(l) => {
                        ddpm_core::check_class_labels(l, k, b)
                            .map_err(|e| MlpError::Classes(e.to_string()))?;
                        l.iter().map(|&c| c as i64).collect()
                    }
                    None => vec![k as i64; b],
                };
                let idx = Tensor::<2, Int>::from_data(TensorData::new(labels, [b, 1]), &x.device());
                let h = pre.dims()[1];
                pre = pre + emb.forward(idx).reshape([b, h]); // [b, hidden]
            }
            _ if classes.is_some() => {
                return Err(MlpError::Classes(
                    "this MLP is unconditional (num_classes: None): it takes no class labels"
                        .into(),
                ));
            }
            _ => {}
        }
        let temb = silu(pre); // [b, hidden]
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
    fn predict_conditional(
        &self,
        x_t: Tensor<2>,
        t: Tensor<1, Int>,
        condition: &Condition,
    ) -> Result<Tensor<2>, PredictorError> {
        match condition {
            Condition::Classes(labels) => self
                .forward_classes(x_t, t, Some(labels))
                .map_err(|e| Box::new(e) as PredictorError),
            other => Err(format!("the MLP takes class labels, not {other:?}").into()),
        }
    }
    fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }
}
