//! Stride-1 convolutions with square kernels and symmetric padding (every convolution of the
//! U-Net except the stride-2 downsample) as a burn backend extension whose backward pass
//! replaces burn's generic one on flex:
//!
//! - weight gradient: burn computes it as a convolution of `x` with the output gradient as a
//!   `h x w` kernel (batch as channels), i.e. thousands of thin matrix products. Here it is
//!   one GEMM per batch chunk, `dW^T = cols(x) dY^T` (`[c_in k k, b h w] x [b h w, c_out]`),
//!   with the transposed im2col `cols(x)` built row by row from shifted image planes.
//! - input gradient: burn's generic transposed convolution runs flex's direct loop. For
//!   stride 1 it equals a plain convolution of `dY` with the kernel flipped in space and
//!   `c_in`/`c_out` swapped, padded by `k - 1 - p`, which runs on flex's im2col + GEMM path.
//! - forward: one GEMM per image, `W [c_out, c_in k k] cols(x_b)`, whose result is already
//!   the image's NCHW block (flex's own convolution converts to NHWC, rebuilds the kernel
//!   matrix on every call and multiplies 512-pixel tiles; this is ~1.5x faster here).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// Stride-1 convolution, square `k x k` kernel, `padding` on every side, no groups or
/// dilation.
///
/// Called only through [`forward`], which checks all of that and the dtype (f32) first.
#[backend_extension(Flex, Autodiff)]
pub trait Conv2dS1Ops: Backend {
    /// `y = conv(x, weight) + bias`.
    ///
    /// # Shapes
    /// - `x`: `[b, c_in, h, w]`, `weight`: `[c_out, c_in, k, k]`, `bias`: `[c_out]`
    /// - output: `[b, c_out, h + 2 p - k + 1, w + 2 p - k + 1]`
    fn conv2d_s1(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// `dL/dx` (`[b, c_in, h, w]`) for the output gradient `grad`.
    fn conv2d_s1_input_grad(
        grad: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// `dL/dweight` (`[c_out, c_in, k, k]`) for the output gradient `grad`.
    fn conv2d_s1_weight_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        kernel: usize,
        padding: usize,
    ) -> FloatTensor<Self>;
}

impl Conv2dS1Ops for Flex {
    fn conv2d_s1(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        padding: usize,
    ) -> FlexTensor {
        let bias = bias.to_contiguous();
        conv_s1(x, weight, Some(f32s(&bias)), padding)
    }

    fn conv2d_s1_input_grad(grad: FlexTensor, weight: FlexTensor, padding: usize) -> FlexTensor {
        // Stride 1: the transposed convolution is a convolution with the spatially flipped
        // kernel, in and out channels swapped, padded by k - 1 - p.
        let weight = weight.to_contiguous();
        let [c_out, c_in, k, _] = dims4(&weight);
        let w = f32s(&weight);
        let mut flipped = vec![0.0f32; w.len()];
        for co in 0..c_out {
            for ci in 0..c_in {
                let src = &w[(co * c_in + ci) * k * k..][..k * k];
                let dst = &mut flipped[(ci * c_out + co) * k * k..][..k * k];
                for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = *s;
                }
            }
        }
        let flipped = flex([c_in, c_out, k, k], flipped);
        conv_s1(grad, flipped, None, k - 1 - padding)
    }

    fn conv2d_s1_weight_grad(
        x: FlexTensor,
        grad: FlexTensor,
        kernel: usize,
        padding: usize,
    ) -> FlexTensor {
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let [b, c_out] = [dims4(&grad)[0], dims4(&grad)[1]];
        let geom = Geometry::of(&x, kernel, padding);
        let Geometry { c_in, h, w, .. } = geom;
        let (xs, gs) = (f32s(&x), f32s(&grad));
        let (rows, hw) = (geom.rows(), geom.hw());
        // One small GEMM per image, `cols(x_b) [rows, hw] x dY_b^T [hw, c_out]`, with the
        // image's im2col built inside the task (it stays in cache); the partial sums are then
        // added in image order, so the result does not depend on the thread count.
        let partials: Vec<Vec<f32>> = (0..b)
            .into_par_iter()
            .map(|img| {
                let cols = cols_t(&xs[img * c_in * h * w..][..c_in * h * w], geom);
                let dyt = grad_t(&gs[img * c_out * hw..][..c_out * hw], c_out, hw);
                let part = Self::float_matmul(flex([rows, hw], cols), flex([hw, c_out], dyt));
                f32s(&part.to_contiguous()).to_vec()
            })
            .collect();
        let mut dwt = vec![0.0f32; rows * c_out];
        for part in &partials {
            dwt.iter_mut().zip(part).for_each(|(a, p)| *a += p);
        }
        let dw = Self::float_swap_dims(flex([rows, c_out], dwt), 0, 1); // [c_out, c_in k k]
        Self::float_reshape(dw.to_contiguous(), [c_out, c_in, kernel, kernel].into())
    }
}

/// The forward convolution, one GEMM per image (in parallel over images):
/// `Y_b [c_out, ho wo] = W [c_out, c_in k k] cols(x_b) [c_in k k, ho wo]` (+ bias), which is
/// already the image's NCHW block; the image's im2col is built inside its task.
fn conv_s1(x: FlexTensor, weight: FlexTensor, bias: Option<&[f32]>, padding: usize) -> FlexTensor {
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let [b, c_out, kernel] = [dims4(&x)[0], dims4(&weight)[0], dims4(&weight)[2]];
    let geom = Geometry::of(&x, kernel, padding);
    let Geometry {
        c_in, h, w, ho, wo, ..
    } = geom;
    let (hw, rows) = (geom.hw(), geom.rows());
    let w2 = Flex::float_reshape(weight, [c_out, rows].into());
    let xs = f32s(&x);
    let mut y = vec![0.0f32; b * c_out * hw];
    y.par_chunks_mut(c_out * hw)
        .enumerate()
        .for_each(|(img, dst)| {
            let cols = cols_t(&xs[img * c_in * h * w..][..c_in * h * w], geom);
            let out = Flex::float_matmul(w2.clone(), flex([rows, hw], cols)); // [c_out, hw]
            dst.copy_from_slice(f32s(&out.to_contiguous()));
            if let Some(bias) = bias {
                for (plane, &bc) in dst.chunks_mut(hw).zip(bias) {
                    plane.iter_mut().for_each(|v| *v += bc);
                }
            }
        });
    flex([b, c_out, ho, wo], y)
}

/// Sizes of one weight-gradient computation.
#[derive(Clone, Copy)]
struct Geometry {
    c_in: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    kernel: usize,
    padding: usize,
}

impl Geometry {
    /// The sizes for input `x` (`[b, c_in, h, w]`), a `kernel x kernel` kernel and `padding`.
    fn of(x: &FlexTensor, kernel: usize, padding: usize) -> Self {
        let [_, c_in, h, w] = dims4(x);
        let (ho, wo) = (h + 2 * padding + 1 - kernel, w + 2 * padding + 1 - kernel);
        Self {
            c_in,
            h,
            w,
            ho,
            wo,
            kernel,
            padding,
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
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.shape();
    [s[0], s[1], s[2], s[3]]
}

fn f32s(t: &FlexTensor) -> &[f32] {
    // Invariant: `forward` routes only f32 tensors here and `to_contiguous` was applied.
    t.as_slice::<f32>()
        .expect("conv2d_s1: f32 contiguous input (checked by the caller)")
}

fn flex<const D: usize>(shape: [usize; D], values: Vec<f32>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// The transposed im2col matrix `[c_in k k, ho wo]` of one image `[c_in, h, w]`: row
/// `(ci, ky, kx)` holds the input plane `ci` shifted by `(ky - p, kx - p)` (zeros outside the
/// image).
fn cols_t(x: &[f32], g: Geometry) -> Vec<f32> {
    let (k, p) = (g.kernel, g.padding);
    if k == 1 && p == 0 {
        return x.to_vec(); // a 1x1 convolution's im2col is the input itself
    }
    let row_len = g.ho * g.wo;
    let mut cols = vec![0.0f32; g.c_in * k * k * row_len];
    // Sequential: the callers run one image per rayon task.
    for (r, row) in cols.chunks_mut(row_len).enumerate() {
        let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        let plane = &x[ci * g.h * g.w..][..g.h * g.w];
        let ox_lo = p.saturating_sub(kx);
        let ox_hi = (g.w + p).saturating_sub(kx).min(g.wo);
        if ox_lo >= ox_hi {
            continue; // the whole row is zero padding
        }
        let ix_lo = ox_lo + kx - p;
        for (oy, out_row) in row.chunks_mut(g.wo).enumerate() {
            // Input row oy + ky - p, columns ox + kx - p for ox in ox_lo..ox_hi.
            let Some(iy) = (oy + ky).checked_sub(p).filter(|&iy| iy < g.h) else {
                continue; // the zero padding
            };
            let src = &plane[iy * g.w + ix_lo..][..ox_hi - ox_lo];
            out_row[ox_lo..ox_hi].copy_from_slice(src);
        }
    }
    cols
}

/// One image's output gradient `[c_out, hw]` transposed to `[hw, c_out]`.
fn grad_t(g: &[f32], c_out: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; hw * c_out];
    for (c, plane) in g.chunks(hw).enumerate() {
        for (i, &v) in plane.iter().enumerate() {
            out[i * c_out + c] = v;
        }
    }
    out
}

/// The backward node of [`Conv2dS1Ops::conv2d_s1`].
#[derive(Debug)]
struct Conv2dS1Backward;

impl<B: Conv2dS1Ops> Backward<B, 3> for Conv2dS1Backward {
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, bias, padding) = ops.state;
        let kernel = weight.shape()[2];
        if let Some(node) = node_x {
            let dx = B::conv2d_s1_input_grad(grad.clone(), weight, padding);
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_w {
            let dw = B::conv2d_s1_weight_grad(x.clone(), grad.clone(), kernel, padding);
            grads.register::<B>(node.id, dw);
        }
        if let Some(node) = node_b {
            grads.register::<B>(node.id, B::conv2d_bias_backward(x, bias, grad));
        }
    }
}

impl<B: Conv2dS1Ops, C: CheckpointStrategy> Conv2dS1Ops for Autodiff<B, C> {
    fn conv2d_s1(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self> {
        match Conv2dS1Backward
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
                let state = (x.clone(), weight.clone(), bias.clone(), padding);
                prep.finish(state, B::conv2d_s1(x, weight, bias, padding))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_s1(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                padding,
            )),
        }
    }

    /// Not differentiable again (no second derivatives): the result is a constant.
    fn conv2d_s1_input_grad(
        grad: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::conv2d_s1_input_grad(
            grad.into_primitive(),
            weight.into_primitive(),
            padding,
        ))
    }

    /// Not differentiable again (no second derivatives): the result is a constant.
    fn conv2d_s1_weight_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        kernel: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::conv2d_s1_weight_grad(
            x.into_primitive(),
            grad.into_primitive(),
            kernel,
            padding,
        ))
    }
}

/// Runs the extension through burn's dispatch. The caller guarantees a flex device (with or
/// without autodiff), f32 values, matching channels, a square kernel no larger than the
/// padded input, `padding < kernel`.
pub(crate) fn forward(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    padding: usize,
) -> Tensor<4> {
    let out = <Dispatch as Conv2dS1Ops>::conv2d_s1(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        padding,
    );
    Tensor::from_dispatch(out)
}
