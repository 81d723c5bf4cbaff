//! The one error type of ddpm-core.

use thiserror::Error;

/// The error a predictor may return (for example a U-Net rejecting an input whose size it
/// cannot downsample). Boxed so that any crate's error type fits.
pub type PredictorError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in ddpm-core. Each message says what was wrong and what to do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DdpmError {
    /// The number of diffusion steps T was zero.
    #[error("the number of diffusion steps T must be at least 1, got 0")]
    ZeroTimesteps,
    /// A beta lies outside the open interval (0, 1) or is not a number.
    #[error(
        "beta at index {index} is {value}, but every beta must lie in the open interval (0, 1): \
         check the schedule's parameters"
    )]
    BetaOutOfRange {
        /// 0-based index of the offending beta.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// A schedule parameter is invalid (NaN, out of range, or start > end).
    #[error("invalid schedule parameter: {0}")]
    InvalidSchedule(String),
    /// A custom schedule was given an empty list of betas.
    #[error("a custom beta schedule needs at least one beta, got an empty list")]
    EmptyCustomSchedule,
    /// A custom schedule's length disagrees with the configured T.
    #[error("the custom schedule has {len} betas but T = {num_timesteps}: make them equal")]
    CustomLengthMismatch {
        /// Betas given.
        len: usize,
        /// T configured.
        num_timesteps: usize,
    },
    /// A timestep index is not in `0..T`.
    #[error(
        "timestep index {t} is out of range: indices are 0-based and must be below T = {num_timesteps}"
    )]
    TimestepOutOfRange {
        /// The offending index.
        t: usize,
        /// T.
        num_timesteps: usize,
    },
    /// The number of timesteps does not match the batch size.
    #[error("got {timesteps} timesteps for a batch of {batch}: give one timestep per example")]
    TimestepBatchMismatch {
        /// Timesteps given.
        timesteps: usize,
        /// Batch size of the data.
        batch: usize,
    },
    /// Two tensors that must have the same shape do not.
    #[error("shape mismatch in {context}: expected {expected:?}, got {actual:?}")]
    ShapeMismatch {
        /// Where the mismatch was found.
        context: &'static str,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape found.
        actual: Vec<usize>,
    },
    /// The noise predictor returned a tensor whose shape differs from its input `x_t`.
    #[error(
        "the noise predictor returned shape {actual:?} for an input of shape {expected:?}: a \
         NoisePredictor must return a tensor of exactly x_t's shape"
    )]
    PredictorShape {
        /// Shape of `x_t`.
        expected: Vec<usize>,
        /// Shape the predictor returned.
        actual: Vec<usize>,
    },
    /// The noise predictor itself failed (for example it rejected its input).
    #[error("the noise predictor failed: {0}")]
    Predictor(#[source] PredictorError),
    /// A sampler or respacing request is invalid.
    #[error("invalid sampler setting: {0}")]
    InvalidSampler(String),
    /// An invalid configuration value (EMA decay, loss weighting, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The batch is empty.
    #[error("the batch is empty: give at least one example")]
    EmptyBatch,
    /// Reading tensor data back from the device failed.
    #[error("could not read tensor data back from the device: {0}")]
    Data(String),
    /// The EMA shadow model and the model do not have the same parameters.
    #[error(
        "the EMA shadow and the model disagree ({0}): build the Ema from the same model \
         configuration you train"
    )]
    EmaMismatch(String),
}
