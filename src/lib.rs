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
//! and adds what a training program needs:
//!
//! - [`train`]: Algorithm 1 on one device or several, with `Trainer::fit` (progress, loss
//!   log, checkpoints, time limit, stop flag);
//! - [`checkpoint`]: typed checkpoint metadata with checksums, the newest intact checkpoint of
//!   a run, the lock that gives a run directory to one process;
//! - [`models`]: the description of a predictor that checkpoints record, and the networks of
//!   this workspace rebuilt from it;
//! - [`sampling`]: sampling to PNGs, grids and GIFs; [`eval`]: the NLL bound and the
//!   classifier-based quality report;
//! - [`diffusers`]: the paper's published models (and ours) in the Hugging Face diffusers
//!   layout, read and written;
//! - [`data`] (MNIST / Fashion-MNIST IDX files), [`images`], [`backend`] (choosing a device
//!   at run time), [`allocator`] (a malloc setting that CPU steps run faster with).
//!
//! Start with the [`guide`]: using ddpm in your project, every snippet compiled.
#![deny(missing_docs)]

pub use burn;
pub use ddpm_core as core;
pub use ddpm_mlp as mlp;
pub use ddpm_unet as unet;

pub mod adam;
pub mod allocator;
pub mod backend;
pub mod checkpoint;
pub mod data;
pub mod diffusers;
pub mod eval;
pub mod fsutil;
#[doc = include_str!("../docs/guide.md")]
pub mod guide {}
pub mod images;
pub mod models;
pub mod plot;
pub mod recipe;
pub mod sampling;
pub mod train;
