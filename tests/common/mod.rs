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

/// The step of the newest intact checkpoint of run directory `dir`.
pub fn newest_step(dir: &std::path::Path) -> u64 {
    ddpm::checkpoint::resolve(dir)
        .unwrap()
        .checkpoint
        .meta
        .state
        .step
}

/// A fresh, empty scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every float parameter of `m`, in module order.
pub fn weights<M: burn::module::Module>(m: &M) -> Vec<f32> {
    struct Values(Vec<f32>);
    impl burn::module::ModuleVisitor for Values {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            self.0
                .extend(param.val().into_data().convert::<f32>().iter::<f32>());
        }
    }
    let mut v = Values(Vec::new());
    m.visit(&mut v);
    v.0
}

/// The largest absolute difference of two equally long slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A U-Net small enough for end-to-end tests on 28 x 28 images (no dropout).
pub fn tiny_unet() -> ddpm::unet::UNetConfig {
    ddpm::unet::UNetConfig::new(1, 1, 8)
        .with_ch_mult(vec![1, 2])
        .with_num_res_blocks(1)
        .with_attn_resolutions(vec![14])
        .with_num_groups(4)
        .with_resolution(28)
        .with_dropout(0.0)
}

/// Test training settings: Adam 1e-3 after 2 warm-up steps, global-norm clipping at 1, EMA
/// 0.9 with warm-up, `p_uncond` 0.1; the rest as given.
pub fn train_config(
    steps: u64,
    batch_size: usize,
    seed: u64,
    checkpoint_every: u64,
    keep_checkpoints: usize,
) -> ddpm::train::TrainConfig {
    ddpm::train::TrainConfig {
        steps,
        batch_size,
        lr: 1e-3,
        warmup_steps: 2,
        grad_clip_norm: Some(1.0),
        adam_epsilon: 1e-8,
        ema: ddpm::core::EmaConfig {
            decay: 0.9,
            warmup: ddpm::core::EmaWarmup::NumUpdates,
        },
        seed,
        checkpoint_every,
        keep_checkpoints,
        p_uncond: 0.1,
        hflip: false,
    }
}
