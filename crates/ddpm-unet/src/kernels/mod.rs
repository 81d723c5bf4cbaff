//! Fused CPU kernels for the U-Net's hot paths, as burn backend extensions: GroupNorm +
//! activation ([`group_norm_act`]), and, inside the U-Net, the convolutions (stride 1: a
//! register-blocked AVX-512 kernel on shifted views of the padded images, gemm per tap
//! elsewhere; other strides: one GEMM per image on its im2col), the skip connections'
//! concatenation (a parallel copy) and dropout (a hash mask, never stored).
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

#[cfg(feature = "flex")]
mod cat;
#[cfg(feature = "flex")]
mod conv;
#[cfg(feature = "flex")]
mod cpu;
#[cfg(feature = "flex")]
mod direct;
#[cfg(feature = "flex")]
mod dropout;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
mod shifted;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, GroupNorm};
use burn::tensor::activation::silu;
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

/// `act(gamma_c (x - mean_g) / sqrt(var_g + eps) + beta_c)`: GroupNorm (Wu & He 2018) with
/// statistics over each group of `channels / groups` channels and all pixels of one image,
/// followed by `act`.
///
/// # Shapes
/// - `x`: `[batch, channels, h, w]`
/// - `gamma`, `beta`: `[channels]`
/// - output: `[batch, channels, h, w]`
///
/// # Errors
/// [`KernelError`] when `groups` does not divide `channels`, `gamma`/`beta` have the wrong
/// length, or `eps` is not positive.
pub fn group_norm_act(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f64,
    act: Activation,
    kernels: Kernels,
) -> Result<Tensor<4>, KernelError> {
    let channels = x.dims()[1];
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err(KernelError::Groups { groups, channels });
    }
    for (name, len) in [("gamma", gamma.dims()[0]), ("beta", beta.dims()[0])] {
        if len != channels {
            return Err(KernelError::Affine {
                name,
                len,
                channels,
            });
        }
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(KernelError::Epsilon(eps));
    }
    Ok(group_norm_act_unchecked(
        x, gamma, beta, groups, eps, act, kernels,
    ))
}

/// [`group_norm_act`] without the checks, for callers that validated their shapes.
fn group_norm_act_unchecked(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f64,
    act: Activation,
    kernels: Kernels,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if kernels == Kernels::Fused && fused_available(&x) {
        return flex::forward(x, gamma, beta, groups, eps, act == Activation::Silu);
    }
    let _ = kernels;
    decomposed(x, gamma, beta, groups, eps, act)
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

/// GroupNorm + activation as ordinary burn ops (what burn's `GroupNorm` computes).
fn decomposed(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f64,
    act: Activation,
) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let xg = x.reshape([n, groups, c / groups * h * w]); // [n, g, m]
    let mean = xg.clone().mean_dim(2); // [n, g, 1]
    let centred = xg - mean;
    let var = centred.clone().square().mean_dim(2); // [n, g, 1]
    let xhat = (centred / var.add_scalar(eps).sqrt()).reshape([n, c, h, w]);
    let z = xhat * gamma.reshape([1, c, 1, 1]) + beta.reshape([1, c, 1, 1]);
    activate(z, act)
}

fn activate(z: Tensor<4>, act: Activation) -> Tensor<4> {
    match act {
        Activation::Identity => z,
        Activation::Silu => silu(z),
    }
}

/// `act(norm(x))` for one of the U-Net's GroupNorm layers: the fused op under
/// [`Kernels::Fused`], burn's own `GroupNorm::forward` under [`Kernels::Decomposed`] (the
/// path the U-Net always took before the kernels existed).
///
/// # Shapes
/// - `x`, output: `[batch, norm.num_channels, h, w]`
pub(crate) fn norm_act(
    norm: &GroupNorm,
    x: Tensor<4>,
    act: Activation,
    kernels: Kernels,
) -> Tensor<4> {
    if let (Kernels::Fused, Some(gamma), Some(beta)) = (kernels, &norm.gamma, &norm.beta)
        && x.dims()[1] == norm.num_channels
        && fused_available(&x)
    {
        return group_norm_act_unchecked(
            x,
            gamma.val(),
            beta.val(),
            norm.num_groups,
            norm.epsilon,
            act,
            kernels,
        );
    }
    activate(norm.forward(x), act)
}

/// `conv.forward(x)`; under [`Kernels::Fused`] on flex, convolutions with a square kernel, a
/// bias, equal strides and no groups or dilation run through the extension of `conv.rs`
/// (forward and both gradients as one GEMM per image); any other convolution runs burn's.
///
/// # Shapes
/// - `x`: `[batch, c_in, h, w]`, output: `[batch, c_out, h', w']`
pub(crate) fn conv_forward(conv: &Conv2d, x: Tensor<4>, kernels: Kernels) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let (Some(spec), Some(bias)) = (fused_conv_spec(conv, &x, kernels), &conv.bias) {
        return conv::forward(x, conv.weight.val(), bias.val(), spec);
    }
    let _ = kernels;
    conv.forward(x)
}

/// `conv.forward(x)` after checking that `x` fits the layer, run by the fused kernels of
/// this module under [`Kernels::Fused`] on flex (see [`Kernels`]) and by burn's `Conv2d`
/// otherwise: the same output either way, within float rounding.
///
/// # Errors
/// [`KernelError::Conv`] when `x`'s channels differ from the layer's input channels, the
/// layer has groups (this checks ungrouped layers only), or the (padded) input is smaller than
/// the kernel.
///
/// # Shapes
/// - `x`: `[batch, c_in, h, w]`, output: `[batch, c_out, h', w']`
pub fn conv2d(conv: &Conv2d, x: Tensor<4>, kernels: Kernels) -> Result<Tensor<4>, KernelError> {
    let input = x.dims();
    let [_, c_in, h, w] = input;
    let [_, w_in, kh, kw] = conv.weight.dims();
    let fail = |why: String| Err(KernelError::Conv { input, why });
    if conv.groups != 1 {
        return fail(format!(
            "{} groups: only ungrouped layers are checked here",
            conv.groups
        ));
    }
    if c_in != w_in {
        return fail(format!("the layer takes {w_in} channels"));
    }
    if input.contains(&0) || kh == 0 || kw == 0 {
        return fail("an empty input or kernel (a size of 0)".into());
    }
    let (ph, pw) = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => {
            (top.saturating_add(bottom), left.saturating_add(right))
        }
        PaddingConfig2d::Valid => (0, 0),
        PaddingConfig2d::Same => (kh - 1, kw - 1),
    };
    let [dy, dx] = conv.dilation;
    let span = |d: usize, k: usize| d.saturating_mul(k - 1).saturating_add(1);
    if h.saturating_add(ph) < span(dy, kh) || w.saturating_add(pw) < span(dx, kw) {
        return fail(format!(
            "the padded input is smaller than the {kh}x{kw} kernel"
        ));
    }
    Ok(conv_forward(conv, x, kernels))
}

/// `conv.forward(x) + residual` (a ResBlock's skip connection); under [`Kernels::Fused`] on
/// flex the residual is added as the convolution stores its output (one pass less over
/// memory), and its gradient is the output's.
///
/// # Shapes
/// - `x`: `[batch, c_in, h, w]`, `residual` and output: `[batch, c_out, h', w']`
pub(crate) fn conv_forward_residual(
    conv: &Conv2d,
    x: Tensor<4>,
    residual: Tensor<4>,
    kernels: Kernels,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let (Some(spec), Some(bias)) = (fused_conv_spec(conv, &x, kernels), &conv.bias)
        && fused_available(&residual)
    {
        let [b, _, h, w] = x.dims();
        let [c_out, _, k, _] = conv.weight.dims();
        let [top, left, bottom, right] = spec.pad;
        let (ho, wo) = (
            (h + top + bottom - k) / spec.stride + 1,
            (w + left + right - k) / spec.stride + 1,
        );
        if residual.dims() == [b, c_out, ho, wo] {
            return conv::forward_residual(x, conv.weight.val(), bias.val(), residual, spec);
        }
    }
    let _ = kernels;
    conv.forward(x) + residual
}

/// The stride and padding under which `conv` on `x` runs the extension of `conv.rs`: fused
/// kernels on flex and f32, equal strides, no groups or dilation, a square kernel that fits
/// the padded input, explicit padding below the kernel size, matching channels.
#[cfg(feature = "flex")]
fn fused_conv_spec(conv: &Conv2d, x: &Tensor<4>, kernels: Kernels) -> Option<conv::Spec> {
    if kernels != Kernels::Fused || !fused_available(x) {
        return None;
    }
    let [_, c_in, h, w] = x.dims();
    let [_, w_in, kh, kw] = conv.weight.dims();
    let pad = match conv.padding {
        PaddingConfig2d::Valid => [0; 4],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [top, left, bottom, right],
        PaddingConfig2d::Same => return None,
    };
    let [sy, sx] = conv.stride;
    let fits = sy == sx
        && sy >= 1
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && kh == kw
        && c_in == w_in
        && pad.iter().all(|&p| p < kh)
        && h + pad[0] + pad[2] >= kh
        && w + pad[1] + pad[3] >= kw;
    fits.then_some(conv::Spec { stride: sy, pad })
}

/// `Tensor::cat(vec![a, b], 1)`; under [`Kernels::Fused`] on flex, one parallel copy per
/// image (and the same for the gradient's split).
///
/// # Shapes
/// - `a`: `[batch, c_a, h, w]`, `b`: `[batch, c_b, h, w]`, output: `[batch, c_a + c_b, h, w]`
pub(crate) fn cat_channels(a: Tensor<4>, b: Tensor<4>, kernels: Kernels) -> Tensor<4> {
    #[cfg(feature = "flex")]
    {
        let ([n, ca, h, w], [nb, cb, hb, wb]) = (a.dims(), b.dims());
        if kernels == Kernels::Fused
            && fused_available(&a)
            && fused_available(&b)
            && (n, h, w) == (nb, hb, wb)
            && n * ca * cb * h * w > 0
        {
            return cat::forward(a, b);
        }
    }
    let _ = kernels;
    Tensor::cat(vec![a, b], 1)
}

/// `layer.forward(x)`; under [`Kernels::Fused`] on flex, while training, a dropout whose mask
/// is a counter-based hash of a seed (drawn from the device RNG, so runs stay reproducible)
/// and the element index: made in parallel, never stored, recomputed for the backward pass.
/// The same semantics as burn's: active only on an autodiff device with the layer in
/// training mode, kept values scaled by `1 / (1 - prob)`.
///
/// # Shapes
/// - `x`, output: any shape
pub(crate) fn dropout_forward<const D: usize>(
    layer: &Dropout,
    x: Tensor<D>,
    kernels: Kernels,
) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if kernels == Kernels::Fused
        && layer.training.is_enabled()
        && layer.prob > 0.0
        && layer.prob < 1.0
        && x.device().is_autodiff()
        && fused_available(&x)
    {
        let seed = draw_seed(&x.device());
        return dropout::forward(x, layer.prob, seed);
    }
    let _ = kernels;
    layer.forward(x)
}

/// A 62-bit seed from the device's RNG (which the trainer reseeds at every step).
#[cfg(feature = "flex")]
fn draw_seed(device: &burn::tensor::Device) -> u64 {
    use burn::tensor::{Distribution, Int};
    let draws = Tensor::<1, Int>::random([2], Distribution::Uniform(0.0, 2_147_483_647.0), device);
    let v: Vec<i64> = draws.into_data().iter::<i64>().collect();
    ((v[0] as u64) << 31) ^ (v[1] as u64)
}

/// Output buffers with guard zones for the kernels' tests: `GUARD` sentinel values before
/// and after the `len` values a kernel may write, checked untouched afterwards (a write past
/// either end of its slice would land there).
#[cfg(all(test, feature = "flex"))]
pub(crate) mod guard {
    /// Values on each side.
    pub const GUARD: usize = 67;
    /// A value no kernel computes in the tests (a NaN with a payload).
    pub fn sentinel() -> f32 {
        f32::from_bits(0x7fc0_beef)
    }
    /// `GUARD + len + GUARD` values: the sentinel in the guards, `fill` inside.
    pub fn buffer(len: usize, fill: f32) -> Vec<f32> {
        let mut v = vec![sentinel(); len + 2 * GUARD];
        v[GUARD..GUARD + len].fill(fill);
        v
    }
    /// The writable middle of a [`buffer`].
    pub fn inner(v: &mut [f32]) -> &mut [f32] {
        let n = v.len();
        &mut v[GUARD..n - GUARD]
    }
    /// Panics unless both guards hold the sentinel, bit for bit.
    pub fn check(v: &[f32], what: &str) {
        let n = v.len();
        for (i, x) in v[..GUARD].iter().chain(&v[n - GUARD..]).enumerate() {
            assert_eq!(
                x.to_bits(),
                sentinel().to_bits(),
                "{what}: guard value {i} overwritten"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn input(dims: [usize; 4], device: &Device) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
        let c = dims[1];
        let x = Tensor::random(dims, Distribution::Normal(0.5, 2.0), device);
        let gamma = Tensor::random([c], Distribution::Normal(1.0, 0.5), device);
        let beta = Tensor::random([c], Distribution::Normal(0.0, 0.5), device);
        (x, gamma, beta)
    }

    fn max_abs(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    fn rel(a: Tensor<1>, b: Tensor<1>) -> f32 {
        let scale: f32 = b.clone().abs().max().into_scalar();
        let diff: f32 = (a - b).abs().max().into_scalar();
        diff / scale.max(1.0)
    }

    /// Awkward shapes: batch 1, groups 1 and groups = channels, odd and non-square sizes,
    /// 1x1 and 7x7 images. (A group of two values has dx = 0 exactly, both paths give
    /// rounding noise there, so the 1x1 case normalises four channels together.)
    const SHAPES: [([usize; 4], usize); 7] = [
        ([1, 4, 5, 3], 2),
        ([3, 6, 7, 7], 1),
        ([2, 8, 4, 4], 8),
        ([2, 4, 1, 1], 1),
        ([1, 3, 9, 1], 3),
        ([4, 32, 14, 14], 8),
        ([2, 64, 7, 7], 32),
    ];

    #[test]
    fn fused_forward_equals_the_decomposed_ops() {
        let device = Device::flex();
        device.seed(3);
        for (dims, groups) in SHAPES {
            let (x, gamma, beta) = input(dims, &device);
            for act in [Activation::Silu, Activation::Identity] {
                let run = |k| {
                    group_norm_act(x.clone(), gamma.clone(), beta.clone(), groups, 1e-6, act, k)
                        .unwrap()
                };
                let err = max_abs(run(Kernels::Fused), run(Kernels::Decomposed));
                assert!(err < 1e-5, "{dims:?} groups {groups} {act:?}: {err}");
            }
        }
    }

    #[test]
    fn fused_forward_equals_burns_group_norm_module() {
        let device = Device::flex();
        device.seed(4);
        let norm = crate::layers::group_norm(8, 32, 1e-6, &device);
        let norm = GroupNorm {
            gamma: norm
                .gamma
                .map(|p| p.map(|_| Tensor::random([32], Distribution::Normal(1.0, 0.3), &device))),
            ..norm
        };
        let x = Tensor::<4>::random([3, 32, 7, 5], Distribution::Normal(0.0, 3.0), &device);
        let fused = norm_act(&norm, x.clone(), Activation::Silu, Kernels::Fused);
        let burn = silu(norm.forward(x));
        assert!(max_abs(fused, burn) < 1e-5);
    }

    #[test]
    fn fused_gradients_equal_the_decomposed_gradients() {
        let device = Device::flex().autodiff();
        device.seed(5);
        for (dims, groups) in SHAPES {
            let (x, gamma, beta) = input(dims, &device);
            let weights = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            for act in [Activation::Silu, Activation::Identity] {
                let grads = |k| {
                    let (x, gamma, beta) = (
                        x.clone().detach().require_grad(),
                        gamma.clone().detach().require_grad(),
                        beta.clone().detach().require_grad(),
                    );
                    let y = group_norm_act(
                        x.clone(),
                        gamma.clone(),
                        beta.clone(),
                        groups,
                        1e-6,
                        act,
                        k,
                    )
                    .unwrap();
                    let g = (y * weights.clone()).sum().backward();
                    let flat = |t: Tensor<4>| t.flatten::<1>(0, 3);
                    [
                        flat(x.grad(&g).unwrap()),
                        gamma.grad(&g).unwrap(),
                        beta.grad(&g).unwrap(),
                    ]
                };
                let (f, d) = (grads(Kernels::Fused), grads(Kernels::Decomposed));
                for (name, (a, b)) in ["dx", "dgamma", "dbeta"].iter().zip(f.into_iter().zip(d)) {
                    let err = rel(a, b);
                    assert!(err < 1e-4, "{dims:?} groups {groups} {act:?} {name}: {err}");
                }
            }
        }
    }

    #[test]
    fn fused_convolutions_equal_burns_values_and_gradients() {
        use burn::nn::conv::Conv2dConfig;
        let device = Device::flex().autodiff();
        device.seed(7);
        // (batch, c_in, c_out, h, w, kernel, padding, stride): 3x3 same, 1x1, valid 3x3, odd
        // and non-square sizes, batch 1, a 1x1 image, and the U-Net's stride-2 downsample
        // (padding bottom and right only) on even and odd sizes.
        let same = |p| [p, p, p, p];
        let cases = [
            (1, 1, 1, 3, 3, 3, same(1), 1),
            (4, 32, 64, 14, 14, 3, same(1), 1),
            (1, 3, 5, 7, 5, 3, same(1), 1),
            (2, 6, 4, 9, 8, 1, same(0), 1),
            (3, 4, 7, 6, 5, 3, same(0), 1),
            (2, 5, 3, 1, 1, 3, same(1), 1),
            (2, 8, 8, 14, 14, 3, [0, 0, 1, 1], 2),
            (3, 4, 6, 7, 9, 3, [0, 0, 1, 1], 2),
            (1, 3, 2, 8, 5, 3, [1, 2, 0, 1], 3),
        ];
        for (b, cin, cout, h, w, k, pad, s) in cases {
            let [top, left, bottom, right] = pad;
            let conv = Conv2dConfig::new([cin, cout], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(top, left, bottom, right))
                .init(&device);
            let x = Tensor::<4>::random([b, cin, h, w], Distribution::Normal(0.0, 1.0), &device);
            let ho = (h + top + bottom - k) / s + 1;
            let wo = (w + left + right - k) / s + 1;
            let weights =
                Tensor::<4>::random([b, cout, ho, wo], Distribution::Normal(0.0, 1.0), &device);
            let run = |k| {
                let x = x.clone().detach().require_grad();
                let y = conv_forward(&conv, x.clone(), k);
                let g = (y.clone() * weights.clone()).sum().backward();
                (
                    y,
                    x.grad(&g).unwrap(),
                    conv.weight.val().grad(&g).unwrap(),
                    conv.bias.as_ref().unwrap().val().grad(&g).unwrap(),
                )
            };
            let (yf, dxf, dwf, dbf) = run(Kernels::Fused);
            let (yd, dxd, dwd, dbd) = run(Kernels::Decomposed);
            let case = (b, cin, cout, h, w, k, pad, s);
            assert!(max_abs(yf, yd) < 1e-4, "{case:?} output");
            let rel4 = |a: Tensor<4>, b: Tensor<4>| rel(a.flatten(0, 3), b.flatten(0, 3));
            assert!(rel4(dxf, dxd) < 1e-4, "{case:?} dx");
            assert!(rel4(dwf, dwd) < 1e-4, "{case:?} dweight");
            assert!(rel(dbf, dbd) < 1e-4, "{case:?} dbias");
        }
    }

    /// `conv2d` turns inputs that do not fit the layer into errors that say so, and runs the
    /// ones that do.
    #[test]
    fn conv2d_checks_its_input() {
        use burn::nn::conv::Conv2dConfig;
        let device = Device::flex();
        let conv = Conv2dConfig::new([3, 4], [3, 3]).init(&device); // valid padding
        let x = |dims| Tensor::<4>::zeros(dims, &device);
        let err = conv2d(&conv, x([1, 2, 5, 5]), Kernels::Fused).unwrap_err();
        assert!(err.to_string().contains("takes 3 channels"), "{err}");
        let err = conv2d(&conv, x([1, 3, 2, 5]), Kernels::Fused).unwrap_err();
        assert!(
            err.to_string().contains("smaller than the 3x3 kernel"),
            "{err}"
        );
        let y = conv2d(&conv, x([2, 3, 5, 4]), Kernels::Fused).unwrap();
        assert_eq!(y.dims(), [2, 4, 3, 2]);
        // An empty input with padding large enough to "fit" the kernel (was a panic).
        let padded = Conv2dConfig::new([3, 4], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
            .init(&device);
        for dims in [[1, 3, 0, 5], [1, 3, 5, 0], [0, 3, 5, 5]] {
            for kernels in [Kernels::Fused, Kernels::Decomposed] {
                let err = conv2d(&padded, x(dims), kernels).unwrap_err();
                assert!(err.to_string().contains("a size of 0"), "{dims:?}: {err}");
            }
        }
    }

    /// The convolution with a residual added as it stores equals burn's convolution plus the
    /// residual, in value and in every gradient (the residual's included), on the 3x3 same
    /// convolution of the ResBlocks (batch 3, odd sizes), a 1x1 one and the stride-2 one.
    #[cfg(feature = "flex")]
    #[test]
    fn fused_residual_convolution_equals_conv_plus_residual() {
        use burn::nn::conv::Conv2dConfig;
        let device = Device::flex().autodiff();
        device.seed(5);
        let same = |p| [p, p, p, p];
        for (b, cin, cout, h, w, k, pad, s) in [
            (3, 5, 7, 9, 6, 3, same(1), 1),
            (2, 4, 3, 5, 5, 1, same(0), 1),
            (2, 4, 6, 8, 7, 3, [0, 0, 1, 1], 2),
        ] {
            let [top, left, bottom, right] = pad;
            let conv = Conv2dConfig::new([cin, cout], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(top, left, bottom, right))
                .init(&device);
            let (ho, wo) = (
                (h + top + bottom - k) / s + 1,
                (w + left + right - k) / s + 1,
            );
            let normal = |dims| Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let (x, res, weights) = (
                normal([b, cin, h, w]),
                normal([b, cout, ho, wo]),
                normal([b, cout, ho, wo]),
            );
            let run = |kernels| {
                let (x, res) = (x.clone().require_grad(), res.clone().require_grad());
                let y = conv_forward_residual(&conv, x.clone(), res.clone(), kernels);
                let g = (y.clone() * weights.clone()).sum().backward();
                (
                    y,
                    x.grad(&g).unwrap(),
                    res.grad(&g).unwrap(),
                    conv.weight.val().grad(&g).unwrap(),
                )
            };
            let (yf, dxf, drf, dwf) = run(Kernels::Fused);
            let (yd, dxd, drd, dwd) = run(Kernels::Decomposed);
            let case = (b, cin, cout, h, w, k, s);
            assert!(max_abs(yf, yd) < 1e-4, "{case:?} output");
            let rel4 = |a: Tensor<4>, b: Tensor<4>| rel(a.flatten(0, 3), b.flatten(0, 3));
            assert!(rel4(dxf, dxd) < 1e-4, "{case:?} dx");
            assert!(rel4(dwf, dwd) < 1e-4, "{case:?} dweight");
            // The residual's gradient is the output's: exactly the weights.
            assert_eq!(
                drf.into_data(),
                weights.clone().inner().into_data(),
                "{case:?}"
            );
            assert_eq!(
                drd.into_data(),
                weights.clone().inner().into_data(),
                "{case:?}"
            );
        }
    }

    /// The fused concatenation is exact: the same values as burn's `cat`, and gradients that
    /// are the output gradient's channel slices, on a batch of 1, a 1x1 image, one channel
    /// on either side, and non-square sizes.
    #[cfg(feature = "flex")]
    #[test]
    fn fused_concatenation_equals_burns_cat_and_splits_its_gradient() {
        let device = Device::flex().autodiff();
        device.seed(11);
        for (n, ca, cb, h, w) in [(2, 3, 5, 4, 7), (1, 1, 1, 1, 1), (3, 64, 32, 14, 14)] {
            let normal = |dims| Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let (a, b) = (normal([n, ca, h, w]), normal([n, cb, h, w]));
            let weights = normal([n, ca + cb, h, w]);
            let run = |kernels| {
                let (a, b) = (a.clone().require_grad(), b.clone().require_grad());
                let y = cat_channels(a.clone(), b.clone(), kernels);
                let g = (y.clone() * weights.clone()).sum().backward();
                let grads = (a.grad(&g).unwrap(), b.grad(&g).unwrap());
                (
                    y.inner().into_data(),
                    grads.0.into_data(),
                    grads.1.into_data(),
                )
            };
            let fused = run(Kernels::Fused);
            assert_eq!(fused, run(Kernels::Decomposed), "{:?}", (n, ca, cb, h, w));
            // d sum(cat(a, b) * weights) / da is the first ca channels of the weights.
            let wa = weights.clone().inner().narrow(1, 0, ca).into_data();
            let wb = weights.clone().inner().narrow(1, ca, cb).into_data();
            assert_eq!((fused.1, fused.2), (wa, wb));
        }
    }

    #[cfg(feature = "flex")]
    #[test]
    fn hash_dropout_keeps_the_right_share_scales_and_masks_its_gradient() {
        let device = Device::flex().autodiff();
        let layer = burn::nn::DropoutConfig::new(0.1).init();
        let n = 1 << 20;
        let x = Tensor::<2>::ones([1024, n / 1024], &device).require_grad();
        let y = dropout_forward(&layer, x.clone(), Kernels::Fused);
        let kept: f32 = y.clone().greater_elem(0.0).float().sum().into_scalar();
        // Binomial(n, 0.9): mean 0.9 n, sd sqrt(0.09 n) = 307; allow 5 sd.
        assert!(
            (kept - 0.9 * n as f32).abs() < 5.0 * 307.0,
            "kept {kept} of {n}"
        );
        let values: Vec<f32> = y.clone().into_data().iter::<f32>().collect();
        assert!(
            values
                .iter()
                .all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6)
        );
        // d sum(y) / dx is the mask scaled: equal to y itself for x = 1.
        let g = y.clone().sum().backward();
        let dx = x.grad(&g).unwrap();
        assert_eq!(dx.into_data(), y.clone().inner().into_data());
        // Off the autodiff device, or in a frozen layer, dropout is the identity.
        let plain = Tensor::<2>::ones([4, 4], &Device::flex());
        let out = dropout_forward(&layer, plain.clone(), Kernels::Fused);
        assert_eq!(out.into_data(), plain.into_data());
        // The mask is a function of (seed, index) only (the seed comes from the device RNG,
        // which other tests share, so it is passed directly here).
        let mask = |seed| dropout::forward(x.clone(), 0.1, seed).inner().into_data();
        assert_eq!(mask(42), mask(42));
        assert_ne!(mask(42), mask(43));
    }

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
            cpu::with_threads(threads, || {
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

    #[test]
    fn fused_output_is_bit_identical_across_calls() {
        let device = Device::flex();
        device.seed(6);
        let (x, gamma, beta) = input([8, 32, 14, 14], &device);
        let run = || {
            group_norm_act(
                x.clone(),
                gamma.clone(),
                beta.clone(),
                8,
                1e-6,
                Activation::Silu,
                Kernels::Fused,
            )
            .unwrap()
            .into_data()
        };
        let first = run();
        for _ in 0..3 {
            assert_eq!(run(), first);
        }
    }

    #[test]
    fn wrong_inputs_are_errors() {
        let device = Device::flex();
        let (x, gamma, beta) = input([2, 6, 3, 3], &device);
        let call = |groups, gamma: Tensor<1>, beta: Tensor<1>, eps| {
            group_norm_act(
                x.clone(),
                gamma,
                beta,
                groups,
                eps,
                Activation::Silu,
                Kernels::Fused,
            )
            .map(|_| ())
        };
        assert_eq!(
            call(4, gamma.clone(), beta.clone(), 1e-6),
            Err(KernelError::Groups {
                groups: 4,
                channels: 6
            })
        );
        assert_eq!(
            call(0, gamma.clone(), beta.clone(), 1e-6),
            Err(KernelError::Groups {
                groups: 0,
                channels: 6
            })
        );
        let short = Tensor::<1>::ones([5], &device);
        assert_eq!(
            call(3, short.clone(), beta.clone(), 1e-6),
            Err(KernelError::Affine {
                name: "gamma",
                len: 5,
                channels: 6
            })
        );
        assert_eq!(
            call(3, gamma.clone(), short, 1e-6),
            Err(KernelError::Affine {
                name: "beta",
                len: 5,
                channels: 6
            })
        );
        assert_eq!(
            call(3, gamma.clone(), beta.clone(), 0.0),
            Err(KernelError::Epsilon(0.0))
        );
        assert!(
            KernelError::Groups {
                groups: 4,
                channels: 6
            }
            .to_string()
            .contains("divides")
        );
    }
}
