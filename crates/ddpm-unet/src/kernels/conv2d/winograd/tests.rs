//! Winograd's convolution against the definition, in f64.

use super::*;
use crate::kernels::flex_tensor::writable;
use crate::kernels::flex_tensor::{f32s, flex_tensor};
use crate::kernels::test_support::{noise, with_threads};

/// `y` as the kernels' output (they write only values, so it stays initialised).
fn dst(y: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: the kernels write only initialised values through it.
    unsafe { writable(y) }
}

/// The definition in f64 (`x` `[b, c, h, w]`, `w` `[c_out, c, 3, 3]`, no bias).
fn definition(x: &[f32], w: &[f32], g: Tiles, c_out: usize) -> Vec<f64> {
    let mut y = vec![0.0f64; g.b * c_out * g.ho * g.wo];
    for img in 0..g.b {
        for o in 0..c_out {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let mut s = 0.0f64;
                    for i in 0..g.c {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (oy + ky, ox + kx);
                                if iy < g.top || ix < g.left {
                                    continue;
                                }
                                let (iy, ix) = (iy - g.top, ix - g.left);
                                if iy >= g.h || ix >= g.w {
                                    continue;
                                }
                                s += w[((o * g.c + i) * 3 + ky) * 3 + kx] as f64
                                    * x[((img * g.c + i) * g.h + iy) * g.w + ix] as f64;
                            }
                        }
                    }
                    y[((img * c_out + o) * g.ho + oy) * g.wo + ox] = s;
                }
            }
        }
    }
    y
}

fn close(a: &[f32], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (k, (&a, &b)) in a.iter().zip(b).enumerate() {
        assert!(
            (a as f64 - b).abs() <= 2e-5 * scale,
            "{what}: value {k}: {a} against {b}"
        );
    }
}

/// Shapes: odd and even sizes, a 1x1 and a 1x2 image, one-sided and zero padding, batch 1,
/// and sums over 128 channels (F(4x4, 3x3)'s larger constants lose the most there).
const CASES: [(usize, usize, usize, usize, usize, [usize; 4]); 8] = [
    (2, 3, 4, 6, 6, [1, 1, 1, 1]),
    (1, 5, 2, 7, 5, [1, 1, 1, 1]),
    (3, 2, 3, 1, 1, [1, 1, 1, 1]),
    (1, 4, 3, 1, 2, [1, 1, 1, 1]),
    (2, 3, 2, 5, 8, [0, 0, 0, 0]),
    (2, 2, 3, 6, 5, [2, 0, 1, 2]),
    (1, 16, 8, 9, 9, [1, 1, 1, 1]),
    (1, 128, 4, 10, 9, [1, 1, 1, 1]),
];

/// The forward pass, with a bias and a residual, equals the definition.
#[test]
fn forward_equals_the_definition() {
    for (seed, (b, c, c_out, h, w, pad)) in CASES.into_iter().enumerate() {
        let g = Tiles::new(b, c, h, w, pad).unwrap();
        let x = noise(b * c * h * w, seed as u64);
        let k = noise(c_out * c * 9, seed as u64 + 50);
        let bias = noise(c_out, seed as u64 + 7);
        let n = b * c_out * g.ho * g.wo;
        let res = noise(n, seed as u64 + 9);
        let mut want = definition(&x, &k, g, c_out);
        let hw = g.ho * g.wo;
        for (j, v) in want.iter_mut().enumerate() {
            *v += bias[(j / hw) % c_out] as f64 + res[j] as f64;
        }
        // F(2x2, 3x3) and F(4x4, 3x3), with the transformed kernel kept (so run three
        // times: the second call keeps it, the third finds it) and without.
        let kt = flex_tensor([c_out, c, 3, 3], k.clone());
        for (large, reuse) in [(false, false), (false, true), (true, false), (true, true)] {
            let (kernel, owner) = if reuse {
                (f32s(&kt), Some(&kt))
            } else {
                (&k[..], None)
            };
            for _ in 0..if reuse { 3 } else { 1 } {
                let mut y = vec![f32::NAN; n];
                let (bias, res) = (Some(&bias[..]), Some(&res[..]));
                forward_by(&x, kernel, bias, res, g, c_out, dst(&mut y), owner, large);
                let case = (b, c, c_out, h, w, pad);
                let what = format!("forward {case:?}, large {large}, reuse {reuse}");
                close(&y, &want, &what);
            }
        }
    }
}

/// Both gradients equal the definition's: `dx` and `dw` of `L = sum(y * r)` computed
/// from the definition's adjoint, in f64.
#[test]
fn gradients_equal_the_definition() {
    // Unit-vector probes of the definition: the 128-channel case would take minutes.
    let cases = CASES.into_iter().filter(|case| case.1 < 128);
    for (seed, (b, c, c_out, h, w, pad)) in cases.enumerate() {
        let g = Tiles::new(b, c, h, w, pad).unwrap();
        let x = noise(b * c * h * w, seed as u64 + 1);
        let k = noise(c_out * c * 9, seed as u64 + 2);
        let r = noise(b * c_out * g.ho * g.wo, seed as u64 + 3);
        // dL/dx[img, i, iy, ix] = sum_(o, ky, kx) r[img, o, iy + top - ky, ...] w[o, i, ky, kx]
        // and dL/dw[o, i, ky, kx] = sum r[img, o, oy, ox] x[img, i, oy + ky - top, ...]:
        // both linear, so probe them with unit vectors through the definition.
        let dot = |y: &[f64]| y.iter().zip(&r).map(|(a, &b)| a * b as f64).sum::<f64>();
        let dw = weight_grad(&x, &r, g, c_out);
        let mut want_dx = vec![0.0f64; x.len()];
        for (j, v) in want_dx.iter_mut().enumerate() {
            let mut e = vec![0.0f32; x.len()];
            e[j] = 1.0;
            *v = dot(&definition(&e, &k, g, c_out));
        }
        let mut want_dw = vec![0.0f64; k.len()];
        for (j, v) in want_dw.iter_mut().enumerate() {
            let mut e = vec![0.0f32; k.len()];
            e[j] = 1.0;
            *v = dot(&definition(&x, &e, g, c_out));
        }
        let case = (b, c, c_out, h, w, pad);
        for large in [false, true] {
            let mut dx = vec![f32::NAN; x.len()];
            input_grad_by(&r, &k, [b, c, h, w], c_out, pad, dst(&mut dx), Some(large));
            close(&dx, &want_dx, &format!("dx {case:?}, large {large}"));
        }
        close(&dw, &want_dw, &format!("dw {case:?}"));
        // Both ways of running the products: gemm (CPUs without AVX-512) and the
        // register-tiled kernel.
        for direct in [false, true]
            .into_iter()
            .filter(|&d| !d || avx512::available())
        {
            let dw = weight_grad_by(&x, &r, g, c_out, direct);
            close(&dw, &want_dw, &format!("dw {case:?}, direct {direct}"));
            let dw = f43::weight_grad(&x, &r, g, c_out, direct);
            close(
                &dw,
                &want_dw,
                &format!("dw by F(4x4, 3x3) {case:?}, direct {direct}"),
            );
        }
    }
}

/// 1, 2 and 3 threads give the same bits (several blocks of tile rows for F(2x2, 3x3), and
/// one block whose products share the threads; 36 products and 128 channels of transforms
/// for F(4x4, 3x3)).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (b, c, c_out, h, w) = (2, 128, 128, 20, 19);
    let g = Tiles::new(b, c, h, w, [1; 4]).unwrap();
    assert!(b * g.th > 2 * block_rows(g, c_out));
    let (x, k) = (noise(b * c * h * w, 1), noise(c_out * c * 9, 2));
    let r = noise(b * c_out * g.ho * g.wo, 3);
    let few = Tiles::new(1, c, 8, 8, [1; 4]).unwrap();
    assert!(few.t() <= FEW_TILES);
    let run = |threads| {
        with_threads(threads, || {
            let mut out = vec![weight_grad(&x, &r, g, c_out)];
            out.push(f43::weight_grad(&x, &r, g, c_out, false));
            let mut y = vec![0.0f32; c_out * 64];
            forward_by(&x, &k, None, None, few, c_out, dst(&mut y), None, false);
            out.push(y);
            for large in [false, true] {
                let mut y = vec![0.0f32; r.len()];
                forward_by(&x, &k, None, None, g, c_out, dst(&mut y), None, large);
                let mut dx = vec![0.0f32; x.len()];
                input_grad_by(
                    &r,
                    &k,
                    [b, c, h, w],
                    c_out,
                    [1; 4],
                    dst(&mut dx),
                    Some(large),
                );
                out.extend([y, dx]);
            }
            out
        })
    };
    let one = run(1);
    for threads in [2, 3] {
        assert!(run(threads) == one, "{threads} threads");
    }
}

#[test]
fn tilings_that_do_not_fit_are_refused() {
    assert!(Tiles::new(1, 1, 1, 1, [0; 4]).is_none());
    assert!(Tiles::new(1, 1, 5, 5, [3, 0, 0, 0]).is_none());
    assert!(Tiles::new(0, 1, 5, 5, [1; 4]).is_none());
    assert!(Tiles::new(1, 1, 2, 5, [0; 4]).is_none());
    assert!(Tiles::new(1, 1, 3, 3, [0; 4]).is_some());
}

/// At the CIFAR-10 U-Net's shapes (128-256 channels, batch 16 and 1), F(4x4, 3x3) agrees with
/// F(2x2, 3x3) within the tests' bound, and both are timed, with the transformed kernel kept
/// and transformed afresh (printed; `--nocapture`). Ignored: seconds in the debug profile.
/// `cargo test --release -p ddpm-unet --features gemm/x86-v4 --lib tilings_at_unet_shapes --
/// --ignored --nocapture` (x86-v4: the AVX-512 gemm kernels the `ddpm` crate's default
/// `avx512` feature turns on).
#[test]
#[ignore]
fn tilings_at_unet_shapes() {
    let shapes = [
        (16, 256, 16),
        (16, 256, 8),
        (16, 128, 32),
        (16, 256, 4),
        (1, 128, 32),
        (1, 256, 16),
    ];
    for (b, c, hw) in shapes {
        let g = Tiles::new(b, c, hw, hw, [1; 4]).unwrap();
        let x = noise(b * c * hw * hw, 1);
        let kt = flex_tensor([c, c, 3, 3], noise(c * c * 9, 2));
        let k = f32s(&kt);
        let mut ys = [vec![0.0f32; b * c * hw * hw], vec![0.0f32; b * c * hw * hw]];
        let mut best = [[f64::MAX; 2]; 2];
        for _round in 0..5 {
            for (kept, owner) in [(0, None), (1, Some(&kt))] {
                for (large, y) in ys.iter_mut().enumerate() {
                    forward_by(&x, k, None, None, g, c, dst(y), owner, large == 1);
                    let start = std::time::Instant::now();
                    for _ in 0..4 {
                        forward_by(&x, k, None, None, g, c, dst(y), owner, large == 1);
                    }
                    let ms = start.elapsed().as_secs_f64() * 250.0;
                    best[kept][large] = best[kept][large].min(ms);
                }
            }
        }
        let exact: Vec<f64> = ys[0].iter().map(|&v| f64::from(v)).collect();
        close(&ys[1], &exact, &format!("{b} x {c} x {hw} x {hw}"));
        println!(
            "{b} x {c} x {hw} x {hw}: F(2x2) {:.2} ms, F(4x4) {:.2} ms ({:.2}); kernels kept: \
             {:.2} ms, {:.2} ms ({:.2})",
            best[0][0],
            best[0][1],
            best[0][1] / best[0][0],
            best[1][0],
            best[1][1],
            best[1][1] / best[1][0]
        );
    }
}

/// F(4x4, 3x3)'s weight gradient agrees with F(2x2, 3x3)'s (held to the definition above) at
/// 128 channels, where its larger constants lose the most: within the forward pass's bound
/// (`2e-5` of the largest value), on gemm and on the AVX-512 kernel.
#[test]
fn large_tile_weight_gradient_agrees_at_128_channels() {
    for (b, c, c_out, hw) in [(2, 128, 96, 16), (1, 128, 128, 13)] {
        let g = Tiles::new(b, c, hw, hw, [1; 4]).unwrap();
        let x = noise(b * c * hw * hw, 11);
        let r = noise(b * c_out * g.ho * g.wo, 12);
        let small: Vec<f64> = weight_grad_by(&x, &r, g, c_out, false)
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        for direct in [false, true]
            .into_iter()
            .filter(|&d| !d || avx512::available())
        {
            let large = f43::weight_grad(&x, &r, g, c_out, direct);
            close(
                &large,
                &small,
                &format!("dw {b} x {c} x {hw}, direct {direct}"),
            );
        }
    }
}

/// The AVX2 register transforms of F(4x4, 3x3) (input and output, forward and weight
/// gradient) equal the definition wherever the CPU has AVX2 and FMA, AVX-512 hosts included
/// (which otherwise run the run-based transforms), and so do the run-based ones there.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_transforms_equal_the_definition() {
    if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
        eprintln!("no AVX2 and FMA here: only the run-based transforms run");
        return;
    }
    let cases = CASES.into_iter().filter(|case| case.1 < 128);
    for (seed, (b, c, c_out, h, w, pad)) in cases.enumerate() {
        let g = Tiles::new(b, c, h, w, pad).unwrap();
        let x = noise(b * c * h * w, seed as u64 + 20);
        let k = noise(c_out * c * 9, seed as u64 + 21);
        let bias = noise(c_out, seed as u64 + 22);
        let n = b * c_out * g.ho * g.wo;
        let (res, r) = (noise(n, seed as u64 + 23), noise(n, seed as u64 + 24));
        let hw = g.ho * g.wo;
        let mut want = definition(&x, &k, g, c_out);
        for (j, v) in want.iter_mut().enumerate() {
            *v += bias[(j / hw) % c_out] as f64 + res[j] as f64;
        }
        let dot = |y: &[f64]| y.iter().zip(&r).map(|(a, &b)| a * b as f64).sum::<f64>();
        let want_dw: Vec<f64> = (0..k.len())
            .map(|j| {
                let mut e = vec![0.0f32; k.len()];
                e[j] = 1.0;
                dot(&definition(&x, &e, g, c_out))
            })
            .collect();
        let case = (b, c, c_out, h, w, pad);
        for forced in [true, false] {
            super::avx2::FORCED.set(Some(forced));
            // Twice: the second call finds its thread's padding zeroed already.
            for call in 0..2 {
                let mut y = vec![f32::NAN; n];
                let (bias, res) = (Some(&bias[..]), Some(&res[..]));
                f43::forward(&x, &k, bias, res, g, c_out, dst(&mut y), None);
                let what = format!("forward {case:?}, AVX2 {forced}, call {call}");
                close(&y, &want, &what);
            }
            let dw = f43::weight_grad(&x, &r, g, c_out, false);
            close(&dw, &want_dw, &format!("dw {case:?}, AVX2 {forced}"));
            super::avx2::FORCED.set(None);
        }
    }
}

/// F(4x4, 3x3) in groups of images (uneven ones too: the last group smaller) equals the
/// definition, with a bias and a residual, on the AVX2 transforms (where the CPU has them)
/// and on the run-based ones; the groups the U-Net shapes get are those measured best.
#[test]
fn groups_of_the_batch_equal_the_definition() {
    let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    for (seed, (b, c, c_out, h, w, pad)) in
        [(5, 6, 7, 9, 11, [1; 4]), (4, 3, 5, 8, 8, [2, 0, 1, 2])]
            .into_iter()
            .enumerate()
    {
        let seed = seed as u64 * 10 + 60;
        let g = Tiles::new(b, c, h, w, pad).unwrap();
        let x = noise(b * c * h * w, seed);
        let k = noise(c_out * c * 9, seed + 1);
        let bias = noise(c_out, seed + 2);
        let n = b * c_out * g.ho * g.wo;
        let res = noise(n, seed + 3);
        let hw = g.ho * g.wo;
        let mut want = definition(&x, &k, g, c_out);
        for (j, v) in want.iter_mut().enumerate() {
            *v += bias[(j / hw) % c_out] as f64 + res[j] as f64;
        }
        for forced in [true, false].into_iter().filter(|&f| avx2 || !f) {
            super::avx2::FORCED.set(Some(forced));
            for per in [1, 2, 3, b] {
                let mut y = vec![f32::NAN; n];
                let (bias, res) = (Some(&bias[..]), Some(&res[..]));
                f43::GROUP_IMAGES.set(Some(per));
                f43::forward(&x, &k, bias, res, g, c_out, dst(&mut y), None);
                f43::GROUP_IMAGES.set(None);
                let what = format!(
                    "{:?} in groups of {per}, AVX2 {forced}",
                    (b, c, c_out, h, w)
                );
                close(&y, &want, &what);
            }
            super::avx2::FORCED.set(None);
        }
    }
    let groups = |b, c, hw| f43::group_images(Tiles::new(b, c, hw, hw, [1; 4]).unwrap(), c);
    assert_eq!(groups(64, 32, 28), 8, "MNIST 28x28");
    assert_eq!(groups(64, 64, 14), 13, "MNIST 14x14");
    assert_eq!(groups(64, 64, 7), 32, "MNIST 7x7");
    assert_eq!(groups(16, 128, 32), 2, "CIFAR-10 32x32");
    assert_eq!(groups(16, 256, 16), 8, "CIFAR-10 16x16");
    assert_eq!(groups(16, 256, 8), 16, "CIFAR-10 8x8");
    assert_eq!(groups(1, 256, 32), 1, "batch 1");
}

/// F(4x4, 3x3) over the whole batch against the same batch in groups of 2-16x fewer images
/// (each group's transformed tiles and products a 2-16x smaller working set, 1.1-18 MiB), at the MNIST U-Net's 28x28 / 14x14 levels (batch 64) and the CIFAR-10 U-Net's 32x32
/// / 16x16 (batch 16), kernels kept: every grouping gives the same values within the tests'
/// bound, and each is timed, the groupings alternated within each of eight rounds (printed;
/// `--nocapture`). Ignored: a measurement. `cargo test --release -p ddpm-unet --lib
/// batch_in_groups_at_unet_shapes -- --ignored --nocapture`.
#[test]
#[ignore]
fn batch_in_groups_at_unet_shapes() {
    for (c, hw, full) in [(32, 28, 64), (64, 14, 64), (128, 32, 16), (256, 16, 16)] {
        let kt = flex_tensor([c, c, 3, 3], noise(c * c * 9, 2));
        let k = f32s(&kt);
        let x = noise(full * c * hw * hw, 1);
        let per = c * hw * hw;
        let groups = [1usize, 2, 4, 8, 16];
        let mut ys = vec![vec![0.0f32; full * per]; groups.len()];
        let mut best = [f64::MAX; 5];
        for _round in 0..8 {
            for (i, &r) in groups.iter().enumerate() {
                let b = full / r;
                let g = Tiles::new(b, c, hw, hw, [1; 4]).unwrap();
                let start = std::time::Instant::now();
                for _ in 0..4 {
                    for (x, y) in x.chunks(b * per).zip(ys[i].chunks_mut(b * per)) {
                        forward_by(x, k, None, None, g, c, dst(y), Some(&kt), true);
                    }
                }
                best[i] = best[i].min(start.elapsed().as_secs_f64() * 250.0);
            }
        }
        let whole: Vec<f64> = ys[0].iter().map(|&v| f64::from(v)).collect();
        for (i, &r) in groups.iter().enumerate() {
            close(&ys[i], &whole, &format!("{c} x {hw} x {hw} in {r} groups"));
            let [th, tw] = f43::grid(Tiles::new(1, c, hw, hw, [1; 4]).unwrap());
            let mib = (36 * 2 * c * (full / r) * th * tw * 4) as f64 / (1 << 20) as f64;
            println!(
                "{full} x {c} x {hw} x {hw} in {r} groups of {} (V + M {mib:.1} MiB): {:.2} ms",
                full / r,
                best[i]
            );
        }
    }
}
