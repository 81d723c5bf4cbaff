//! 1x1 convolutions of stride 1 without padding (the U-Net's shortcut projections): per
//! image, `y = W x + bias (+ residual)` is one matrix product, `[c_out, c_in]` by the image's
//! `[c_in, h w]` planes as they lie in memory. One gemm call per block of output rows reads
//! the input and writes the output in place: no padded copy of the input (which the
//! [`shifted`](super::shifted) path makes for every kernel size, a pass over up to 768
//! channels of 32x32 in the CIFAR-10 U-Net) and nothing to copy out.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::product::product;
use crate::kernels::profile::{self, Kernel, flop};

/// Output rows per task: an image's `c_out` rows are cut into blocks of this many, so that a
/// batch of one image still has work for several threads. A function of the shapes only:
/// each output value is one gemm's sum over `c_in`, whatever thread computes it.
const ROWS: usize = 64;

/// `y[img] = w x[img] + bias (+ residual[img])` for every image: `x` `[b, c_in, hw]`, `w`
/// `[c_out, c_in]`, `bias` `[c_out]`, `residual` and `y` `[b, c_out, hw]`. Every value of
/// `y` is written (it may start uninitialised).
///
/// # Panics
/// When a slice's length does not match the sizes.
pub(super) fn forward(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    [b, c_in, c_out, hw]: [usize; 4],
    y: &mut [MaybeUninit<f32>],
) {
    assert_eq!(x.len(), b * c_in * hw, "1x1 convolution: input size");
    assert_eq!(w.len(), c_out * c_in, "1x1 convolution: weight size");
    assert_eq!(bias.len(), c_out, "1x1 convolution: bias size");
    assert_eq!(y.len(), b * c_out * hw, "1x1 convolution: output size");
    assert!(
        residual.is_none_or(|r| r.len() == y.len()),
        "1x1 convolution: residual size"
    );
    if y.is_empty() {
        return;
    }
    y.par_chunks_mut(c_out * hw)
        .enumerate()
        .for_each(|(img, y_img)| {
            let x_img = &x[img * c_in * hw..][..c_in * hw];
            y_img
                .par_chunks_mut(ROWS * hw)
                .enumerate()
                .for_each(|(blk, dst)| {
                    let (o0, rows) = (blk * ROWS, dst.len() / hw);
                    let at = (img * c_out + o0) * hw;
                    // The bias (and the residual) first; the product is added to them.
                    for (r, row) in dst.chunks_exact_mut(hw).enumerate() {
                        let bc = bias[o0 + r];
                        match residual {
                            Some(res) => {
                                let res = &res[at + r * hw..][..hw];
                                row.iter_mut().zip(res).for_each(|(d, &v)| {
                                    d.write(bc + v);
                                });
                            }
                            None => row.iter_mut().for_each(|d| {
                                d.write(bc);
                            }),
                        }
                    }
                    profile::timed(Kernel::GemmTaps, flop(&[c_in, rows, hw]), || {
                        // SAFETY: `dst` holds `rows hw` values, all written above, row-major
                        // with row stride `hw`; `w` from row `o0` holds `rows c_in` values
                        // (row stride `c_in`), `x_img` `c_in hw` (row stride `hw`); `dst`
                        // is this task's alone and aliases neither.
                        unsafe {
                            product(
                                dst.as_mut_ptr().cast::<f32>(),
                                w[o0 * c_in..].as_ptr(),
                                x_img.as_ptr(),
                                [rows, c_in, hw],
                                true,
                            );
                        }
                    });
                });
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flex_tensor::{unwritten, written};

    /// Every output equals the definition in f64 (bias and residual added): batches of one
    /// and three, output channels below, at and past a block of [`ROWS`], one input channel,
    /// a single pixel.
    #[test]
    fn equals_the_definition() {
        for (b, c_in, c_out, hw, with_res) in [
            (1, 3, 5, 7, false),
            (3, 16, 64, 20, true),
            (2, 1, 70, 9, true),
            (1, 40, 129, 1, false),
            (2, 7, 3, 33, true),
        ] {
            let val = |i: usize, s: f32| ((i as f32 * 0.37 + s).sin()) * 0.5;
            let x: Vec<f32> = (0..b * c_in * hw).map(|i| val(i, 0.1)).collect();
            let w: Vec<f32> = (0..c_out * c_in).map(|i| val(i, 0.7)).collect();
            let bias: Vec<f32> = (0..c_out).map(|i| val(i, 1.3)).collect();
            let res: Vec<f32> = (0..b * c_out * hw).map(|i| val(i, 2.9)).collect();
            let residual = with_res.then_some(&res[..]);
            let mut y = unwritten(b * c_out * hw);
            forward(&x, &w, &bias, residual, [b, c_in, c_out, hw], &mut y);
            // SAFETY: `forward` writes every value.
            let y = unsafe { written(y) };
            for img in 0..b {
                for o in 0..c_out {
                    for p in 0..hw {
                        let mut want = f64::from(bias[o]);
                        for i in 0..c_in {
                            want += f64::from(w[o * c_in + i])
                                * f64::from(x[(img * c_in + i) * hw + p]);
                        }
                        let at = (img * c_out + o) * hw + p;
                        if with_res {
                            want += f64::from(res[at]);
                        }
                        let got = f64::from(y[at]);
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "b {b} c_in {c_in} c_out {c_out} hw {hw}: y[{img}, {o}, {p}] = {got}, want {want}"
                        );
                    }
                }
            }
        }
    }
}
