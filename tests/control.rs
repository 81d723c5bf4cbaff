//! Conditioning and control through the whole stack: a class-conditional U-Net trained with
//! label dropout, resumed exactly, its checkpoint recording the classes; sampling with classes
//! and guidance, from an image, with a mask; clear errors for every bad input.

mod common;

use burn::tensor::{Device, Tensor};
use common::{max_diff, weights};
use ddpm::checkpoint;
use ddpm::core::{DiffusionConfig, GaussianDiffusion, InpaintConfig, NoisePredictor, SamplerKind};
use ddpm::data::{BatchSource, Points};
use ddpm::data::{Dataset, ImageSet, Split};
use ddpm::models::{ImagePredictor, ModelSpec};
use ddpm::sampling::{Mask, SampleJob, Start, load_png, sample_to_dir};
use ddpm::train::{TrainConfig, Trainer};

fn tiny(classes: Option<usize>) -> ModelSpec {
    ModelSpec::Unet {
        config: common::tiny_unet(),
    }
    .with_classes(classes)
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig {
        p_uncond: 0.5,
        hflip: false,
        ..common::train_config(steps, 8, 3, 0, 2)
    }
}

fn diffusion() -> GaussianDiffusion {
    GaussianDiffusion::new(DiffusionConfig::default()).unwrap()
}

fn mnist_test() -> ImageSet {
    ImageSet::load(Dataset::Mnist, Split::Test, Some(&common::data_dir())).unwrap()
}

fn trainer(init: &ImagePredictor, steps: u64, n: usize) -> Trainer<ImagePredictor, 4> {
    Trainer::new(diffusion(), init.clone(), config(steps), n)
        .unwrap()
        .with_spec(tiny(Some(10)))
}

/// Label dropout draws from the run's RNG, so a resumed conditional run still ends with the
/// weights of an uninterrupted one; the checkpoint records the classes.
#[test]
fn a_conditional_run_resumes_exactly_and_records_its_classes() {
    let data = mnist_test();
    let init = tiny(Some(10)).init(&Device::flex().autodiff()).unwrap();
    let mut straight = trainer(&init, 4, data.count);
    while !straight.finished() {
        straight.step(&data).unwrap();
    }
    let dir = common::scratch("cond-resume");
    let mut first = trainer(&init, 4, data.count);
    first.step(&data).unwrap();
    first.step(&data).unwrap();
    first.save_checkpoint(&dir).unwrap();
    let mut second = Trainer::resume_images(&dir, &Device::flex(), None).unwrap();
    while !second.finished() {
        second.step(&data).unwrap();
    }
    assert_eq!(
        max_diff(&weights(straight.model()), &weights(second.model())),
        0.0
    );
    let meta = checkpoint::resolve(&dir).unwrap().checkpoint.meta;
    assert_eq!(meta.num_classes, Some(10));
    assert_eq!(meta.train.p_uncond, 0.5);
    // The class embedding learned something (its gradient reaches it).
    let ImagePredictor::Unet(before) = &init else {
        unreachable!()
    };
    let ImagePredictor::Unet(after) = second.model() else {
        unreachable!()
    };
    let emb = |u: &ddpm::unet::UNet| weights(u.class_emb.as_ref().unwrap());
    assert!(max_diff(&emb(before), &emb(after)) > 0.0);
}

#[test]
fn a_conditional_model_needs_labels_in_range() {
    let init = tiny(Some(10)).init(&Device::flex().autodiff()).unwrap();
    // Points carry no labels.
    let points = Points {
        values: vec![0.0; 784 * 16],
        dim: 784,
    };
    struct Unlabelled(Points);
    impl BatchSource<4> for Unlabelled {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn batch(&self, i: &[usize], d: &Device) -> Tensor<4> {
            self.0.batch(i, d).reshape([i.len(), 1, 28, 28])
        }
    }
    let mut t = trainer(&init, 2, 16);
    let e = t.step(&Unlabelled(points)).unwrap_err();
    assert!(e.to_string().contains("no labels"), "{e}");
    // Labels beyond the model's classes.
    let few = tiny(Some(3)).init(&Device::flex().autodiff()).unwrap();
    let data = mnist_test();
    let mut t = Trainer::new(diffusion(), few, config(2), data.count).unwrap();
    let e = t.step(&data).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
}

#[test]
fn sampling_with_classes_images_and_masks() {
    let dev = Device::flex();
    let net = tiny(Some(10)).init(&dev).unwrap();
    assert_eq!(net.num_classes(), Some(10));
    let out = common::scratch("control-sample");
    let ddim = SamplerKind::Ddim.with_steps(4);
    let quiet = |job: SampleJob| job.with_progress(false).with_gif_frames(0);
    // One row per class.
    let labels: Vec<usize> = (0..10).flat_map(|c| [c, c]).collect();
    let job = quiet(SampleJob::new(20, ddim))
        .with_classes(labels, 3.0)
        .with_grid_cols(2);
    let r = sample_to_dir(&diffusion(), &net, [1, 28, 28], &dev, &job, &out).unwrap();
    assert_eq!(r.num, 20);
    let grid = image::open(&r.grid).unwrap();
    // Cells of 28 x 2 pixels plus a 2-pixel border: 2 columns, 10 rows.
    assert_eq!((grid.width(), grid.height()), (2 * 58 + 2, 10 * 58 + 2));

    // Every class in turn: one column per class, the last row partly filled.
    let every = quiet(SampleJob::new(23, ddim)).with_every_class(10, 2.0);
    let labels = every.classes.clone().unwrap();
    assert_eq!(labels.len(), 23);
    assert!(labels.iter().enumerate().all(|(i, &c)| c == i % 10));
    let r = sample_to_dir(&diffusion(), &net, [1, 28, 28], &dev, &every, &out).unwrap();
    let grid = image::open(&r.grid).unwrap();
    assert_eq!((grid.width(), grid.height()), (10 * 58 + 2, 3 * 58 + 2));

    // From an image at strength 0: the image itself comes back.
    let png = out.join("samples").join("000000.png");
    let image = load_png(&png, [1, 28, 28], &dev).unwrap();
    let job = quiet(SampleJob::new(2, ddim)).with_start(Start::Image {
        image: image.clone(),
        strength: 0.0,
    });
    let from = common::scratch("control-from");
    sample_to_dir(&diffusion(), &net, [1, 28, 28], &dev, &job, &from).unwrap();
    let back = ddpm::eval::load_pngs(&from, &dev).unwrap();
    let first = back.narrow(0, 0, 1);
    assert!(max_diff(&common_values(first), &common_values(image.clone())) < 1e-6);

    // Inpainting the right half: the left half comes back exactly (to the PNG's 8 bits).
    let mask = Mask::Right.known([1, 28, 28], &dev).unwrap();
    let config = InpaintConfig {
        steps: 5,
        resample: 1,
        ..InpaintConfig::default()
    };
    let job = quiet(SampleJob::new(2, ddim)).with_start(Start::Inpaint {
        known: image.clone(),
        mask: mask.clone(),
        config,
    });
    let painted = common::scratch("control-inpaint");
    let r = sample_to_dir(&diffusion(), &net, [1, 28, 28], &dev, &job, &painted).unwrap();
    assert_eq!(r.model_calls, 10);
    let back = ddpm::eval::load_pngs(&painted, &dev).unwrap();
    let kept = (back.narrow(0, 0, 1) - image.clone()) * mask;
    assert!(kept.abs().max().into_scalar::<f32>() < 1e-6);

    // Interpolation: 4 frames, a strip and a GIF.
    let strip = common::scratch("control-interp");
    let frames = ddpm::sampling::interpolate_to_dir(
        &diffusion(),
        &net,
        &ddim,
        (1, 2),
        4,
        [1, 28, 28],
        &dev,
        &strip,
    )
    .unwrap();
    assert_eq!(frames.dims(), [4, 1, 28, 28]);
    assert!(strip.join("interpolation.png").is_file() && strip.join("interpolation.gif").is_file());
}

fn common_values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().convert::<f32>().iter::<f32>().collect()
}

#[test]
fn bad_control_inputs_are_clear_errors() {
    let dev = Device::flex();
    let cond = tiny(Some(10)).init(&dev).unwrap();
    let plain = tiny(None).init(&dev).unwrap();
    let out = common::scratch("control-errors");
    let ddim = SamplerKind::Ddim.with_steps(3);
    let job = |classes: Vec<usize>| {
        SampleJob::new(classes.len(), ddim)
            .with_classes(classes, 2.0)
            .with_progress(false)
    };
    let run = |model: &ImagePredictor, job: &SampleJob| {
        sample_to_dir(&diffusion(), model, [1, 28, 28], &dev, job, &out)
            .unwrap_err()
            .to_string()
    };
    let e = run(&cond, &job(vec![10, 11]));
    assert!(e.contains("class 11"), "{e}");
    let e = run(&plain, &job(vec![1]));
    assert!(e.contains("unconditional"), "{e}");
    let mut short = job(vec![1, 2]);
    short.num = 3;
    assert!(run(&cond, &short).contains("2 class labels for 3 images"));
    let none = SampleJob::new(3, ddim).with_every_class(0, 2.0);
    assert!(run(&cond, &none).contains("0 class labels for 3 images"));
    // An image of another size, a strength outside [0, 1], an unreadable PNG.
    let big = Tensor::<4>::zeros([1, 1, 32, 32], &dev);
    let start = |s: Start| SampleJob::new(1, ddim).with_start(s);
    let e = run(
        &plain,
        &start(Start::Image {
            image: big.clone(),
            strength: 0.5,
        }),
    );
    assert!(e.contains("[1, 1, 32, 32]"), "{e}");
    let e = run(
        &plain,
        &start(Start::Image {
            image: Tensor::zeros([1, 1, 28, 28], &dev),
            strength: 1.5,
        }),
    );
    assert!(e.contains("strength"), "{e}");
    let e = run(
        &plain,
        &start(Start::Inpaint {
            known: Tensor::zeros([1, 1, 28, 28], &dev),
            mask: big,
            config: InpaintConfig::default(),
        }),
    );
    assert!(e.contains("mask"), "{e}");
    let not_png = out.join("not.png");
    std::fs::write(&not_png, b"not a png").unwrap();
    let e = load_png(&not_png, [1, 28, 28], &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not.png"), "{e}");
    let small = out.join("small.png");
    image::GrayImage::new(14, 14).save(&small).unwrap();
    let e = Mask::File(small)
        .known([1, 28, 28], &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("14x14"), "{e}");
}
