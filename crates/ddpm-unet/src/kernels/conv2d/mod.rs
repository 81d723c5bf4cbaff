//! Convolutions ([`conv2d`]): on flex (f32), square kernels with equal strides and no groups
//! or dilation run the kernels of [`extension`] (a burn backend extension: forward and both
//! gradients), [`shifted`] (stride 1 on shifted views of the padded images) and [`avx512`]
//! (its register-blocked inner product); every other convolution runs burn's `Conv2d`.

#[cfg(feature = "flex")]
mod avx512;
#[cfg(feature = "flex")]
mod cache;
#[cfg(feature = "flex")]
mod extension;
#[cfg(feature = "flex")]
mod normed;
#[cfg(feature = "flex")]
mod phases;
#[cfg(feature = "flex")]
mod pointwise;
#[cfg(feature = "flex")]
mod product;
#[cfg(feature = "flex")]
mod shifted;
#[cfg(feature = "flex")]
mod upsampled;
#[cfg(feature = "flex")]
mod winograd;

#[cfg(feature = "flex")]
pub use cache::{
    set_transformed_kernel_capacity, transformed_kernel_bytes, transformed_kernel_capacity,
};

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

#[cfg(feature = "flex")]
use super::fused_available;
use super::{Activation, KernelError, Kernels, norm_act, norm_act_shifted};

/// `conv.forward(x)`; under [`Kernels::Fused`] on flex, convolutions with a square kernel, a
/// bias, equal strides and no groups or dilation run through [`extension`]
/// (forward and both gradients as one GEMM per image); any other convolution runs burn's.
///
/// # Shapes
/// - `x`: `[batch, c_in, h, w]`, output: `[batch, c_out, h', w']`
pub(crate) fn conv_forward(conv: &Conv2d, x: Tensor<4>, kernels: Kernels) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let (Some(spec), Some(bias)) = (fused_conv_spec(conv, &x, kernels), &conv.bias) {
        return extension::forward(x, conv.weight.val(), bias.val(), spec);
    }
    let _ = kernels;
    conv.forward(x)
}

/// `conv.forward(up(x))`, `up` the nearest-neighbour x2 upsampling (the U-Net's
/// [`Upsample`](crate::Upsample)). Under [`Kernels::Fused`] on flex, a 3x3 convolution with
/// padding 1 that would run the direct kernel runs as four 2x2 convolutions of `x`, one per
/// output phase ([`upsampled`]: 2.25 times fewer multiply-adds, no upsampled copy; the same
/// values to the rounding of the summed weights); otherwise `x` is upsampled and convolved.
///
/// # Shapes
/// - `x`: `[batch, c_in, h, w]`, output: `[batch, c_out, h'', w'']` (`[batch, c_out, 2h, 2w]`
///   for the U-Net's 3x3 convolution with padding 1)
pub(crate) fn upsample_conv_forward(conv: &Conv2d, x: Tensor<4>, kernels: Kernels) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    #[cfg(feature = "flex")]
    if let (Some(spec), Some(bias)) = (
        fused_conv_spec_of(conv, [b, c, 2 * h, 2 * w], &x, kernels),
        &conv.bias,
    ) && spec.stride == 1
        && spec.pad == [1; 4]
        && conv.weight.dims()[2] == 3
        && extension::winograd_tiles_of([b, c, 2 * h, 2 * w], conv.weight.dims()[0], 3, spec)
            .is_none()
    {
        return upsampled::forward(x, conv.weight.val(), bias.val());
    }
    let _ = (b, c);
    let options =
        InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([2 * h, 2 * w]);
    conv_forward(conv, interpolate(x, options), kernels)
}

/// `weight x + bias (+ residual)` at every pixel: a 1x1 convolution given its weight as a
/// matrix (the attention block's projections, from `Linear` weights transposed), on flex
/// (f32) by the 1x1 kernel of [`extension`] (one gemm per block of output rows on the NCHW
/// planes, the residual added as it stores; forward and both gradients). `None` elsewhere,
/// or when the shapes do not fit or a dimension is empty.
///
/// # Shapes
/// - `x`: `[batch, c_in, h, w]`, `weight`: `[c_out, c_in]`, `bias`: `[c_out]`
/// - `residual` and output: `[batch, c_out, h, w]`
pub(crate) fn pixel_linear(
    x: Tensor<4>,
    weight: Tensor<2>,
    bias: Tensor<1>,
    residual: Option<Tensor<4>>,
) -> Option<Tensor<4>> {
    let [b, c_in, h, w] = x.dims();
    let [c_out, w_in] = weight.dims();
    let fits = w_in == c_in
        && bias.dims() == [c_out]
        && residual
            .as_ref()
            .is_none_or(|r| r.dims() == [b, c_out, h, w])
        && !x.dims().contains(&0)
        && c_out > 0;
    #[cfg(feature = "flex")]
    if fits
        && fused_available(&x)
        && fused_available(&weight)
        && fused_available(&bias)
        && residual.as_ref().is_none_or(fused_available)
    {
        let weight = weight.reshape([c_out, c_in, 1, 1]);
        let spec = extension::Spec {
            stride: 1,
            pad: [0; 4],
        };
        return Some(match residual {
            Some(r) => extension::forward_residual(x, weight, bias, r, spec),
            None => extension::forward(x, weight, bias, spec),
        });
    }
    let _ = (fits, residual);
    None
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
        && residual.dims() == output_dims(conv, &x, spec)
    {
        return extension::forward_residual(x, conv.weight.val(), bias.val(), residual, spec);
    }
    let _ = kernels;
    conv.forward(x) + residual
}

/// `conv(act(norm(x)))`: on flex without autodiff (sampling, evaluation; f32, under
/// [`Kernels::Fused`]) one op that normalises the input as the convolution pads it, where the
/// convolution runs the direct kernel, so the normalised tensor is never stored and read back;
/// elsewhere [`norm_act`] and then [`conv_forward`]. The same values either way, bit for bit.
///
/// # Shapes
/// - `x`: `[batch, norm.num_channels, h, w]`, output: `[batch, c_out, h', w']`
pub(crate) fn norm_act_conv(
    norm: &GroupNorm,
    x: Tensor<4>,
    act: Activation,
    conv: &Conv2d,
    kernels: Kernels,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some((affine, n)) = normed_args(norm, &x, act)
        && let (Some(spec), Some(bias)) = (fused_conv_spec(conv, &x, kernels), &conv.bias)
    {
        return normed::forward(x, affine, conv.weight.val(), bias.val(), n, spec);
    }
    conv_forward(conv, norm_act(norm, x, act, kernels), kernels)
}

/// `conv(act(norm(x + shift))) + residual` (a ResBlock's second half, its dropout inactive),
/// `shift` (`[batch, channels]`) broadcast over the pixels: as [`norm_act_conv`], else
/// [`norm_act_shifted`] and then [`conv_forward_residual`].
///
/// # Shapes
/// - `x`: `[batch, norm.num_channels, h, w]`; `shift`: `[batch, norm.num_channels]`;
///   `residual` and output: `[batch, c_out, h', w']`
pub(crate) fn norm_act_shifted_conv_residual(
    norm: &GroupNorm,
    x: Tensor<4>,
    shift: Tensor<2>,
    act: Activation,
    conv: &Conv2d,
    residual: Tensor<4>,
    kernels: Kernels,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some((affine, n)) = normed_args(norm, &x, act)
        && let (Some(spec), Some(bias)) = (fused_conv_spec(conv, &x, kernels), &conv.bias)
        && shift.dims() == [x.dims()[0], norm.num_channels]
        && fused_available(&shift)
        && fused_available(&residual)
        && residual.dims() == output_dims(conv, &x, spec)
    {
        let (weight, bias) = (conv.weight.val(), bias.val());
        return normed::forward_shifted_residual(x, shift, affine, weight, bias, residual, n, spec);
    }
    let h = norm_act_shifted(norm, x, shift, act, kernels);
    conv_forward_residual(conv, h, residual, kernels)
}

/// `norm`'s parameters for [`normed`] when it applies to `x`: a flex device without autodiff
/// (nothing to differentiate), no empty dimension, f32 values and parameters, matching
/// channels, groups that divide them.
#[cfg(feature = "flex")]
fn normed_args(
    norm: &GroupNorm,
    x: &Tensor<4>,
    act: Activation,
) -> Option<([Tensor<1>; 2], normed::Norm)> {
    let (gamma, beta) = (norm.gamma.as_ref()?.val(), norm.beta.as_ref()?.val());
    let (c, groups) = (x.dims()[1], norm.num_groups);
    let fits = !x.device().is_autodiff()
        && !x.dims().contains(&0)
        && fused_available(x)
        && fused_available(&gamma)
        && fused_available(&beta)
        && c == norm.num_channels
        && groups > 0
        && c % groups == 0
        && gamma.dims() == [c]
        && beta.dims() == [c];
    let n = normed::Norm {
        groups,
        eps: norm.epsilon as f32,
        silu: act == Activation::Silu,
    };
    fits.then_some(([gamma, beta], n))
}

/// The output's shape, `[b, c_out, ho, wo]`, of `conv` on `x` under `spec`.
#[cfg(feature = "flex")]
fn output_dims(conv: &Conv2d, x: &Tensor<4>, spec: extension::Spec) -> [usize; 4] {
    let [b, _, h, w] = x.dims();
    let [c_out, _, k, _] = conv.weight.dims();
    let [top, left, bottom, right] = spec.pad;
    [
        b,
        c_out,
        (h + top + bottom - k) / spec.stride + 1,
        (w + left + right - k) / spec.stride + 1,
    ]
}

/// The stride and padding under which `conv` on `x` runs [`extension`]: fused
/// kernels on flex and f32, equal strides, no groups or dilation, a square kernel that fits
/// the padded input, explicit padding below the kernel size, matching channels.
#[cfg(feature = "flex")]
fn fused_conv_spec(conv: &Conv2d, x: &Tensor<4>, kernels: Kernels) -> Option<extension::Spec> {
    fused_conv_spec_of(conv, x.dims(), x, kernels)
}

/// [`fused_conv_spec`] for an input of shape `dims` on `x`'s device and dtype.
#[cfg(feature = "flex")]
fn fused_conv_spec_of(
    conv: &Conv2d,
    dims: [usize; 4],
    x: &Tensor<4>,
    kernels: Kernels,
) -> Option<extension::Spec> {
    if kernels != Kernels::Fused || !fused_available(x) {
        return None;
    }
    let [_, c_in, h, w] = dims;
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
    fits.then_some(extension::Spec { stride: sy, pad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::{max_abs, rel};
    use burn::tensor::{Device, Distribution};

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
            // Winograd's F(2x2, 3x3): 128 channels and more (from 32 on CPUs without
            // AVX-512, so the 32-64 case above too), odd sizes, one-sided padding.
            (2, 128, 128, 7, 6, 3, same(1), 1),
            (1, 128, 160, 5, 8, 3, [2, 0, 1, 2], 1),
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

    /// Sampling's repeated calls with the same weights run on the kept packing of the direct
    /// kernel from the third on (`cache`): every call gives the first call's bits, layers
    /// taking turns get their own kernels, and a layer with other weights (a new tensor, as
    /// an optimiser step makes) is never served an old packing.
    #[test]
    fn kept_packed_kernels_serve_only_their_own_weights() {
        use burn::nn::conv::Conv2dConfig;
        let device = Device::flex();
        device.seed(11);
        let conv = |cin, cout| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(&device)
        };
        let (a, b) = (conv(32, 64), conv(32, 64));
        let x = Tensor::<4>::random([3, 32, 9, 7], Distribution::Normal(0.0, 1.0), &device);
        let fused = |c: &Conv2d| conv_forward(c, x.clone(), Kernels::Fused).into_data();
        let (first_a, first_b) = (fused(&a), fused(&b));
        for _ in 0..4 {
            assert_eq!(fused(&a), first_a);
            assert_eq!(fused(&b), first_b);
        }
        let want = conv_forward(&a, x.clone(), Kernels::Decomposed);
        assert!(max_abs(Tensor::from_data(first_a.clone(), &device), want) < 1e-4);
        // The same layer after a step: new weights, never the kept packing of the old ones.
        let mut stepped = a.clone();
        stepped.weight = burn::module::Param::from_tensor(a.weight.val() * 0.5);
        let half = conv_forward(&stepped, x.clone(), Kernels::Fused);
        let want = conv_forward(&stepped, x.clone(), Kernels::Decomposed);
        assert!(max_abs(half, want) < 1e-4);
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
            (2, 128, 128, 5, 7, 3, same(1), 1),
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
    /// The convolution of a GroupNorm + SiLU (with and without the time-embedding shift and
    /// the residual) gives the bits of the norm's op and then the convolution's, on flex
    /// without autodiff: on the direct kernel (normalised as it pads: batches that split into
    /// uneven groups, odd sizes, a padding of 2 whose rows are more than one value apart, no
    /// SiLU) and on the paths that normalise first (1x1, stride 2, Winograd).
    #[cfg(feature = "flex")]
    #[test]
    fn normalised_convolution_equals_the_norm_then_the_convolution_bit_for_bit() {
        use burn::nn::conv::Conv2dConfig;
        let device = Device::flex();
        device.seed(13);
        let same = |p| [p, p, p, p];
        for (b, cin, cout, h, w, k, pad, s, groups, act) in [
            (5, 32, 16, 14, 14, 3, same(1), 1, 8, Activation::Silu),
            (1, 16, 8, 7, 9, 3, same(1), 1, 4, Activation::Silu),
            (3, 8, 8, 6, 5, 5, same(2), 1, 2, Activation::Identity),
            (2, 8, 12, 6, 6, 1, same(0), 1, 4, Activation::Silu),
            (2, 8, 8, 8, 7, 3, [0, 0, 1, 1], 2, 4, Activation::Silu),
            (2, 128, 128, 6, 5, 3, same(1), 1, 32, Activation::Silu),
        ] {
            let [top, left, bottom, right] = pad;
            let conv = Conv2dConfig::new([cin, cout], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(top, left, bottom, right))
                .init(&device);
            let mut norm = crate::layers::group_norm(groups, cin, 1e-6, &device);
            let affine =
                |shift| Tensor::<1>::random([cin], Distribution::Normal(shift, 0.5), &device);
            norm.gamma = Some(burn::module::Param::from_tensor(affine(1.0)));
            norm.beta = Some(burn::module::Param::from_tensor(affine(0.0)));
            let normal = |dims| Tensor::<4>::random(dims, Distribution::Normal(0.5, 2.0), &device);
            let x = normal([b, cin, h, w]);
            let shift = Tensor::<2>::random([b, cin], Distribution::Normal(0.0, 1.0), &device);
            let out = [
                b,
                cout,
                (h + top + bottom - k) / s + 1,
                (w + left + right - k) / s + 1,
            ];
            let res = normal(out);
            let fused = Kernels::Fused;
            let case = (b, cin, cout, h, w, k, s);

            let got = norm_act_conv(&norm, x.clone(), act, &conv, fused);
            let want = conv_forward(&conv, norm_act(&norm, x.clone(), act, fused), fused);
            assert_eq!(got.into_data(), want.clone().into_data(), "{case:?}");
            let decomposed = Kernels::Decomposed;
            let plain = conv_forward(
                &conv,
                norm_act(&norm, x.clone(), act, decomposed),
                decomposed,
            );
            assert!(max_abs(want, plain) < 1e-3, "{case:?}: against burn's ops");

            let got = norm_act_shifted_conv_residual(
                &norm,
                x.clone(),
                shift.clone(),
                act,
                &conv,
                res.clone(),
                fused,
            );
            let h = norm_act_shifted(&norm, x.clone(), shift.clone(), act, fused);
            let want = conv_forward_residual(&conv, h, res.clone(), fused);
            assert_eq!(got.into_data(), want.into_data(), "{case:?} shifted");
        }
    }
}
