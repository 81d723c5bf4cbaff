//! [`upgrade`]: a format-2 checkpoint rewritten in the current format, to be resumed.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;

use super::error::CheckpointError;
use super::format::{EMA_FILE, FORMAT, META_FILE, MODEL_FILE, OPTIM_FILE, RESUMABLE_FORMAT};
use super::meta::{Checkpoint, CheckpointMeta, io};
use super::read::{load_image_predictor, open};
use super::write::write_meta;

/// Rewrites a format-2 checkpoint folder in the current format (weights in the
/// [`ImagePredictor`](crate::models::ImagePredictor) layout, checksums), so that it can be
/// resumed. The folder is replaced atomically; a folder of format 3 or later is left as it is.
///
/// # Errors
/// As [`open`] and [`load_weights`](super::load_weights); [`CheckpointError::Io`].
pub fn upgrade(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let old = open(dir)?;
    if old.meta.format >= RESUMABLE_FORMAT {
        return Ok(old);
    }
    if !dir.join(META_FILE).is_file() {
        return Err(CheckpointError::Foreign {
            path: dir.to_path_buf(),
            reason: "a `train --devices` folder of format 2 has no optimizer state to resume \
                     from"
                .into(),
        });
    }
    // The weights only pass through: any backend of this build will do.
    #[cfg(feature = "flex")]
    let device = Device::flex();
    #[cfg(not(feature = "flex"))]
    let device = Device::default();
    let tmp = dir.with_file_name(format!(
        ".{}.upgrade",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let written = (|| {
        for (ema, file) in [(false, MODEL_FILE), (true, EMA_FILE)] {
            load_image_predictor(&old, ema, &device)?
                .save_file(tmp.join(file))
                .map_err(|e| CheckpointError::Io {
                    path: tmp.join(file),
                    source: std::io::Error::other(e.to_string()),
                })?;
        }
        std::fs::copy(dir.join(OPTIM_FILE), tmp.join(OPTIM_FILE)).map_err(io(&tmp))?;
        let meta = CheckpointMeta {
            format: FORMAT,
            crate_version: env!("CARGO_PKG_VERSION").into(),
            ..old.meta
        };
        write_meta(&tmp, meta)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let backup = dir.with_file_name(format!(
        ".{}.format2",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::rename(dir, &backup).map_err(io(dir))?;
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    let _ = std::fs::remove_dir_all(&backup);
    open(dir)
}
