//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The folder with the real datasets: `$DDPM_DATA_DIR`, else `../shared/data` beside the
/// checkout (where CI puts them), else `./data`, where the loader downloads them.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DDPM_DATA_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if shared.join("mnist").is_dir() {
        return shared;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// The folder holding the four MNIST files (downloaded if needed).
pub fn mnist_dir() -> PathBuf {
    let files = ddpm::data::locate_or_download(ddpm::data::Dataset::Mnist, Some(&data_dir()))
        .expect("MNIST is needed by this test: set DDPM_DATA_DIR (see README)");
    files[0].parent().unwrap().to_path_buf()
}

/// A fresh, empty scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
