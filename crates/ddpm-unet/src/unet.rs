//! The [`UNet`] itself.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, EmbeddingConfig, GroupNorm};
use burn::tensor::{Device, Int, Tensor, TensorData};
use ddpm_core::{Condition, NoisePredictor, PredictorError};

use crate::attention::{AttnBlock, AttnBlockConfig};
use crate::config::UNetConfig;
use crate::embedding::{TimestepEmbedding, TimestepEmbeddingConfig};
use crate::error::UNetError;
use crate::kernels::{Activation, Kernels, conv_forward, norm_act_conv};
use crate::layers::{conv, group_norm};
use crate::resample::{Downsample, DownsampleConfig, Upsample, UpsampleConfig};
use crate::resblock::{ResBlock, ResBlockConfig};
use crate::topology::{Level, Topology};

/// One level of the down path.
#[derive(Module, Debug)]
pub struct DownLevel {
    /// `num_res_blocks` residual blocks.
    pub blocks: Vec<ResBlock>,
    /// One attention block after each residual block, or none.
    pub attns: Vec<AttnBlock>,
    /// Halving of the resolution, except at the last level.
    pub downsample: Option<Downsample>,
}

/// One level of the up path.
#[derive(Module, Debug)]
pub struct UpLevel {
    /// `num_res_blocks + 1` residual blocks on the concatenated skip connections.
    pub blocks: Vec<ResBlock>,
    /// One attention block after each residual block, or none.
    pub attns: Vec<AttnBlock>,
    /// Doubling of the resolution, except at the first level.
    pub upsample: Option<Upsample>,
}

/// The DDPM U-Net (Ho et al. 2020, Appendix B). Build it with [`UNetConfig::init`].
#[derive(Module, Debug)]
pub struct UNet {
    /// Timestep embedding MLP.
    pub temb: TimestepEmbedding,
    /// Class embedding added to the timestep embedding (`num_classes + 1` rows, the last the
    /// null class), for a class-conditional model.
    pub class_emb: Option<Embedding>,
    /// Input 3x3 convolution to `ch` channels.
    pub conv_in: Conv2d,
    /// Down path, from the full resolution to the lowest.
    pub down: Vec<DownLevel>,
    /// Middle: residual block.
    pub mid_block1: ResBlock,
    /// Middle: attention.
    pub mid_attn: AttnBlock,
    /// Middle: residual block.
    pub mid_block2: ResBlock,
    /// Up path, from the lowest resolution back to the full one.
    pub up: Vec<UpLevel>,
    /// Output GroupNorm.
    pub norm_out: GroupNorm,
    /// Output 3x3 convolution, initialised to zero.
    pub conv_out: Conv2d,
    /// Input channels.
    pub in_channels: usize,
    /// `2^(levels - 1)`.
    pub size_factor: usize,
    /// Our fused kernels or burn's ops (GroupNorm + SiLU, convolutions, dropout).
    #[module(skip)]
    pub kernels: Kernels,
    /// Classes of a class-conditional model.
    #[module(skip)]
    pub num_classes: Option<usize>,
}

impl UNet {
    /// Builds the network from a validated config, block by block as [`Topology`] lists them,
    /// with the fused kernels ([`with_kernels`](Self::with_kernels) switches them: an execution
    /// choice, not part of the model's description).
    pub(crate) fn build(c: &UNetConfig, device: &Device) -> Self {
        let temb_dim = 4 * c.ch;
        let res_block = |(cin, cout): (usize, usize)| {
            ResBlockConfig::new(cin, cout, temb_dim)
                .with_num_groups(c.num_groups)
                .with_dropout(c.dropout)
                .with_norm_eps(c.norm_eps)
                .with_kernels(Kernels::Fused)
                .init(device)
        };
        let attn = |channels: usize| {
            AttnBlockConfig::new(channels)
                .with_num_groups(c.num_groups)
                .with_norm_eps(c.norm_eps)
                .with_head_dim(c.attention_head_dim)
                .with_kernels(Kernels::Fused)
                .init(device)
        };
        let topology = Topology::of(c);
        // Blocks and attention in the order of the original code (the initialisers draw in it).
        let blocks_and_attns = |level: &Level| {
            let (mut blocks, mut attns) = (Vec::new(), Vec::new());
            for &(cin, cout) in &level.blocks {
                blocks.push(res_block((cin, cout)));
                if level.attention {
                    attns.push(attn(cout));
                }
            }
            (blocks, attns)
        };
        let mut down = Vec::new();
        for level in &topology.down {
            let (blocks, attns) = blocks_and_attns(level);
            let downsample = level.resample.map(|ch| {
                DownsampleConfig::new(ch)
                    .with_with_conv(c.resamp_with_conv)
                    .with_padding(c.downsample_padding)
                    .with_kernels(Kernels::Fused)
                    .init(device)
            });
            down.push(DownLevel {
                blocks,
                attns,
                downsample,
            });
        }
        let mid = topology.mid;
        let (mid_block1, mid_attn, mid_block2) =
            (res_block((mid, mid)), attn(mid), res_block((mid, mid)));
        let mut up = Vec::new();
        for level in &topology.up {
            let (blocks, attns) = blocks_and_attns(level);
            let upsample = level.resample.map(|ch| {
                UpsampleConfig::new(ch)
                    .with_with_conv(c.resamp_with_conv)
                    .with_kernels(Kernels::Fused)
                    .init(device)
            });
            up.push(UpLevel {
                blocks,
                attns,
                upsample,
            });
        }
        let temb = TimestepEmbeddingConfig::new(c.ch, temb_dim)
            .with_flip_sin_to_cos(c.flip_sin_to_cos)
            .with_freq_shift(c.freq_shift)
            .init(device);
        let class_emb = c
            .num_classes
            .map(|k| EmbeddingConfig::new(k + 1, temb_dim).init(device));
        Self {
            temb,
            class_emb,
            conv_in: conv(c.in_channels, c.ch, 3, false, device),
            down,
            mid_block1,
            mid_attn,
            mid_block2,
            up,
            norm_out: group_norm(c.num_groups, topology.out, c.norm_eps, device),
            conv_out: conv(topology.out, c.out_channels, 3, true, device),
            in_channels: c.in_channels,
            size_factor: c.size_factor(),
            kernels: Kernels::Fused,
            num_classes: c.num_classes,
        }
    }

    /// The same network with its fused kernels switched to `kernels` (every block); weights
    /// are untouched, and the output is the same to rounding either way.
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        for up in self.up.iter_mut().filter_map(|l| l.upsample.as_mut()) {
            up.kernels = kernels;
        }
        for down in self.down.iter_mut().filter_map(|l| l.downsample.as_mut()) {
            down.kernels = kernels;
        }
        let levels = self.down.iter_mut().map(|l| (&mut l.blocks, &mut l.attns));
        let levels = levels.chain(self.up.iter_mut().map(|l| (&mut l.blocks, &mut l.attns)));
        for (blocks, attns) in levels {
            blocks.iter_mut().for_each(|b| b.kernels = kernels);
            attns.iter_mut().for_each(|a| a.kernels = kernels);
        }
        self.mid_block1.kernels = kernels;
        self.mid_attn.kernels = kernels;
        self.mid_block2.kernels = kernels;
        self
    }

    /// Checks that `x` (`[batch, channels, h, w]`) and `t` (`[batch]`) fit this network,
    /// before any computation.
    ///
    /// # Errors
    /// [`UNetError::Channels`], [`UNetError::Size`] or [`UNetError::Timesteps`].
    pub fn check_input(&self, x_dims: [usize; 4], t_len: usize) -> Result<(), UNetError> {
        let [b, c, h, w] = x_dims;
        if c != self.in_channels {
            return Err(UNetError::Channels {
                expected: self.in_channels,
                actual: c,
            });
        }
        let f = self.size_factor;
        if h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return Err(UNetError::Size {
                height: h,
                width: w,
                factor: f,
                levels: self.down.len(),
            });
        }
        if t_len != b {
            return Err(UNetError::Timesteps {
                timesteps: t_len,
                batch: b,
            });
        }
        Ok(())
    }

    /// eps_theta(x_t, t).
    ///
    /// # Shapes
    /// - `x`: `[batch, in_channels, h, w]`, `h` and `w` divisible by `2^(levels - 1)`
    /// - `t`: `[batch]`, 0-based timesteps
    /// - output: `[batch, out_channels, h, w]`
    ///
    /// # Errors
    /// See [`check_input`](Self::check_input).
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1, Int>) -> Result<Tensor<4>, UNetError> {
        self.forward_classes(x, t, None)
    }

    /// eps_theta(x_t, t, c) of a class-conditional model: `classes` holds one label per
    /// example in `0..=num_classes` (`num_classes`: the null class); `None` is the null class
    /// for all. An unconditional model accepts only `None`.
    ///
    /// # Shapes
    /// As [`forward`](Self::forward); `classes`: `batch` labels.
    ///
    /// # Errors
    /// As [`check_input`](Self::check_input); [`UNetError::Classes`] for labels out of range,
    /// of another count than the batch, or given to an unconditional model.
    pub fn forward_classes(
        &self,
        x: Tensor<4>,
        t: Tensor<1, Int>,
        classes: Option<&[usize]>,
    ) -> Result<Tensor<4>, UNetError> {
        self.check_input(x.dims(), t.dims()[0])?;
        let batch = x.dims()[0];
        let mut temb = self.temb.forward(t); // [b, 4ch]
        match (&self.class_emb, self.num_classes) {
            (Some(emb), Some(k)) => {
                let labels = match classes {
                    Some(l) => check_labels(l, k, batch)?,
                    None => vec![k as i64; batch],
                };
                let idx =
                    Tensor::<2, Int>::from_data(TensorData::new(labels, [batch, 1]), &x.device());
                let dim = temb.dims()[1];
                temb = temb + emb.forward(idx).reshape([batch, dim]); // [b, 4ch]
            }
            _ if classes.is_some() => {
                return Err(UNetError::Classes(
                    "this U-Net is unconditional (num_classes: None): it takes no class labels"
                        .into(),
                ));
            }
            _ => {}
        }
        let mut hs = vec![conv_forward(&self.conv_in, x, self.kernels)]; // [b, ch, h, w]
        for level in &self.down {
            for (j, block) in level.blocks.iter().enumerate() {
                let mut h = block.forward(hs.last().expect("non-empty").clone(), temb.clone());
                if let Some(attn) = level.attns.get(j) {
                    h = attn.forward(h);
                }
                hs.push(h);
            }
            if let Some(ds) = &level.downsample {
                let h = ds.forward(hs.last().expect("non-empty").clone()); // [b, c, h/2, w/2]
                hs.push(h);
            }
        }
        let mut h = hs.last().expect("non-empty").clone();
        h = self.mid_block1.forward(h, temb.clone());
        h = self.mid_attn.forward(h);
        h = self.mid_block2.forward(h, temb.clone());
        for level in &self.up {
            for (j, block) in level.blocks.iter().enumerate() {
                let skip = hs.pop().expect("one skip connection per block");
                h = block.forward(
                    crate::kernels::cat_channels(h, skip, self.kernels),
                    temb.clone(),
                ); // [b, c, h, w]
                if let Some(attn) = level.attns.get(j) {
                    h = attn.forward(h);
                }
            }
            if let Some(us) = &level.upsample {
                h = us.forward(h); // [b, c, 2h, 2w]
            }
        }
        // conv_out(silu(norm_out(h))), normalised as conv_out pads its input on flex without
        // autodiff.
        let (norm, conv) = (&self.norm_out, &self.conv_out);
        Ok(norm_act_conv(norm, h, Activation::Silu, conv, self.kernels)) // [b, out, h, w]
    }
}

/// The labels as i64 after checking their count and range (`k` is the null class).
fn check_labels(labels: &[usize], k: usize, batch: usize) -> Result<Vec<i64>, UNetError> {
    ddpm_core::check_class_labels(labels, k, batch)
        .map_err(|e| UNetError::Classes(e.to_string()))?;
    Ok(labels.iter().map(|&c| c as i64).collect())
}

impl NoisePredictor<4> for UNet {
    fn predict(&self, x_t: Tensor<4>, t: Tensor<1, Int>) -> Result<Tensor<4>, PredictorError> {
        self.forward(x_t, t)
            .map_err(|e| Box::new(e) as PredictorError)
    }
    fn predict_conditional(
        &self,
        x_t: Tensor<4>,
        t: Tensor<1, Int>,
        condition: &Condition,
    ) -> Result<Tensor<4>, PredictorError> {
        match condition {
            Condition::Classes(labels) => self
                .forward_classes(x_t, t, Some(labels))
                .map_err(|e| Box::new(e) as PredictorError),
            other => Err(format!("the U-Net takes class labels, not {other:?}").into()),
        }
    }
    fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }
}

impl UNetConfig {
    /// Validates the configuration and builds the U-Net.
    ///
    /// # Errors
    /// See [`validate`](Self::validate).
    pub fn init(&self, device: &Device) -> Result<UNet, UNetError> {
        self.validate()?;
        Ok(UNet::build(self, device))
    }
}
