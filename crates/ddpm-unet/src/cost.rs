//! What a configuration costs, counted from its [`Topology`] without building anything: the
//! parameters (checked arithmetic, bounded by [`MAX_PARAMS`]) and the FLOPs of a forward pass.

use crate::config::{MAX_CHANNELS, MAX_PARAMS, UNetConfig};
use crate::error::UNetError;
use crate::topology::{Level, Topology};

impl UNetConfig {
    /// The parameter count with checked arithmetic (the structure already bounded).
    pub(crate) fn count_params(&self) -> Result<u64, UNetError> {
        let overflow = || {
            UNetError::InvalidConfig(format!(
                "the network's sizes are out of range (ch {}, ch_mult {:?}, in {} / out {} channels, \
                 num_classes {:?})",
                self.ch, self.ch_mult, self.in_channels, self.out_channels, self.num_classes
            ))
        };
        let n = |v: usize| u64::try_from(v).ok();
        // Every term in u128: products of a few u64 cannot overflow it; the total is checked.
        let w = |v: usize| n(v).map(u128::from);
        let (Some(ch), Some(cin0), Some(cout0)) =
            (w(self.ch), w(self.in_channels), w(self.out_channels))
        else {
            return Err(overflow());
        };
        // Channel counts beyond 2^24 would need far more than MAX_PARAMS parameters; bounding
        // them first keeps every product below in range.
        let max_mult = self.ch_mult.iter().copied().max().unwrap_or(1);
        let widest = self.ch.checked_mul(max_mult).and_then(|c| c.checked_mul(2));
        if widest.is_none_or(|c| c > MAX_CHANNELS)
            || self.ch.saturating_mul(4) > MAX_CHANNELS
            || self.in_channels > MAX_CHANNELS
            || self.out_channels > MAX_CHANNELS
            || self.num_classes.is_some_and(|k| k > MAX_CHANNELS)
        {
            return Err(overflow());
        }
        let temb = 4 * ch;
        let conv = |cin: u128, cout: u128, k: u128| k * k * cin * cout + cout;
        let res = |(cin, cout): (usize, usize)| {
            let (cin, cout) = (cin as u128, cout as u128);
            2 * cin
                + conv(cin, cout, 3)
                + temb * cout
                + cout
                + 2 * cout
                + conv(cout, cout, 3)
                + if cin != cout { conv(cin, cout, 1) } else { 0 }
        };
        let attn = |c: usize| {
            let c = c as u128;
            2 * c + 4 * (c * c + c)
        };
        let topology = Topology::of(self);
        let level = |l: &Level| -> u128 {
            let blocks: u128 = l.blocks.iter().map(|&b| res(b)).sum();
            let attns: u128 = match l.attention {
                true => l.blocks.iter().map(|&(_, c)| attn(c)).sum(),
                false => 0,
            };
            let resample = match (l.resample, self.resamp_with_conv) {
                (Some(c), true) => conv(c as u128, c as u128, 3),
                _ => 0,
            };
            blocks + attns + resample
        };
        let classes = match self.num_classes {
            Some(k) => (w(k).ok_or_else(overflow)? + 1) * temb,
            None => 0,
        };
        let mid = topology.mid;
        let out = topology.out as u128;
        let total: u128 = (ch * temb + temb + temb * temb + temb)
            + classes
            + conv(cin0, ch, 3)
            + topology.down.iter().map(level).sum::<u128>()
            + 2 * res((mid, mid))
            + attn(mid)
            + topology.up.iter().map(level).sum::<u128>()
            + 2 * out
            + conv(out, cout0, 3);
        match u64::try_from(total) {
            Ok(t) if t <= MAX_PARAMS => Ok(t),
            Ok(t) => Err(UNetError::InvalidConfig(format!(
                "the network would have {t} parameters ({} GiB of f32 weights), more than the \
                 {MAX_PARAMS} this crate builds",
                t / (1 << 28)
            ))),
            Err(_) => Err(overflow()),
        }
    }

    /// Floating-point operations of one forward pass on one `height x width` image, counting
    /// convolutions, dense layers and the attention matrix products (2 per multiply-add);
    /// normalisations and activations are left out. Used to report achieved GFLOP/s.
    pub fn forward_flops(&self, height: usize, width: usize) -> u64 {
        let conv = |cin: usize, cout: usize, k: usize, h: usize, w: usize| {
            2 * (cin * cout * k * k * h * w) as u64
        };
        let attn = |c: usize, h: usize, w: usize| {
            let n = (h * w) as u64;
            let c = c as u64;
            4 * 2 * n * c * c + 2 * 2 * n * n * c
        };
        let temb = 4 * self.ch;
        let res = |(cin, cout): (usize, usize), h: usize, w: usize| {
            conv(cin, cout, 3, h, w)
                + conv(cout, cout, 3, h, w)
                + 2 * (temb * cout) as u64
                + if cin != cout {
                    conv(cin, cout, 1, h, w)
                } else {
                    0
                }
        };
        let topology = Topology::of(self);
        let level = |l: &Level, up: bool| {
            let (h, w) = (height >> l.index, width >> l.index);
            let blocks: u64 = l.blocks.iter().map(|&b| res(b, h, w)).sum();
            let attns: u64 = match l.attention {
                true => l.blocks.iter().map(|&(_, c)| attn(c, h, w)).sum(),
                false => 0,
            };
            // The downsampling convolution runs at the halved size, the upsampling one at
            // the doubled size.
            let resample = match (l.resample, self.resamp_with_conv, up) {
                (Some(c), true, false) => conv(c, c, 3, h / 2, w / 2),
                (Some(c), true, true) => conv(c, c, 3, 2 * h, 2 * w),
                _ => 0,
            };
            blocks + attns + resample
        };
        let lowest = self.levels() - 1;
        let (hm, wm) = (height >> lowest, width >> lowest);
        let mid = topology.mid;
        2 * (self.ch * temb + temb * temb) as u64
            + conv(self.in_channels, self.ch, 3, height, width)
            + topology.down.iter().map(|l| level(l, false)).sum::<u64>()
            + 2 * res((mid, mid), hm, wm)
            + attn(mid, hm, wm)
            + topology.up.iter().map(|l| level(l, true)).sum::<u64>()
            + conv(topology.out, self.out_channels, 3, height, width)
    }
}
