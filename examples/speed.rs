//! Prints our figures for the PyTorch comparison (`benches/pytorch/run.sh`): ms per training
//! step and per sampling step (at the batch and at batch 1) of the ddpm_mnist U-Net
//! (`--model mnist`, 1x28x28) or the paper's CIFAR-10 U-Net (`--model cifar10`, 3x32x32,
//! 35.7M parameters), the parameter count, achieved GFLOP/s and peak resident memory, and the
//! backend's large-GEMM rate (`sgemm_gflops`, a 2048^3 f32 product: the median of nine, three
//! each before, between and after the phases; flex only, `null` on other devices) as one JSON
//! line.
//!
//! `cargo run --release --example speed -- [--model mnist] [--batch 64] [--iters 5]
//! [--warmup 3] [--device flex] [--kernels fused|decomposed] [--ch 32] [--malloc keep|default]
//! [--kernel-times on] [--step-times on] [--kernel-cache-mib 1024]
//! [--phase both|sampling|training]`
//!
//! Each phase first runs `--warmup` untimed steps, then `--iters` timed ones, of which the
//! line gives the median (`*_ms`) and the fastest (`*_min_ms`). Sampling with the Winograd
//! convolutions settles only at its fourth step: the first three transform the kernels afresh,
//! keep them ([`ddpm::unet::kernels::set_transformed_kernel_capacity`]) and transform them
//! once more for F(4x4, 3x3), so one warm-up step would let those into the median.
//! `benches/pytorch/ddpm_torch.py` takes the same `--warmup`. `--step-times on` prints every
//! step's time to stderr, warm-up steps too.
//!
//! `--phase` runs only the sampling steps or only the training steps (their figures in the
//! JSON line read 0), for a sampling profiler (`perf record`) to see one phase alone.
//!
//! `--kernel-times on` also prints (to stderr, the JSON line stays alone on stdout) each fused
//! kernel's calls, GFLOP, thread-seconds and GFLOP/s per thread over the timed sampling steps
//! at the batch and over the timed training steps, against the sgemm rate per thread
//! ([`ddpm::unet::kernels::profile`]).
//!
//! `--kernel-cache-mib` caps the transformed kernels the Winograd convolutions keep from call
//! to call ([`ddpm::unet::kernels::set_transformed_kernel_capacity`]; 0 keeps none); the JSON
//! line's `kept_kernels_mib` is what they held at the end.
//!
//! `--malloc keep` (the default) runs with [`ddpm::allocator::keep_freed_memory`], as the
//! mnist example does; `default` leaves glibc's malloc as it is.

use std::time::Instant;

use burn::optim::GradientsParams;
use ddpm::adam::Adam;
use ddpm::backend::Backend;
use ddpm::core::{Clip, DiffusionConfig, GaussianDiffusion, NoiseRng, VarianceType};
use ddpm::unet::kernels::profile::{KernelTime, kernel_times, reset_kernel_times};
use ddpm::unet::{Kernels, UNetConfig};

#[path = "shared/args.rs"]
mod args;
use args::arg;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Caps the Winograd convolutions' kept kernels (flex only).
fn set_kernel_cache(mib: usize) {
    #[cfg(feature = "flex")]
    ddpm::unet::kernels::set_transformed_kernel_capacity(mib.saturating_mul(1 << 20));
    #[cfg(not(feature = "flex"))]
    let _ = mib;
}

/// What the kept kernels hold, in MiB (0 without flex).
fn kept_kernels_mib() -> f64 {
    #[cfg(feature = "flex")]
    return ddpm::unet::kernels::transformed_kernel_bytes() as f64 / (1 << 20) as f64;
    #[cfg(not(feature = "flex"))]
    0.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let malloc = arg("--malloc", "keep");
    match malloc.as_str() {
        "keep" => {
            ddpm::allocator::keep_freed_memory();
        }
        "default" => {}
        other => return Err(format!("--malloc: expected keep or default, got {other}").into()),
    }
    let kernel_cache_mib: usize = arg("--kernel-cache-mib", "1024").parse()?;
    set_kernel_cache(kernel_cache_mib);
    let batch: usize = arg("--batch", "64").parse()?;
    let phase = arg("--phase", "both");
    if !["both", "sampling", "training"].contains(&phase.as_str()) {
        return Err(format!("--phase: expected both, sampling or training, got {phase}").into());
    }
    let (sample_on, train_on) = (phase != "training", phase != "sampling");
    let iters: usize = arg("--iters", "5").parse()?;
    if iters == 0 {
        return Err("--iters: at least 1 timed step".into());
    }
    let warmup: usize = arg("--warmup", "3").parse()?;
    let step_times = arg("--step-times", "off") == "on";
    let log_step = |phase: &str, i: usize, ms: f64| {
        if step_times {
            let kind = if i < warmup { "warm-up" } else { "timed" };
            eprintln!("{phase} step {i} ({kind}): {ms:.1} ms");
        }
    };
    let backend: Backend = arg("--device", "flex").parse()?;
    let device = backend.device()?;
    let kernels = match arg("--kernels", "fused").as_str() {
        "fused" => Kernels::Fused,
        "decomposed" => Kernels::Decomposed,
        other => {
            return Err(format!("--kernels: expected fused or decomposed, got {other}").into());
        }
    };
    let model_name = arg("--model", "mnist");
    let (base, [c, h, w]) = match model_name.as_str() {
        "mnist" => (UNetConfig::ddpm_mnist(), [1, 28, 28]),
        "cifar10" => (UNetConfig::ddpm_cifar10(), [3, 32, 32]),
        other => return Err(format!("--model: expected mnist or cifar10, got {other}").into()),
    };
    // `--ch 16` is the quick preset's U-Net (the ddpm_mnist layout at ch 16).
    let ch: usize = arg("--ch", &base.ch.to_string()).parse()?;
    let cfg = UNetConfig { ch, ..base };
    let params = cfg.num_params()?;
    let flops = cfg.forward_flops(h, w) as f64 * batch as f64;
    let diffusion = GaussianDiffusion::new(DiffusionConfig::default())?;
    let mut rng = NoiseRng::new(0);

    // The backend's own large-GEMM rate (2048^3 f32 matrix product), the ceiling that the
    // U-Net's convolutions could reach on this machine: timed before, between and after the
    // phases (the host's speed drifts), its median over all of them. On flex only: wgpu
    // (lavapipe) answered the repeated product in 0.05-0.35 ms after a first 534, fresh
    // operands or not, a rate of 50,000-250,000 GFLOP/s, so no probe there (`null`).
    let probe_on = backend == Backend::Flex;
    let plain = device.clone().inner();
    let mut probe_rng = NoiseRng::new(1);
    let mut gemm_ms = Vec::new();
    let mut sgemm_probe = |ms: &mut Vec<f64>| {
        if !probe_on {
            return;
        }
        let n = 2048;
        let a = probe_rng.normal([n, n], &plain);
        let b = probe_rng.normal([n, n], &plain);
        for i in 0..4 {
            let start = Instant::now();
            let _ = a.clone().matmul(b.clone()).into_data();
            if i > 0 {
                ms.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    };
    sgemm_probe(&mut gemm_ms);

    // Sampling step: one p_sample of Algorithm 2 (forward pass, posterior, noise).
    let net = cfg.init(&device)?.with_kernels(kernels);
    let mut sampling = |n: usize| -> Result<Vec<f64>, Box<dyn std::error::Error>> {
        let x = rng.normal([n, c, h, w], &device);
        let mut ms = Vec::new();
        for i in 0..warmup + iters {
            let z = rng.normal([n, c, h, w], &device);
            if i == warmup {
                reset_kernel_times(); // after the warm-up steps
            }
            let start = Instant::now();
            let (x_prev, _) = diffusion.p_sample(
                &net,
                x.clone(),
                500,
                VarianceType::FixedLarge,
                Clip::unit(),
                z,
            )?;
            let _ = x_prev.into_data();
            let elapsed = start.elapsed().as_secs_f64() * 1e3;
            log_step(&format!("sampling (batch {n})"), i, elapsed);
            if i >= warmup {
                ms.push(elapsed);
            }
        }
        Ok(ms)
    };
    let mut sample_ms = if sample_on {
        sampling(batch)?
    } else {
        vec![0.0]
    };
    let sample_kernels = kernel_times();
    let mut sample1_ms = if sample_on { sampling(1)? } else { vec![0.0] };

    sgemm_probe(&mut gemm_ms);

    // Training step: loss, backward, Adam (dropout on, as in training).
    let ad = device.clone().autodiff();
    let mut model = cfg.init(&ad)?.with_kernels(kernels);
    let mut optim = Adam::new(1e-8); // the Trainer's optimizer
    let x0 = rng.normal([batch, c, h, w], &ad);
    let mut train_ms = Vec::new();
    for i in 0..if train_on { warmup + iters } else { 0 } {
        if i == warmup {
            reset_kernel_times();
        }
        let start = Instant::now();
        let loss = diffusion.loss(&model, x0.clone(), &mut rng)?;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(2e-4, model, grads);
        let _ = loss.into_scalar::<f32>();
        device.sync()?;
        let elapsed = start.elapsed().as_secs_f64() * 1e3;
        log_step("training", i, elapsed);
        if i >= warmup {
            train_ms.push(elapsed);
        }
    }
    if train_ms.is_empty() {
        train_ms.push(0.0);
    }
    let train_kernels = kernel_times();
    sgemm_probe(&mut gemm_ms);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (s, t) = (median(&mut sample_ms), median(&mut train_ms));
    // The fastest iteration (the vectors are sorted now): steadier than the median on a
    // shared host, for A/B comparisons of builds.
    let (s_min, t_min) = (sample_ms[0], train_ms[0]);
    let s1 = median(&mut sample1_ms);
    let sgemm_gflops = match gemm_ms.is_empty() {
        true => f64::NAN,
        false => 2.0 * 2048f64.powi(3) / (median(&mut gemm_ms) / 1e3) / 1e9,
    };
    // JSON has no inf or NaN: a rate of a phase not run (`--phase`), or of no probe, is null.
    let rate = |v: f64| match v.is_finite() {
        true => format!("{v:.1}"),
        false => "null".to_string(),
    };
    let sgemm = rate(sgemm_gflops);
    let (sample_rate, train_rate) = (
        rate(flops / (s / 1e3) / 1e9),
        rate(3.0 * flops / (t / 1e3) / 1e9),
    );
    println!(
        "{{\"impl\": \"burn-{backend}\", \"model\": \"{model_name}\", \"kernels\": \"{kernels:?}\", \"ch\": {ch}, \"params\": {params}, \"batch\": {batch}, \"train_ms\": {t:.1}, \"sample_ms\": {s:.1}, \"train_min_ms\": {t_min:.1}, \"sample_min_ms\": {s_min:.1}, \"sample1_ms\": {s1:.1}, \
         \"fwd_gflop\": {:.2}, \"sample_gflops\": {sample_rate}, \"train_gflops\": {train_rate}, \"peak_rss_mib\": {:.0}, \"sgemm_gflops\": {sgemm}, \"malloc\": \"{malloc}\", \"kept_kernels_mib\": {:.0}}}",
        flops / 1e9,
        peak_rss_mib(),
        kept_kernels_mib()
    );
    if arg("--kernel-times", "off") == "on" {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = sgemm_gflops / threads as f64;
        let phases = [
            ("sampling", &sample_kernels, s * iters as f64),
            ("training", &train_kernels, t * iters as f64),
        ];
        for (phase, times, median_ms) in phases {
            if median_ms == 0.0 {
                continue; // not run (--phase)
            }
            print_kernel_times(phase, times, per_thread, threads, median_ms / 1e3);
        }
    }
    Ok(())
}

/// One phase's kernel counters as a Markdown table on stderr: each kernel's rate per thread
/// against `per_thread` (the sgemm rate over the thread count), and its share of the phase's
/// thread time (`threads` times `seconds`, the timed steps' wall time).
fn print_kernel_times(
    phase: &str,
    times: &[KernelTime],
    per_thread: f64,
    threads: usize,
    seconds: f64,
) {
    eprintln!(
        "{phase}, timed steps (about {seconds:.2} s on {threads} threads); sgemm {per_thread:.1} GFLOP/s per thread"
    );
    eprintln!(
        "| kernel | calls | GFLOP | thread-s | share of thread time | GFLOP/s per thread | of sgemm |"
    );
    eprintln!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for k in times.iter().filter(|k| k.calls > 0) {
        let rate = k.gflops_per_thread();
        eprintln!(
            "| {:?} | {} | {:.2} | {:.3} | {:.0} % | {} |",
            k.kernel,
            k.calls,
            k.flop as f64 / 1e9,
            k.seconds,
            100.0 * k.seconds / (threads as f64 * seconds),
            match k.flop {
                0 => "(memory pass) | -".to_string(),
                _ => format!("{rate:.1} | {:.0} %", 100.0 * rate / per_thread),
            },
        );
    }
}
