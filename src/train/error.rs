//! [`TrainError`]: everything a training run can refuse or fail at.

use std::path::PathBuf;

use thiserror::Error;

use ddpm_core::DdpmError;

use crate::checkpoint::error::CheckpointError;

/// Errors of training and checkpointing.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrainError {
    /// An invalid training setting.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// An error of the diffusion maths or the predictor.
    #[error(transparent)]
    Ddpm(#[from] DdpmError),
    /// The loss became NaN or infinite.
    #[error(
        "the loss became {value} at step {step}: training stopped and the last good checkpoint \
         was left untouched; lower the learning rate or check the data"
    )]
    NonFiniteLoss {
        /// The step (1-based) whose loss was not finite.
        step: u64,
        /// The loss value.
        value: f64,
    },
    /// A checkpoint could not be written, read or verified, or the run directory is in use.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The model description cannot be built.
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// The checkpoint was written for another configuration.
    #[error(
        "checkpoint {path} was written for another configuration:\n  checkpoint: {saved}\n  \
         current:    {current}\nresume with the same ModelSpec and DiffusionConfig (the ones the checkpoint records), or start a new run"
    )]
    ConfigMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// Its configuration.
        saved: String,
        /// The current configuration.
        current: String,
    },
    /// The data given is not the data the run was started (or resumed) with.
    #[error(
        "the run's position refers to a data set of {expected} examples, but the data given has \
         {actual}: train on the same data set as the checkpoint, or start a new run"
    )]
    DataMismatch {
        /// Examples in the run's data.
        expected: usize,
        /// Examples in the data given.
        actual: usize,
    },
    /// The run directory holds checkpoints of later steps than this run's position: continuing
    /// would interleave two histories, and resuming the run later would pick the other one.
    #[error(
        "{run_dir} holds a checkpoint of step {newer}, later than this run's step {step}: to \
         branch from an older checkpoint, copy its folder into a new run directory and resume \
         that"
    )]
    NewerCheckpoints {
        /// The run directory.
        run_dir: PathBuf,
        /// The step of this run.
        step: u64,
        /// The latest step found there.
        newer: u64,
    },
    /// A time limit that is not a finite, non-negative duration.
    #[error("a time limit of {0} minutes is not a duration: give a finite number >= 0")]
    TimeLimit(f64),
    /// The run directory already holds checkpoints of another run.
    #[error(
        "{0} already holds checkpoints: resume them (Trainer::resume), or choose another directory"
    )]
    RunExists(PathBuf),
    /// The data's examples do not fit the model (channels or size).
    #[error(
        "the training examples are {dims:?} but {reason}: build the model for the data \
         (ModelSpec from the data's channels and size), or train on data of the model's shape"
    )]
    ShapeMismatch {
        /// One example's dims.
        dims: Vec<usize>,
        /// What the model expects.
        reason: String,
    },
    /// The loss log or plot could not be written.
    #[error("{path}: {reason}")]
    Log {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}
