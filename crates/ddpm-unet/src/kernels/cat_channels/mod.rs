//! Concatenation along the channel axis ([`cat_channels`], the U-Net's skip connections): on
//! flex (f32) the parallel copy of [`extension`], elsewhere burn's `Tensor::cat`.

#[cfg(feature = "flex")]
mod extension;

use burn::tensor::Tensor;

use super::Kernels;
#[cfg(feature = "flex")]
use super::fused_available;

/// `Tensor::cat(vec![a, b], 1)`; under [`Kernels::Fused`] on flex, one parallel copy per
/// image (and the same for the gradient's split).
///
/// # Shapes
/// - `a`: `[batch, c_a, h, w]`, `b`: `[batch, c_b, h, w]`, output: `[batch, c_a + c_b, h, w]`
pub(crate) fn cat_channels(a: Tensor<4>, b: Tensor<4>, kernels: Kernels) -> Tensor<4> {
    #[cfg(feature = "flex")]
    {
        let ([n, ca, h, w], [nb, cb, hb, wb]) = (a.dims(), b.dims());
        if kernels == Kernels::Fused
            && fused_available(&a)
            && fused_available(&b)
            && (n, h, w) == (nb, hb, wb)
            && n * ca * cb * h * w > 0
        {
            return extension::forward(a, b);
        }
    }
    let _ = kernels;
    Tensor::cat(vec![a, b], 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// The fused concatenation is exact: the same values as burn's `cat`, and gradients that
    /// are the output gradient's channel slices, on a batch of 1, a 1x1 image, one channel
    /// on either side, and non-square sizes.
    #[test]
    fn fused_concatenation_equals_burns_cat_and_splits_its_gradient() {
        let device = Device::flex().autodiff();
        device.seed(11);
        for (n, ca, cb, h, w) in [(2, 3, 5, 4, 7), (1, 1, 1, 1, 1), (3, 64, 32, 14, 14)] {
            let normal = |dims| Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let (a, b) = (normal([n, ca, h, w]), normal([n, cb, h, w]));
            let weights = normal([n, ca + cb, h, w]);
            let run = |kernels| {
                let (a, b) = (a.clone().require_grad(), b.clone().require_grad());
                let y = cat_channels(a.clone(), b.clone(), kernels);
                let g = (y.clone() * weights.clone()).sum().backward();
                let grads = (a.grad(&g).unwrap(), b.grad(&g).unwrap());
                (
                    y.inner().into_data(),
                    grads.0.into_data(),
                    grads.1.into_data(),
                )
            };
            let fused = run(Kernels::Fused);
            assert_eq!(fused, run(Kernels::Decomposed), "{:?}", (n, ca, cb, h, w));
            // d sum(cat(a, b) * weights) / da is the first ca channels of the weights.
            let wa = weights.clone().inner().narrow(1, 0, ca).into_data();
            let wb = weights.clone().inner().narrow(1, ca, cb).into_data();
            assert_eq!((fused.1, fused.2), (wa, wb));
        }
    }
}
