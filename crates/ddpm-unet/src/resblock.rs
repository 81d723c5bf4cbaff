//! The residual block of the DDPM U-Net.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, DropoutConfig, GroupNorm, Linear};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use crate::kernels::{
    Activation, Kernels, conv_forward, conv_forward_residual, dropout_forward, dropout_is_identity,
    norm_act_conv, norm_act_shifted, norm_act_shifted_conv_residual,
};
use crate::layers::{conv, dense, group_norm};

/// Configuration of a [`ResBlock`].
#[derive(Config, Debug)]
pub struct ResBlockConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Width of the timestep embedding.
    pub temb_dim: usize,
    /// GroupNorm groups (must divide both channel counts).
    #[config(default = 32)]
    pub num_groups: usize,
    /// Dropout probability before the second convolution.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// GroupNorm epsilon (1e-6, the original code's).
    #[config(default = 1e-6)]
    pub norm_eps: f64,
    /// Our fused kernels or burn's ops for GroupNorm + SiLU, the convolutions and dropout
    /// (the same output either way, to rounding).
    #[config(default = "Kernels::Fused")]
    pub kernels: Kernels,
}

impl ResBlockConfig {
    /// Builds the block. The caller validates `num_groups` and `dropout` (see
    /// [`UNetConfig::validate`](crate::UNetConfig::validate)).
    pub fn init(&self, device: &Device) -> ResBlock {
        let (cin, cout) = (self.in_channels, self.out_channels);
        ResBlock {
            norm1: group_norm(self.num_groups, cin, self.norm_eps, device),
            conv1: conv(cin, cout, 3, false, device),
            temb_proj: dense(self.temb_dim, cout, false, device),
            norm2: group_norm(self.num_groups, cout, self.norm_eps, device),
            dropout: DropoutConfig::new(self.dropout).init(),
            conv2: conv(cout, cout, 3, true, device),
            shortcut: (cin != cout).then(|| conv(cin, cout, 1, false, device)),
            kernels: self.kernels,
        }
    }
}

/// `x + conv2(dropout(silu(norm2(conv1(silu(norm1(x))) + dense(silu(temb))))))`, with a 1x1
/// convolution on the shortcut when the channel count changes (Appendix B; `resnet_block` in
/// the original code). `conv2` starts at zero, so a fresh block is the identity (or the
/// shortcut projection).
#[derive(Module, Debug)]
pub struct ResBlock {
    /// First GroupNorm.
    pub norm1: GroupNorm,
    /// First 3x3 convolution.
    pub conv1: Conv2d,
    /// Projection of the timestep embedding to one bias per channel.
    pub temb_proj: Linear,
    /// Second GroupNorm.
    pub norm2: GroupNorm,
    /// Dropout before the second convolution.
    pub dropout: Dropout,
    /// Second 3x3 convolution, initialised to zero.
    pub conv2: Conv2d,
    /// 1x1 convolution on the skip path when channels change.
    pub shortcut: Option<Conv2d>,
    /// Our fused kernels or burn's ops (GroupNorm + SiLU, convolutions, dropout).
    #[module(skip)]
    pub kernels: Kernels,
}

impl ResBlock {
    /// # Shapes
    /// - `x`: `[batch, in_channels, h, w]`
    /// - `temb`: `[batch, temb_dim]`
    /// - output: `[batch, out_channels, h, w]`
    pub fn forward(&self, x: Tensor<4>, temb: Tensor<2>) -> Tensor<4> {
        let k = self.kernels;
        // conv1(silu(norm1(x))), normalised as conv1 pads its input on flex without autodiff.
        let h = norm_act_conv(&self.norm1, x.clone(), Activation::Silu, &self.conv1, k); // [b, cout, h, w]
        let t = self.temb_proj.forward(silu(temb)); // [b, cout]
        let skip = match &self.shortcut {
            Some(proj) => conv_forward(proj, x, k),
            None => x,
        };
        if dropout_is_identity(&self.dropout, &h) {
            // conv2(silu(norm2(h + t))) + skip as one op (nothing between the norm and conv2).
            let (norm, conv) = (&self.norm2, &self.conv2);
            return norm_act_shifted_conv_residual(norm, h, t, Activation::Silu, conv, skip, k);
        }
        // norm2(h + t), the sum formed inside the norm's op on flex.
        let h = norm_act_shifted(&self.norm2, h, t, Activation::Silu, k);
        let h = dropout_forward(&self.dropout, h, k);
        conv_forward_residual(&self.conv2, h, skip, k) // [b, cout, h, w]
    }
}
