//! The training loss, the EMA and every documented error.

mod common;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use common::{Failing, WrongShape, ZeroPredictor, device, to_vec};
use ddpm_core::SamplerConfig;
use ddpm_core::VarianceType;
use ddpm_core::{
    BetaSchedule, DdpmError, DiffusionConfig, EmaConfig, EmaWarmup, GaussianDiffusion,
    LossWeighting, NoiseRng, Objective, SampleOptions, ScheduleConfig,
};

#[test]
fn loss_with_is_the_mse_to_the_noise() {
    let dev = device();
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let mut rng = NoiseRng::new(4);
    let x0 = rng.normal([6, 3], &dev);
    let noise = rng.normal([6, 3], &dev);
    let t = [0, 10, 100, 500, 900, 999];
    let loss = d.loss_with(&ZeroPredictor, x0, &t, noise.clone()).unwrap();
    assert_eq!(loss.dims(), [1]);
    let n = to_vec(noise);
    let expected = n.iter().map(|v| v * v).sum::<f64>() / n.len() as f64;
    let got = to_vec(loss)[0];
    assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
}

#[test]
fn min_snr_weighting_and_sample_objective() {
    let dev = device();
    let gamma = 5.0;
    let d = GaussianDiffusion::new(
        DiffusionConfig::default()
            .with_objective(Objective::Sample)
            .with_loss_weighting(LossWeighting::MinSnr { gamma }),
    )
    .unwrap();
    let mut rng = NoiseRng::new(5);
    let x0 = rng.normal([4, 8], &dev);
    let noise = rng.normal([4, 8], &dev);
    let t = [0usize, 300, 700, 999];
    // The zero predictor's x_0 error is x_0 itself.
    let got = to_vec(d.loss_with(&ZeroPredictor, x0.clone(), &t, noise).unwrap())[0];
    let x = to_vec(x0);
    let mut expected = 0.0;
    for (i, &ti) in t.iter().enumerate() {
        let mse = x[i * 8..(i + 1) * 8].iter().map(|v| v * v).sum::<f64>() / 8.0;
        expected += d.schedule().snr(ti).min(gamma) * mse / 4.0;
    }
    assert!(
        (got - expected).abs() / expected < 1e-4,
        "{got} vs {expected}"
    );
    let bad = GaussianDiffusion::new(
        DiffusionConfig::default().with_loss_weighting(LossWeighting::MinSnr { gamma: -1.0 }),
    );
    assert!(matches!(bad, Err(DdpmError::InvalidConfig(_))));
}

#[test]
fn loss_draws_timesteps_and_noise_reproducibly() {
    let dev = device();
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let x0 = Tensor::<2>::ones([16, 4], &dev);
    let a = to_vec(
        d.loss(&ZeroPredictor, x0.clone(), &mut NoiseRng::new(8))
            .unwrap(),
    );
    let b = to_vec(d.loss(&ZeroPredictor, x0, &mut NoiseRng::new(8)).unwrap());
    assert_eq!(a, b);
}

#[test]
fn a_predictor_of_the_wrong_shape_is_a_clear_error() {
    let dev = device();
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let x0 = Tensor::<2>::zeros([2, 3], &dev);
    let err = d
        .loss(&WrongShape, x0.clone(), &mut NoiseRng::new(0))
        .unwrap_err();
    assert!(
        matches!(err, DdpmError::PredictorShape { ref expected, ref actual } if expected == &[2, 3] && actual == &[2, 4])
    );
    assert!(err.to_string().contains("x_t's shape"), "{err}");
    let err = SamplerConfig::ddpm(None, VarianceType::FixedLarge)
        .sample(&d, &WrongShape, [2, 3], &dev, SampleOptions::new(0))
        .unwrap_err();
    assert!(matches!(err, DdpmError::PredictorShape { .. }));
    let err = SamplerConfig::ddim(50, 0.0)
        .sample(&d, &WrongShape, [2, 3], &dev, SampleOptions::new(0))
        .unwrap_err();
    assert!(matches!(err, DdpmError::PredictorShape { .. }));
    let err = d.loss(&Failing, x0, &mut NoiseRng::new(0)).unwrap_err();
    assert!(matches!(err, DdpmError::Predictor(_)) && err.to_string().contains("refuses"));
}

#[test]
fn bad_timesteps_and_sampler_settings_are_errors() {
    let dev = device();
    let d = GaussianDiffusion::new(DiffusionConfig::new(ScheduleConfig::new(
        BetaSchedule::paper(),
        10,
    )))
    .unwrap();
    let x0 = Tensor::<2>::zeros([2, 3], &dev);
    let noise = Tensor::<2>::zeros([2, 3], &dev);
    assert!(matches!(
        d.q_sample(x0.clone(), &[0, 10], noise.clone()),
        Err(DdpmError::TimestepOutOfRange {
            t: 10,
            num_timesteps: 10
        })
    ));
    assert!(matches!(
        d.q_sample(x0.clone(), &[0], noise.clone()),
        Err(DdpmError::TimestepBatchMismatch {
            timesteps: 1,
            batch: 2
        })
    ));
    assert!(matches!(
        d.q_sample(x0, &[0, 1], Tensor::zeros([2, 4], &dev)),
        Err(DdpmError::ShapeMismatch { .. })
    ));
    let ddim = |steps, eta| SamplerConfig::ddim(steps, eta);
    assert!(matches!(
        ddim(11, 0.0).sample(&d, &ZeroPredictor, [2, 3], &dev, SampleOptions::new(0)),
        Err(DdpmError::InvalidSampler(_))
    ));
    assert!(matches!(
        ddim(5, f64::NAN).sample(&d, &ZeroPredictor, [2, 3], &dev, SampleOptions::new(0)),
        Err(DdpmError::InvalidSampler(_))
    ));
    assert!(matches!(
        ddim(5, 0.0).sample(&d, &ZeroPredictor, [0, 3], &dev, SampleOptions::new(0)),
        Err(DdpmError::EmptyBatch)
    ));
    let respaced = SamplerConfig::ddpm(Some(0), VarianceType::FixedLarge);
    assert!(matches!(
        respaced.sample(&d, &ZeroPredictor, [2, 3], &dev, SampleOptions::new(0)),
        Err(DdpmError::InvalidSampler(_))
    ));
}

fn linear_with(value: f32) -> Linear {
    let dev = device();
    let l = LinearConfig::new(2, 2).init(&dev);
    Linear {
        weight: l.weight.map(|w| w.zeros_like().add_scalar(value)),
        bias: l.bias.map(|b| b.map(|b| b.zeros_like().add_scalar(value))),
    }
}

#[test]
fn ema_blends_weights_with_the_configured_decay() {
    let a = linear_with(1.0);
    let mut ema = EmaConfig {
        decay: 0.9,
        warmup: EmaWarmup::None,
    }
    .init(&a)
    .unwrap();
    let b = linear_with(3.0);
    ema.update(&b).unwrap();
    // 0.9 * 1 + 0.1 * 3 = 1.2
    let w = to_vec(ema.model().weight.val());
    assert!(w.iter().all(|v| (v - 1.2).abs() < 1e-6), "{w:?}");
    ema.update(&b).unwrap();
    // 0.9 * 1.2 + 0.1 * 3 = 1.38
    let bias = to_vec(ema.model().bias.as_ref().unwrap().val());
    assert!(bias.iter().all(|v| (v - 1.38).abs() < 1e-6), "{bias:?}");
    assert_eq!(ema.num_updates(), 2);

    let mut warm = EmaConfig {
        decay: 0.999,
        warmup: EmaWarmup::NumUpdates,
    }
    .init(&a)
    .unwrap();
    assert!((warm.current_decay() - 0.1).abs() < 1e-12);
    warm.update(&b).unwrap();
    // decay 1/10: 0.1 * 1 + 0.9 * 3 = 2.8
    let w = to_vec(warm.model().weight.val());
    assert!(w.iter().all(|v| (v - 2.8).abs() < 1e-5), "{w:?}");

    assert!(matches!(
        EmaConfig {
            decay: 1.0,
            warmup: EmaWarmup::None
        }
        .init(&a),
        Err(DdpmError::InvalidConfig(_))
    ));
    let other = LinearConfig::new(3, 2).init(&device());
    let mut e = EmaConfig::default().init(&other).unwrap();
    assert!(matches!(e.update(&a), Err(DdpmError::EmaMismatch(_))));
    let _ = a.num_params();
}
