//! Down- and upsampling between the U-Net's levels.

use burn::config::Config;
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use crate::kernels::{Kernels, conv_forward, upsample_conv_forward};
use crate::layers::{XAVIER, conv, zero_bias};

/// Where the strided downsampling convolution pads its input.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum DownsamplePadding {
    /// One row and column at the bottom and right: TensorFlow's 'SAME' at stride 2 on even
    /// sizes, the paper's code (diffusers' `downsample_padding: 0`, which pads the same way).
    BottomRight,
    /// One on every side (diffusers' `downsample_padding: 1`, its default).
    Symmetric,
}

/// Configuration of a [`Downsample`].
#[derive(Config, Debug)]
pub struct DownsampleConfig {
    /// Channels (unchanged).
    pub channels: usize,
    /// A strided 3x3 convolution (`true`) or 2x2 average pooling.
    #[config(default = true)]
    pub with_conv: bool,
    /// The convolution's padding.
    #[config(default = "DownsamplePadding::BottomRight")]
    pub padding: DownsamplePadding,
    /// Fused or burn's convolution (the same output either way).
    #[config(default = "Kernels::Fused")]
    pub kernels: Kernels,
}

impl DownsampleConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Downsample {
        let c = self.channels;
        if self.with_conv {
            // TensorFlow's 'SAME' padding at stride 2 on even sizes pads only bottom and right.
            let padding = match self.padding {
                DownsamplePadding::BottomRight => PaddingConfig2d::Explicit(0, 0, 1, 1),
                DownsamplePadding::Symmetric => PaddingConfig2d::Explicit(1, 1, 1, 1),
            };
            let conv = Conv2dConfig::new([c, c], [3, 3])
                .with_stride([2, 2])
                .with_padding(padding)
                .with_initializer(XAVIER)
                .init(device);
            Downsample {
                conv: Some(zero_bias(conv)),
                pool: None,
                kernels: self.kernels,
            }
        } else {
            Downsample {
                conv: None,
                pool: Some(AvgPool2dConfig::new([2, 2]).with_strides([2, 2]).init()),
                kernels: self.kernels,
            }
        }
    }
}

/// Halves the resolution: a stride-2 3x3 convolution or 2x2 average pooling.
#[derive(Module, Debug)]
pub struct Downsample {
    /// The strided convolution, when configured.
    pub conv: Option<Conv2d>,
    /// The pooling, otherwise.
    pub pool: Option<AvgPool2d>,
    /// Fused or burn's convolution.
    #[module(skip)]
    pub kernels: Kernels,
}

impl Downsample {
    /// # Shapes
    /// - `x`: `[batch, c, h, w]` with even `h`, `w`
    /// - output: `[batch, c, h / 2, w / 2]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match (&self.conv, &self.pool) {
            (Some(conv), _) => conv_forward(conv, x, self.kernels),
            (None, Some(pool)) => pool.forward(x),
            (None, None) => x,
        }
    }
}

/// Configuration of an [`Upsample`].
#[derive(Config, Debug)]
pub struct UpsampleConfig {
    /// Channels (unchanged).
    pub channels: usize,
    /// Follow the nearest-neighbour upsampling by a 3x3 convolution.
    #[config(default = true)]
    pub with_conv: bool,
    /// Fused or burn's convolution (the same output either way).
    #[config(default = "Kernels::Fused")]
    pub kernels: Kernels,
}

impl UpsampleConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Upsample {
        Upsample {
            conv: self
                .with_conv
                .then(|| conv(self.channels, self.channels, 3, false, device)),
            kernels: self.kernels,
        }
    }
}

/// Doubles the resolution: nearest-neighbour x2, then optionally a 3x3 convolution (under
/// [`Kernels::Fused`] on flex, where the convolution would run the direct kernel, as four 2x2
/// convolutions of the input, one per output phase: 2.25 times fewer multiply-adds, the same
/// values to rounding).
#[derive(Module, Debug)]
pub struct Upsample {
    /// The convolution after upsampling, when configured.
    pub conv: Option<Conv2d>,
    /// Fused or burn's convolution.
    #[module(skip)]
    pub kernels: Kernels,
}

impl Upsample {
    /// # Shapes
    /// - `x`: `[batch, c, h, w]`
    /// - output: `[batch, c, 2h, 2w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match &self.conv {
            Some(conv) => upsample_conv_forward(conv, x, self.kernels),
            None => {
                let [_, _, h, w] = x.dims();
                let options = InterpolateOptions::new(InterpolateMode::Nearest)
                    .with_output_size([2 * h, 2 * w]);
                interpolate(x, options) // [batch, c, 2h, 2w]
            }
        }
    }
}
