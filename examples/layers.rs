//! Per-layer speed of the ddpm_mnist U-Net's 3x3 convolutions on flex, as a user calls them
//! (`ddpm::unet::kernels::conv2d`, fused kernels): for each shape, the forward pass, the input
//! gradient and the weight gradient in ms and GFLOP/s, against this machine's sgemm rate
//! measured in the same run (medians of `--reps` repetitions, the three passes interleaved).
//! The weight gradient is the forward and backward pass of `sum(conv(x))` with the input
//! untracked, less the forward pass; the input gradient is the same with the input tracked
//! too, less that: both include the autodiff bookkeeping.
//!
//! `cargo run --release --example layers -- [--batch 64] [--reps 9]`

use std::time::Instant;

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use ddpm::backend::Backend;
use ddpm::core::NoiseRng;
use ddpm::unet::Kernels;
use ddpm::unet::kernels::conv2d;

#[path = "shared/args.rs"]
mod args;
use args::arg;

/// The 3x3 stride-1 convolutions of `UNetConfig::ddpm_mnist()` (ch 32, ch_mult [1, 2, 2], one
/// ResBlock per level): `(c_in, c_out, size, how many)`. The first (1 -> 32) and last
/// (32 -> 1) layers and the downsampling convolutions are left out (under 1 % of the FLOPs).
const LAYERS: [(usize, usize, usize, usize); 10] = [
    (32, 32, 28, 4),
    (64, 64, 28, 1),
    (96, 32, 28, 1),
    (64, 32, 28, 1),
    (32, 64, 14, 1),
    (64, 64, 14, 4),
    (128, 64, 14, 1),
    (96, 64, 14, 1),
    (64, 64, 7, 8),
    (128, 64, 7, 2),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ddpm::allocator::keep_freed_memory();
    let b: usize = arg("--batch", "64").parse()?;
    let reps: usize = arg("--reps", "9").parse::<usize>()?.max(1);
    let device = "flex".parse::<Backend>()?.device()?;
    let ad = device.clone().autodiff();
    let mut rng = NoiseRng::new(0);
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64() * 1e3
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let n = 2048;
    let (a, m) = (rng.normal([n, n], &device), rng.normal([n, n], &device));
    let gemm_ms = median(
        (0..=reps)
            .map(|_| time(&mut || drop(a.clone().matmul(m.clone()).into_data())))
            .skip(1)
            .collect(),
    );
    let sgemm = 2.0 * (n as f64).powi(3) / gemm_ms / 1e6;
    println!("sgemm (2048^3, flex): {sgemm:.0} GFLOP/s; batch {b}, medians of {reps} repetitions");
    println!(
        "| c_in | c_out | size | count | GFLOP | forward ms | GFLOP/s | input grad ms | GFLOP/s | weight grad ms | GFLOP/s |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut total = [0.0f64; 4];
    for (ci, co, hw, count) in LAYERS {
        let pad = PaddingConfig2d::Explicit(1, 1, 1, 1);
        let conv = Conv2dConfig::new([ci, co], [3, 3])
            .with_padding(pad.clone())
            .init(&device);
        let tracked = Conv2dConfig::new([ci, co], [3, 3])
            .with_padding(pad)
            .init(&ad)
            .train();
        let x = rng.normal([b, ci, hw, hw], &device);
        let xa = x.clone().autodiff();
        let xg = x.clone().autodiff().require_grad();
        let gflop = 2.0 * (9 * ci * co * hw * hw * b) as f64 / 1e9;
        let mut run_fwd = || {
            let _ = conv2d(&conv, x.clone(), Kernels::Fused).map(|y| y.into_data());
        };
        // The weight gradient alone (the input untracked), then both.
        let mut run_dw = || {
            if let Ok(y) = conv2d(&tracked, xa.clone(), Kernels::Fused) {
                let _ = tracked
                    .weight
                    .grad(&y.sum().backward())
                    .map(|g| g.into_data());
            }
        };
        let mut run_both = || {
            if let Ok(y) = conv2d(&tracked, xg.clone(), Kernels::Fused) {
                let _ = xg.grad(&y.sum().backward()).map(|g| g.into_data());
            }
        };
        // Interleaved repetitions; each column the median of its per-repetition values
        // (a difference of two fastest times is not robust on a shared host).
        let (mut f, mut w, mut d) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..=reps {
            let [t_f, t_w, t_b] = [time(&mut run_fwd), time(&mut run_dw), time(&mut run_both)];
            if rep > 0 {
                f.push(t_f);
                w.push(t_w - t_f);
                d.push(t_b - t_w);
            }
        }
        let (fwd, dw, dx) = (median(f), median(w), median(d));
        let rate = |ms: f64| gflop / ms * 1e3;
        for (t, v) in total.iter_mut().zip([gflop, fwd, dx, dw]) {
            *t += count as f64 * v;
        }
        println!(
            "| {ci} | {co} | {hw}x{hw} | {count} | {gflop:.2} | {fwd:.1} | {:.0} | {dx:.1} | {:.0} | {dw:.1} | {:.0} |",
            rate(fwd),
            rate(dx),
            rate(dw)
        );
    }
    let [gflop, fwd, dx, dw] = total;
    let pct = |ms: f64| 100.0 * gflop / ms * 1e3 / sgemm;
    println!(
        "all layers x count: {gflop:.1} GFLOP each way; forward {fwd:.0} ms ({:.0} % of sgemm), \
         input grad {dx:.0} ms ({:.0} %), weight grad {dw:.0} ms ({:.0} %)",
        pct(fwd),
        pct(dx),
        pct(dw)
    );
    Ok(())
}
