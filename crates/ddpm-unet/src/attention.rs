//! The self-attention block of the DDPM U-Net: one head (the paper), or several of a given
//! width (diffusers' `attention_head_dim`).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{GroupNorm, Linear};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

use crate::kernels::{
    Activation, Kernels, attention_planes, fused_available, norm_act, pixel_linear,
};
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
/// identity. Under [`Kernels::Fused`] on flex it runs on the NCHW planes (one stacked 1x1
/// product for q, k and v, one op for the softmax and both products per head, the output
/// projection adding `x` as it stores); elsewhere burn's `Linear` and fused [`attention`].
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
        if self.kernels == Kernels::Fused
            && fused_available(&x)
            && let Some(y) = self.forward_channels_major(x.clone())
        {
            return y;
        }
        self.forward_positions_major(x)
    }

    /// The block on the NCHW planes as they are (under [`Kernels::Fused`] on flex): q, k and
    /// v as one 1x1 product of the stacked projections, each head's `softmax(q^T k /
    /// sqrt(d))` and context `v P^T` in one op on the `[d, n]` planes
    /// ([`attention_planes`]), and the output projection a 1x1 product that adds `x` as it
    /// stores: no transposed copies of the activations. `None` (then
    /// [`forward_positions_major`](Self::forward_positions_major)) when the shapes do not
    /// fit.
    fn forward_channels_major(&self, x: Tensor<4>) -> Option<Tensor<4>> {
        let [b, c, height, width] = x.dims();
        let heads = self.heads.max(1);
        let linears = [&self.q, &self.k, &self.v, &self.proj_out];
        let square = linears.iter().all(|l| l.weight.dims() == [c, c]);
        if !square || !c.is_multiple_of(heads) || x.dims().contains(&0) {
            return None;
        }
        let device = x.device();
        // Linear weights are [in, out]: their transposes are the 1x1 products' [out, in].
        let weight = |l: &Linear| l.weight.val().transpose();
        let bias = |l: &Linear| match &l.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([l.weight.dims()[1]], &device),
        };
        let (q, k, v) = (&self.q, &self.k, &self.v);
        let w = Tensor::cat(vec![weight(q), weight(k), weight(v)], 0); // [3c, c]
        let bqkv = Tensor::cat(vec![bias(q), bias(k), bias(v)], 0); // [3c]
        let h = norm_act(&self.norm, x.clone(), Activation::Identity, self.kernels);
        let qkv = pixel_linear(h, w, bqkv, None)?; // [b, 3c, h, w]
        let ctx = attention_planes(qkv.reshape([b, 3 * c, height * width]), heads)?; // [b, c, n]
        let ctx = ctx.reshape([b, c, height, width]);
        pixel_linear(ctx, weight(&self.proj_out), bias(&self.proj_out), Some(x))
    }

    /// The block on `[b, n, c]` rows: the projections as burn's `Linear`, burn's fused
    /// attention op (any backend, and [`Kernels::Decomposed`]).
    fn forward_positions_major(&self, x: Tensor<4>) -> Tensor<4> {
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

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::kernels::test_support::rel;
    use burn::module::Param;
    use burn::tensor::Distribution;

    /// The block on channel-major planes (`Kernels::Fused` on flex) computes what burn's
    /// `Linear` and fused `attention` compute (`Kernels::Decomposed`): the output and the
    /// gradients of the input and of every projection's weights and bias, with one head and
    /// with two, random (non-zero) output projections and biases.
    #[test]
    fn the_block_on_planes_equals_burns_attention_with_its_gradients() {
        let device = Device::flex().autodiff();
        device.seed(9);
        for (head_dim, b, hw) in [(None, 2, 4), (Some(8), 1, 3), (None, 3, 1)] {
            let cfg = AttnBlockConfig::new(16)
                .with_num_groups(4)
                .with_head_dim(head_dim);
            let mut block = cfg.init(&device);
            let normal = |dims: [usize; 2]| {
                Tensor::<2>::random(dims, Distribution::Normal(0.0, 0.3), &device)
            };
            let randomise = |l: &mut Linear| {
                l.weight = Param::from_tensor(normal([16, 16]).detach());
                let bias = normal([1, 16]).reshape([16]).detach();
                l.bias = Some(Param::from_tensor(bias));
            };
            for l in [
                &mut block.q,
                &mut block.k,
                &mut block.v,
                &mut block.proj_out,
            ] {
                randomise(l);
            }
            let x = Tensor::<4>::random([b, 16, hw, hw], Distribution::Normal(0.0, 1.0), &device);
            let weights = x.random_like(Distribution::Normal(0.0, 1.0));
            let run = |kernels| {
                let block = AttnBlock {
                    kernels,
                    ..block.clone()
                };
                let x = x.clone().detach().require_grad();
                let y = block.forward(x.clone());
                let g = (y.clone() * weights.clone()).sum().backward();
                let mut out = vec![y.inner().flatten(0, 3), x.grad(&g).unwrap().flatten(0, 3)];
                for l in [&block.q, &block.k, &block.v, &block.proj_out] {
                    out.push(l.weight.val().grad(&g).unwrap().flatten(0, 1));
                    out.push(l.bias.as_ref().unwrap().val().grad(&g).unwrap());
                }
                out
            };
            let (fused, reference) = (run(Kernels::Fused), run(Kernels::Decomposed));
            for (i, (a, r)) in fused.into_iter().zip(reference).enumerate() {
                let e = rel(a, r);
                assert!(
                    e < 1e-5,
                    "output {i} differs by {e} ({head_dim:?}, {b}, {hw})"
                );
            }
        }
    }
}
