//! Criterion benches: one U-Net forward and one training step (ddpm_mnist preset, batch 64;
//! 4 under `--test`),
//! one sampler step and `q_sample`, on flex and, when built with `--features wgpu`, on wgpu.
//! On flex, the fused kernels (`Kernels::Fused`, the default) against the decomposed burn ops:
//! GroupNorm + SiLU alone (forward, and forward + backward), a 3x3 convolution alone (the same)
//! and the whole U-Net.
//!
//! `cargo bench --bench unet` (add `--features wgpu` for the GPU rows; without a GPU driver
//! those rows are skipped with a message).

use std::hint::black_box;

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use ddpm::adam::Adam;
use ddpm::backend::Backend;
use ddpm::core::{Clip, DiffusionConfig, GaussianDiffusion, NoiseRng, VarianceType};
use ddpm::unet::kernels::{Activation, conv2d, group_norm_act};
use ddpm::unet::{Kernels, UNetConfig};

/// The batch of every row: 64, or 4 under criterion's `--test` (each bench run once, as CI's
/// smoke does: on lavapipe, a CPU running the GPU kernels, the wgpu rows at 64 took most of
/// that step, 53 s of 60 on a 2-core AVX-512 host). The batch is in every row's name.
fn batch() -> usize {
    if std::env::args().any(|a| a == "--test") {
        4
    } else {
        64
    }
}

fn devices() -> Vec<(String, Device)> {
    let mut out = Vec::new();
    for b in Backend::compiled() {
        match b.device() {
            Ok(d) => out.push((b.to_string(), d)),
            Err(e) => eprintln!("skipping {b}: {e}"),
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let diffusion = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let batch = batch();
    for (name, device) in devices() {
        let mut rng = NoiseRng::new(0);
        let x = rng.normal([batch, 1, 28, 28], &device);
        let t = Tensor::<1, Int>::from_ints(vec![500i64; batch].as_slice(), &device);

        // The kernels compared: fused and decomposed on flex; elsewhere both are the same ops.
        let kernel_rows: &[Kernels] = if name == "flex" {
            &[Kernels::Fused, Kernels::Decomposed]
        } else {
            &[Kernels::Fused]
        };
        let tag = |k: Kernels| format!("{k:?}").to_lowercase();

        // GroupNorm (8 groups) + SiLU on the 64-channel 14x14 level of the ddpm_mnist U-Net.
        let gn_x = rng.normal([batch, 64, 14, 14], &device);
        let (gamma, beta) = (Tensor::ones([64], &device), Tensor::zeros([64], &device));
        for &k in kernel_rows {
            c.bench_function(
                &format!("{name}/group_norm_silu_b{batch}x64x14x14/{}", tag(k)),
                |b| {
                    b.iter(|| {
                        let y = group_norm_act(
                            gn_x.clone(),
                            gamma.clone(),
                            beta.clone(),
                            8,
                            1e-6,
                            Activation::Silu,
                            k,
                        );
                        black_box(y.unwrap().into_data());
                    })
                },
            );
        }
        let ad = device.clone().autodiff();
        let gn_xa = rng.normal([batch, 64, 14, 14], &ad).require_grad();
        let gamma_a = Tensor::<1>::ones([64], &ad).require_grad();
        let beta_a = Tensor::<1>::zeros([64], &ad).require_grad();
        let weights = rng.normal([batch, 64, 14, 14], &ad);
        for &k in kernel_rows {
            c.bench_function(
                &format!(
                    "{name}/group_norm_silu_fwd_bwd_b{batch}x64x14x14/{}",
                    tag(k)
                ),
                |b| {
                    b.iter(|| {
                        let y = group_norm_act(
                            gn_xa.clone(),
                            gamma_a.clone(),
                            beta_a.clone(),
                            8,
                            1e-6,
                            Activation::Silu,
                            k,
                        );
                        let grads = (y.unwrap() * weights.clone()).sum().backward();
                        black_box(gn_xa.grad(&grads).map(|g| g.into_data()));
                    })
                },
            );
        }

        // A 3x3 convolution of the 14x14 level (64 -> 64 channels, padding 1): forward, and
        // forward + backward (input and weight gradients).
        let same = PaddingConfig2d::Explicit(1, 1, 1, 1);
        let conv = Conv2dConfig::new([64, 64], [3, 3])
            .with_padding(same.clone())
            .init(&device);
        for &k in kernel_rows {
            c.bench_function(
                &format!("{name}/conv3x3_b{batch}x64x14x14/{}", tag(k)),
                |b| b.iter(|| black_box(conv2d(&conv, gn_x.clone(), k).unwrap().into_data())),
            );
        }
        let conv_a = Conv2dConfig::new([64, 64], [3, 3])
            .with_padding(same)
            .init(&ad);
        for &k in kernel_rows {
            c.bench_function(
                &format!("{name}/conv3x3_fwd_bwd_b{batch}x64x14x14/{}", tag(k)),
                |b| {
                    b.iter(|| {
                        let y = conv2d(&conv_a, gn_xa.clone(), k).unwrap();
                        let grads = (y * weights.clone()).sum().backward();
                        black_box(gn_xa.grad(&grads).map(|g| g.into_data()));
                    })
                },
            );
        }

        // Inference forward (no autodiff, dropout off) on the trained-shape model.
        let net = UNetConfig::ddpm_mnist().init(&device).unwrap();
        for &k in kernel_rows {
            let net = net.clone().with_kernels(k);
            c.bench_function(
                &format!("{name}/unet_forward_mnist_b{batch}/{}", tag(k)),
                |b| {
                    b.iter(|| {
                        let y = net.forward(x.clone(), t.clone()).unwrap();
                        black_box(y.into_data());
                    })
                },
            );
        }

        // One sampler step: model call + posterior + noise, as the DDPM sampler runs it.
        c.bench_function(&format!("{name}/ddpm_p_sample_step_b{batch}"), |b| {
            b.iter(|| {
                let z = rng.normal([batch, 1, 28, 28], &device);
                let (x_prev, _) = diffusion
                    .p_sample(
                        &net,
                        x.clone(),
                        500,
                        VarianceType::FixedLarge,
                        Clip::unit(),
                        z,
                    )
                    .unwrap();
                black_box(x_prev.into_data());
            })
        });

        c.bench_function(&format!("{name}/q_sample_b{batch}"), |b| {
            let ts = vec![500usize; batch];
            b.iter(|| {
                let noise = rng.normal([batch, 1, 28, 28], &device);
                black_box(
                    diffusion
                        .q_sample(x.clone(), &ts, noise)
                        .unwrap()
                        .into_data(),
                );
            })
        });

        // One training step: loss, backward, Adam.
        let x0 = rng.normal([batch, 1, 28, 28], &ad);
        let mut group = c.benchmark_group(format!("{name}/train"));
        group.sample_size(10);
        for &k in kernel_rows {
            let mut model = UNetConfig::ddpm_mnist().init(&ad).unwrap().with_kernels(k);
            let mut optim = Adam::new(1e-8); // the Trainer's optimizer
            group.bench_function(format!("unet_train_step_mnist_b{batch}/{}", tag(k)), |b| {
                b.iter(|| {
                    let loss = diffusion.loss(&model, x0.clone(), &mut rng).unwrap();
                    let grads = GradientsParams::from_grads(loss.backward(), &model);
                    model = optim.step(2e-4, model.clone(), grads);
                    black_box(model.num_params());
                    device.sync().unwrap();
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(10));
    targets = bench
}
criterion_main!(benches);
