//! Convolutions with square kernels, any stride and padding, no groups or dilation (every
//! convolution of the U-Net) as a burn backend extension with its own flex kernels for the
//! forward pass and both gradients.
//!
//! Stride 1 (all but the downsample) runs [`shifted`](super::shifted): no im2col, `k^2`
//! shifted views of one padded copy of a group of images, multiplied by the AVX-512 kernel
//! of [`avx512`](super::avx512) (gemm per tap on other CPUs); the input gradient is the same
//! convolution of the padded output gradient with the flipped kernel, the weight gradient one
//! gemm per tap.
//!
//! Other strides use one GEMM per image and the image's transposed im2col `cols(x_b)`
//! (`[c_in k k, ho wo]`, built inside the image's task, so it stays in cache):
//!
//! - forward: `Y_b = W cols(x_b)` (`[c_out, c_in k k] x [c_in k k, ho wo]`), already the
//!   image's NCHW block. flex's own convolution converts to NHWC, rebuilds the kernel matrix
//!   on every call and multiplies 512-pixel tiles: ~1.5x slower here.
//! - weight gradient: `dW^T = sum_b cols(x_b) dY_b^T`, the per-image products summed in image
//!   order (deterministic). burn's generic one is a convolution of `x` with the output gradient
//!   as an `h x w` kernel (batch as channels): thousands of thin matrix products.
//! - input gradient: `dcols_b = W^T dY_b`, scattered back (col2im). burn's generic one is a
//!   transposed convolution, which flex runs as a direct loop.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
};
use burn::tensor::Tensor;
use rayon::prelude::*;
use std::ops::Range;

use super::pointwise;
use super::shifted::{self, Engine, Padded, Taps};
use super::winograd::{self, Tiles};
use crate::kernels::flex_tensor::{Shared, contiguous, f32s, flex_tensor, unwritten, written};
use crate::kernels::group_norm::slices::{self, Dims, Normalisation};
use crate::kernels::profile::{self, Kernel, flop};
use crate::kernels::strided::{mm, mm_raw, rows as strided_rows, transposed};
use crate::kernels::vectorize::vectorized;

/// Stride and padding of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    /// Stride in both directions.
    pub stride: usize,
    /// Padding `[top, left, bottom, right]`.
    pub pad: [usize; 4],
}

/// Convolution with a square `k x k` kernel, no groups or dilation.
///
/// Called only through [`forward`], which checks the shapes and the dtype (f32) first.
#[backend_extension(Flex, Autodiff)]
pub trait Conv2dGemmOps: Backend {
    /// `y = conv(x, weight) + bias`.
    ///
    /// # Shapes
    /// - `x`: `[b, c_in, h, w]`, `weight`: `[c_out, c_in, k, k]`, `bias`: `[c_out]`
    /// - output: `[b, c_out, (h + top + bottom - k) / s + 1, (w + left + right - k) / s + 1]`
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self>;

    /// `y = conv(x, weight) + bias + residual`: the same convolution with a tensor of the
    /// output's shape added as it is stored (a ResBlock's skip connection), saving the
    /// separate add's pass over memory. The residual's gradient is the output's.
    ///
    /// # Shapes
    /// - as [`conv2d_gemm`](Self::conv2d_gemm); `residual`: the output's shape
    fn conv2d_gemm_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self>;

    /// `dL/dx` (the shape of `x`) for the output gradient `grad`.
    fn conv2d_gemm_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self>;

    /// `dL/dweight` (`[c_out, c_in, k, k]`) for the output gradient `grad`.
    fn conv2d_gemm_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self>;

    /// `dL/dbias` (`[c_out]`) for the output gradient `grad` (`[b, c_out, h, w]`): each
    /// channel's sum. burn's generic one first copies the whole gradient transposed
    /// (`[c_out, b h w]`), about 4 % of a training step.
    fn conv2d_gemm_bias_grad(grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl Conv2dGemmOps for Flex {
    fn conv2d_gemm(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, spec: Spec) -> FlexTensor {
        forward_flex(x, weight, bias, None, None, spec)
    }

    fn conv2d_gemm_residual(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        residual: FlexTensor,
        spec: Spec,
    ) -> FlexTensor {
        forward_flex(x, weight, bias, Some(residual.to_contiguous()), None, spec)
    }

    fn conv2d_gemm_input_grad(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        spec: Spec,
    ) -> FlexTensor {
        let (weight, grad) = (weight.to_contiguous(), grad.to_contiguous());
        let [b, c_in, h, w] = dims4(&x);
        let [c_out, _, kernel, _] = dims4(&weight);
        let g = Geometry::of(&x, kernel, spec);
        let (hw, rows, gs) = (g.hw(), g.rows(), f32s(&grad));
        if winograd_tiles(&x, c_out, kernel, spec).is_some() {
            let mut dx = unwritten(b * c_in * h * w);
            winograd::input_grad(gs, f32s(&weight), [b, c_in, h, w], c_out, spec.pad, &mut dx);
            // SAFETY: the Winograd input gradient writes every value of `dx`.
            return flex_tensor([b, c_in, h, w], unsafe { written(dx) });
        }
        if spec.stride == 1 {
            let one = Padded::new(1, c_in, h, w, kernel, spec.pad);
            let n = one.group_for(b);
            let taps = Taps::flipped(f32s(&weight), c_out, c_in, kernel, Engine::best());
            let mut dx = unwritten(b * c_in * h * w);
            dx.par_chunks_mut(g.image() * n)
                .zip(gs.par_chunks(c_out * hw * n))
                .for_each(|(dst, dy)| {
                    let p = one.with_images(dst.len() / g.image());
                    shifted::input_grad(dy, &taps, p, spec.pad, dst);
                });
            // SAFETY: the chunks cover `dx`, and `input_grad` writes every value of its chunk.
            return flex_tensor([b, c_in, h, w], unsafe { written(dx) });
        }
        let ws = f32s(&weight); // [c_out, c_in k k]
        let mut dx = vec![0.0f32; b * c_in * h * w];
        if rows * c_out * hw == 0 {
            return flex_tensor([b, c_in, h, w], dx);
        }
        dx.par_chunks_mut(g.image())
            .zip(gs.par_chunks(c_out * hw))
            .for_each(|(dst, dy_img)| {
                // dcols [rows, hw] = W^T [rows, c_out] dY [c_out, hw], W read transposed.
                // Written whole by the product: no zero fill first.
                let mut dcols = unwritten(rows * hw);
                let work = flop(&[rows, c_out, hw]);
                profile::timed(Kernel::Im2col, work, || {
                    let (wt, dy) = (transposed(ws, rows), strided_rows(dy_img, hw));
                    // SAFETY: `dcols` holds the `rows hw` values written (row stride `hw`),
                    // this task's alone.
                    unsafe {
                        mm_raw(
                            Shared(dcols.as_mut_ptr().cast()),
                            hw,
                            wt,
                            dy,
                            [rows, hw, c_out],
                        )
                    };
                });
                // SAFETY: the product wrote every value of `dcols`.
                col2im_add(&unsafe { written(dcols) }, g, dst);
            });
        flex_tensor([b, c_in, h, w], dx)
    }

    fn conv2d_gemm_weight_grad(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        spec: Spec,
    ) -> FlexTensor {
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let [c_out, c_in, kernel, _] = dims4(&weight);
        let g = Geometry::of(&x, kernel, spec);
        let (hw, rows, xs, gs) = (g.hw(), g.rows(), f32s(&x), f32s(&grad));
        if let Some(tiles) = winograd_tiles(&x, c_out, kernel, spec) {
            let dw = winograd::weight_grad(xs, gs, tiles, c_out);
            return flex_tensor([c_out, c_in, kernel, kernel], dw);
        }
        if spec.stride == 1 {
            // Images in groups whose size depends on the shapes only, one partial sum per
            // group, the partials added in group order: the result does not depend on the
            // thread count.
            let one = Padded::new(1, c_in, g.h, g.w, kernel, spec.pad);
            let n = one.group_for(dims4(&x)[0]);
            let partials: Vec<Vec<f32>> = xs
                .par_chunks(g.image() * n)
                .zip(gs.par_chunks(c_out * hw * n))
                .map(|(x, dy)| {
                    let p = one.with_images(x.len() / g.image());
                    shifted::weight_grad(x, dy, p, c_out, Engine::best())
                })
                .collect();
            let dw = sum_in_order(&partials, c_out * rows);
            return flex_tensor([c_out, c_in, kernel, kernel], dw);
        }
        // Per image `dY_b [c_out, hw] x cols(x_b)^T [hw, rows]`, the columns read transposed;
        // the partial sums are added in image order, so the result does not depend on the
        // thread count.
        if rows * c_out * hw == 0 {
            return flex_tensor([c_out, c_in, kernel, kernel], vec![0.0; c_out * rows]);
        }
        let partials: Vec<Vec<f32>> = xs
            .par_chunks(g.image())
            .zip(gs.par_chunks(c_out * hw))
            .map(|(x_img, dy_img)| {
                let cols = cols_t(x_img, g); // [rows, hw]
                // Written whole by the product: no zero fill first.
                let mut dw = unwritten(c_out * rows);
                let work = flop(&[rows, c_out, hw]);
                profile::timed(Kernel::Im2col, work, || {
                    let (dy, ct) = (strided_rows(dy_img, hw), transposed(&cols, hw));
                    // SAFETY: `dw` holds the `c_out rows` values written (row stride `rows`),
                    // this task's alone.
                    unsafe {
                        mm_raw(
                            Shared(dw.as_mut_ptr().cast()),
                            rows,
                            dy,
                            ct,
                            [c_out, rows, hw],
                        )
                    };
                });
                // SAFETY: the product wrote every value of `dw`.
                unsafe { written(dw) }
            })
            .collect();
        let dw = sum_in_order(&partials, c_out * rows); // [c_out, c_in k k]
        flex_tensor([c_out, c_in, kernel, kernel], dw)
    }

    fn conv2d_gemm_bias_grad(grad: FlexTensor) -> FlexTensor {
        let grad = grad.to_contiguous();
        let [b, c_out, h, w] = dims4(&grad);
        flex_tensor([c_out], bias_grad(f32s(&grad), [b, c_out, h * w]))
    }
}

/// Each channel's sum of `grad` (`[b, c_out, hw]`) in f64: the planes of one channel in
/// image order into [`BIAS_LANES`] partial sums (value `j` of each plane into lane `j %
/// BIAS_LANES`), added as a balanced tree at the end; one task per channel, so the bits do not
/// depend on the thread count. One running sum was a chain of dependent scalar additions:
/// 2-3 % of an MNIST training step (`perf`), where the lanes vectorise.
fn bias_grad(grad: &[f32], [b, c_out, hw]: [usize; 3]) -> Vec<f32> {
    (0..c_out)
        .into_par_iter()
        .map(|o| {
            vectorized(
                #[inline(always)]
                || {
                    let mut acc = [0.0f64; BIAS_LANES];
                    for img in 0..b {
                        let plane = &grad[(img * c_out + o) * hw..][..hw];
                        for part in plane.chunks(BIAS_LANES) {
                            for (a, &v) in acc.iter_mut().zip(part) {
                                *a += f64::from(v);
                            }
                        }
                    }
                    let mut width = BIAS_LANES;
                    while width > 1 {
                        width /= 2;
                        for i in 0..width {
                            acc[i] += acc[i + width];
                        }
                    }
                    acc[0] as f32
                },
            )
        })
        .collect()
}

/// Partial sums of [`bias_grad`]: four AVX-512 registers of f64.
const BIAS_LANES: usize = 32;

/// The element-wise sum of `partials` (each `len` values), added in their order: the same
/// bits whatever thread computed which partial.
fn sum_in_order(partials: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut sum = vec![0.0f32; len];
    for part in partials {
        sum.iter_mut().zip(part).for_each(|(a, p)| *a += p);
    }
    sum
}

/// A GroupNorm + activation that the convolution applies to its input first
/// ([`normed`](super::normed)): `act(norm(x + shift))`, `shift` (`[b, c_in]`) when given.
pub(super) struct NormInput {
    /// `[b, c_in]`, added to every pixel before the normalisation.
    pub shift: Option<FlexTensor>,
    /// `[c_in]`.
    pub gamma: FlexTensor,
    /// `[c_in]`.
    pub beta: FlexTensor,
    /// Groups (divides `c_in`).
    pub groups: usize,
    /// The variance's epsilon.
    pub eps: f32,
    /// SiLU after the normalisation (else none).
    pub silu: bool,
}

/// The flex forward pass, `residual` (contiguous, the output's shape) added when given, of
/// `norm`'s GroupNorm + activation of `x` when given: applied as the images are padded on the
/// direct path (the normalised tensor never stored), computed as a tensor first on the
/// others (the 1x1 gemm, Winograd, im2col).
pub(super) fn forward_flex(
    x: FlexTensor,
    weight: FlexTensor,
    bias: FlexTensor,
    residual: Option<FlexTensor>,
    norm: Option<NormInput>,
    spec: Spec,
) -> FlexTensor {
    // `contiguous` keeps a contiguous view in place (a phase of `upsampled`'s kernels).
    let (x, weight, bias) = (x.to_contiguous(), contiguous(weight), bias.to_contiguous());
    let [b, c_out, kernel] = [dims4(&x)[0], dims4(&weight)[0], dims4(&weight)[2]];
    let g = Geometry::of(&x, kernel, spec);
    let (hw, rows, bias) = (g.hw(), g.rows(), f32s(&bias));
    let res = residual.as_ref().map(f32s);
    let pointwise = kernel == 1 && spec.stride == 1 && spec.pad == [0; 4];
    let tiles = winograd_tiles(&x, c_out, kernel, spec);
    let direct = !pointwise && spec.stride == 1 && tiles.is_none();
    let norm = norm.map(|n| NormInput {
        shift: n.shift.map(contiguous),
        gamma: contiguous(n.gamma),
        beta: contiguous(n.beta),
        ..n
    });
    let normalisation = norm.as_ref().map(|n| {
        let d = Dims {
            n: b,
            c: g.c_in,
            hw: g.h * g.w,
            groups: n.groups,
        };
        let (shift, gamma, beta) = (n.shift.as_ref().map(f32s), f32s(&n.gamma), f32s(&n.beta));
        (d, shift, gamma, beta, n.eps, n.silu)
    });
    // On the direct path each task normalises its own images (statistics and copy in cache).
    let materialised = match normalisation {
        Some((d, shift, gamma, beta, eps, silu)) if !direct => {
            Some(slices::forward(f32s(&x), shift, gamma, beta, d, eps, silu))
        }
        _ => None,
    };
    let xs = materialised.as_deref().unwrap_or(f32s(&x));
    // 1x1 without padding: one gemm per block of output rows on the planes as they are.
    // Measured (`speed --model cifar10 --batch 16 --iters 5 --kernel-times on`, AMX host,
    // alternated): the shortcut projections at 78-79 % of sgemm against 54-71 % on the direct
    // kernel with its padded copy; sampling step 492-497 ms against 509-520, batch 1 65-70
    // against 76.
    if pointwise {
        let mut y = unwritten(b * c_out * hw);
        pointwise::forward(xs, f32s(&weight), bias, res, [b, g.c_in, c_out, hw], &mut y);
        // SAFETY: `pointwise::forward` writes every value of `y`.
        return flex_tensor([b, c_out, g.ho, g.wo], unsafe { written(y) });
    }
    if direct {
        let one = Padded::new(1, g.c_in, g.h, g.w, kernel, spec.pad);
        let n = one.group_for(b);
        let dims = [c_out, g.c_in, kernel];
        let taps = Taps::forward_kept(f32s(&weight), &weight, dims, Engine::best());
        let chunk = c_out * hw * n;
        let mut y = unwritten(b * c_out * hw);
        y.par_chunks_mut(chunk)
            .zip(xs.par_chunks(g.image() * n))
            .enumerate()
            .for_each(|(i, (dst, x))| {
                let p = one.with_images(x.len() / g.image());
                let res = res.map(|r| &r[i * chunk..i * chunk + dst.len()]);
                let norm = normalisation.map(|(d, shift, gamma, beta, eps, silu)| {
                    let images = x.len() / g.image();
                    let d = Dims { n: images, ..d };
                    let shift = shift.map(|s| &s[i * n * d.c..][..images * d.c]);
                    Normalisation::of(x, shift, gamma, beta, d, eps, silu)
                });
                shifted::forward(x, norm.as_ref(), &taps, bias, res, p, dst);
            });
        // SAFETY: the chunks cover `y`, and `shifted::forward` writes every value of its chunk.
        return flex_tensor([b, c_out, g.ho, g.wo], unsafe { written(y) });
    }
    if let Some(tiles) = tiles {
        let w = f32s(&weight);
        let mut y = unwritten(b * c_out * hw);
        winograd::forward(xs, w, Some(bias), res, tiles, c_out, &mut y, Some(&weight));
        // SAFETY: the Winograd forward pass writes every value of `y`.
        return flex_tensor([b, c_out, g.ho, g.wo], unsafe { written(y) });
    }
    let mut y = vec![0.0f32; b * c_out * hw];
    let ws = f32s(&weight); // [c_out, c_in k k]
    y.par_chunks_mut(c_out * hw)
        .zip(xs.par_chunks(g.image()))
        .for_each(|(dst, x_img)| {
            let cols = cols_t(x_img, g); // [rows, hw]
            let work = flop(&[rows, c_out, hw]);
            if rows * c_out * hw > 0 {
                profile::timed(Kernel::Im2col, work, || {
                    let (w2, cs) = (strided_rows(ws, rows), strided_rows(&cols, hw));
                    mm(dst, w2, cs, [c_out, hw, rows]);
                });
            }
            for (plane, &bc) in dst.chunks_mut(hw).zip(bias) {
                plane.iter_mut().for_each(|v| *v += bc);
            }
        });
    if let Some(res) = res {
        y.par_iter_mut().zip(res).for_each(|(v, r)| *v += r);
    }
    flex_tensor([b, c_out, g.ho, g.wo], y)
}

/// The Winograd tiling of `x` for a 3x3 stride-1 convolution under `spec` (padding at most
/// 2 on each side) with at least [`winograd_channels`] input and output channels; `None` for
/// every other convolution, which runs [`shifted`].
fn winograd_tiles(x: &FlexTensor, c_out: usize, kernel: usize, spec: Spec) -> Option<Tiles> {
    winograd_tiles_of(dims4(x), c_out, kernel, spec)
}

/// [`winograd_tiles`] for an input of shape `[b, c, h, w]`.
pub(super) fn winograd_tiles_of(
    [b, c, h, w]: [usize; 4],
    c_out: usize,
    kernel: usize,
    spec: Spec,
) -> Option<Tiles> {
    let wide = c.min(c_out) >= winograd_channels();
    if kernel != 3 || spec.stride != 1 || !wide {
        return None;
    }
    Tiles::new(b, c, h, w, spec.pad)
}

/// The fewest channels (input and output) for which a 3x3 layer runs Winograd: 128 where
/// the direct kernel runs ([`Engine::Direct`], AVX-512), [`WINOGRAD_CHANNELS_GEMM`] where the
/// other convolutions run as one gemm per tap ([`Engine::Gemm`]). A function of the CPU only.
fn winograd_channels() -> usize {
    match Engine::best() {
        Engine::Direct => WINOGRAD_CHANNELS,
        Engine::Gemm => WINOGRAD_CHANNELS_GEMM,
    }
}

/// [`winograd_channels`] on AVX-512 CPUs. Measured (`examples/speed`, 2-core AVX-512): the
/// CIFAR-10 U-Net's layers (128-256 channels) gain 20 % over the direct kernel in a whole
/// training or sampling step; the MNIST U-Net's (32-64 channels, 28x28 to 7x7) lose 35-40 %,
/// the transforms costing more than the products save.
const WINOGRAD_CHANNELS: usize = 128;

/// [`winograd_channels`] on CPUs without AVX-512, whose 3x3 layers otherwise run nine gemm
/// calls. Measured (`examples/speed --model mnist --batch 64`, 2-core AMD EPYC with AVX2,
/// alternated, fastest steps): from 32 channels the MNIST U-Net's training step takes
/// 1275-1394 ms against 1760-1917 from 128, its sampling step 371-411 ms against 548-579
/// (from 64: 1429-1544 and 439-461).
const WINOGRAD_CHANNELS_GEMM: usize = 32;

/// Sizes of one convolution.
#[derive(Clone, Copy)]
struct Geometry {
    c_in: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    kernel: usize,
    spec: Spec,
}

impl Geometry {
    /// The sizes for input `x` (`[b, c_in, h, w]`) and a `kernel x kernel` kernel.
    fn of(x: &FlexTensor, kernel: usize, spec: Spec) -> Self {
        let [_, c_in, h, w] = dims4(x);
        let [top, left, bottom, right] = spec.pad;
        let ho = (h + top + bottom - kernel) / spec.stride + 1;
        let wo = (w + left + right - kernel) / spec.stride + 1;
        Self {
            c_in,
            h,
            w,
            ho,
            wo,
            kernel,
            spec,
        }
    }

    /// Rows of the transposed im2col matrix, `c_in k k`.
    fn rows(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }

    /// Output pixels per image.
    fn hw(&self) -> usize {
        self.ho * self.wo
    }

    /// Input values per image.
    fn image(&self) -> usize {
        self.c_in * self.h * self.w
    }

    /// Calls `f(row, oy, ci, iy, ox_lo..ox_hi, ix_lo)` for every im2col row `(ci, ky, kx)` and
    /// output row `oy`, in that (row-major) order. `iy = oy s + ky - top` is `None` when it
    /// falls outside the image (or no column does); output columns `ox_lo..ox_hi` read input
    /// columns `ix_lo, ix_lo + s, ...`, the others are padding.
    fn segments(&self, mut f: impl FnMut(usize, usize, usize, Option<usize>, Range<usize>, usize)) {
        let (k, s) = (self.kernel, self.spec.stride);
        let [top, left, _, _] = self.spec.pad;
        for r in 0..self.rows() {
            let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
            // Input column ox s + kx - left must lie in 0..w.
            let ox_lo = left.saturating_sub(kx).div_ceil(s);
            let ox_hi = match (self.w + left).checked_sub(kx + 1) {
                Some(last) => (last / s + 1).min(self.wo),
                None => 0,
            };
            let ix_lo = ox_lo * s + kx - left; // >= 0 by the choice of ox_lo
            for oy in 0..self.ho {
                let iy = (oy * s + ky).checked_sub(top).filter(|&iy| iy < self.h);
                let iy = iy.filter(|_| ox_lo < ox_hi);
                f(r, oy, ci, iy, ox_lo..ox_hi.max(ox_lo), ix_lo);
            }
        }
    }
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.shape();
    [s[0], s[1], s[2], s[3]]
}

/// The transposed im2col matrix `[c_in k k, ho wo]` of one image `[c_in, h, w]`: entry
/// `((ci, ky, kx), (oy, ox))` is `x[ci, oy s + ky - top, ox s + kx - left]`, zero outside
/// the image.
fn cols_t(x: &[f32], g: Geometry) -> Vec<f32> {
    let (hw, s) = (g.hw(), g.spec.stride);
    if g.kernel == 1 && s == 1 && g.spec.pad == [0; 4] {
        return x.to_vec(); // a plain 1x1 convolution's im2col is the input itself
    }
    // Appended in matrix order, so nothing is written twice (no zero fill first).
    let mut cols = Vec::with_capacity(g.rows() * hw);
    g.segments(|_, _, ci, iy, oxs, ix_lo| match iy {
        Some(iy) => {
            let src = &x[(ci * g.h + iy) * g.w..][..g.w];
            cols.resize(cols.len() + oxs.start, 0.0);
            if s == 1 {
                cols.extend_from_slice(&src[ix_lo..ix_lo + oxs.len()]);
            } else {
                cols.extend((0..oxs.len()).map(|j| src[ix_lo + j * s]));
            }
            cols.resize(cols.len() + g.wo - oxs.end, 0.0);
        }
        None => cols.resize(cols.len() + g.wo, 0.0),
    });
    cols
}

/// The adjoint of [`cols_t`]: adds every entry of `dcols` (`[c_in k k, ho wo]`) to the input
/// position it was read from, in `dx` (`[c_in, h, w]`, one image).
fn col2im_add(dcols: &[f32], g: Geometry, dx: &mut [f32]) {
    let (hw, s) = (g.hw(), g.spec.stride);
    g.segments(|r, oy, ci, iy, oxs, ix_lo| {
        let Some(iy) = iy else { return };
        let src = &dcols[r * hw + oy * g.wo..][..g.wo];
        let dst = &mut dx[(ci * g.h + iy) * g.w..][..g.w];
        if s == 1 {
            let dst = &mut dst[ix_lo..ix_lo + oxs.len()];
            dst.iter_mut().zip(&src[oxs]).for_each(|(d, v)| *d += v);
        } else {
            for (j, ox) in oxs.enumerate() {
                dst[ix_lo + j * s] += src[ox];
            }
        }
    });
}

/// The backward node of [`Conv2dGemmOps::conv2d_gemm`].
#[derive(Debug)]
struct Conv2dGemmBackward;

impl<B: Conv2dGemmOps> Backward<B, 3> for Conv2dGemmBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, Spec);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let ids = ops.parents.map(|p| p.map(|node| node.id));
        register_conv_grads::<B>(ids, ops.state, grad, grads);
    }
}

/// Registers the gradients of a convolution's input, weight and bias (those that are tracked)
/// for the output gradient `grad`.
fn register_conv_grads<B: Conv2dGemmOps>(
    [id_x, id_w, id_b]: [Option<NodeId>; 3],
    (x, weight, spec): (FloatTensor<B>, FloatTensor<B>, Spec),
    grad: FloatTensor<B>,
    grads: &mut Gradients,
) {
    if let Some(id) = id_x {
        let dx = B::conv2d_gemm_input_grad(x.clone(), weight.clone(), grad.clone(), spec);
        grads.register::<B>(id, dx);
    }
    if let Some(id) = id_w {
        let dw = B::conv2d_gemm_weight_grad(x.clone(), weight, grad.clone(), spec);
        grads.register::<B>(id, dw);
    }
    if let Some(id) = id_b {
        grads.register::<B>(id, B::conv2d_gemm_bias_grad(grad));
    }
}

/// The backward node of [`Conv2dGemmOps::conv2d_gemm_residual`]: the convolution's, and the
/// output gradient itself for the residual.
#[derive(Debug)]
struct Conv2dResidualBackward;

impl<B: Conv2dGemmOps> Backward<B, 4> for Conv2dResidualBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, Spec);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b, node_r] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_r {
            grads.register::<B>(node.id, grad.clone());
        }
        let ids = [node_x, node_w, node_b].map(|p| p.map(|node| node.id));
        register_conv_grads::<B>(ids, ops.state, grad, grads);
    }
}

impl<B: Conv2dGemmOps, C: CheckpointStrategy> Conv2dGemmOps for Autodiff<B, C> {
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self> {
        match Conv2dGemmBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight, bias) = (
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                );
                let state = (x.clone(), weight.clone(), spec);
                prep.finish(state, B::conv2d_gemm(x, weight, bias, spec))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_gemm(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                spec,
            )),
        }
    }

    fn conv2d_gemm_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self> {
        match Conv2dResidualBackward
            .prepare::<C>([x.node(), weight.node(), bias.node(), residual.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight, bias, residual) = (
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                    residual.into_primitive(),
                );
                let state = (x.clone(), weight.clone(), spec);
                prep.finish(
                    state,
                    B::conv2d_gemm_residual(x, weight, bias, residual, spec),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_gemm_residual(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                residual.into_primitive(),
                spec,
            )),
        }
    }

    /// Not differentiable again (no second derivatives): the result is a constant.
    fn conv2d_gemm_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self> {
        let (x, weight, grad) = (
            x.into_primitive(),
            weight.into_primitive(),
            grad.into_primitive(),
        );
        Self::from_inner(B::conv2d_gemm_input_grad(x, weight, grad, spec))
    }

    /// Not differentiable again (no second derivatives): the result is a constant.
    fn conv2d_gemm_bias_grad(grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::conv2d_gemm_bias_grad(grad.into_primitive()))
    }

    /// Not differentiable again (no second derivatives): the result is a constant.
    fn conv2d_gemm_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self> {
        let (x, weight, grad) = (
            x.into_primitive(),
            weight.into_primitive(),
            grad.into_primitive(),
        );
        Self::from_inner(B::conv2d_gemm_weight_grad(x, weight, grad, spec))
    }
}

/// [`forward`] with `residual` (the output's shape, checked by the caller) added.
pub(crate) fn forward_residual(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    residual: Tensor<4>,
    spec: Spec,
) -> Tensor<4> {
    let out = <Dispatch as Conv2dGemmOps>::conv2d_gemm_residual(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        residual.into_dispatch(),
        spec,
    );
    Tensor::from_dispatch(out)
}

/// Runs the extension through burn's dispatch. The caller guarantees a flex device (with or
/// without autodiff), f32 values, matching channels, a square kernel that fits the padded
/// input, and a stride of at least 1.
pub(crate) fn forward(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>, spec: Spec) -> Tensor<4> {
    let out = <Dispatch as Conv2dGemmOps>::conv2d_gemm(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        spec,
    );
    Tensor::from_dispatch(out)
}
