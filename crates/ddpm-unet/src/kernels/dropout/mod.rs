//! Dropout ([`dropout_forward`]): on flex (f32), while training, the counter-based hash mask
//! of [`extension`]; elsewhere burn's `Dropout`.

#[cfg(feature = "flex")]
mod extension;

use burn::nn::Dropout;
use burn::tensor::Tensor;

use super::Kernels;
#[cfg(feature = "flex")]
use super::fused_available;

/// `layer.forward(x)`; under [`Kernels::Fused`] on flex, while training, a dropout whose mask
/// is a counter-based hash of a seed (drawn from the device RNG, so runs stay reproducible)
/// and the element index: made in parallel, never stored, recomputed for the backward pass.
/// The same semantics as burn's: active only on an autodiff device with the layer in
/// training mode, kept values scaled by `1 / (1 - prob)`.
///
/// # Shapes
/// - `x`, output: any shape
pub(crate) fn dropout_forward<const D: usize>(
    layer: &Dropout,
    x: Tensor<D>,
    kernels: Kernels,
) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if kernels == Kernels::Fused
        && layer.training.is_enabled()
        && layer.prob > 0.0
        && layer.prob < 1.0
        && x.device().is_autodiff()
        && fused_available(&x)
    {
        let seed = draw_seed(&x.device());
        return extension::forward(x, layer.prob, seed);
    }
    let _ = kernels;
    layer.forward(x)
}

/// Whether `layer` leaves `x` as it is (as burn's: not in training mode, a device without
/// autodiff, or a probability of 0), so that the ops around it may be fused across it.
pub(crate) fn dropout_is_identity<const D: usize>(layer: &Dropout, x: &Tensor<D>) -> bool {
    !layer.training.is_enabled() || !x.device().is_autodiff() || layer.prob == 0.0
}

/// A 62-bit seed from the device's RNG (which the trainer reseeds at every step).
#[cfg(feature = "flex")]
fn draw_seed(device: &burn::tensor::Device) -> u64 {
    use burn::tensor::{Distribution, Int};
    let draws = Tensor::<1, Int>::random([2], Distribution::Uniform(0.0, 2_147_483_647.0), device);
    let v: Vec<i64> = draws.into_data().iter::<i64>().collect();
    ((v[0] as u64) << 31) ^ (v[1] as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn hash_dropout_keeps_the_right_share_scales_and_masks_its_gradient() {
        let device = Device::flex().autodiff();
        let layer = burn::nn::DropoutConfig::new(0.1).init();
        let n = 1 << 20;
        let x = Tensor::<2>::ones([1024, n / 1024], &device).require_grad();
        let y = dropout_forward(&layer, x.clone(), Kernels::Fused);
        let kept: f32 = y.clone().greater_elem(0.0).float().sum().into_scalar();
        // Binomial(n, 0.9): mean 0.9 n, sd sqrt(0.09 n) = 307; allow 5 sd.
        assert!(
            (kept - 0.9 * n as f32).abs() < 5.0 * 307.0,
            "kept {kept} of {n}"
        );
        let values: Vec<f32> = y.clone().into_data().iter::<f32>().collect();
        assert!(
            values
                .iter()
                .all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6)
        );
        // d sum(y) / dx is the mask scaled: equal to y itself for x = 1.
        let g = y.clone().sum().backward();
        let dx = x.grad(&g).unwrap();
        assert_eq!(dx.into_data(), y.clone().inner().into_data());
        // Off the autodiff device, or in a frozen layer, dropout is the identity.
        let plain = Tensor::<2>::ones([4, 4], &Device::flex());
        let out = dropout_forward(&layer, plain.clone(), Kernels::Fused);
        assert_eq!(out.into_data(), plain.into_data());
        // The mask is a function of (seed, index) only (the seed comes from the device RNG,
        // which other tests share, so it is passed directly here).
        let mask = |seed| extension::forward(x.clone(), 0.1, seed).inner().into_data();
        assert_eq!(mask(42), mask(42));
        assert_ne!(mask(42), mask(43));
    }
}
