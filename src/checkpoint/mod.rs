//! Checkpoints: the one module that owns their format. Typed metadata, checksums, writing a
//! checkpoint durably, the newest intact checkpoint of a run, and the lock that gives a run
//! directory to one process at a time.
//!
//! A run directory holds `checkpoints/step-NNNNNNNN/`, each with exactly `model.bpk`,
//! `ema.bpk`, `optim.bin` and `state.json` ([`CheckpointMeta`]: the model, diffusion and
//! training settings, the data set, the position of the run, a CRC-32 of each of the three
//! other files, and a CRC-32 of the metadata itself). Every load checks the checksums, so a
//! flipped byte is an error, not a model that samples garbage; opening a run directory falls
//! back to the newest intact checkpoint and says which ones it skipped and why. Nothing a
//! checkpoint's metadata says makes ddpm read or write outside the checkpoint folder: file
//! names are the fixed ones above, and model sizes are bounded before anything is allocated.
//!
//! | file | job |
//! | --- | --- |
//! | `format.rs` | the format's version and file names |
//! | `error.rs` | [`CheckpointError`] |
//! | `meta.rs` | [`CheckpointMeta`], its checksum and bounded read, what a read returns |
//! | `layout.rs` | where checkpoints live in a run directory, listing them |
//! | `read.rs` | reading and verifying: [`read_meta`], [`open`], [`resolve`], loading weights |
//! | `write.rs` | writing: [`write_meta`], [`save`] (atomic, fsynced, retention) |
//! | `lock.rs` | [`RunLock`], an OS file lock on `run.lock` |
//! | `legacy.rs` | reading format 2 (the example's untyped description of 0.1.0) |
//! | `upgrade.rs` | [`upgrade`]: format 2 rewritten in the current format |
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use burn::tensor::Device;
//! use ddpm::core::{SamplerKind, SampleOptions};
//!
//! let device = Device::flex();
//! let loaded = ddpm::checkpoint::load_predictor("runs/quick".as_ref(), true, &device)?;
//! for s in &loaded.skipped {
//!     eprintln!("skipped {}: {}", s.dir.display(), s.reason);
//! }
//! let diffusion = loaded.checkpoint.meta.diffusion()?;
//! let out = SamplerKind::Ddim.with_steps(50).sample(
//!     &diffusion, &loaded.model, [16, 1, 28, 28], &device, SampleOptions::new(0))?;
//! # Ok(()) }
//! ```

pub(crate) mod error;
mod format;
mod layout;
mod legacy;
mod lock;
mod meta;
mod read;
mod upgrade;
mod write;

pub use error::CheckpointError;
pub use format::{
    DATA_FILES, EMA_FILE, FORMAT, LOCK_FILE, META_CRC_KEY, META_FILE, MODEL_FILE, OPTIM_FILE,
    RESUMABLE_FORMAT,
};
pub use layout::{folder_name, is_checkpoint_dir, list, run_dir_of};
pub use lock::RunLock;
pub use meta::{
    Checkpoint, CheckpointMeta, FileSum, MAX_META_BYTES, Resolved, Skipped, meta_checksum,
};
pub use read::{
    Loaded, load_image_predictor, load_predictor, load_weights, open, read_meta, resolve, verify,
};
pub use upgrade::upgrade;
pub use write::{save, write_meta};
