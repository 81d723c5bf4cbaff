//! Learning for real: the U-Net memorises a batch of MNIST digits, and the MLP learns a
//! mixture of 8 Gaussians, through the same `Trainer` and samplers.

mod common;

use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use ddpm::core::SamplerConfig;
use ddpm::core::toy::{eight_gaussians, eight_gaussians_centers};
use ddpm::core::{
    DiffusionConfig, EmaConfig, EmaWarmup, GaussianDiffusion, NoiseRng, SampleOptions, VarianceType,
};
use ddpm::data::Points;
use ddpm::data::{Dataset, ImageSet, Split};
use ddpm::mlp::MlpPredictorConfig;
use ddpm::train::{TrainConfig, Trainer};
use ddpm::unet::UNetConfig;

/// burn's device RNG (used by weight initialisation) is global: tests that need reproducible
/// initial weights take this lock and seed it.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_tiny_unet_overfits_one_batch_of_real_digits() {
    let data = ImageSet::load(Dataset::Mnist, Split::Test, Some(&common::data_dir())).unwrap();
    let dev = Device::flex().autodiff();
    let guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    dev.seed(7);
    let mut model = UNetConfig::new(1, 1, 16)
        .with_ch_mult(vec![1, 2])
        .with_num_res_blocks(1)
        .with_attn_resolutions(vec![14])
        .with_num_groups(8)
        .with_resolution(28)
        .with_dropout(0.0)
        .init(&dev)
        .unwrap();
    drop(guard);
    let diffusion = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let x0 = data.batch(&[0, 1, 2, 3, 4, 5, 6, 7], &dev);
    let t = [10usize, 50, 100, 200, 300, 400, 500, 700];
    let noise = NoiseRng::new(3).normal([8, 1, 28, 28], &dev);
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let mut first = None;
    let mut last = f64::NAN;
    for _ in 0..300 {
        let loss = diffusion
            .loss_with(&model, x0.clone(), &t, noise.clone())
            .unwrap();
        last = loss.clone().into_scalar::<f32>() as f64;
        first.get_or_insert(last);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(2e-3, model, grads);
    }
    let first = first.unwrap();
    println!("overfit: loss {first:.4} -> {last:.4}");
    assert!(last < 0.1 * first, "loss went from {first} to {last}");
}

fn mode_report(samples: &[f32], radius: f64, std: f64) -> ([usize; 8], usize) {
    let centers = eight_gaussians_centers(radius);
    let mut counts = [0usize; 8];
    let mut close = 0;
    for p in samples.chunks(2) {
        let (k, d) = centers
            .iter()
            .enumerate()
            .map(|(k, c)| {
                (
                    k,
                    ((p[0] as f64 - c[0]).powi(2) + (p[1] as f64 - c[1]).powi(2)).sqrt(),
                )
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        counts[k] += 1;
        if d < 3.0 * std {
            close += 1;
        }
    }
    (counts, close)
}

#[test]
fn the_mlp_learns_a_mixture_of_eight_gaussians() {
    let (radius, std) = (2.0, 0.2);
    let dev = Device::flex();
    let (points, _) = eight_gaussians(20_000, radius, std, 1, &dev);
    let data = Points::from_tensor(points);
    let ad = dev.clone().autodiff();
    let model = MlpPredictorConfig::new(2)
        .with_hidden(128)
        .with_depth(3)
        .init(&ad)
        .unwrap();
    let diffusion = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let config = TrainConfig {
        steps: 5000,
        batch_size: 256,
        lr: 2e-3,
        warmup_steps: 100,
        grad_clip_norm: Some(1.0),
        adam_epsilon: 1e-8,
        ema: EmaConfig {
            decay: 0.999,
            warmup: EmaWarmup::NumUpdates,
        },
        seed: 0,
        checkpoint_every: 0,
        keep_checkpoints: 1,
        p_uncond: 0.1,
        hflip: false,
    };
    let mut trainer = Trainer::new(diffusion.clone(), model, config, 20_000).unwrap();
    while !trainer.finished() {
        trainer.step(&data).unwrap();
    }
    let ema = trainer.ema().model();
    let ddpm = SamplerConfig::ddpm(None, VarianceType::FixedLarge);
    let ddim = SamplerConfig::ddim(50, 0.0);
    let runs = [
        (
            "ddpm-1000",
            ddpm.sample(&diffusion, ema, [1000, 2], &dev, SampleOptions::new(1))
                .unwrap(),
        ),
        (
            "ddim-50",
            ddim.sample(&diffusion, ema, [1000, 2], &dev, SampleOptions::new(1))
                .unwrap(),
        ),
    ];
    for (name, out) in runs {
        let v: Vec<f32> = out
            .samples
            .into_data()
            .convert::<f32>()
            .iter::<f32>()
            .collect();
        let (counts, close) = mode_report(&v, radius, std);
        println!("{name}: modes {counts:?}, within 3 std: {close}/1000");
        for c in counts {
            assert!((60..=200).contains(&c), "{name}: mode counts {counts:?}");
        }
        assert!(
            close >= 900,
            "{name}: only {close}/1000 within 3 std of a centre"
        );
    }
}
