//! The U-Net's layout as data: which residual blocks (input and output channels), attention
//! blocks and resamplings each level has, with the skip connections already resolved. Both
//! [`UNet`](crate::UNet)'s construction and [`UNetConfig::forward_flops`] walk this one
//! description.

use crate::config::UNetConfig;

/// One level of the down or the up path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Level {
    /// Resolution index `i`: the level works at `resolution >> i`.
    pub index: usize,
    /// `(input channels, output channels)` of each residual block (up path: skip included).
    pub blocks: Vec<(usize, usize)>,
    /// Self-attention after each residual block.
    pub attention: bool,
    /// Channels of the down- or upsampling at the end of the level, if any.
    pub resample: Option<usize>,
}

/// The whole network.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Topology {
    /// Down path, full resolution first.
    pub down: Vec<Level>,
    /// Channels of the middle (residual, attention, residual).
    pub mid: usize,
    /// Up path, lowest resolution first.
    pub up: Vec<Level>,
    /// Channels entering the output GroupNorm and convolution.
    pub out: usize,
}

impl Topology {
    /// The layout of a validated config.
    pub fn of(c: &UNetConfig) -> Self {
        let levels = c.levels();
        let mut skips = vec![c.ch];
        let mut block_in = c.ch;
        let mut down = Vec::with_capacity(levels);
        for (i, &mult) in c.ch_mult.iter().enumerate() {
            let out = c.ch * mult;
            let mut blocks = Vec::new();
            for _ in 0..c.num_res_blocks {
                blocks.push((block_in, out));
                block_in = out;
                skips.push(block_in);
            }
            let resample = (i + 1 != levels).then(|| {
                skips.push(block_in);
                block_in
            });
            down.push(Level {
                index: i,
                blocks,
                attention: c.attn_resolutions.contains(&(c.resolution >> i)),
                resample,
            });
        }
        let mid = block_in;
        let mut up = Vec::with_capacity(levels);
        for (i, &mult) in c.ch_mult.iter().enumerate().rev() {
            let out = c.ch * mult;
            let mut blocks = Vec::new();
            for _ in 0..=c.num_res_blocks {
                let skip = skips.pop().expect("one skip connection per block");
                blocks.push((block_in + skip, out));
                block_in = out;
            }
            up.push(Level {
                index: i,
                blocks,
                attention: c.attn_resolutions.contains(&(c.resolution >> i)),
                resample: (i != 0).then_some(block_in),
            });
        }
        Self {
            down,
            mid,
            up,
            out: block_in,
        }
    }
}
