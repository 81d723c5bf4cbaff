//! The library around the maths: typed checkpoints with checksums and fallback, the run lock,
//! `Trainer::fit`, data-parallel training, sampling to files and the evaluation helpers.

mod common;

use common::{max_diff, weights};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use ddpm::checkpoint::{self, CheckpointError, RunLock};
use ddpm::core::{
    DiffusionConfig, GaussianDiffusion, NoisePredictor, SamplerKind, timestep_tensor,
};
use ddpm::data::{Dataset, ImageSet, Split};
use ddpm::models::{ImagePredictor, ModelSpec};
use ddpm::sampling::{SampleError, SampleJob, sample_to_dir};
use ddpm::train::{FitOptions, StopReason, TrainConfig, TrainError, Trainer};

fn tiny() -> ModelSpec {
    ModelSpec::Unet {
        config: common::tiny_unet(),
    }
}

fn config(steps: u64) -> TrainConfig {
    common::train_config(steps, 4, 5, 2, 5)
}

fn diffusion() -> GaussianDiffusion {
    GaussianDiffusion::new(DiffusionConfig::default()).unwrap()
}

fn mnist_test() -> ImageSet {
    ImageSet::load(Dataset::Mnist, Split::Test, Some(&common::data_dir())).unwrap()
}

fn trainer(spec: ModelSpec, steps: u64, data: &ImageSet) -> Trainer<ImagePredictor, 4> {
    Trainer::new_images(
        spec,
        diffusion(),
        config(steps),
        data.count,
        &Device::flex(),
    )
    .unwrap()
    .with_dataset(Dataset::Mnist)
}

/// A trainer starting from given weights (the device RNG is shared by concurrent tests, so
/// two runs that must agree start from one initialisation).
fn trainer_from(init: &ImagePredictor, steps: u64, data: &ImageSet) -> Trainer<ImagePredictor, 4> {
    Trainer::new(diffusion(), init.clone(), config(steps), data.count)
        .unwrap()
        .with_spec(tiny())
        .with_dataset(Dataset::Mnist)
}

fn quiet(dir: &Path) -> FitOptions<'static> {
    FitOptions::new(dir).with_progress(false).with_plot(false)
}

fn flip_middle_bytes(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    bytes[mid + 1] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// `fit` to 4 steps in one call equals `fit` to 2, a resume from the checkpoint, and `fit` to
/// 4; the checkpoints carry typed metadata and `loss.csv` one line per step.
#[test]
fn fit_resumes_exactly_and_writes_typed_checkpoints() {
    let data = mnist_test();
    let straight_dir = common::scratch("fit-straight");
    let init = tiny().init(&Device::flex().autodiff()).unwrap();
    let mut straight = trainer_from(&init, 4, &data);
    let r = straight
        .fit(&data, quiet(&straight_dir).with_log_every(1))
        .unwrap();
    assert_eq!(
        (r.reason, r.step, r.steps_run),
        (StopReason::Finished, 4, 4)
    );
    let csv = ddpm::train::read_loss_csv(&straight_dir.join("loss.csv"));
    assert_eq!(csv.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 2, 3, 4]);

    let dir = common::scratch("fit-resumed");
    let mut first = trainer_from(&init, 2, &data);
    let mut seen = Vec::new();
    first
        .fit(&data, quiet(&dir).on_step(|r| seen.push(r.step)))
        .unwrap();
    assert_eq!(seen, [1, 2]);
    drop(first);
    let mut second = Trainer::resume_images(&dir, &Device::flex(), Some(4)).unwrap();
    assert_eq!(second.state().step, 2);
    let r = second.fit(&data, quiet(&dir)).unwrap();
    assert_eq!(r.step, 4);
    assert_eq!(
        max_diff(&weights(straight.model()), &weights(second.model())),
        0.0
    );
    assert_eq!(
        max_diff(
            &weights(straight.ema().model()),
            &weights(second.ema().model())
        ),
        0.0
    );

    let ckpt = checkpoint::resolve(&dir).unwrap().checkpoint;
    let meta = &ckpt.meta;
    assert_eq!(meta.format, checkpoint::FORMAT);
    assert_eq!(meta.model, tiny());
    assert_eq!(meta.dataset, Some(Dataset::Mnist));
    assert_eq!(meta.state.step, 4);
    assert_eq!(meta.crate_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        meta.files.keys().collect::<Vec<_>>(),
        ["ema.bpk", "model.bpk", "optim.bin"]
    );
    // The loaded EMA predictor equals the trainer's EMA model.
    let loaded = checkpoint::load_predictor(&dir, true, &Device::flex()).unwrap();
    assert_eq!(loaded.checkpoint.dir, ckpt.dir);
    assert_eq!(
        max_diff(&weights(&loaded.model), &weights(straight.ema().model())),
        0.0
    );

    // A fresh run refuses a directory that holds another run's checkpoints.
    let e = trainer(tiny(), 2, &data)
        .fit(&data, quiet(&dir))
        .unwrap_err();
    assert!(matches!(e, TrainError::RunExists(_)), "{e}");
}

/// Two flipped bytes in the middle of `ema.bpk` are caught by the checksum: the folder fails
/// to open, and the run falls back to the previous checkpoint, naming the skipped one.
#[test]
fn flipped_bytes_are_caught_and_the_run_falls_back_to_an_intact_checkpoint() {
    let data = mnist_test();
    let dir = common::scratch("flipped");
    trainer(tiny(), 4, &data).fit(&data, quiet(&dir)).unwrap();
    let all = checkpoint::list(&dir);
    assert_eq!(all.iter().map(|c| c.0).collect::<Vec<_>>(), [2, 4]);
    let newest = &all[1].1;
    flip_middle_bytes(&newest.join("ema.bpk"));

    let e = checkpoint::load_predictor(newest, true, &Device::flex()).unwrap_err();
    assert!(matches!(e, CheckpointError::Damaged { .. }), "{e}");
    assert!(
        e.to_string().contains("checksum") && e.to_string().contains("ema.bpk"),
        "{e}"
    );

    let loaded = checkpoint::load_predictor(&dir, true, &Device::flex()).unwrap();
    assert_eq!(&loaded.checkpoint.dir, &all[0].1);
    assert_eq!(loaded.skipped.len(), 1);
    assert_eq!(&loaded.skipped[0].dir, newest);
    assert!(loaded.skipped[0].reason.contains("ema.bpk"));
    // Resuming takes the same fallback and reports it.
    let t = Trainer::resume_images(&dir, &Device::flex(), None).unwrap();
    assert_eq!(t.state().step, 2);
    assert_eq!(t.resumed_from().unwrap().skipped.len(), 1);
}

#[test]
fn newer_foreign_and_legacy_checkpoints_are_clear_errors_or_load() {
    let data = mnist_test();
    let dir = common::scratch("formats");
    let mut t = trainer(tiny(), 1, &data);
    t.step(&data).unwrap();
    let ckpt = t.save_checkpoint(&dir).unwrap();
    let meta_path = ckpt.join("state.json");
    let original = std::fs::read_to_string(&meta_path).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&original).unwrap();

    // Written by a newer ddpm.
    value["format"] = 99.into();
    value["crate_version"] = "9.0.0".into();
    std::fs::write(&meta_path, value.to_string()).unwrap();
    let e = checkpoint::open(&ckpt).unwrap_err();
    assert!(
        matches!(e, CheckpointError::Newer { format: 99, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("9.0.0") && e.to_string().contains("upgrade"),
        "{e}"
    );
    // Not ours at all.
    std::fs::write(&meta_path, r#"{"weights": "elsewhere"}"#).unwrap();
    let e = checkpoint::open(&ckpt).unwrap_err();
    assert!(matches!(e, CheckpointError::Foreign { .. }), "{e}");

    // The previous layout (format 2): the example's untyped model description, the bare
    // U-Net's weights, no checksums. It loads for sampling; resuming asks for an upgrade.
    let ModelSpec::Unet { config: unet } = tiny() else {
        unreachable!()
    };
    let ImagePredictor::Unet(net) = checkpoint::load_image_predictor(
        &checkpoint::Checkpoint {
            dir: ckpt.clone(),
            meta: serde_json::from_str(&original).unwrap(),
        },
        true,
        &Device::flex(),
    )
    .unwrap() else {
        unreachable!()
    };
    net.clone().save_file(ckpt.join("ema.bpk")).unwrap();
    net.clone().save_file(ckpt.join("model.bpk")).unwrap();
    // As the previous version wrote it: before the `kernels` and `num_classes` fields.
    let mut unet = serde_json::to_value(&unet).unwrap();
    let fields = unet.as_object_mut().unwrap();
    fields.remove("kernels");
    fields.remove("num_classes");
    let legacy = serde_json::json!({
        "format": 2,
        "train": value_of(&original, "train"),
        "state": value_of(&original, "state"),
        "model": {
            "model": "unet-small", "dataset": "Mnist", "unet": unet, "mlp": null,
            "diffusion": DiffusionConfig::default(),
        },
    });
    std::fs::write(&meta_path, legacy.to_string()).unwrap();
    let loaded = checkpoint::load_predictor(&dir, true, &Device::flex()).unwrap();
    assert_eq!(loaded.checkpoint.meta.format, 2);
    assert_eq!(loaded.checkpoint.meta.model, tiny());
    let x = Tensor::<4>::ones([1, 1, 28, 28], &Device::flex());
    let t5 = timestep_tensor(&[5], &Device::flex());
    let want = net.predict(x.clone(), t5.clone()).unwrap();
    let got = loaded.model.predict(x, t5).unwrap();
    assert_eq!(
        max_diff(&weights(&loaded.model), &weights(&net)),
        0.0,
        "format-2 weights load unchanged"
    );
    assert!(want.sub(got).abs().max().into_scalar::<f32>() < 1e-6);
    let e = Trainer::resume_images(&dir, &Device::flex(), None).unwrap_err();
    assert!(e.to_string().contains("upgrade"), "{e}");
    let upgraded = checkpoint::upgrade(&ckpt).unwrap();
    assert_eq!(upgraded.meta.format, checkpoint::FORMAT);
    let t = Trainer::resume_images(&dir, &Device::flex(), None).unwrap();
    assert_eq!(max_diff(&weights(t.ema().model()), &weights(&net)), 0.0);
}

fn value_of(json: &str, key: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(json).unwrap()[key].clone()
}

#[test]
fn a_run_directory_is_owned_by_one_process_and_a_dead_holder_is_taken_over() {
    let dir = common::scratch("lock");
    let lock = RunLock::acquire(&dir).unwrap();
    let e = RunLock::acquire(&dir).unwrap_err();
    assert!(matches!(e, CheckpointError::Locked { .. }), "{e}");
    assert!(
        e.to_string().contains(&std::process::id().to_string()),
        "{e}"
    );
    // fit refuses a locked directory too.
    let data = mnist_test();
    let e = trainer(tiny(), 1, &data)
        .fit(&data, quiet(&dir))
        .unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    drop(lock);
    // Released on drop: the file stays (an OS lock on it), the lock is free.
    drop(RunLock::acquire(&dir).unwrap());

    // A lock left by a process that has exited (its pid no longer runs).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    std::fs::write(
        dir.join(checkpoint::LOCK_FILE),
        format!("pid {dead} on {host}"),
    )
    .unwrap();
    let taken = RunLock::acquire(&dir).unwrap();
    let content = std::fs::read_to_string(dir.join(checkpoint::LOCK_FILE)).unwrap();
    assert!(
        content.contains(&std::process::id().to_string()),
        "{content}"
    );
    drop(taken);
}

/// A time limit of zero stops before the first step, a raised stop flag likewise; both leave
/// a checkpoint and say why they stopped.
#[test]
fn fit_stops_on_the_time_limit_and_the_stop_flag() {
    let data = mnist_test();
    let dir = common::scratch("fit-limits");
    let mut t = trainer(tiny(), 100, &data);
    let r = t
        .fit(&data, quiet(&dir).with_time_limit(Duration::ZERO))
        .unwrap();
    assert_eq!((r.reason, r.step), (StopReason::TimeLimit, 0));
    assert!(r.checkpoint.join("state.json").is_file());
    t.step(&data).unwrap();
    let flag = Arc::new(AtomicBool::new(true));
    let r = t.fit(&data, quiet(&dir).with_stop_flag(flag)).unwrap();
    assert_eq!((r.reason, r.step), (StopReason::Interrupted, 1));
    assert_eq!(common::newest_step(&dir), 1);
}

/// Data parallel over two replicas (two flex devices) follows the one-device run: the same
/// timesteps and noise, each shard's share of the loss, gradients summed.
#[test]
fn two_replicas_train_like_one_device() {
    let data = mnist_test();
    let init = tiny().init(&Device::flex().autodiff()).unwrap();
    let mut one = trainer_from(&init, 3, &data);
    let mut two = trainer_from(&init, 3, &data)
        .with_devices(&[Device::flex(), Device::flex()])
        .unwrap();
    assert_eq!(two.devices().len(), 2);
    for _ in 0..3 {
        let (a, b) = (one.step(&data).unwrap(), two.step(&data).unwrap());
        assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
        assert!((a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm.max(1.0));
    }
    let d = max_diff(&weights(one.model()), &weights(two.model()));
    println!("two replicas against one device after 3 steps: max |weight difference| {d:.2e}");
    assert!(d < 1e-5, "weights differ by {d}");
    assert!(
        max_diff(
            &weights(one.model()),
            &weights(&tiny().init(&Device::flex()).unwrap())
        ) > 1e-4
    );
    // More devices than examples is an error.
    let e = trainer(tiny(), 1, &data)
        .with_devices(&vec![Device::flex(); 5])
        .unwrap_err();
    assert!(e.to_string().contains("batch"), "{e}");
}

#[test]
fn sampling_to_a_folder_writes_every_picture() {
    let net = tiny().init(&Device::flex()).unwrap();
    let out = common::scratch("sample-dir");
    let job = SampleJob::new(5, SamplerKind::Ddim.with_steps(4))
        .with_batch(2)
        .with_gif_frames(3)
        .with_progress(false);
    let r = sample_to_dir(&diffusion(), &net, [1, 28, 28], &Device::flex(), &job, &out).unwrap();
    assert_eq!((r.num, r.model_calls), (5, 4));
    assert!(r.grid.is_file() && r.gif.unwrap().is_file());
    let each: Vec<PathBuf> = std::fs::read_dir(r.each_dir.unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(each.len(), 5);
    // The PNGs read back as the samples' shape.
    let back = ddpm::eval::load_pngs(&out, &Device::flex()).unwrap();
    assert_eq!(back.dims(), [5, 1, 28, 28]);
    let e = sample_to_dir(
        &diffusion(),
        &net,
        [1, 28, 28],
        &Device::flex(),
        &SampleJob::new(0, SamplerKind::Ddim.with_steps(4)),
        &out,
    )
    .unwrap_err();
    assert!(matches!(e, SampleError::Invalid(_)), "{e}");
}

#[test]
fn png_folders_and_the_background_share_are_checked() {
    let dev = Device::flex();
    let empty = common::scratch("no-pngs");
    let e = ddpm::eval::load_pngs(&empty, &dev).unwrap_err();
    assert!(e.to_string().contains("no PNG"), "{e}");
    let mixed = common::scratch("mixed-pngs");
    image::GrayImage::new(28, 28)
        .save(mixed.join("a.png"))
        .unwrap();
    image::GrayImage::new(14, 14)
        .save(mixed.join("b.png"))
        .unwrap();
    let e = ddpm::eval::load_pngs(&mixed, &dev).unwrap_err();
    assert!(e.to_string().contains("b.png"), "{e}");
    // -1 is black (0 on [0, 1]); 0 is mid-grey (0.5): half of these values are near-black.
    let x = Tensor::<4>::from_data(
        TensorData::new(vec![-1.0f32, 0.0, -1.0, 1.0], [1, 1, 2, 2]),
        &dev,
    );
    assert_eq!(ddpm::eval::near_black_share(x), 0.5);
}

#[test]
fn the_nll_report_of_a_model_is_the_bound_of_its_terms() {
    let data = mnist_test();
    let net = tiny().init(&Device::flex()).unwrap();
    let small = GaussianDiffusion::new(DiffusionConfig::new(ddpm::core::ScheduleConfig::new(
        ddpm::core::BetaSchedule::paper(),
        20,
    )))
    .unwrap();
    let mut calls = 0;
    let options = ddpm::eval::NllOptions {
        num: 3,
        batch: 2,
        ..Default::default()
    };
    let r = ddpm::eval::nll(
        &small,
        &net,
        &data,
        options,
        &Device::flex(),
        &mut |d, total| {
            assert!(d <= total && total == 2 * 20);
            calls += 1;
        },
    )
    .unwrap();
    assert_eq!(r.images, 3);
    assert_eq!(calls, 40);
    assert!(
        (r.total - (r.prior + r.decoder + r.kl_sum)).abs() < 1e-9,
        "{r:?}"
    );
    assert!(r.to_string().contains("bits/dim"));
}

#[test]
fn the_requested_class_share_counts_the_classifiers_agreement() {
    let dev = Device::flex();
    let classifier = ddpm::eval::ClassifierConfig::new().init(&dev);
    let images = mnist_test().batch(&(0..20).collect::<Vec<_>>(), &dev);
    let (_, probs) = ddpm::eval::features_and_probs(&classifier, images.clone()).unwrap();
    let argmax: Vec<usize> = probs
        .chunks(10)
        .map(|row| (0..10).fold(0, |best, k| if row[k] > row[best] { k } else { best }))
        .collect();
    let share =
        |labels: &[usize]| ddpm::eval::requested_class_share(&classifier, images.clone(), labels);
    assert_eq!(share(&argmax).unwrap(), 1.0);
    let mut half = argmax.clone();
    for c in half.iter_mut().take(10) {
        *c = (*c + 1) % 10;
    }
    assert_eq!(share(&half).unwrap(), 0.5);
    assert!(share(&argmax[..3]).is_err());
}
