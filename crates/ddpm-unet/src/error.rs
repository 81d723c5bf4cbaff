//! Errors of the U-Net.

use thiserror::Error;

/// An invalid U-Net configuration or input.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum UNetError {
    /// A configuration value is invalid.
    #[error("invalid U-Net configuration: {0}")]
    InvalidConfig(String),
    /// The GroupNorm group count does not divide a level's channel count.
    #[error(
        "GroupNorm with {groups} groups cannot normalise {channels} channels: choose num_groups \
         dividing every ch * ch_mult (here ch * {mult})"
    )]
    GroupsDoNotDivide {
        /// Configured groups.
        groups: usize,
        /// Channels of the offending layer.
        channels: usize,
        /// The channel multiplier of that level.
        mult: usize,
    },
    /// The input does not have the configured number of channels.
    #[error("the input has {actual} channels but the U-Net was configured for {expected}")]
    Channels {
        /// Configured input channels.
        expected: usize,
        /// Channels of the input.
        actual: usize,
    },
    /// Height or width cannot be halved at every level.
    #[error(
        "input size {height}x{width} is not divisible by {factor} (2^(levels - 1) for {levels} \
         levels): pad or resize the images, or use fewer levels in ch_mult"
    )]
    Size {
        /// Input height.
        height: usize,
        /// Input width.
        width: usize,
        /// The required divisor.
        factor: usize,
        /// Number of levels.
        levels: usize,
    },
    /// Class labels that do not fit the model.
    #[error("{0}")]
    Classes(String),
    /// The batch of timesteps does not match the batch of images.
    #[error("got {timesteps} timesteps for a batch of {batch} images")]
    Timesteps {
        /// Timesteps given.
        timesteps: usize,
        /// Images given.
        batch: usize,
    },
}
