//! The kernel counters (`ddpm_unet::kernels::profile`) count exactly the FLOPs of the
//! convolutions that ran, pass by pass. One test in its own binary: the counters are
//! process-wide, and other tests running beside it would add to them.

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Device, Distribution, Tensor};
use ddpm_unet::Kernels;
use ddpm_unet::kernels::conv2d;
use ddpm_unet::kernels::profile::{Kernel, kernel_times, reset_kernel_times};

/// FLOPs counted for `kernel` since the last reset, and whether its time is positive.
fn counted(kernel: Kernel) -> (u64, bool) {
    let k = kernel_times()
        .into_iter()
        .find(|k| k.kernel == kernel)
        .expect("every kernel is listed");
    (k.flop, k.calls == 0 || k.seconds > 0.0)
}

/// Forward, then backward, of `sum(conv(x))` for `[b, c, size, size]` through the fused
/// kernels; returns the counts of `kernels` after the forward pass and after the backward.
fn run(
    [b, c, size]: [usize; 3],
    c_out: usize,
    stride: usize,
    kernels: &[Kernel],
) -> (Vec<u64>, Vec<u64>) {
    let device = Device::flex().autodiff();
    let conv = Conv2dConfig::new([c, c_out], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device)
        .train();
    let dist = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<4>::random([b, c, size, size], dist, &device).require_grad();
    let snapshot = || -> Vec<u64> {
        kernels
            .iter()
            .map(|&k| {
                let (flop, timed) = counted(k);
                assert!(timed, "{k:?} ran without a time");
                flop
            })
            .collect()
    };
    reset_kernel_times();
    let y = conv2d(&conv, x, Kernels::Fused).expect("the input fits");
    let forward = snapshot();
    let _grads = y.sum().backward();
    (forward, snapshot())
}

#[test]
fn counters_hold_each_passs_flops() {
    // 2 * c_in * c_out * 9 per output value, for each of the three passes (the input
    // gradient is a convolution with the roles of c_in and c_out turned: the same count).
    let direct = 2 * 16 * 8 * 9 * (2 * 9 * 9);
    let avx512 = {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    };
    // The register-blocked kernels on AVX-512 CPUs, one gemm per tap on the others.
    let engine = match avx512 {
        true => [Kernel::Direct, Kernel::WeightGrad],
        false => [Kernel::GemmTaps, Kernel::GemmWeightGrad],
    };
    let (fwd, all) = run([2, 16, 9], 8, 1, &engine);
    assert_eq!(fwd, [direct, 0]);
    assert_eq!(all, [2 * direct, direct]);

    // 32 channels: the direct kernel on AVX-512 CPUs, Winograd's F(2x2, 3x3) (9 tiles for a
    // 6x6 output) on the others, whose 3x3 layers would otherwise be nine gemm calls.
    let kernels = [Kernel::Direct, Kernel::WinogradProducts];
    let (fwd, _) = run([1, 32, 6], 32, 1, &kernels);
    let (direct32, winograd32) = (2 * 32 * 32 * 9 * 36, 2 * 32 * 32 * 16 * 9);
    let want = if avx512 {
        [direct32, 0]
    } else {
        [0, winograd32]
    };
    assert_eq!(fwd, want);

    // Winograd (128 channels and more everywhere): 2 * c_in * c_out per tile element, 16 elements per
    // 2x2 output tile, 9 tiles for a 6x6 output.
    let winograd = 2 * 128 * 128 * 16 * 9;
    let kernels = [Kernel::WinogradProducts, Kernel::WinogradWeightGrad];
    let (fwd, all) = run([1, 128, 6], 128, 1, &kernels);
    assert_eq!(fwd, [winograd, 0]);
    assert_eq!(all, [2 * winograd, winograd]);

    // Training's weights are new at every call: F(4x4, 3x3) for a forward pass, an input
    // gradient and a weight gradient over 256 or more 4x4 tiles (16 images of 16x16: 16 tiles
    // each, 36 elements per tile), F(2x2, 3x3) below that (4 images: 64 2x2 tiles each).
    let large = |b: u64| 2 * 128 * 128 * 36 * (b * 16);
    let small = |b: u64| 2 * 128 * 128 * 16 * (b * 64);
    let (fwd, all) = run([16, 128, 16], 128, 1, &kernels);
    assert_eq!(fwd, [large(16), 0]);
    assert_eq!(all, [2 * large(16), large(16)]);
    let (fwd, all) = run([4, 128, 16], 128, 1, &kernels);
    assert_eq!(fwd, [small(4), 0]);
    assert_eq!(all, [2 * small(4), small(4)]);

    // Sampling's weights come back unchanged: from the third call their transforms are kept,
    // and F(4x4, 3x3) runs from 64 tiles.
    let device = Device::flex();
    let conv = Conv2dConfig::new([128, 128], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    let x = Tensor::<4>::random([4, 128, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let products = || counted(Kernel::WinogradProducts).0;
    let per_call: Vec<u64> = (0..4)
        .map(|_| {
            reset_kernel_times();
            let _y = conv2d(&conv, x.clone(), Kernels::Fused).expect("the input fits");
            products()
        })
        .collect();
    assert_eq!(per_call, [small(4), small(4), large(4), large(4)]);

    // Stride 2: one im2col GEMM per image and pass, 2 * (c_in 9) * c_out per output value
    // (4x4 outputs of 8x8).
    let im2col = 2 * (4 * 9) * 6 * 16 * 2;
    let (fwd, all) = run([2, 4, 8], 6, 2, &[Kernel::Im2col]);
    assert_eq!(fwd, [im2col]);
    assert_eq!(all, [3 * im2col]);
}
