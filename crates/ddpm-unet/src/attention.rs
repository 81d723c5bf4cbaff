//! The self-attention block of the DDPM U-Net: one head (the paper), or several of a given
//! width (diffusers' `attention_head_dim`).

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
    /// GroupNorm epsilon (1e-6, the original code's).
    #[config(default = 1e-6)]
    pub norm_eps: f64,
    /// Width of each attention head: `None` for one head over all channels (the paper),
    /// `Some(d)` for `channels / d` heads, each scaled by `1 / sqrt(d)` (must divide
    /// `channels`).
    #[config(default = "None")]
    pub head_dim: Option<usize>,
}

impl AttnBlockConfig {
    /// Builds the block; the output projection starts at zero.
    pub fn init(&self, device: &Device) -> AttnBlock {
        let c = self.channels;
        AttnBlock {
            norm: group_norm(self.num_groups, c, self.norm_eps, device),
            q: dense(c, c, false, device),
            k: dense(c, c, false, device),
            v: dense(c, c, false, device),
            proj_out: dense(c, c, true, device),
            kernels: self.kernels,
            heads: self.head_dim.map_or(1, |d| (c / d.max(1)).max(1)),
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
    /// Attention heads (1 in the paper).
    #[module(skip)]
    pub heads: usize,
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
        let heads = self.heads.max(1);
        let d = c / heads;
        // [b, n, c] -> [b, heads, n, d]: head j holds channels j d .. (j + 1) d.
        let to_heads = |t: Tensor<3>| t.reshape([b, n, heads, d]).swap_dims(1, 2);
        let q = to_heads(self.q.forward(h.clone()));
        let k = to_heads(self.k.forward(h.clone()));
        let v = to_heads(self.v.forward(h));
        // The default scale is 1 / sqrt(d): 1 / sqrt(c) for one head, as in the paper's code.
        let ctx = attention(q, k, v, None, None, AttentionModuleOptions::default()); // [b, heads, n, d]
        let ctx = ctx.swap_dims(1, 2).reshape([b, n, c]); // [b, n, c]
        let out = self.proj_out.forward(ctx); // [b, n, c]
        x + out.swap_dims(1, 2).reshape([b, c, height, width])
    }
}
