//! Fused CPU kernels for the U-Net's hot paths, as burn backend extensions: GroupNorm +
//! activation ([`group_norm_act`]), and, inside the U-Net, the convolutions (stride 1: a
//! register-blocked AVX-512 kernel on shifted views of the padded images, gemm per tap
//! elsewhere, Winograd for 3x3 layers of many channels; other strides: one GEMM per image on
//! its im2col), the skip connections'
//! concatenation (a parallel copy) and dropout (a hash mask, never stored).
//!
//! One module per op, named by the op (`group_norm`, `conv2d`, `cat_channels`, `dropout`):
//! its entry point runs on every backend and picks the fused kernel where it applies; the
//! op's `extension` submodule is the burn backend extension on flex, further submodules its
//! loops.
//!
//! [`group_norm_act`] is GroupNorm followed by SiLU (or nothing) in one op: one pass for the
//! statistics and one for the normalised, affine, activated output, multi-threaded over
//! (image, group) blocks and vectorised, with a backward pass that is one fused kernel too.
//! On the flex backend (feature `flex`, on by default) it runs these kernels; on every other
//! backend (wgpu, cuda, ndarray) and for dtypes other than f32 it runs the same maths as
//! ordinary burn ops, so models stay backend-agnostic. [`Kernels::Decomposed`] forces the
//! decomposed path everywhere, to compare the two.
//!
//! The fused kernels are deterministic: each (image, group) block is reduced by one thread in
//! a fixed order, so the same input gives bit-identical output whatever the thread count.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use ddpm_unet::kernels::{group_norm_act, Activation, Kernels};
//!
//! let device = Device::flex();
//! let x = Tensor::<4>::random([2, 8, 5, 3], Distribution::Normal(0.0, 1.0), &device);
//! let (gamma, beta) = (Tensor::ones([8], &device), Tensor::zeros([8], &device));
//! let fused = group_norm_act(x.clone(), gamma.clone(), beta.clone(), 4, 1e-6, Activation::Silu, Kernels::Fused)?;
//! let plain = group_norm_act(x, gamma, beta, 4, 1e-6, Activation::Silu, Kernels::Decomposed)?;
//! let diff: f32 = (fused - plain).abs().max().into_scalar();
//! assert!(diff < 1e-5);
//! # Ok::<(), ddpm_unet::kernels::KernelError>(())
//! ```

mod attention;
mod cat_channels;
mod conv2d;
mod dropout;
#[cfg(feature = "flex")]
mod flex_tensor;
mod group_norm;
pub mod profile;
#[cfg(feature = "flex")]
mod strided;
#[cfg(all(test, feature = "flex"))]
pub(crate) mod test_support;
#[cfg(feature = "flex")]
mod vectorize;

pub(crate) use attention::attention_planes;
pub(crate) use cat_channels::cat_channels;
pub use conv2d::conv2d;
pub(crate) use conv2d::{
    conv_forward, conv_forward_residual, norm_act_conv, norm_act_shifted_conv_residual,
    pixel_linear, upsample_conv_forward,
};
#[cfg(feature = "flex")]
pub use conv2d::{
    set_transformed_kernel_capacity, transformed_kernel_bytes, transformed_kernel_capacity,
};
pub(crate) use dropout::{dropout_forward, dropout_is_identity};
pub use group_norm::group_norm_act;
pub(crate) use group_norm::{norm_act, norm_act_shifted};

use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// Which implementation the U-Net's GroupNorms, convolutions and dropout use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kernels {
    /// The fused kernels where they exist (flex, f32), the decomposed ops elsewhere.
    #[default]
    Fused,
    /// Always the decomposed burn ops (the reference the fused kernels are tested against).
    Decomposed,
}

/// The activation applied after the normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// None: plain GroupNorm.
    Identity,
    /// SiLU, `z * sigmoid(z)`.
    Silu,
}

/// Why an input does not fit a kernel.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KernelError {
    /// `groups` is zero or does not divide the channel count.
    #[error(
        "GroupNorm with {groups} groups cannot normalise {channels} channels: choose a group \
         count that divides the channel count"
    )]
    Groups {
        /// Requested groups.
        groups: usize,
        /// Channels of the input.
        channels: usize,
    },
    /// `gamma` or `beta` does not have one value per channel.
    #[error("GroupNorm {name} has {len} values but the input has {channels} channels")]
    Affine {
        /// `gamma` or `beta`.
        name: &'static str,
        /// Its length.
        len: usize,
        /// Channels of the input.
        channels: usize,
    },
    /// The epsilon is not a positive finite number.
    #[error("GroupNorm epsilon must be positive and finite, got {0}")]
    Epsilon(f64),
    /// A convolution's input does not fit its kernel.
    #[error(
        "convolution of a [{}, {}, {}, {}] input: {why}",
        input[0], input[1], input[2], input[3]
    )]
    Conv {
        /// The input's shape.
        input: [usize; 4],
        /// What does not fit.
        why: String,
    },
}

/// Whether the fused kernels run for `x`: a flex device (with or without autodiff), f32
/// values, and a build with the `flex` feature.
pub fn fused_available<const D: usize>(x: &Tensor<D>) -> bool {
    #[cfg(feature = "flex")]
    {
        x.dtype() == DType::F32 && x.device().inner() == burn::tensor::Device::flex()
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (x, DType::F32);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::{Device, Distribution};

    /// The U-Net's fused ops (GroupNorm + SiLU, convolution, both backward passes) give
    /// bit-identical gradients whatever the number of threads.
    #[cfg(feature = "flex")]
    #[test]
    fn fused_gradients_do_not_depend_on_the_thread_count() {
        use burn::nn::conv::Conv2dConfig;
        let device = Device::flex().autodiff();
        let conv = Conv2dConfig::new([16, 32], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        let norm = crate::layers::group_norm(8, 32, 1e-6, &device);
        let x = Tensor::<4>::random([6, 16, 14, 14], Distribution::Normal(0.0, 1.0), &device);
        let weights = Tensor::<4>::random([6, 32, 14, 14], Distribution::Normal(0.0, 1.0), &device);
        let run = |threads: usize| {
            test_support::with_threads(threads, || {
                let x = x.clone().detach().require_grad();
                let y = conv_forward(&conv, x.clone(), Kernels::Fused);
                let y = norm_act(&norm, y, Activation::Silu, Kernels::Fused);
                let g = (y * weights.clone()).sum().backward();
                (
                    x.grad(&g).unwrap().into_data(),
                    conv.weight.val().grad(&g).unwrap().into_data(),
                    norm.gamma
                        .as_ref()
                        .unwrap()
                        .val()
                        .grad(&g)
                        .unwrap()
                        .into_data(),
                )
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            assert!(
                run(threads) == one,
                "{threads} threads differ from 1 thread (bitwise)"
            );
        }
    }
}
