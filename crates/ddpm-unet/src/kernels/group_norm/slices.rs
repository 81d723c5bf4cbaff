//! Slice kernels of the fused GroupNorm + activation, for contiguous `[n, c, h, w]` f32 data.
//!
//! Work is split over the `n * groups` (image, group) blocks, each of which is contiguous in
//! NCHW and handled by one rayon task from start to end. Inside a block every sum runs in a
//! fixed order over [`LANES`] partial sums, so the results are bit-identical whatever the
//! number of threads or the load of the machine. The per-channel parameter gradients are
//! summed over the batch afterwards, in batch order, on one thread.
//!
//! The loops are written over fixed-width lane arrays and plain slices so that LLVM
//! vectorises them (the exponential of SiLU included, see [`exp`]), and each task's loops
//! run inside [`vectorized`](crate::kernels::vectorize::vectorized), compiled for the CPU's best instruction set; there is no
//! `unsafe`. The sums' order is fixed by the code, not by the vector width (Rust never
//! reassociates or contracts floating-point operations), so every instruction set gives the
//! same bits.

use rayon::prelude::*;

use crate::kernels::flex_tensor::{initialised, unwritten, write_copy, written};
use crate::kernels::profile::{self, Kernel};
use crate::kernels::vectorize::vectorized;

/// Independent partial sums per reduction (one AVX-512 register of f32).
const LANES: usize = 16;

/// The sizes of one call: `n` images of `c` channels and `hw` pixels, in `groups` groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dims {
    /// Batch size.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Pixels per channel (`h * w`).
    pub hw: usize,
    /// Groups (divides `c`).
    pub groups: usize,
}

impl Dims {
    /// Channels per group.
    fn cpg(&self) -> usize {
        self.c / self.groups
    }

    /// Elements per (image, group) block.
    fn block(&self) -> usize {
        self.cpg() * self.hw
    }
}

/// `exp(x)` for f32 in a form LLVM vectorises: Cody-Waite range reduction to
/// `r = x - k ln 2` with `|r| <= ln(2) / 2`, a degree-6 Taylor polynomial for `exp(r)`
/// (relative error below 2e-7 on that interval), and `2^k` assembled in the exponent bits.
/// Inputs are clamped to `[-87, 88]`, where `exp` stays a normal f32.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to the nearest integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let k = t - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // k is an integer in [-126, 127], held in t's low mantissa bits (t and ROUND share their
    // exponent); its biased value goes into the exponent field, in integer arithmetic only.
    let k_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(k_bits.wrapping_add(127) << 23);
    p * scale
}

/// `sigmoid(z) = 1 / (1 + exp(-z))`.
#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// Mean and `1 / sqrt(var + eps)` of one block, two passes (the variance of the centred
/// values, as burn's GroupNorm computes it), in a fixed summation order.
#[inline(always)]
fn stats(block: &[f32], eps: f32) -> (f32, f32) {
    let m = block.len() as f32;
    let mean = lane_sum(block, |v| v) / m;
    let var = lane_sum(block, |v| (v - mean) * (v - mean)) / m;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `sum f(v)` over `xs` with [`LANES`] partial sums combined in a fixed order.
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(rest) {
        *a += f(v);
    }
    pairwise(acc)
}

/// `sum f(u, v)` over two equally long slices, as [`lane_sum`].
#[inline(always)]
fn lane_sum2(xs: &[f32], ys: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES).zip(ys.chunks_exact(LANES));
    let n = xs.len() / LANES * LANES;
    for (cx, cy) in chunks {
        for ((a, &u), &v) in acc.iter_mut().zip(cx).zip(cy) {
            *a += f(u, v);
        }
    }
    for ((a, &u), &v) in acc.iter_mut().zip(&xs[n..]).zip(&ys[n..]) {
        *a += f(u, v);
    }
    pairwise(acc)
}

/// Sums the lanes as a balanced tree (fixed order).
#[inline(always)]
fn pairwise(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

/// `(v - mean) a + b`: the normalised, affine value (`a = rstd gamma_c`, `b = beta_c`), the
/// one formula of [`forward`] and [`Normalisation`], so that both give the same bits.
#[inline(always)]
fn affine(v: f32, mean: f32, a: f32, b: f32) -> f32 {
    (v - mean) * a + b
}

/// `z sigmoid(z)`.
#[inline(always)]
fn silu_of(z: f32) -> f32 {
    z * sigmoid(z)
}

/// `y = act(gamma_c (x - mean_g) rstd_g + beta_c)` for every element; `silu` picks SiLU or the
/// identity as `act`. With `shift` (`[n, c]`), of `x + shift` instead, each block's sum formed
/// in a scratch block ([`shifted`]): the same values as normalising the summed tensor.
///
/// # Shapes
/// - `x`, output: `d.n * d.c * d.hw` elements, NCHW
/// - `shift`: `d.n * d.c`; `gamma`, `beta`: `d.c`
pub(crate) fn forward(
    x: &[f32],
    shift: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    d: Dims,
    eps: f32,
    silu: bool,
) -> Vec<f32> {
    let mut y = unwritten(x.len());
    let (cpg, hw) = (d.cpg(), d.hw);
    y.par_chunks_mut(d.block())
        .zip(x.par_chunks(d.block()))
        .enumerate()
        .for_each(|(ng, (yb, xb))| {
            run_block(
                Kernel::GroupNorm,
                #[inline(always)]
                || {
                    let mut scratch = Vec::new();
                    let (xb, g, mean, rstd) = block_stats(xb, shift, ng, d, eps, &mut scratch);
                    for j in 0..cpg {
                        let ch = g * cpg + j;
                        // (v - mean) first: folding mean into the offset (v a + (beta - mean a))
                        // cancels catastrophically when rstd is large (near-constant groups).
                        let (a, b) = (rstd * gamma[ch], beta[ch]);
                        let (ys, xs) = (&mut yb[j * hw..(j + 1) * hw], &xb[j * hw..(j + 1) * hw]);
                        if silu {
                            for (o, &v) in ys.iter_mut().zip(xs) {
                                o.write(silu_of(affine(v, mean, a, b)));
                            }
                        } else {
                            for (o, &v) in ys.iter_mut().zip(xs) {
                                o.write(affine(v, mean, a, b));
                            }
                        }
                    }
                },
            )
        });
    // SAFETY: the blocks cover `y`; each writes its `cpg` channels of `hw` values.
    unsafe { written(y) }
}

/// The gradients ([`Gradients`]: `dx`, `dgamma`, `dbeta`, and `dshift` with a `shift`) of
/// [`forward`] for the output gradient `dy`; the shifted input `x + shift` is formed again
/// block by block, as in [`forward`].
///
/// With `xhat = (x - mean) rstd`, `z = gamma xhat + beta` and `dz = dy act'(z)`:
/// `dbeta_c = sum dz`, `dgamma_c = sum dz xhat` (over images and pixels), and per block of
/// `m` elements `dx = rstd (g - mean(g) - xhat mean(g xhat))` with `g = gamma_c dz`.
/// Statistics are recomputed exactly as in [`forward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    x: &[f32],
    shift: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    dy: &[f32],
    d: Dims,
    eps: f32,
    silu: bool,
) -> Gradients {
    let mut dx = unwritten(x.len());
    // Per (image, channel) partial sums of dz and dz * xhat, and of dx (the shift's gradient).
    let mut part_dz = vec![0.0f32; d.n * d.c];
    let mut part_dzx = vec![0.0f32; d.n * d.c];
    let mut dshift = vec![0.0f32; d.n * d.c];
    let (cpg, hw) = (d.cpg(), d.hw);
    let m = d.block() as f32;
    dx.par_chunks_mut(d.block())
        .zip(x.par_chunks(d.block()))
        .zip(dy.par_chunks(d.block()))
        .zip(part_dz.par_chunks_mut(cpg))
        .zip(part_dzx.par_chunks_mut(cpg))
        .zip(dshift.par_chunks_mut(cpg))
        .enumerate()
        .for_each(|(ng, (((((dxb, xb), dyb), pdz), pdzx), pds))| {
            run_block(
                Kernel::GroupNormBackward,
                #[inline(always)]
                || {
                    let mut scratch = Vec::new();
                    let (xb, g, mean, rstd) = block_stats(xb, shift, ng, d, eps, &mut scratch);
                    // Pass 1: dz into dx's buffer, and the channel sums.
                    let (mut sum_g, mut sum_gx) = (0.0f32, 0.0f32);
                    for j in 0..cpg {
                        let ch = g * cpg + j;
                        let (gam, bet) = (gamma[ch], beta[ch]);
                        let r = j * hw..(j + 1) * hw;
                        let (dzs, xs, dys) = (&mut dxb[r.clone()], &xb[r.clone()], &dyb[r]);
                        if silu {
                            for ((o, &v), &gy) in dzs.iter_mut().zip(xs).zip(dys) {
                                let z = (v - mean) * rstd * gam + bet;
                                let s = sigmoid(z);
                                o.write(gy * s * (1.0 + z * (1.0 - s)));
                            }
                        } else {
                            write_copy(dzs, dys);
                        }
                        // SAFETY: every value of `dzs` was written just above.
                        let dzs = unsafe { initialised(dzs) };
                        let s_dz = lane_sum(dzs, |v| v);
                        let s_dzx = lane_sum2(dzs, xs, |dz, v| dz * ((v - mean) * rstd));
                        pdz[j] = s_dz;
                        pdzx[j] = s_dzx;
                        sum_g += gam * s_dz;
                        sum_gx += gam * s_dzx;
                    }
                    // Pass 2: dx in place.
                    // SAFETY: pass 1 wrote each of the block's `cpg` channels.
                    let dxb = unsafe { initialised(dxb) };
                    let (mean_g, mean_gx) = (sum_g / m, sum_gx / m);
                    for j in 0..cpg {
                        let gam = gamma[g * cpg + j];
                        let r = j * hw..(j + 1) * hw;
                        for (o, &v) in dxb[r.clone()].iter_mut().zip(&xb[r.clone()]) {
                            let xhat = (v - mean) * rstd;
                            *o = rstd * (gam * *o - mean_g - xhat * mean_gx);
                        }
                        if shift.is_some() {
                            pds[j] = lane_sum(&dxb[r], |v| v);
                        }
                    }
                },
            )
        });
    let mut dgamma = vec![0.0f32; d.c];
    let mut dbeta = vec![0.0f32; d.c];
    for i in 0..d.n {
        let row = i * d.c..(i + 1) * d.c;
        for ((dg, db), (&pz, &pzx)) in dgamma
            .iter_mut()
            .zip(dbeta.iter_mut())
            .zip(part_dz[row.clone()].iter().zip(&part_dzx[row]))
        {
            *db += pz;
            *dg += pzx;
        }
    }
    Gradients {
        // SAFETY: the blocks cover `dx`; pass 1 wrote every value of each.
        dx: unsafe { written(dx) },
        dshift: shift.map(|_| dshift),
        dgamma,
        dbeta,
    }
}

/// The GroupNorm + activation of [`forward`] with its statistics computed beforehand (one
/// pass over the input), to be applied row by row by a kernel that reads its input anyway
/// (the convolution's padded copy, [`apply`](Coefficients::apply)): the normalised
/// tensor is never stored. Every value has [`forward`]'s bits.
#[derive(Debug)]
pub(crate) struct Normalisation<'a> {
    /// Per (image, group) block: mean and `1 / sqrt(var + eps)`, as [`forward`] computes them.
    stats: Vec<[f32; 2]>,
    shift: Option<&'a [f32]>,
    gamma: &'a [f32],
    beta: &'a [f32],
    d: Dims,
    silu: bool,
}

impl<'a> Normalisation<'a> {
    /// The statistics of `x` (of `x + shift` with a shift, `[n, c]`), block by block on this
    /// thread (the caller's task holds a few images, whose blocks then stay in its cache for
    /// the copy that normalises them), each as [`forward`] computes it.
    ///
    /// # Shapes
    /// As [`forward`].
    pub(crate) fn of(
        x: &[f32],
        shift: Option<&'a [f32]>,
        gamma: &'a [f32],
        beta: &'a [f32],
        d: Dims,
        eps: f32,
        silu: bool,
    ) -> Self {
        let stats = vectorized(
            #[inline(always)]
            || {
                // A plain loop: `collect` over an iterator stays a call compiled for the
                // baseline, outside this vectorised context.
                let (mut scratch, mut all) = (Vec::new(), Vec::with_capacity(d.n * d.groups));
                for (ng, xb) in x.chunks(d.block()).enumerate() {
                    let (_, _, mean, rstd) = block_stats(xb, shift, ng, d, eps, &mut scratch);
                    all.push([mean, rstd]);
                }
                all
            },
        );
        Self {
            stats,
            shift,
            gamma,
            beta,
            d,
            silu,
        }
    }

    /// What channel `ch` of image `img` needs: its group's statistics, its affine parameters
    /// and its shift.
    #[inline(always)]
    pub(crate) fn coefficients(&self, img: usize, ch: usize) -> Coefficients {
        let [mean, rstd] = self.stats[img * self.d.groups + ch / self.d.cpg()];
        Coefficients {
            mean,
            a: rstd * self.gamma[ch],
            b: self.beta[ch],
            shift: self.shift.map(|s| s[img * self.d.c + ch]),
            silu: self.silu,
        }
    }
}

/// One (image, channel)'s normalisation: `act(((v + shift) - mean) a + b)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Coefficients {
    mean: f32,
    a: f32,
    b: f32,
    shift: Option<f32>,
    silu: bool,
}

impl Coefficients {
    /// Normalises `values` (raw input values of this image and channel) in place; inlined into
    /// the caller, which runs it under [`vectorized`](crate::kernels::vectorize::vectorized)
    /// to have it vectorised.
    #[inline(always)]
    pub(crate) fn apply(&self, values: &mut [f32]) {
        let Self { mean, a, b, .. } = *self;
        match (self.shift, self.silu) {
            (None, true) => map_in_place(values, |v| silu_of(affine(v, mean, a, b))),
            (None, false) => map_in_place(values, |v| affine(v, mean, a, b)),
            (Some(s), true) => map_in_place(values, |v| silu_of(affine(v + s, mean, a, b))),
            (Some(s), false) => map_in_place(values, |v| affine(v + s, mean, a, b)),
        }
    }
}

/// `v = f(v)` for every value, as a plain loop (vectorised where inlined into a vectorised
/// context).
#[inline(always)]
fn map_in_place(values: &mut [f32], f: impl Fn(f32) -> f32) {
    for v in values {
        *v = f(*v);
    }
}

/// The gradients of [`backward`].
#[derive(Debug, PartialEq)]
pub(crate) struct Gradients {
    /// `[n, c, h, w]`.
    pub dx: Vec<f32>,
    /// `[n, c]`, when the forward pass had a shift: each (image, channel)'s sum of `dx`.
    pub dshift: Option<Vec<f32>>,
    /// `[c]`.
    pub dgamma: Vec<f32>,
    /// `[c]`.
    pub dbeta: Vec<f32>,
}

/// Runs `f`, one block's work, under [`vectorized`], counted as `kernel` (time only).
#[inline(always)]
fn run_block<R>(kernel: Kernel, f: impl FnOnce() -> R) -> R {
    profile::timed(kernel, 0, || vectorized(f))
}

/// Block `ng`'s values ([`shifted`]), its group (`ng % groups`) and its mean and
/// `1 / sqrt(var + eps)` ([`stats`]): what every pass over a block starts from.
#[inline(always)]
fn block_stats<'a>(
    xb: &'a [f32],
    shift: Option<&[f32]>,
    ng: usize,
    d: Dims,
    eps: f32,
    scratch: &'a mut Vec<f32>,
) -> (&'a [f32], usize, f32, f32) {
    let xb = shifted(xb, shift, ng, d, scratch);
    let (mean, rstd) = stats(xb, eps);
    (xb, ng % d.groups, mean, rstd)
}

/// Block `ng` (image `ng / groups`, group `ng % groups`) of the input, with the image's
/// per-channel `shift` (`[n, c]`) added when there is one: written into `scratch` (one block,
/// in cache) rather than as a whole shifted tensor in memory, the same values as `x + shift`.
#[inline(always)]
fn shifted<'a>(
    xb: &'a [f32],
    shift: Option<&[f32]>,
    ng: usize,
    d: Dims,
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    let Some(shift) = shift else { return xb };
    let (img, g, cpg) = (ng / d.groups, ng % d.groups, d.cpg());
    scratch.clear();
    for (j, row) in xb.chunks_exact(d.hw).enumerate() {
        let s = shift[img * d.c + g * cpg + j];
        scratch.extend(row.iter().map(|&v| v + s));
    }
    scratch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::{noise, with_threads};

    #[test]
    fn exp_matches_std_over_the_whole_range() {
        let mut worst = 0.0f32;
        let mut v = -87.0f32;
        while v <= 88.0 {
            let rel = (exp(v) - v.exp()).abs() / v.exp();
            worst = worst.max(rel);
            v += 0.0137;
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(
            exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37,
            "clamped, no underflow to 0/NaN"
        );
        assert!(exp(1000.0).is_finite());
    }

    fn dims(n: usize, c: usize, hw: usize, groups: usize) -> Dims {
        Dims { n, c, hw, groups }
    }

    /// `x`, `gamma`, `beta` and an output gradient for `d`.
    fn inputs(d: Dims, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = noise(d.n * d.c * d.hw, seed);
        let dy = noise(x.len(), seed + 3);
        (x, noise(d.c, seed + 1), noise(d.c, seed + 2), dy)
    }

    /// The forward pass in f64, written as the definition.
    fn reference(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        d: Dims,
        eps: f64,
        silu: bool,
    ) -> Vec<f64> {
        let mut y = vec![0.0f64; x.len()];
        let block = d.block();
        for ng in 0..d.n * d.groups {
            let xb = &x[ng * block..(ng + 1) * block];
            let mean = xb.iter().map(|&v| v as f64).sum::<f64>() / block as f64;
            let var = xb.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / block as f64;
            for (i, &v) in xb.iter().enumerate() {
                let ch = (ng % d.groups) * d.cpg() + i / d.hw;
                let z = (v as f64 - mean) / (var + eps).sqrt() * gamma[ch] as f64 + beta[ch] as f64;
                y[ng * block + i] = if silu { z / (1.0 + (-z).exp()) } else { z };
            }
        }
        y
    }

    #[test]
    fn forward_matches_the_definition_in_f64() {
        for (d, silu) in [
            (dims(2, 6, 35, 3), true),
            (dims(1, 4, 1, 4), true),
            (dims(3, 8, 49, 1), false),
        ] {
            let (x, gamma, beta, _) = inputs(d, 1);
            let y = forward(&x, None, &gamma, &beta, d, 1e-6, silu);
            let r = reference(&x, &gamma, &beta, d, 1e-6, silu);
            let err = y
                .iter()
                .zip(&r)
                .map(|(&a, &b)| (a as f64 - b).abs())
                .fold(0.0, f64::max);
            // hw = 1 with groups = c: every block is one value, normalised to 0.
            assert!(err < 2e-5, "{d:?} silu={silu}: max error {err}");
        }
    }

    #[test]
    fn backward_matches_central_differences_of_the_f64_definition() {
        let d = dims(2, 4, 6, 2);
        let (x, gamma, beta, dy) = inputs(d, 4);
        let Gradients {
            dx, dgamma, dbeta, ..
        } = backward(&x, None, &gamma, &beta, &dy, d, 1e-5, true);
        // L = sum(dy * y) in f64; dL/dv by central differences in f64 inputs.
        let loss = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
            let y = reference(x, gamma, beta, d, 1e-5, true);
            y.iter().zip(&dy).map(|(&a, &b)| a * b as f64).sum()
        };
        let h = 1e-3f32;
        let fd = |v: &[f32], i: usize, which: usize| -> f64 {
            let mut p = v.to_vec();
            let mut q = v.to_vec();
            p[i] += h;
            q[i] -= h;
            let (lp, lq) = match which {
                0 => (loss(&p, &gamma, &beta), loss(&q, &gamma, &beta)),
                1 => (loss(&x, &p, &beta), loss(&x, &q, &beta)),
                _ => (loss(&x, &gamma, &p), loss(&x, &gamma, &q)),
            };
            (lp - lq) / (2.0 * h as f64)
        };
        for (grads, src, which) in [(&dx, &x, 0), (&dgamma, &gamma, 1), (&dbeta, &beta, 2)] {
            for (i, &g) in grads.iter().enumerate() {
                let num = fd(src, i, which);
                let err = (g as f64 - num).abs() / (1.0 + num.abs());
                assert!(err < 2e-3, "input {which}, index {i}: {g} vs {num}");
            }
        }
    }

    #[test]
    fn normalisation_row_by_row_equals_forward_bit_for_bit() {
        for (d, silu, with_shift) in [
            (dims(3, 8, 49, 4), true, false),
            (dims(2, 6, 35, 3), true, true),
            (dims(2, 4, 17, 1), false, true),
            (dims(1, 4, 1, 4), false, false),
        ] {
            let (x, gamma, beta, _) = inputs(d, 11);
            let shift = noise(d.n * d.c, 12);
            let shift = with_shift.then_some(&shift[..]);
            let y = forward(&x, shift, &gamma, &beta, d, 1e-6, silu);
            let norm = Normalisation::of(&x, shift, &gamma, &beta, d, 1e-6, silu);
            let mut rows = x.clone();
            for (p, plane) in rows.chunks_mut(d.hw).enumerate() {
                let c = norm.coefficients(p / d.c, p % d.c);
                // Pieces of odd lengths, as the convolution's padded copy has them.
                for row in plane.chunks_mut(5) {
                    c.apply(row);
                }
            }
            assert!(
                rows.iter()
                    .map(|v| v.to_bits())
                    .eq(y.iter().map(|v| v.to_bits())),
                "{d:?} silu={silu} shift={with_shift}"
            );
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let d = dims(8, 32, 196, 8);
        let (x, gamma, beta, dy) = inputs(d, 8);
        let shift: Vec<f32> = (0..d.n * d.c)
            .map(|i| (i % 7) as f32 * 0.25 - 0.5)
            .collect();
        let run = |threads: usize| {
            with_threads(threads, || {
                (
                    forward(&x, None, &gamma, &beta, d, 1e-6, true),
                    backward(&x, None, &gamma, &beta, &dy, d, 1e-6, true),
                    forward(&x, Some(&shift), &gamma, &beta, d, 1e-6, true),
                    backward(&x, Some(&shift), &gamma, &beta, &dy, d, 1e-6, true),
                )
            })
        };
        let one = run(1);
        for threads in [2, 3, 5] {
            assert!(
                run(threads) == one,
                "{threads} threads differ from 1 (bitwise)"
            );
        }
    }
}
