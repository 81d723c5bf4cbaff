//! Training end to end: checkpoints that resume exactly, clear errors, sampling to PNG files.

mod common;

use common::{max_diff, tiny_unet, weights};
use ddpm::core::SamplerConfig;

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use ddpm::checkpoint::{self, CheckpointError};
use ddpm::core::{Clip, DiffusionConfig, GaussianDiffusion, SampleOptions};
use ddpm::data::BatchSource;
use ddpm::data::{Dataset, ImageSet, Split};
use ddpm::models::ModelSpec;
use ddpm::train::{TrainConfig, TrainError, Trainer};
use ddpm::unet::{UNet, UNetConfig};

fn config(steps: u64) -> TrainConfig {
    common::train_config(steps, 4, 11, 0, 2)
}

fn meta(cfg: &UNetConfig) -> ModelSpec {
    ModelSpec::Unet {
        config: cfg.clone(),
    }
}

fn latest_checkpoint(dir: &Path) -> Result<std::path::PathBuf, CheckpointError> {
    Ok(checkpoint::resolve(dir)?.checkpoint.dir)
}

fn mnist_test() -> ImageSet {
    ImageSet::load(Dataset::Mnist, Split::Test, Some(&common::data_dir())).unwrap()
}

fn diffusion() -> GaussianDiffusion {
    GaussianDiffusion::new(DiffusionConfig::default()).unwrap()
}

fn weights_count<M: Module>(m: &M) -> usize {
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
            self.0 += 1;
        }
    }
    let mut c = Count(0);
    m.visit(&mut c);
    c.0
}

#[test]
fn training_from_the_same_weights_is_deterministic() {
    // Resuming exactly presupposes that the backend itself is deterministic.
    let data = mnist_test();
    let dev = Device::flex().autodiff();
    let init = tiny_unet().init(&dev).unwrap();
    let run = || {
        let mut t = Trainer::new(diffusion(), init.clone(), config(3), data.count).unwrap();
        let losses: Vec<f64> = (0..3).map(|_| t.step(&data).unwrap().loss).collect();
        (losses, weights(t.model()))
    };
    let (l1, w1) = run();
    let (l2, w2) = run();
    assert_eq!(l1, l2);
    assert_eq!(max_diff(&w1, &w2), 0.0);
    assert_ne!(
        max_diff(&w1, &weights(&init)),
        0.0,
        "training changed nothing"
    );
}

#[test]
fn a_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one() {
    let data = mnist_test();
    let dev = Device::flex().autodiff();
    let m = meta(&tiny_unet());

    let init = tiny_unet().init(&dev).unwrap();
    let mut straight = Trainer::new(diffusion(), init.clone(), config(6), data.count).unwrap();
    while !straight.finished() {
        straight.step(&data).unwrap();
    }

    let dir = common::scratch("resume");
    let mut first = Trainer::new(diffusion(), init.clone(), config(6), data.count)
        .unwrap()
        .with_spec(m.clone());
    for _ in 0..3 {
        first.step(&data).unwrap();
    }
    first.save_checkpoint(&dir).unwrap();
    drop(first);
    let mut second: Trainer<UNet, 4> =
        Trainer::resume(&dir, diffusion(), tiny_unet().init(&dev).unwrap(), &m, None).unwrap();
    assert_eq!(second.state().step, 3);
    // The optimizer state was loaded onto the run's device only: in a build with wgpu or
    // cuda, burn's own loader would have put it on `Device::default()`, a GPU.
    assert_eq!(second.optimizer().num_states(), weights_count(&init));
    assert_eq!(second.optimizer().devices(), vec![Device::flex()]);
    while !second.finished() {
        second.step(&data).unwrap();
    }
    assert_eq!(second.state(), straight.state());
    let (a, b) = (weights(straight.model()), weights(second.model()));
    assert_eq!(a.len(), b.len());
    assert_eq!(max_diff(&a, &b), 0.0, "weights differ after resume");
    let (ea, eb) = (
        weights(straight.ema().model()),
        weights(second.ema().model()),
    );
    assert_eq!(max_diff(&ea, &eb), 0.0, "EMA differs after resume");
    assert_ne!(a, weights(&tiny_unet().init(&Device::flex()).unwrap()));
}

#[test]
fn train_checkpoint_resume_and_sample_pngs_end_to_end() {
    let data = mnist_test();
    let dev = Device::flex().autodiff();
    let cfg = tiny_unet();
    let m = meta(&cfg);
    let dir = common::scratch("e2e");
    let mut t = Trainer::new(
        diffusion(),
        cfg.init(&dev).unwrap(),
        TrainConfig {
            checkpoint_every: 2,
            ..config(4)
        },
        data.count,
    )
    .unwrap()
    .with_spec(m.clone());
    for _ in 0..2 {
        let r = t.step(&data).unwrap();
        assert!(r.loss.is_finite() && r.loss > 0.0);
    }
    t.save_checkpoint(&dir).unwrap();
    let mut t: Trainer<UNet, 4> =
        Trainer::resume(&dir, diffusion(), cfg.init(&dev).unwrap(), &m, None).unwrap();
    for _ in 0..2 {
        t.step(&data).unwrap();
    }
    t.save_checkpoint(&dir).unwrap();
    t.save_checkpoint(&dir).unwrap(); // idempotent for the same step
    assert_eq!(
        checkpoint::list(&dir)
            .iter()
            .map(|c| c.0)
            .collect::<Vec<_>>(),
        vec![2, 4]
    );

    let ckpt = checkpoint::resolve(&dir).unwrap().checkpoint;
    let net = checkpoint::load_weights(&ckpt, cfg.init(&Device::flex()).unwrap(), true).unwrap();
    let sampler = SamplerConfig::ddim(5, 0.0).with_clip(Clip::unit());
    let out = sampler
        .sample(
            &diffusion(),
            &net,
            [4, 1, 28, 28],
            &Device::flex(),
            SampleOptions::new(0).with_trajectory(1),
        )
        .unwrap();
    let png_dir = dir.join("samples");
    assert_eq!(
        ddpm::images::save_each(out.samples.clone(), &png_dir, 0).unwrap(),
        4
    );
    for i in 0..4 {
        let img = image::open(png_dir.join(format!("{i:06}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (28, 28));
        assert_eq!(img.color(), image::ColorType::L8);
    }
    ddpm::images::save_grid(out.samples, &dir.join("grid.png"), 2, 1).unwrap();
    let frames: Vec<_> = out.trajectory.into_iter().map(|f| f.x_t).collect();
    ddpm::images::save_gif(&frames, &dir.join("d.gif"), 2, 1, 100).unwrap();
    let gif = image::open(dir.join("d.gif")).unwrap();
    assert_eq!(gif.width(), 2 * 28 + 3 * 2);
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let data = mnist_test();
    let dev = Device::flex().autodiff();
    let cfg = tiny_unet();
    let m = meta(&cfg);
    let empty = common::scratch("no-ckpt");
    let e = Trainer::<UNet, 4>::resume(&empty, diffusion(), cfg.init(&dev).unwrap(), &m, None)
        .unwrap_err();
    assert!(
        matches!(e, TrainError::Checkpoint(CheckpointError::NoCheckpoint(_))),
        "{e}"
    );

    let dir = common::scratch("bad-ckpt");
    let mut t = Trainer::new(diffusion(), cfg.init(&dev).unwrap(), config(1), data.count)
        .unwrap()
        .with_spec(m.clone());
    t.step(&data).unwrap();
    let ckpt = t.save_checkpoint(&dir).unwrap();

    // Another model configuration.
    let other = tiny_unet().with_ch_mult(vec![1, 1]);
    let e = Trainer::<UNet, 4>::resume(
        &dir,
        diffusion(),
        other.init(&dev).unwrap(),
        &meta(&other),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, TrainError::ConfigMismatch { .. }), "{e}");
    // Same description but other weights' shapes (a foreign model file).
    let e = Trainer::<UNet, 4>::resume(&dir, diffusion(), other.init(&dev).unwrap(), &m, None)
        .unwrap_err();
    assert!(
        matches!(e, TrainError::Checkpoint(CheckpointError::Foreign { .. })),
        "{e}"
    );

    // A truncated weights file: the only checkpoint, so none is intact.
    let model = ckpt.join("model.bpk");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 3]).unwrap();
    let e = Trainer::<UNet, 4>::resume(&dir, diffusion(), cfg.init(&dev).unwrap(), &m, None)
        .unwrap_err();
    assert!(
        matches!(
            e,
            TrainError::Checkpoint(CheckpointError::NoneIntact { .. })
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("model.bpk") && e.to_string().contains("truncated"),
        "{e}"
    );

    // A damaged state.json.
    std::fs::write(ckpt.join("state.json"), b"{\"format\": 1, \"tr").unwrap();
    let e = Trainer::<UNet, 4>::resume(&dir, diffusion(), cfg.init(&dev).unwrap(), &m, None)
        .unwrap_err();
    assert!(e.to_string().contains("damaged"), "{e}");
    // The folder itself (not the run) is opened strictly: the error names the file.
    let e = checkpoint::open(&ckpt).unwrap_err();
    assert!(matches!(e, CheckpointError::Damaged { .. }), "{e}");
}

/// Serves NaN images.
struct NanData;
impl BatchSource<4> for NanData {
    fn len(&self) -> usize {
        8
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Tensor<4> {
        Tensor::full([indices.len(), 1, 28, 28], f32::NAN, device)
    }
}

#[test]
fn a_nan_loss_stops_training_and_keeps_the_last_checkpoint() {
    let dev = Device::flex().autodiff();
    let cfg = tiny_unet();
    let dir = common::scratch("nan");
    let mut t = Trainer::new(diffusion(), cfg.init(&dev).unwrap(), config(3), 8).unwrap();
    t.save_checkpoint(&dir).unwrap();
    let before = std::fs::read(latest_checkpoint(&dir).unwrap().join("model.bpk")).unwrap();
    let e = t.step(&NanData).unwrap_err();
    assert!(
        matches!(e, TrainError::NonFiniteLoss { step: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("step 1"));
    let after = std::fs::read(latest_checkpoint(&dir).unwrap().join("model.bpk")).unwrap();
    assert_eq!(before, after);
    assert!(
        TrainConfig {
            batch_size: 0,
            ..config(1)
        }
        .validate()
        .is_err()
    );
    assert!(
        TrainConfig {
            lr: f64::NAN,
            ..config(1)
        }
        .validate()
        .is_err()
    );
    assert!(
        Trainer::new(
            diffusion(),
            cfg.init(&Device::flex()).unwrap(),
            config(1),
            8
        )
        .is_err()
    );
    let _ = Path::new("");
}
