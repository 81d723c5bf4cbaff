//! A 3x3 convolution (padding 1) of the nearest-neighbour x2 upsampling of an image, as four
//! 2x2 convolutions of the image itself, one per output phase.
//!
//! Output pixel `(2i + a, 2j + b)` of `conv3x3(up(x))` sees a 3x3 window of `up(x)` that
//! covers only 2x2 pixels of `x`: rows `i - 1, i` for `a = 0` (weights row 0, and rows 1 + 2
//! summed), rows `i, i + 1` for `a = 1` (rows 0 + 1 summed, and row 2); the columns alike.
//! So phase `(a, b)` is a 2x2 convolution of `x` with the summed kernel `W_ab`, padded by
//! `1 - a` on top, `a` at the bottom, `1 - b` on the left and `b` on the right, and the four
//! phases interleaved are the output: 16 multiply-adds per input pixel and channel pair
//! instead of 36 (2.25 times fewer), and no upsampled copy. The values differ from the
//! upsample-then-convolve only by the rounding of the summed weights.

use burn::tensor::Tensor;

use super::extension::{self, Spec};
use super::phases;

/// `conv3x3(up(x)) + bias` with padding 1, `up` the nearest-neighbour x2 upsampling, as the
/// four phase convolutions of [`extension`] interleaved. The caller guarantees what
/// [`extension::forward`] needs (flex, f32, matching channels).
///
/// # Shapes
/// - `x`: `[b, c_in, h, w]`, `weight`: `[c_out, c_in, 3, 3]`, `bias`: `[c_out]`
/// - output: `[b, c_out, 2h, 2w]`
pub(super) fn forward(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    let [_, c_in, _, _] = x.dims();
    let c_out = weight.dims()[0];
    let kernels = phases::kernels(weight); // [4, c_out, c_in, 2, 2]
    let phase = |ab: usize| {
        let (a, b) = (ab / 2, ab % 2);
        let spec = Spec {
            stride: 1,
            pad: [1 - a, 1 - b, a, b],
        };
        let k = kernels
            .clone()
            .narrow(0, ab, 1)
            .reshape([c_out, c_in, 2, 2]);
        extension::forward(x.clone(), k, bias.clone(), spec) // [b, c_out, h, w]
    };
    phases::interleave([0, 1, 2, 3].map(phase)) // [b, c_out, 2h, 2w]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Kernels;
    use crate::kernels::conv2d::upsample_conv_forward;
    use crate::kernels::test_support::rel;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Distribution};

    /// The four phase convolutions interleaved equal the 3x3 convolution of the upsampled
    /// image (burn's interpolate and `Conv2d`), values and the gradients of the input, the
    /// weights and the bias: a batch of 1, a 1x1 image, non-square and odd sizes, one channel,
    /// and the MNIST U-Net's 64 channels.
    #[test]
    fn phase_convolutions_equal_the_convolution_of_the_upsampled_image() {
        let device = Device::flex().autodiff();
        device.seed(5);
        for (b, c_in, c_out, h, w) in [
            (2, 3, 4, 5, 7),
            (1, 1, 1, 1, 1),
            (3, 5, 2, 4, 1),
            (1, 64, 64, 7, 7),
        ] {
            let normal = |dims| Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let conv = Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(&device);
            let bias = conv.bias.as_ref().unwrap().val();
            let conv = burn::nn::conv::Conv2d {
                bias: Some(burn::module::Param::from_tensor((bias + 0.25).detach())),
                ..conv
            };
            let x = normal([b, c_in, h, w]);
            let weights = normal([b, c_out, 2 * h, 2 * w]);
            let run = |kernels| {
                let x = x.clone().detach().require_grad();
                let y = upsample_conv_forward(&conv, x.clone(), kernels);
                let g = (y.clone() * weights.clone()).sum().backward();
                let grad = |t: Tensor<4>| t.grad(&g).unwrap();
                (
                    y.inner(),
                    grad(x),
                    grad(conv.weight.val()),
                    conv.bias.as_ref().unwrap().val().grad(&g).unwrap(),
                )
            };
            let (y, dx, dw, db) = run(Kernels::Fused);
            let (y0, dx0, dw0, db0) = run(Kernels::Decomposed);
            let case = (b, c_in, c_out, h, w);
            let r = |a: Tensor<4>, b: Tensor<4>| rel(a.flatten(0, 3), b.flatten(0, 3));
            assert_eq!(y.dims(), [b, c_out, 2 * h, 2 * w], "{case:?}");
            assert!(r(y, y0) < 1e-5, "values {case:?}");
            assert!(r(dx, dx0) < 1e-5, "input gradient {case:?}");
            assert!(r(dw, dw0) < 1e-5, "weight gradient {case:?}");
            assert!(rel(db, db0) < 1e-5, "bias gradient {case:?}");
        }
    }
}
