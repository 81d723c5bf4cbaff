//! # ddpm-unet
//!
//! The U-Net of Ho et al. (2020), Appendix B, as in the original TensorFlow implementation:
//! a PixelCNN++-style backbone of wide residual blocks with GroupNorm, a sinusoidal timestep
//! embedding added in every block, single-head self-attention at chosen resolutions, and skip
//! connections from every level of the down path to the up path.
//!
//! [`UNet`] implements [`ddpm_core::NoisePredictor`] for `[batch, channels, height, width]`
//! images, so it trains and samples through `ddpm_core::GaussianDiffusion` like any other
//! predictor.
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use ddpm_unet::UNetConfig;
//!
//! let device = Device::flex();
//! let config = UNetConfig::new(1, 1, 16)
//!     .with_ch_mult(vec![1, 2])
//!     .with_num_groups(8)
//!     .with_attn_resolutions(vec![]);
//! let unet = config.init(&device).unwrap();
//! let x = Tensor::<4>::zeros([2, 1, 8, 8], &device);
//! let t = Tensor::<1, Int>::from_ints([0, 999], &device);
//! let eps = unet.forward(x, t).unwrap(); // [2, 1, 8, 8]
//! assert_eq!(eps.dims(), [2, 1, 8, 8]);
//! ```
#![deny(missing_docs)]

mod attention;
mod config;
mod cost;
mod embedding;
mod error;
pub mod kernels;
mod layers;
mod resample;
mod resblock;
mod topology;
mod unet;

pub use attention::{AttnBlock, AttnBlockConfig};
pub use config::{MAX_LEVELS, MAX_PARAMS, MAX_RES_BLOCKS, UNetConfig};
pub use ddpm_core::{sinusoidal_embedding, sinusoidal_embedding_with};
pub use embedding::{TimestepEmbedding, TimestepEmbeddingConfig};
pub use error::UNetError;
pub use kernels::Kernels;
pub use resample::{Downsample, DownsampleConfig, DownsamplePadding, Upsample, UpsampleConfig};
pub use resblock::{ResBlock, ResBlockConfig};
pub use unet::UNet;
