//! Writing checkpoints: every file into a temporary folder, each fsynced, the folder renamed
//! into place and its parent fsynced, and only then older checkpoints removed. A failure at
//! any step removes the temporary folder and leaves every earlier checkpoint as it was.

use std::path::{Path, PathBuf};

use burn::module::Module;

use super::error::CheckpointError;
use super::format::{DATA_FILES, EMA_FILE, META_CRC_KEY, META_FILE, MODEL_FILE, OPTIM_FILE};
use super::layout::{folder_name, list};
use super::meta::{CheckpointMeta, FileSum, io, meta_checksum};
use crate::adam::Adam;

/// Writes the metadata of checkpoint folder `dir` after summing its [`DATA_FILES`], with the
/// checksum of the metadata itself, atomically. Returns the metadata as written.
///
/// # Errors
/// [`CheckpointError::Io`], including a data file that is missing.
pub fn write_meta(dir: &Path, mut meta: CheckpointMeta) -> Result<CheckpointMeta, CheckpointError> {
    meta.files.clear();
    for name in DATA_FILES {
        meta.files
            .insert(name.to_string(), FileSum::of(&dir.join(name))?);
    }
    let path = dir.join(META_FILE);
    let encode = |e: serde_json::Error| CheckpointError::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    };
    let mut value = serde_json::to_value(&meta).map_err(encode)?;
    let crc = meta_checksum(&value);
    if let Some(obj) = value.as_object_mut() {
        obj.insert(META_CRC_KEY.into(), crc.into());
    }
    let json = serde_json::to_vec_pretty(&value).map_err(encode)?;
    crate::fsutil::write_atomic(&path, &json).map_err(io(&path))?;
    Ok(meta)
}

/// One step of [`save`], named for the fault injection of the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SaveStep {
    /// Creating `checkpoints/` and the temporary folder.
    CreateDirs,
    /// Writing one file into the temporary folder.
    Write(&'static str),
    /// Flushing the files and the temporary folder to the disk.
    Sync,
    /// Renaming the temporary folder into place.
    Rename,
    /// Flushing `checkpoints/` (the rename) to the disk.
    SyncParent,
}

/// Called before each step of a save with the path it is about to write; an error aborts the
/// save as a failing disk would.
pub(crate) type Faults<'a> = &'a mut dyn FnMut(SaveStep, &Path) -> std::io::Result<()>;

/// Flushes a folder's entries (a rename, a new file) to the disk.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Writes the checkpoint of `meta.state.step` into `run_dir/checkpoints/step-NNNNNNNN/`:
/// `model` and `ema` (burnpack), the optimizer state and `state.json` ([`write_meta`]). The
/// folder is assembled under a temporary name, every file and the folder are fsynced, the
/// folder is renamed into place and `checkpoints/` is fsynced; then checkpoints of earlier
/// steps beyond `keep` (counting the new one) are removed. Checkpoints of later steps are
/// never removed (they are not this history's: [`Trainer::fit`](crate::train::Trainer::fit)
/// refuses to continue a run below one). Returns the new folder.
///
/// # Errors
/// [`CheckpointError::Io`] on any I/O or encoding failure; the temporary folder is removed and
/// every earlier checkpoint is left as it was.
pub fn save<M: Module>(
    run_dir: &Path,
    model: &M,
    ema: &M,
    optim: &Adam,
    meta: CheckpointMeta,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    save_with(run_dir, model, ema, optim, meta, keep, &mut |_, _| Ok(()))
}

/// [`save`] with a hook before every step (fault injection in tests).
pub(crate) fn save_with<M: Module>(
    run_dir: &Path,
    model: &M,
    ema: &M,
    optim: &Adam,
    meta: CheckpointMeta,
    keep: usize,
    faults: Faults<'_>,
) -> Result<PathBuf, CheckpointError> {
    let step = meta.state.step;
    let root = run_dir.join("checkpoints");
    let name = folder_name(step);
    let final_dir = root.join(&name);
    let tmp = root.join(format!(".{name}.tmp"));
    let written = write_folder(run_dir, &root, &tmp, model, ema, optim, meta, faults);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Replacing a folder of the same step: moved aside first, removed once the new one is in.
    let aside = root.join(format!(".{name}.old"));
    let mut install = || -> Result<(), CheckpointError> {
        faults(SaveStep::Rename, &final_dir).map_err(io(&final_dir))?;
        if final_dir.exists() {
            let _ = std::fs::remove_dir_all(&aside);
            std::fs::rename(&final_dir, &aside).map_err(io(&final_dir))?;
        }
        if let Err(e) = std::fs::rename(&tmp, &final_dir) {
            // Put the replaced folder back: the step keeps its earlier checkpoint.
            let _ = std::fs::rename(&aside, &final_dir);
            return Err(io(&final_dir)(e));
        }
        Ok(())
    };
    if let Err(e) = install() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&aside);
    faults(SaveStep::SyncParent, &root).map_err(io(&root))?;
    sync_dir(&root).map_err(io(&root))?;
    prune(run_dir, step, keep);
    Ok(final_dir)
}

/// Creates the temporary folder and writes, sums and flushes every file into it.
#[allow(clippy::too_many_arguments)]
fn write_folder<M: Module>(
    run_dir: &Path,
    root: &Path,
    tmp: &Path,
    model: &M,
    ema: &M,
    optim: &Adam,
    meta: CheckpointMeta,
    faults: Faults<'_>,
) -> Result<(), CheckpointError> {
    let fail = |path: &Path, e: &dyn std::fmt::Display| CheckpointError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    faults(SaveStep::CreateDirs, tmp).map_err(io(tmp))?;
    let new_root = !root.is_dir();
    let _ = std::fs::remove_dir_all(tmp);
    std::fs::create_dir_all(tmp).map_err(io(tmp))?;
    if new_root {
        sync_dir(run_dir).map_err(io(run_dir))?;
    }
    for (file, weights) in [(MODEL_FILE, model), (EMA_FILE, ema)] {
        let path = tmp.join(file);
        faults(SaveStep::Write(file), &path).map_err(io(&path))?;
        weights
            .clone()
            .save_file(&path)
            .map_err(|e| fail(&path, &e))?;
    }
    let path = tmp.join(OPTIM_FILE);
    faults(SaveStep::Write(OPTIM_FILE), &path).map_err(io(&path))?;
    optim.save(&path).map_err(|e| fail(&path, &e))?;
    let path = tmp.join(META_FILE);
    faults(SaveStep::Write(META_FILE), &path).map_err(io(&path))?;
    write_meta(tmp, meta)?;
    faults(SaveStep::Sync, tmp).map_err(io(tmp))?;
    for file in DATA_FILES {
        let path = tmp.join(file);
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io(&path))?;
    }
    sync_dir(tmp).map_err(io(tmp))
}

/// Removes the oldest checkpoints of steps below `step` until `keep` remain with the one of
/// `step`. Failures are left for the next save to retry.
fn prune(run_dir: &Path, step: u64, keep: usize) {
    let older: Vec<PathBuf> = list(run_dir)
        .into_iter()
        .filter(|(s, _)| *s < step)
        .map(|(_, dir)| dir)
        .collect();
    let excess = (older.len() + 1).saturating_sub(keep.max(1));
    for dir in older.into_iter().take(excess) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{CheckpointError, open};
    use crate::models::ModelSpec;
    use crate::train::config::{TrainConfig, TrainState};
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;
    use ddpm_core::DiffusionConfig;

    fn meta(step: u64) -> CheckpointMeta {
        let mut state = TrainState::new(10, 0);
        state.step = step;
        CheckpointMeta {
            format: crate::checkpoint::FORMAT,
            crate_version: env!("CARGO_PKG_VERSION").into(),
            model: ModelSpec::Custom {
                name: "linear".into(),
                config: serde_json::Value::Null,
            },
            diffusion: DiffusionConfig::default(),
            train: TrainConfig::default(),
            dataset: None,
            data: None,
            num_classes: None,
            state,
            files: Default::default(),
        }
    }

    /// An empty run directory, a tiny module and a fresh optimizer.
    fn setup(name: &str) -> (PathBuf, Linear, Adam) {
        let dir = std::env::temp_dir().join(format!("ddpm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let model: Linear = LinearConfig::new(3, 2).init(&Device::flex());
        (dir, model, Adam::new(1e-8))
    }

    fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    fn temporaries(run_dir: &Path) -> Vec<String> {
        std::fs::read_dir(run_dir.join("checkpoints"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    /// A full disk at every step of a save (the file being written left half-written where
    /// the step writes one): the save fails, no temporary folder is left, the earlier
    /// checkpoints are byte for byte as they were, and the next save works.
    #[test]
    fn a_failure_at_any_step_of_a_save_loses_nothing() {
        let (dir, model, optim) = setup("faults");
        save(&dir, &model, &model, &optim, meta(1), 2).unwrap();
        save(&dir, &model, &model, &optim, meta(2), 2).unwrap();
        let before: Vec<_> = list(&dir).iter().map(|(_, d)| snapshot(d)).collect();
        let mut steps = Vec::new();
        save_with(&dir, &model, &model, &optim, meta(3), 2, &mut |s, _| {
            steps.push(s);
            Ok(())
        })
        .unwrap();
        assert_eq!(steps.len(), 8, "{steps:?}");
        // Back to two checkpoints, 1 and 2, for each injected fault.
        let reset = || {
            let _ = std::fs::remove_dir_all(dir.join("checkpoints").join(folder_name(3)));
            save(&dir, &model, &model, &optim, meta(1), 3).unwrap();
            save(&dir, &model, &model, &optim, meta(2), 3).unwrap();
        };
        for (k, at) in steps.iter().enumerate() {
            reset();
            let mut n = 0;
            let r = save_with(&dir, &model, &model, &optim, meta(3), 2, &mut |_, path| {
                n += 1;
                if n == k + 1 {
                    if let SaveStep::Write(_) = at {
                        std::fs::write(path, b"half a file")?;
                    }
                    return Err(std::io::Error::other("No space left on device (injected)"));
                }
                Ok(())
            });
            let e = r.unwrap_err();
            assert!(matches!(e, CheckpointError::Io { .. }), "{at:?}: {e}");
            assert!(e.to_string().contains("injected"), "{e}");
            assert!(
                temporaries(&dir).is_empty(),
                "{at:?}: {:?}",
                temporaries(&dir)
            );
            let now: Vec<(u64, PathBuf)> = list(&dir);
            if *at == SaveStep::SyncParent {
                // Renamed into place already: the new checkpoint is complete, the old kept.
                assert_eq!(now.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 2, 3]);
                open(&now[2].1).unwrap();
            } else {
                assert_eq!(
                    now.iter().map(|c| c.0).collect::<Vec<_>>(),
                    [1, 2],
                    "{at:?}"
                );
            }
            for ((_, d), want) in now.iter().zip(&before) {
                assert_eq!(&snapshot(d), want, "{at:?}: {} changed", d.display());
                open(d).unwrap();
            }
            // The next save works and prunes to two.
            save(&dir, &model, &model, &optim, meta(3), 2).unwrap();
            assert_eq!(
                list(&dir).iter().map(|c| c.0).collect::<Vec<_>>(),
                [2, 3],
                "{at:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Retention removes older checkpoints only: a stray folder of a later step is neither
    /// counted nor removed, and the new checkpoint is never the one deleted.
    #[test]
    fn retention_never_deletes_the_new_checkpoint() {
        let (dir, model, optim) = setup("keep");
        save(&dir, &model, &model, &optim, meta(900), 1).unwrap();
        save(&dir, &model, &model, &optim, meta(5), 1).unwrap();
        save(&dir, &model, &model, &optim, meta(6), 1).unwrap();
        let steps: Vec<u64> = list(&dir).iter().map(|c| c.0).collect();
        assert_eq!(steps, [6, 900]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
