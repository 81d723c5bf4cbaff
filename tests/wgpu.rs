//! The wgpu path against flex: the same weights and inputs give the same numbers, training
//! steps agree, samplers run, and checkpoints cross between the two backends.
//!
//! Built with `--features wgpu` (the README's test command). Without a Vulkan/Metal/DX12
//! adapter each test prints why and returns, unless `DDPM_REQUIRE_WGPU=1` (set by `.ci/run`,
//! which installs lavapipe), where a missing adapter fails the test.
#![cfg(feature = "wgpu")]

mod common;

use common::{max_diff, weights};
use ddpm::core::SamplerConfig;

use std::sync::OnceLock;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Int, Tensor};
use ddpm::backend::Backend;
use ddpm::core::{
    Clip, DiffusionConfig, EmaConfig, EmaWarmup, GaussianDiffusion, NoiseRng, SampleOptions,
    VarianceType,
};
use ddpm::data::{Dataset, ImageSet, Split};
use ddpm::train::{TrainConfig, Trainer};
use ddpm::unet::{UNet, UNetConfig};

/// The wgpu device, or `None` (with the reason printed) when no adapter answers. Probed once
/// (the probe silences the panic hook for a moment; tests that wait here cannot panic then).
fn wgpu() -> Option<Device> {
    static PROBE: OnceLock<Result<Device, String>> = OnceLock::new();
    match PROBE.get_or_init(|| Backend::Wgpu.device().map_err(|e| e.to_string())) {
        Ok(d) => Some(d.clone()),
        Err(e) => {
            if std::env::var_os("DDPM_REQUIRE_WGPU").is_some_and(|v| v == "1") {
                panic!("DDPM_REQUIRE_WGPU=1 but wgpu has no adapter: {e}");
            }
            eprintln!("skipping a wgpu test: {e}");
            None
        }
    }
}

fn mnist_unet() -> UNetConfig {
    UNetConfig::ddpm_mnist().with_dropout(0.0)
}

/// The training tests' U-Net: `ddpm_mnist`'s structure (every layer kind, attention at 7x7)
/// at a quarter of its width, 16 channels. lavapipe runs the GPU kernels on the CPU, and the
/// full width made these two tests most of CI's test time (388 s of 702 on a 2-core AVX2 host).
fn small_unet() -> UNetConfig {
    UNetConfig {
        ch: 16,
        ..mnist_unet()
    }
}

fn diffusion() -> GaussianDiffusion {
    GaussianDiffusion::new(DiffusionConfig::default()).unwrap()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().iter::<f32>().collect()
}

/// Adds N(0, 0.05^2) to every weight: the U-Net's output layer starts at zero (as the
/// paper's), and a zero output would compare nothing.
struct Jitter(NoiseRng);
impl ModuleMapper for Jitter {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let rng = &mut self.0;
        param.map(|t| {
            let noise = rng.normal(t.dims(), &t.device()).mul_scalar(0.05);
            t + noise
        })
    }
}

fn train_config(steps: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 4,
        lr: 1e-4,
        warmup_steps: 0,
        grad_clip_norm: Some(1.0),
        adam_epsilon: 1e-8,
        ema: EmaConfig {
            decay: 0.9,
            warmup: EmaWarmup::None,
        },
        seed: 5,
        checkpoint_every: 0,
        keep_checkpoints: 1,
        p_uncond: 0.1,
        hflip: false,
    }
}

fn mnist_test() -> ImageSet {
    ImageSet::load(Dataset::Mnist, Split::Test, Some(&common::data_dir())).unwrap()
}

#[test]
fn unet_forward_on_wgpu_equals_flex() {
    let Some(gpu) = wgpu() else { return };
    let cpu = Device::flex();
    cpu.seed(1);
    let net = mnist_unet()
        .init(&cpu)
        .unwrap()
        .map(&mut Jitter(NoiseRng::new(1)));
    let x = NoiseRng::new(2).normal([4, 1, 28, 28], &cpu); // [4, 1, 28, 28]
    let t = Tensor::<1, Int>::from_ints([0, 250, 600, 999], &cpu); // [4]
    let y_cpu = values(net.forward(x.clone(), t.clone()).unwrap());
    let net_gpu = net.to_device(&gpu);
    let y_gpu = values(
        net_gpu
            .forward(x.to_device(&gpu), t.to_device(&gpu))
            .unwrap(),
    );
    let d = max_diff(&y_cpu, &y_gpu);
    println!("U-Net forward, wgpu against flex: max |difference| {d:.2e}");
    assert!(d <= 1e-4, "wgpu and flex U-Net outputs differ by {d}");
    assert!(
        y_cpu.iter().any(|v| v.abs() > 1e-3),
        "a zero output proves nothing"
    );
}

#[test]
fn five_training_steps_on_wgpu_match_flex() {
    let Some(gpu) = wgpu() else { return };
    let data = mnist_test();
    let cpu = Device::flex().autodiff();
    cpu.seed(3);
    let init = small_unet().init(&cpu).unwrap();
    let _ = weights(&init); // initialise the lazy parameters here, once
    let losses = |device: &Device| -> Vec<f64> {
        // fork: a module of its own on `device`, with its own autodiff graph.
        let model = init.clone().fork(device);
        let mut t: Trainer<UNet, 4> =
            Trainer::new(diffusion(), model, train_config(5), data.count).unwrap();
        (0..5).map(|_| t.step(&data).unwrap().loss).collect()
    };
    let on_cpu = losses(&cpu);
    let on_gpu = losses(&gpu.autodiff());
    println!("losses of 5 steps: flex {on_cpu:?}, wgpu {on_gpu:?}");
    for (a, b) in on_cpu.iter().zip(&on_gpu) {
        assert!(
            (a - b).abs() <= 1e-3,
            "losses differ: flex {on_cpu:?} wgpu {on_gpu:?}"
        );
    }
    // Training did something: the steps saw different batches and moved the weights.
    assert!(on_cpu.windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn ddpm_and_ddim_sample_on_wgpu() {
    let Some(gpu) = wgpu() else { return };
    let cpu = Device::flex();
    cpu.seed(4);
    let net = mnist_unet()
        .init(&cpu)
        .unwrap()
        .map(&mut Jitter(NoiseRng::new(4)));
    let net_gpu = net.clone().to_device(&gpu);
    let ddpm = SamplerConfig::ddpm(Some(3), VarianceType::FixedLarge).with_clip(Clip::unit());
    let ddim = SamplerConfig::ddim(3, 0.0).with_clip(Clip::unit());
    let shape = [2, 1, 28, 28];
    let d = diffusion();
    for (name, on_gpu, on_cpu) in [
        (
            "ddpm",
            ddpm.sample(&d, &net_gpu, shape, &gpu, SampleOptions::new(9)),
            ddpm.sample(&d, &net, shape, &cpu, SampleOptions::new(9)),
        ),
        (
            "ddim",
            ddim.sample(&d, &net_gpu, shape, &gpu, SampleOptions::new(9)),
            ddim.sample(&d, &net, shape, &cpu, SampleOptions::new(9)),
        ),
    ] {
        let g = values(on_gpu.unwrap().samples);
        let c = values(on_cpu.unwrap().samples);
        assert!(g.iter().all(|v| v.is_finite()), "{name}: non-finite sample");
        // The noise comes from the host RNG, so both backends follow the same chain.
        let diff = max_diff(&g, &c);
        println!("{name}, 3 steps: wgpu against flex, max |difference| {diff:.2e}");
        assert!(
            diff <= 1e-3,
            "{name}: wgpu and flex samples differ by {diff}"
        );
    }
}

/// Trains 2 steps on `from`, checkpoints, resumes on `to`: the weights arrive unchanged, the
/// optimizer state lives on `to` only, and one more step agrees with continuing on `from`.
fn checkpoint_crosses(from: &Device, to: &Device, name: &str) {
    let data = mnist_test();
    let cfg = small_unet();
    let meta = ddpm::models::ModelSpec::Unet {
        config: cfg.clone(),
    };
    let dir = common::scratch(name);
    from.seed(7);
    let mut a: Trainer<UNet, 4> = Trainer::new(
        diffusion(),
        cfg.init(&from.clone().autodiff()).unwrap(),
        train_config(3),
        data.count,
    )
    .unwrap()
    .with_spec(meta.clone());
    a.step(&data).unwrap();
    a.step(&data).unwrap();
    a.save_checkpoint(&dir).unwrap();
    let mut b: Trainer<UNet, 4> = Trainer::resume(
        &dir,
        diffusion(),
        cfg.init(&to.clone().autodiff()).unwrap(),
        &meta,
        None,
    )
    .unwrap();
    assert_eq!(b.state(), a.state());
    assert_eq!(max_diff(&weights(a.model()), &weights(b.model())), 0.0);
    assert_eq!(b.optimizer().devices(), vec![to.clone()]);
    let la = a.step(&data).unwrap().loss;
    let lb = b.step(&data).unwrap().loss;
    assert!(
        (la - lb).abs() <= 1e-3,
        "{name}: step 3 loss {la} against {lb}"
    );
    let d = max_diff(&weights(a.model()), &weights(b.model()));
    assert!(
        d <= 1e-4,
        "{name}: weights differ by {d} after the resumed step"
    );
}

#[test]
fn a_checkpoint_written_on_wgpu_resumes_on_flex_and_back() {
    let Some(gpu) = wgpu() else { return };
    checkpoint_crosses(&gpu, &Device::flex(), "wgpu-to-flex");
    checkpoint_crosses(&Device::flex(), &gpu, "flex-to-wgpu");
}
