//! [`CheckpointError`]: why a checkpoint cannot be used (below everything that reads,
//! writes or trains, so that the training errors can wrap it).

use std::path::PathBuf;

use ddpm_core::DdpmError;
use thiserror::Error;

use super::format::{FORMAT, LOCK_FILE};
use crate::models::ModelError;

/// Why a checkpoint cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The folder holds no checkpoint.
    #[error(
        "no checkpoint found in {0}: expected a run directory with 'checkpoints/step-NNNNNNNN' \
         folders (written by training) or one such folder"
    )]
    NoCheckpoint(PathBuf),
    /// A file is damaged: truncated, a checksum mismatch, unreadable metadata.
    #[error(
        "{path} is damaged: {reason} (given a run directory instead, ddpm uses its newest intact \
         checkpoint)"
    )]
    Damaged {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The folder was written by something else, or for another model.
    #[error("{path} is not a checkpoint of this model: {reason}")]
    Foreign {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Written by a newer version of ddpm.
    #[error(
        "{path} was written by ddpm {version} (checkpoint format {format}); this is ddpm {} \
         (format {FORMAT}): upgrade ddpm to read it",
        env!("CARGO_PKG_VERSION")
    )]
    Newer {
        /// The checkpoint folder.
        path: PathBuf,
        /// Its format.
        format: u32,
        /// The version that wrote it.
        version: String,
    },
    /// A format-2 checkpoint cannot be resumed.
    #[error(
        "{0} is a checkpoint of an older ddpm (format 2, no checksums): it loads for sampling \
         and evaluation; to continue training it, upgrade it first with \
         ddpm::checkpoint::upgrade"
    )]
    Legacy(PathBuf),
    /// No checkpoint of the run is intact.
    #[error("no intact checkpoint in {run_dir}:\n{skipped}")]
    NoneIntact {
        /// The run directory.
        run_dir: PathBuf,
        /// Each checkpoint with the reason it was skipped, one per line.
        skipped: String,
    },
    /// The weights were saved without an EMA (a legacy `train --devices` run).
    #[error("{0} holds no EMA weights: load the raw weights (ema = false)")]
    NoEma(PathBuf),
    /// The model cannot be built from its description.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The diffusion cannot be built from its description.
    #[error(transparent)]
    Ddpm(#[from] DdpmError),
    /// Another process holds the run directory.
    #[error(
        "run directory {run_dir} is in use by {holder} (an OS lock on {}); wait for it to \
         finish: the lock is released when that process exits, however it exits",
        run_dir.join(LOCK_FILE).display()
    )]
    Locked {
        /// The run directory.
        run_dir: PathBuf,
        /// Who holds it.
        holder: String,
    },
}
