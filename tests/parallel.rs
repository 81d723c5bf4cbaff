//! The burn-train path (`ddpm::parallel`): the collectives probe, settings checks, and a
//! single-device `Learner` run that learns.
#![cfg(feature = "ddp")]

use burn::tensor::{Device, Tensor, TensorData};
use ddpm::core::toy::eight_gaussians;
use ddpm::core::{DiffusionConfig, GaussianDiffusion, NoiseRng};
use ddpm::mlp::{MlpPredictor, MlpPredictorConfig};
use ddpm::parallel::{
    DiffusionDataset, DiffusionModel, ParallelConfig, ParallelError, ParallelStrategy,
    latest_epoch_checkpoint, launch, probe_collectives,
};

fn points(n: usize, seed: u64) -> Vec<f32> {
    let (t, _) = eight_gaussians(n, 2.0, 0.2, seed, &Device::flex());
    t.into_data().convert::<f32>().iter::<f32>().collect()
}

fn config() -> ParallelConfig {
    ParallelConfig {
        global_batch: 128,
        epochs: 1,
        lr: 1e-3,
        grad_clip: 1.0,
        seed: 7,
        valid_examples: 256,
        strategy: ParallelStrategy::Auto,
        resume_epoch: None,
    }
}

/// The experiment behind the documentation: flex has no collective operations. The probe runs
/// a real `all_reduce` over two flex devices and must turn the backend's panic into an error.
#[test]
fn flex_has_no_collective_operations_and_the_probe_says_so() {
    assert!(matches!(
        probe_collectives(&[]),
        Err(ParallelError::NoDevices)
    ));
    assert!(matches!(
        probe_collectives(&[Device::flex()]),
        Err(ParallelError::NoCollectives { .. })
    ));
    let err = probe_collectives(&[Device::flex(), Device::flex()]).unwrap_err();
    let ParallelError::NoCollectives { reason, .. } = &err else {
        panic!("expected NoCollectives, got {err:?}");
    };
    println!("flex all_reduce: {reason}");
    assert!(
        reason.contains("not supported") || reason.contains("not implemented"),
        "flex should refuse all_reduce, got: {reason}"
    );
    assert!(
        err.to_string().contains("cuda"),
        "the error names the way out: {err}"
    );
}

#[test]
fn bad_settings_are_errors_before_any_training() {
    let dev = Device::flex();
    let diffusion = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let mlp = MlpPredictorConfig::new(2)
        .init(&dev.clone().autodiff())
        .unwrap();
    let model = DiffusionModel::new(mlp, diffusion);
    let data = DiffusionDataset::new(points(512, 1), 2).unwrap();
    let dir = std::env::temp_dir().join(format!("ddpm-par-bad-{}", std::process::id()));
    let run = |cfg: ParallelConfig, devices: &[Device], model: DiffusionModel<MlpPredictor>| {
        launch(
            model,
            data.clone(),
            data.clone(),
            [1, 2],
            devices,
            &cfg,
            &dir,
        )
    };
    let odd = ParallelConfig {
        global_batch: 3,
        ..config()
    };
    assert!(matches!(
        run(odd, &[dev.clone(), dev.clone()], model.clone()),
        Err(ParallelError::Invalid(_))
    ));
    let zero = ParallelConfig {
        epochs: 0,
        ..config()
    };
    assert!(matches!(
        run(zero, std::slice::from_ref(&dev), model.clone()),
        Err(ParallelError::Invalid(_))
    ));
    // Two flex devices: refused by the probe, before any worker thread starts.
    assert!(matches!(
        run(config(), &[dev.clone(), dev.clone()], model.clone()),
        Err(ParallelError::NoCollectives { .. })
    ));
    // DDP forced on one flex device: refused the same way.
    let forced = ParallelConfig {
        strategy: ParallelStrategy::Ddp,
        ..config()
    };
    assert!(matches!(
        run(forced, std::slice::from_ref(&dev), model.clone()),
        Err(ParallelError::NoCollectives { .. })
    ));
    // Items of 3 values for a 2-D model: the predictor's error, not a panic in a worker.
    let wrong = DiffusionDataset::new(vec![0.0; 30], 3).unwrap();
    let err = launch(model, wrong.clone(), wrong, [1, 3], &[dev], &config(), &dir);
    assert!(
        matches!(err, Err(ParallelError::Model(_))),
        "{:?}",
        err.err()
    );
    assert!(DiffusionDataset::new(vec![0.0; 5], 2).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `L_simple` on held-out points with fixed `(t, eps)`.
fn held_out_loss(model: &DiffusionModel<MlpPredictor>, dev: &Device) -> f64 {
    let values = points(2000, 99);
    let x0 = Tensor::<2>::from_data(TensorData::new(values, [2000, 2]), dev);
    let mut rng = NoiseRng::new(5);
    let diffusion = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let mlp = model.predictor.clone();
    diffusion
        .loss(&mlp, x0, &mut rng)
        .unwrap()
        .into_scalar::<f32>() as f64
}

/// The Learner path on one device trains: burn-train's loop with our `TrainStep` lowers the
/// held-out loss of a fresh MLP on the 8-Gaussian mixture by more than half, and writes
/// burn-train's checkpoints.
#[test]
fn the_single_device_learner_path_learns() {
    let dev = Device::flex();
    let diffusion = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    dev.seed(3);
    let mlp = MlpPredictorConfig::new(2)
        .init(&dev.clone().autodiff())
        .unwrap();
    let model = DiffusionModel::new(mlp, diffusion);
    let before = held_out_loss(&model, &dev);
    let train = DiffusionDataset::new(points(64_000, 2), 2).unwrap();
    let valid = DiffusionDataset::new(points(512, 3), 2).unwrap();
    let dir = std::env::temp_dir().join(format!("ddpm-par-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = ParallelConfig {
        epochs: 2,
        ..config()
    };
    let out = launch(
        model,
        train,
        valid,
        [1, 2],
        std::slice::from_ref(&dev),
        &cfg,
        &dir,
    )
    .unwrap();
    assert!(!out.interrupted);
    let after = held_out_loss(&out.model, &dev);
    println!("held-out L_simple: before {before:.4}, after {after:.4}");
    assert!(before > 0.8, "a fresh model predicts little: {before}");
    assert!(after < 0.5 * before, "before {before}, after {after}");
    assert_eq!(
        latest_epoch_checkpoint(&dir),
        Some(2),
        "checkpoints of {}",
        dir.display()
    );
    // Resuming after the last epoch trains nothing more: the weights come back as saved.
    let fresh = || {
        DiffusionModel::new(
            MlpPredictorConfig::new(2)
                .init(&dev.clone().autodiff())
                .unwrap(),
            GaussianDiffusion::new(DiffusionConfig::default()).unwrap(),
        )
    };
    let tiny = DiffusionDataset::new(points(256, 4), 2).unwrap();
    let resume = |epoch| ParallelConfig {
        resume_epoch: Some(epoch),
        ..cfg.clone()
    };
    let one = std::slice::from_ref(&dev);
    let resumed = launch(
        fresh(),
        tiny.clone(),
        tiny.clone(),
        [1, 2],
        one,
        &resume(2),
        &dir,
    )
    .unwrap();
    let again = held_out_loss(&resumed.model, &dev);
    assert!(
        (again - after).abs() < 1e-6,
        "resumed {again}, saved {after}"
    );
    assert!(matches!(
        launch(fresh(), tiny.clone(), tiny, [1, 2], one, &resume(9), &dir),
        Err(ParallelError::Invalid(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The DDP path on CUDA (run on a GPU machine: `cargo test --release --features cuda --test
/// parallel`; `DDPM_CUDA_DEVICES=N` to use N GPUs, default 1). The probe's `all_reduce` must
/// return the device count, and training the 8-Gaussian MLP with burn's DDP strategy must
/// follow the single-device run with the same global batch: both halve the held-out loss, and
/// their final held-out losses agree within 0.05 (the runs draw different `(t, eps)`).
#[cfg(feature = "cuda")]
#[test]
fn ddp_on_cuda_follows_the_single_device_run() {
    let n: usize = std::env::var("DDPM_CUDA_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let devices: Vec<Device> = (0..n).map(Device::cuda).collect();
    probe_collectives(&devices).expect("all_reduce over the CUDA devices");
    let train = DiffusionDataset::new(points(64_000, 2), 2).unwrap();
    let valid = DiffusionDataset::new(points(512, 3), 2).unwrap();
    let run = |devices: &[Device], strategy: ParallelStrategy, tag: &str| {
        let main = devices[0].clone();
        main.seed(3);
        let mlp = MlpPredictorConfig::new(2)
            .init(&main.clone().autodiff())
            .unwrap();
        let diffusion = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
        let model = DiffusionModel::new(mlp, diffusion);
        let before = held_out_loss(&model, &main);
        let dir = std::env::temp_dir().join(format!("ddpm-cuda-{tag}-{}", std::process::id()));
        let cfg = ParallelConfig {
            epochs: 2,
            strategy,
            ..config()
        };
        let out = launch(
            model,
            train.clone(),
            valid.clone(),
            [1, 2],
            devices,
            &cfg,
            &dir,
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (before, held_out_loss(&out.model, &main))
    };
    let (b1, a1) = run(&devices[..1], ParallelStrategy::Auto, "single");
    let (b2, a2) = run(&devices, ParallelStrategy::Ddp, "ddp");
    println!("single device: {b1:.4} -> {a1:.4}; DDP over {n}: {b2:.4} -> {a2:.4}");
    assert!(a1 < 0.5 * b1 && a2 < 0.5 * b2);
    assert!((a1 - a2).abs() < 0.05, "single {a1}, DDP {a2}");
}
