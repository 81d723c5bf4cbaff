//! Layer constructors shared by the blocks: the original code's initialisation (Xavier-uniform
//! weights, zero biases) and GroupNorm epsilon.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::Device;

/// The original code's `variance_scaling(scale=1, mode='fan_avg', distribution='uniform')`.
pub(crate) const XAVIER: Initializer = Initializer::XavierUniform { gain: 1.0 };

/// Biases start at zero, as in the original code.
pub(crate) fn zero_bias(conv: Conv2d) -> Conv2d {
    Conv2d {
        bias: conv
            .bias
            .map(|b| b.map(|t| t.zeros_like()).set_require_grad(true)),
        ..conv
    }
}

/// A `k x k` convolution with 'same' padding, Xavier-uniform weights (or zeros) and zero bias.
pub(crate) fn conv(cin: usize, cout: usize, k: usize, zero: bool, device: &Device) -> Conv2d {
    let init = if zero { Initializer::Zeros } else { XAVIER };
    let pad = k / 2;
    zero_bias(
        Conv2dConfig::new([cin, cout], [k, k])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_initializer(init)
            .init(device),
    )
}

/// A dense layer with Xavier-uniform weights (or zeros) and zero bias.
pub(crate) fn dense(din: usize, dout: usize, zero: bool, device: &Device) -> Linear {
    let init = if zero { Initializer::Zeros } else { XAVIER };
    let l = LinearConfig::new(din, dout)
        .with_initializer(init)
        .init(device);
    Linear {
        bias: l
            .bias
            .map(|b| b.map(|t| t.zeros_like()).set_require_grad(true)),
        ..l
    }
}

/// GroupNorm with epsilon `eps` (the original code's 1e-6, `UNetConfig::norm_eps`).
pub(crate) fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(device)
}
