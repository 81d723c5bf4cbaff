//! A convolution of a GroupNorm + activation, `conv(act(norm(x)))`, as one op without
//! gradients (sampling, evaluation): on the direct path the normalisation is applied as the
//! convolution pads its input ([`Padded::pad_normalised_into`](super::shifted::Padded)), so
//! the normalised tensor is never written to memory and read back; on the others it is
//! computed first. The values are those of the two ops one after the other, bit for bit.
//!
//! Only for devices without autodiff (the entry points in [`super`] check): a backend
//! extension on flex alone, no backward.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use super::extension::{NormInput, Spec, forward_flex};

/// The GroupNorm + activation before the convolution: groups, epsilon, SiLU or none.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Norm {
    /// Groups (divides the input channels).
    pub groups: usize,
    /// The variance's epsilon.
    pub eps: f32,
    /// SiLU after the normalisation (else none).
    pub silu: bool,
}

impl Norm {
    fn input(self, shift: Option<FlexTensor>, gamma: FlexTensor, beta: FlexTensor) -> NormInput {
        NormInput {
            shift,
            gamma,
            beta,
            groups: self.groups,
            eps: self.eps,
            silu: self.silu,
        }
    }
}

/// `conv(act(norm(x)))`, and the same of `x + shift` with the residual added.
///
/// Called only through [`forward`] and [`forward_shifted_residual`], whose callers check
/// shapes, groups, dtype (f32) and that the device has no autodiff.
#[backend_extension(Flex)]
pub trait Conv2dNormedOps: Backend {
    /// `conv(act(gamma_c (x - mean_g) / sqrt(var_g + eps) + beta_c), weight) + bias`.
    ///
    /// # Shapes
    /// - `x`: `[b, c_in, h, w]`; `gamma`, `beta`: `[c_in]`
    /// - `weight`, `bias`, output: as [`Conv2dGemmOps::conv2d_gemm`](super::extension)
    #[allow(clippy::too_many_arguments)]
    fn conv2d_normed(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        norm: Norm,
        spec: Spec,
    ) -> FloatTensor<Self>;

    /// [`conv2d_normed`](Self::conv2d_normed) of `x + shift` (`shift` broadcast over the
    /// pixels), `residual` added to the output.
    ///
    /// # Shapes
    /// - as [`conv2d_normed`](Self::conv2d_normed); `shift`: `[b, c_in]`; `residual`: the
    ///   output's shape
    #[allow(clippy::too_many_arguments)]
    fn conv2d_normed_shifted_residual(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        norm: Norm,
        spec: Spec,
    ) -> FloatTensor<Self>;
}

impl Conv2dNormedOps for Flex {
    fn conv2d_normed(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        norm: Norm,
        spec: Spec,
    ) -> FlexTensor {
        let norm = norm.input(None, gamma, beta);
        forward_flex(x, weight, bias, None, Some(norm), spec)
    }

    fn conv2d_normed_shifted_residual(
        x: FlexTensor,
        shift: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        residual: FlexTensor,
        norm: Norm,
        spec: Spec,
    ) -> FlexTensor {
        let norm = norm.input(Some(shift), gamma, beta);
        let residual = Some(residual.to_contiguous());
        forward_flex(x, weight, bias, residual, Some(norm), spec)
    }
}

/// Runs [`Conv2dNormedOps::conv2d_normed`] through burn's dispatch. The caller guarantees a
/// flex device without autodiff, f32 values, and shapes that fit (as for the convolution
/// and the GroupNorm alone).
pub(crate) fn forward(
    x: Tensor<4>,
    [gamma, beta]: [Tensor<1>; 2],
    weight: Tensor<4>,
    bias: Tensor<1>,
    norm: Norm,
    spec: Spec,
) -> Tensor<4> {
    let out = <Dispatch as Conv2dNormedOps>::conv2d_normed(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        norm,
        spec,
    );
    Tensor::from_dispatch(out)
}

/// Runs [`Conv2dNormedOps::conv2d_normed_shifted_residual`] through burn's dispatch, under
/// [`forward`]'s guarantees (`shift` `[b, c_in]`, `residual` the output's shape).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_shifted_residual(
    x: Tensor<4>,
    shift: Tensor<2>,
    [gamma, beta]: [Tensor<1>; 2],
    weight: Tensor<4>,
    bias: Tensor<1>,
    residual: Tensor<4>,
    norm: Norm,
    spec: Spec,
) -> Tensor<4> {
    let out = <Dispatch as Conv2dNormedOps>::conv2d_normed_shifted_residual(
        x.into_dispatch(),
        shift.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        residual.into_dispatch(),
        norm,
        spec,
    );
    Tensor::from_dispatch(out)
}
