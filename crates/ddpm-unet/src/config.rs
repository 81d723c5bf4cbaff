//! [`UNetConfig`]: the hyper-parameters of the U-Net, validated before anything is built.

use burn::config::Config;

use crate::error::UNetError;
use crate::resample::DownsamplePadding;

/// The most levels (`ch_mult.len()`) a U-Net may have (the paper's 256x256 models have 6).
pub const MAX_LEVELS: usize = 16;
/// The most residual blocks per level.
pub const MAX_RES_BLOCKS: usize = 64;
/// The most channels (and classes) any layer may have.
pub(crate) const MAX_CHANNELS: usize = 1 << 24;
/// The most parameters a U-Net may have (2^33, 32 GiB of f32 weights; the paper's largest has
/// 114 million).
pub const MAX_PARAMS: u64 = 1 << 33;

/// Hyper-parameters of the DDPM [`UNet`](crate::UNet) (Appendix B; `model` in the original code's
/// `diffusion_utils/unet.py`).
#[derive(Config, Debug, PartialEq)]
pub struct UNetConfig {
    /// Channels of the input images.
    pub in_channels: usize,
    /// Channels of the output (equal to `in_channels` when predicting eps).
    pub out_channels: usize,
    /// Base channel count `ch`; level `i` has `ch * ch_mult[i]` channels.
    pub ch: usize,
    /// Channel multiplier of each level; its length is the number of levels.
    #[config(default = "vec![1, 2, 2, 2]")]
    pub ch_mult: Vec<usize>,
    /// Residual blocks per level on the down path (the up path has one more).
    #[config(default = 2)]
    pub num_res_blocks: usize,
    /// Spatial resolutions (relative to `resolution`) at which self-attention follows each
    /// residual block.
    #[config(default = "vec![16]")]
    pub attn_resolutions: Vec<usize>,
    /// Dropout probability inside the residual blocks.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Resample with convolutions (`true`) or with pooling / plain nearest upsampling.
    #[config(default = true)]
    pub resamp_with_conv: bool,
    /// GroupNorm groups (32 in the paper).
    #[config(default = 32)]
    pub num_groups: usize,
    /// Image resolution that `attn_resolutions` refers to (32 for CIFAR10).
    #[config(default = 32)]
    pub resolution: usize,
    /// Class-conditional with this many classes: a learned class embedding (`num_classes + 1`
    /// rows, the last one the null class of classifier-free guidance) is added to the timestep
    /// embedding, as in the common implementations. `None`: unconditional, with exactly the
    /// parameters of the paper's model.
    #[config(default = "None")]
    pub num_classes: Option<usize>,
    /// GroupNorm epsilon: 1e-6, the paper's code (diffusers' `norm_eps`; PyTorch's default
    /// is 1e-5).
    #[config(default = 1e-6)]
    pub norm_eps: f64,
    /// Width of each attention head: `None`, one head over all channels, scaled by
    /// `1 / sqrt(channels)` (the paper); `Some(d)`, `channels / d` heads scaled by
    /// `1 / sqrt(d)` (diffusers' `attention_head_dim`).
    #[config(default = "None")]
    pub attention_head_dim: Option<usize>,
    /// Timestep embedding with the cosines first (diffusers' `flip_sin_to_cos`; the paper:
    /// false, sines first).
    #[config(default = false)]
    pub flip_sin_to_cos: bool,
    /// Timestep embedding frequencies `exp(-ln(10000) i / (ch / 2 - freq_shift))`
    /// (diffusers' `freq_shift`; the paper: 1).
    #[config(default = 1.0)]
    pub freq_shift: f64,
    /// Padding of the strided downsampling convolution (the paper: bottom and right, as
    /// TensorFlow's 'SAME'; diffusers' `downsample_padding: 1` pads every side).
    #[config(default = "DownsamplePadding::BottomRight")]
    pub downsample_padding: DownsamplePadding,
}

impl UNetConfig {
    /// The paper's CIFAR10 model: ch 128, ch_mult (1, 2, 2, 2), 2 residual blocks per level,
    /// attention at 16x16, dropout 0.1, 35.7M parameters (35,746,307 exactly).
    pub fn ddpm_cifar10() -> Self {
        Self::new(3, 3, 128)
    }

    /// A U-Net for 28x28x1 MNIST sized for CPUs: ch 32, ch_mult (1, 2, 2) (28, 14 and 7
    /// pixels), one residual block per level, attention at 7x7 and in the middle, 8 GroupNorm
    /// groups, dropout 0.1; 1,112,801 parameters and 0.38 GFLOP per 28x28 image
    /// ([`forward_flops`](Self::forward_flops)). On a 2-core x86 CPU with the flex backend and
    /// the fused kernels one forward pass of a batch of 64 takes about 0.3-0.4 s and a training
    /// step about 1.1-1.2 s (`cargo bench --bench unet`, `cargo run --release --example speed`).
    pub fn ddpm_mnist() -> Self {
        Self::new(1, 1, 32)
            .with_ch_mult(vec![1, 2, 2])
            .with_num_res_blocks(1)
            .with_attn_resolutions(vec![7])
            .with_num_groups(8)
            .with_resolution(28)
    }

    /// Number of levels (`ch_mult.len()`).
    pub fn levels(&self) -> usize {
        self.ch_mult.len()
    }

    /// The factor by which height and width must be divisible: `2^(levels - 1)` (saturated at
    /// `usize::MAX` for more levels than [`MAX_LEVELS`], which `validate` refuses).
    pub fn size_factor(&self) -> usize {
        1usize
            .checked_shl(self.levels().saturating_sub(1) as u32)
            .filter(|_| self.levels() <= MAX_LEVELS)
            .unwrap_or(usize::MAX)
    }

    /// The number of trainable parameters of the network this configuration builds, counted
    /// from the configuration alone (nothing is allocated), so that a configuration read from
    /// a file can be refused before it is built.
    ///
    /// # Errors
    /// As [`validate`](Self::validate), which it runs first: a structure beyond the bounds,
    /// sizes that overflow, or more than [`MAX_PARAMS`] parameters.
    pub fn num_params(&self) -> Result<u64, UNetError> {
        self.check_structure()?;
        self.count_params()
    }

    /// The structural bounds, checked before anything is counted or allocated.
    fn check_structure(&self) -> Result<(), UNetError> {
        let bad = |m: String| Err(UNetError::InvalidConfig(m));
        if self.levels() > MAX_LEVELS {
            return bad(format!(
                "{} levels (ch_mult {:?}): at most {MAX_LEVELS}",
                self.levels(),
                self.ch_mult
            ));
        }
        if self.num_res_blocks > MAX_RES_BLOCKS {
            return bad(format!(
                "num_res_blocks {} is more than {MAX_RES_BLOCKS}",
                self.num_res_blocks
            ));
        }
        if self.attn_resolutions.len() > MAX_LEVELS {
            return bad(format!(
                "{} attention resolutions: at most one per level ({MAX_LEVELS})",
                self.attn_resolutions.len()
            ));
        }
        Ok(())
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`UNetError::InvalidConfig`] for zero channels or blocks, an empty `ch_mult`, a dropout
    /// outside `[0, 1)`, an attention resolution that no level has or a `resolution` that
    /// cannot be halved at every level; [`UNetError::GroupsDoNotDivide`] when `num_groups`
    /// does not divide a level's channels.
    pub fn validate(&self) -> Result<(), UNetError> {
        self.check_structure()?;
        let bad = |m: String| Err(UNetError::InvalidConfig(m));
        if self.in_channels == 0 || self.out_channels == 0 || self.ch == 0 {
            return bad("in_channels, out_channels and ch must be at least 1".into());
        }
        if self.ch_mult.is_empty() || self.ch_mult.contains(&0) {
            return bad(format!(
                "ch_mult must be non-empty with entries >= 1, got {:?}",
                self.ch_mult
            ));
        }
        if self.num_res_blocks == 0 {
            return bad("num_res_blocks must be at least 1".into());
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return bad(format!("dropout must lie in [0, 1), got {}", self.dropout));
        }
        if self.num_groups == 0 {
            return bad("num_groups must be at least 1".into());
        }
        if self.num_classes == Some(0) {
            return bad(
                "num_classes must be at least 1 (or None for an unconditional model)".into(),
            );
        }
        for &mult in std::iter::once(&1).chain(&self.ch_mult) {
            let Some(channels) = self.ch.checked_mul(mult) else {
                return bad(format!("ch {} x ch_mult {mult} overflows", self.ch));
            };
            if !channels.is_multiple_of(self.num_groups) {
                return Err(UNetError::GroupsDoNotDivide {
                    groups: self.num_groups,
                    channels,
                    mult,
                });
            }
        }
        if self.resolution == 0 || !self.resolution.is_multiple_of(self.size_factor()) {
            return bad(format!(
                "resolution {} must be a positive multiple of {} for {} levels",
                self.resolution,
                self.size_factor(),
                self.levels()
            ));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad(format!(
                "norm_eps must be a positive number, got {}",
                self.norm_eps
            ));
        }
        if !self.freq_shift.is_finite() {
            return bad(format!(
                "freq_shift must be a finite number, got {}",
                self.freq_shift
            ));
        }
        if let Some(d) = self.attention_head_dim {
            let widths: Vec<usize> = (0..self.levels())
                .filter(|&i| self.attn_resolutions.contains(&(self.resolution >> i)))
                .map(|i| self.ch * self.ch_mult[i])
                .chain(self.ch_mult.last().map(|m| self.ch * m))
                .collect();
            if d == 0 || widths.iter().any(|w| !w.is_multiple_of(d)) {
                return bad(format!(
                    "attention_head_dim {d} must divide the channels of every attention layer \
                     {widths:?}"
                ));
            }
        }
        let level_res: Vec<usize> = (0..self.levels()).map(|i| self.resolution >> i).collect();
        for r in &self.attn_resolutions {
            if !level_res.contains(r) {
                return bad(format!(
                    "attention resolution {r} is not the resolution of any level {level_res:?}"
                ));
            }
        }
        self.count_params().map(|_| ())
    }
}
