//! # ddpm-mlp
//!
//! A tiny multilayer perceptron noise predictor for `[batch, features]` data: 2-D toy
//! distributions or flattened images. It exists to show that the U-Net is a choice, not a
//! requirement: [`MlpPredictor`] implements [`ddpm_core::NoisePredictor`] and trains through
//! the same `GaussianDiffusion` as the U-Net.
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use ddpm_mlp::MlpPredictorConfig;
//!
//! let device = Device::flex();
//! let mlp = MlpPredictorConfig::new(2).init(&device).unwrap();
//! let x = Tensor::<2>::zeros([5, 2], &device);
//! let t = Tensor::<1, Int>::from_ints([0, 1, 2, 3, 4], &device);
//! assert_eq!(mlp.forward(x, t).unwrap().dims(), [5, 2]);
//! ```
#![deny(missing_docs)]

mod mlp;

pub use mlp::{MAX_DEPTH, MAX_PARAMS, MlpError, MlpLayout, MlpPredictor, MlpPredictorConfig};
