//! [`EvalError`].

use std::path::PathBuf;

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The model or the diffusion failed.
    #[error(transparent)]
    Ddpm(#[from] ddpm_core::DdpmError),
    /// The data set could not be read.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An invalid setting.
    #[error("invalid evaluation: {0}")]
    Invalid(String),
}
