//! GroupNorm followed by an activation as one op ([`group_norm_act`]): on flex (f32) the
//! fused kernels of [`extension`] (a burn backend extension) and [`slices`] (the loops), on
//! every other backend and dtype the same maths as ordinary burn ops.

#[cfg(feature = "flex")]
mod extension;
#[cfg(feature = "flex")]
pub(super) mod slices;

use burn::nn::GroupNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use super::{Activation, KernelError, Kernels, fused_available};

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
        return extension::forward(x, None, gamma, beta, groups, eps, act == Activation::Silu);
    }
    let _ = kernels;
    decomposed(x, gamma, beta, groups, eps, act)
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

/// `act(norm(x + shift))` with `shift` (`[batch, channels]`) broadcast over the pixels (a
/// ResBlock's time embedding): on flex (f32, under [`Kernels::Fused`]) one op that forms the
/// sum block by block in cache, so the sum is never a tensor in memory (a pass over the
/// activation forward, and the broadcast's reduction backward, saved); elsewhere
/// [`norm_act`] of the sum.
///
/// # Shapes
/// - `x`, output: `[batch, norm.num_channels, h, w]`; `shift`: `[batch, norm.num_channels]`
pub(crate) fn norm_act_shifted(
    norm: &GroupNorm,
    x: Tensor<4>,
    shift: Tensor<2>,
    act: Activation,
    kernels: Kernels,
) -> Tensor<4> {
    let [b, c, _, _] = x.dims();
    #[cfg(feature = "flex")]
    if let (Kernels::Fused, Some(gamma), Some(beta)) = (kernels, &norm.gamma, &norm.beta)
        && c == norm.num_channels
        && shift.dims() == [b, c]
        && fused_available(&x)
        && fused_available(&shift)
    {
        let (groups, silu) = (norm.num_groups, act == Activation::Silu);
        let (gamma, beta) = (gamma.val(), beta.val());
        let shift = Some(shift);
        return extension::forward(x, shift, gamma, beta, groups, norm.epsilon, silu);
    }
    norm_act(norm, x + shift.reshape([b, c, 1, 1]), act, kernels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::{max_abs, rel};
    use burn::tensor::{Device, Distribution};

    fn input(dims: [usize; 4], device: &Device) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
        let c = dims[1];
        let x = Tensor::random(dims, Distribution::Normal(0.5, 2.0), device);
        let gamma = Tensor::random([c], Distribution::Normal(1.0, 0.5), device);
        let beta = Tensor::random([c], Distribution::Normal(0.0, 0.5), device);
        (x, gamma, beta)
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

    /// `norm_act_shifted` equals GroupNorm + SiLU of `x + shift` made as a tensor first: the
    /// fused op's output bit for bit (the same sums of the same values), and every gradient
    /// (`x`, `shift`, `gamma`, `beta`) within rounding of the decomposed ops'.
    #[test]
    fn shifted_norm_equals_the_norm_of_the_sum() {
        let device = Device::flex().autodiff();
        device.seed(9);
        for (dims, groups) in SHAPES {
            let [b, c, _, _] = dims;
            let (x, gamma, beta) = input(dims, &device);
            let shift = Tensor::<2>::random([b, c], Distribution::Normal(0.0, 1.0), &device);
            let weights = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let norm = GroupNorm {
                gamma: Some(burn::module::Param::from_tensor(gamma.clone())),
                beta: Some(burn::module::Param::from_tensor(beta.clone())),
                ..crate::layers::group_norm(groups, c, 1e-6, &device)
            };
            let sum = |x: Tensor<4>, s: Tensor<2>| x + s.reshape([b, c, 1, 1]);
            let plain = norm_act(
                &norm,
                sum(x.clone(), shift.clone()),
                Activation::Silu,
                Kernels::Fused,
            );
            let fused = norm_act_shifted(
                &norm,
                x.clone(),
                shift.clone(),
                Activation::Silu,
                Kernels::Fused,
            );
            assert_eq!(
                fused.into_data(),
                plain.into_data(),
                "{dims:?} groups {groups}"
            );
            let grads = |k| {
                let (x, shift) = (
                    x.clone().detach().require_grad(),
                    shift.clone().detach().require_grad(),
                );
                let y = match k {
                    Kernels::Fused => {
                        norm_act_shifted(&norm, x.clone(), shift.clone(), Activation::Silu, k)
                    }
                    Kernels::Decomposed => {
                        norm_act(&norm, sum(x.clone(), shift.clone()), Activation::Silu, k)
                    }
                };
                let g = (y * weights.clone()).sum().backward();
                let (gamma, beta) = (norm.gamma.as_ref().unwrap(), norm.beta.as_ref().unwrap());
                [
                    x.grad(&g).unwrap().flatten::<1>(0, 3),
                    shift.grad(&g).unwrap().flatten::<1>(0, 1),
                    gamma.val().grad(&g).unwrap(),
                    beta.val().grad(&g).unwrap(),
                ]
            };
            let (f, d) = (grads(Kernels::Fused), grads(Kernels::Decomposed));
            for (name, (a, b)) in ["dx", "dshift", "dgamma", "dbeta"]
                .iter()
                .zip(f.into_iter().zip(d))
            {
                let err = rel(a, b);
                assert!(err < 1e-4, "{dims:?} groups {groups} {name}: {err}");
            }
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
