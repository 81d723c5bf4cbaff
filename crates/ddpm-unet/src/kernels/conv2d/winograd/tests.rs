//! Winograd's convolution against the definition, in f64.

use super::*;
use crate::kernels::test_support::{noise, with_threads};

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

/// Shapes: odd and even sizes, a 1x1 and a 1x2 image, one-sided and zero padding, batch 1.
const CASES: [(usize, usize, usize, usize, usize, [usize; 4]); 7] = [
    (2, 3, 4, 6, 6, [1, 1, 1, 1]),
    (1, 5, 2, 7, 5, [1, 1, 1, 1]),
    (3, 2, 3, 1, 1, [1, 1, 1, 1]),
    (1, 4, 3, 1, 2, [1, 1, 1, 1]),
    (2, 3, 2, 5, 8, [0, 0, 0, 0]),
    (2, 2, 3, 6, 5, [2, 0, 1, 2]),
    (1, 16, 8, 9, 9, [1, 1, 1, 1]),
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
        let mut y = vec![f32::NAN; n];
        forward(&x, &k, Some(&bias), Some(&res), g, c_out, &mut y);
        let mut want = definition(&x, &k, g, c_out);
        let hw = g.ho * g.wo;
        for (j, v) in want.iter_mut().enumerate() {
            *v += bias[(j / hw) % c_out] as f64 + res[j] as f64;
        }
        close(
            &y,
            &want,
            &format!("forward {:?}", (b, c, c_out, h, w, pad)),
        );
    }
}

/// Both gradients equal the definition's: `dx` and `dw` of `L = sum(y * r)` computed
/// from the definition's adjoint, in f64.
#[test]
fn gradients_equal_the_definition() {
    for (seed, (b, c, c_out, h, w, pad)) in CASES.into_iter().enumerate() {
        let g = Tiles::new(b, c, h, w, pad).unwrap();
        let x = noise(b * c * h * w, seed as u64 + 1);
        let k = noise(c_out * c * 9, seed as u64 + 2);
        let r = noise(b * c_out * g.ho * g.wo, seed as u64 + 3);
        // dL/dx[img, i, iy, ix] = sum_(o, ky, kx) r[img, o, iy + top - ky, ...] w[o, i, ky, kx]
        // and dL/dw[o, i, ky, kx] = sum r[img, o, oy, ox] x[img, i, oy + ky - top, ...]:
        // both linear, so probe them with unit vectors through the definition.
        let dot = |y: &[f64]| y.iter().zip(&r).map(|(a, &b)| a * b as f64).sum::<f64>();
        let mut dx = vec![f32::NAN; x.len()];
        input_grad(&r, &k, [b, c, h, w], c_out, pad, &mut dx);
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
        close(&dx, &want_dx, &format!("dx {case:?}"));
        close(&dw, &want_dw, &format!("dw {case:?}"));
        // Both ways of running the products: gemm (CPUs without AVX-512) and the
        // register-tiled kernel.
        for direct in [false, true]
            .into_iter()
            .filter(|&d| !d || avx512::available())
        {
            let dw = weight_grad_by(&x, &r, g, c_out, direct);
            close(&dw, &want_dw, &format!("dw {case:?}, direct {direct}"));
        }
    }
}

/// 1, 2 and 3 threads give the same bits (several blocks of tile rows).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (b, c, c_out, h, w) = (2, 128, 128, 20, 19);
    let g = Tiles::new(b, c, h, w, [1; 4]).unwrap();
    assert!(b * g.th > 2 * block_rows(g, c_out));
    let (x, k) = (noise(b * c * h * w, 1), noise(c_out * c * 9, 2));
    let r = noise(b * c_out * g.ho * g.wo, 3);
    let run = |threads| {
        with_threads(threads, || {
            let mut y = vec![0.0f32; r.len()];
            forward(&x, &k, None, None, g, c_out, &mut y);
            let mut dx = vec![0.0f32; x.len()];
            input_grad(&r, &k, [b, c, h, w], c_out, [1; 4], &mut dx);
            (y, dx, weight_grad(&x, &r, g, c_out))
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
