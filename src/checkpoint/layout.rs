//! Where checkpoints live in a run directory: `checkpoints/step-NNNNNNNN/`.

use std::path::{Path, PathBuf};

use super::format::{LEGACY_PARALLEL_META, META_FILE};

/// `<run>/checkpoints/step-N` -> `<run>`; `<run>/final` (legacy `train --devices`) -> `<run>`.
pub fn run_dir_of(dir: &Path) -> PathBuf {
    let levels = if dir.parent().and_then(Path::file_name) == Some("checkpoints".as_ref()) {
        2
    } else {
        1
    };
    dir.ancestors()
        .nth(levels)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// The name of the checkpoint folder of `step`: `step-NNNNNNNN`.
pub fn folder_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Every checkpoint folder of `run_dir` that has its metadata file, as `(step, folder)`,
/// oldest first (intact or not: see [`open`](super::open)).
pub fn list(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(run_dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            e.path().join(META_FILE).is_file().then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Whether `path` is one checkpoint folder (rather than a run directory).
pub fn is_checkpoint_dir(path: &Path) -> bool {
    path.join(META_FILE).is_file() || path.join(LEGACY_PARALLEL_META).is_file()
}
