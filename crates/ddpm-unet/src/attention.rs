//! The single-head self-attention block of the DDPM U-Net.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{GroupNorm, Linear};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

use crate::kernels::{Activation, Kernels, norm_act};
use crate::layers::{dense, group_norm};

/// Configuration of an [`AttnBlock`].
#[derive(Config, Debug)]
pub struct AttnBlockConfig {
    /// Channels.
    pub channels: usize,
    /// GroupNorm groups (must divide `channels`).
    #[config(default = 32)]
    pub num_groups: usize,
    /// Fused or decomposed GroupNorm (the same output either way).
    #[config(default = "Kernels::Fused")]
    pub kernels: Kernels,
}

impl AttnBlockConfig {
    /// Builds the block; the output projection starts at zero.
    pub fn init(&self, device: &Device) -> AttnBlock {
        let c = self.channels;
        AttnBlock {
            norm: group_norm(self.num_groups, c, device),
            q: dense(c, c, false, device),
            k: dense(c, c, false, device),
            v: dense(c, c, false, device),
            proj_out: dense(c, c, true, device),
            kernels: self.kernels,
        }
    }
}

/// Single-head self-attention over the `h * w` positions (`attn_block` in the original code):
/// `x + proj_out(softmax(q k^T / sqrt(c)) v)` with q, k, v per-pixel linear maps (1x1
/// convolutions) of `GroupNorm(x)`. `proj_out` starts at zero, so a fresh block is the
/// identity. Uses burn's fused [`attention`] kernel.
#[derive(Module, Debug)]
pub struct AttnBlock {
    /// GroupNorm before the projections.
    pub norm: GroupNorm,
    /// Query projection.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Output projection, initialised to zero.
    pub proj_out: Linear,
    /// Fused or decomposed GroupNorm.
    #[module(skip)]
    pub kernels: Kernels,
}

impl AttnBlock {
    /// # Shapes
    /// - `x`: `[batch, channels, h, w]`
    /// - output: `[batch, channels, h, w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, height, width] = x.dims();
        let n = height * width;
        let h = norm_act(&self.norm, x.clone(), Activation::Identity, self.kernels)
            .reshape([b, c, n])
            .swap_dims(1, 2); // [b, n, c]
        let to_heads = |t: Tensor<3>| t.reshape([b, 1, n, c]); // [b, 1, n, c]
        let q = to_heads(self.q.forward(h.clone()));
        let k = to_heads(self.k.forward(h.clone()));
        let v = to_heads(self.v.forward(h));
        // The default scale is 1 / sqrt(c), as in the paper's code.
        let ctx = attention(q, k, v, None, None, AttentionModuleOptions::default()); // [b, 1, n, c]
        let out = self.proj_out.forward(ctx.reshape([b, n, c])); // [b, n, c]
        x + out.swap_dims(1, 2).reshape([b, c, height, width])
    }
}
