//! # ddpm
//!
//! Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel, 2020) on
//! [burn](https://burn.dev). This crate gathers the workspace:
//!
//! - [`core`] (`ddpm-core`): schedules, the forward process, the loss, the variational bound,
//!   DDPM and DDIM samplers and the EMA, generic over any [`core::NoisePredictor`];
//! - [`unet`] (`ddpm-unet`): the paper's U-Net;
//! - [`mlp`] (`ddpm-mlp`): a tiny MLP predictor;
//!
//! and adds what a training program needs: [`data`] (MNIST / Fashion-MNIST IDX files),
//! [`train`] (Algorithm 1 with checkpoints that resume exactly), [`images`] (PNG grids and
//! GIFs of the denoising) and [`backend`] (choosing a device at run time).
#![deny(missing_docs)]

pub use ddpm_core as core;
pub use ddpm_mlp as mlp;
pub use ddpm_unet as unet;

pub mod adam;
pub mod backend;
pub mod data;
pub mod eval;
pub mod fsutil;
pub mod images;
#[cfg(feature = "ddp")]
pub mod parallel;
pub mod train;
