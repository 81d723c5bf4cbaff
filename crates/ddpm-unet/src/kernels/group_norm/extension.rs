//! The fused GroupNorm + activation as a burn backend extension: a primitive op with its own
//! kernels on the flex backend and a hand-written backward (one fused kernel) for `Autodiff`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
};
use burn::tensor::Tensor;

use super::slices::{self, Dims};
use crate::kernels::flex_tensor::{contiguous, f32s, flex_tensor};

/// GroupNorm followed by SiLU (`silu = true`) or by nothing, in one op.
///
/// Called only through [`forward`], which checks shapes, groups and dtype (f32) first.
#[backend_extension(Flex, Autodiff)]
pub trait GroupNormActOps: Backend {
    /// `act(gamma_c (x - mean_g) / sqrt(var_g + eps) + beta_c)`.
    ///
    /// # Shapes
    /// - `x`, output: `[n, c, h, w]`
    /// - `gamma`, `beta`: `[c]`
    fn group_norm_act(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> FloatTensor<Self>;

    /// `(dx, dgamma, dbeta)` of [`group_norm_act`](Self::group_norm_act) for the output
    /// gradient `grad`.
    fn group_norm_act_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// [`group_norm_act`](Self::group_norm_act) of `x + shift` (`shift`: `[n, c]`, one value
    /// per image and channel, broadcast over the pixels: a ResBlock's time embedding), the
    /// sum formed block by block in cache instead of as a tensor of its own.
    ///
    /// # Shapes
    /// - `x`, output: `[n, c, h, w]`; `shift`: `[n, c]`; `gamma`, `beta`: `[c]`
    #[allow(clippy::too_many_arguments)]
    fn group_norm_act_shifted(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> FloatTensor<Self>;

    /// `(dx, dshift, dgamma, dbeta)` of
    /// [`group_norm_act_shifted`](Self::group_norm_act_shifted) for the output gradient
    /// `grad` (`dshift` `[n, c]`: each image's and channel's sum of `dx`).
    #[allow(clippy::too_many_arguments)]
    fn group_norm_act_shifted_backward(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );
}

fn dims_of(x: &FlexTensor, groups: usize) -> Dims {
    let shape = x.shape();
    Dims {
        n: shape[0],
        c: shape[1],
        hw: shape[2] * shape[3],
        groups,
    }
}

/// The flex forward pass, of `x + shift` (`shift`: `[n, c]`) when there is a shift.
fn forward_flex(
    x: FlexTensor,
    shift: Option<FlexTensor>,
    gamma: FlexTensor,
    beta: FlexTensor,
    [groups, silu]: [usize; 2],
    eps: f64,
) -> FlexTensor {
    let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let shift = shift.map(contiguous);
    let d = dims_of(&x, groups);
    let (xs, ss) = (f32s(&x), shift.as_ref().map(f32s));
    let y = slices::forward(xs, ss, f32s(&gamma), f32s(&beta), d, eps as f32, silu == 1);
    flex_tensor(x.shape(), y)
}

/// The flex backward pass: `(dx, dshift, dgamma, dbeta)`, `dshift` when there is a shift.
fn backward_flex(
    [x, gamma, beta, grad]: [FlexTensor; 4],
    shift: Option<FlexTensor>,
    [groups, silu]: [usize; 2],
    eps: f64,
) -> (FlexTensor, Option<FlexTensor>, FlexTensor, FlexTensor) {
    let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let (shift, grad) = (shift.map(contiguous), contiguous(grad));
    let d = dims_of(&x, groups);
    let g = slices::backward(
        f32s(&x),
        shift.as_ref().map(f32s),
        f32s(&gamma),
        f32s(&beta),
        f32s(&grad),
        d,
        eps as f32,
        silu == 1,
    );
    let dshift = shift
        .zip(g.dshift)
        .map(|(s, ds)| flex_tensor(s.shape(), ds));
    (
        flex_tensor(x.shape(), g.dx),
        dshift,
        flex_tensor(gamma.shape(), g.dgamma),
        flex_tensor(beta.shape(), g.dbeta),
    )
}

impl GroupNormActOps for Flex {
    fn group_norm_act(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> FlexTensor {
        forward_flex(x, None, gamma, beta, [groups, silu.into()], eps)
    }

    fn group_norm_act_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        grad: FlexTensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let settings = [groups, silu.into()];
        let (dx, _, dgamma, dbeta) = backward_flex([x, gamma, beta, grad], None, settings, eps);
        (dx, dgamma, dbeta)
    }

    fn group_norm_act_shifted(
        x: FlexTensor,
        shift: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> FlexTensor {
        forward_flex(x, Some(shift), gamma, beta, [groups, silu.into()], eps)
    }

    fn group_norm_act_shifted_backward(
        x: FlexTensor,
        shift: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        grad: FlexTensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
        let (shape, dtype) = (shift.shape(), shift.dtype());
        let settings = [groups, silu.into()];
        let (dx, dshift, dgamma, dbeta) =
            backward_flex([x, gamma, beta, grad], Some(shift), settings, eps);
        // `backward_flex` returns the shift's gradient whenever it is given one.
        let dshift = dshift.unwrap_or_else(|| FlexTensor::zeros(shape, dtype));
        (dx, dshift, dgamma, dbeta)
    }
}

/// The backward node: the inputs it needs and the op's settings.
#[derive(Debug)]
struct GroupNormActBackward;

impl<B: GroupNormActOps> Backward<B, 3> for GroupNormActBackward {
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        usize,
        f64,
        bool,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, beta, groups, eps, silu) = ops.state;
        let (dx, dgamma, dbeta) =
            B::group_norm_act_backward(x, gamma, beta, grad, groups, eps, silu);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_gamma {
            grads.register::<B>(node.id, dgamma);
        }
        if let Some(node) = node_beta {
            grads.register::<B>(node.id, dbeta);
        }
    }
}

/// The shifted op's backward node.
#[derive(Debug)]
struct GroupNormActShiftedBackward;

impl<B: GroupNormActOps> Backward<B, 4> for GroupNormActShiftedBackward {
    type State = ([FloatTensor<B>; 4], usize, f64, bool);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let ([x, shift, gamma, beta], groups, eps, silu) = ops.state;
        let (dx, dshift, dgamma, dbeta) =
            B::group_norm_act_shifted_backward(x, shift, gamma, beta, grad, groups, eps, silu);
        for (node, g) in ops.parents.into_iter().zip([dx, dshift, dgamma, dbeta]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: GroupNormActOps, C: CheckpointStrategy> GroupNormActOps for Autodiff<B, C> {
    fn group_norm_act_shifted(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> FloatTensor<Self> {
        match GroupNormActShiftedBackward
            .prepare::<C>([x.node(), shift.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let inputs = [
                    x.into_primitive(),
                    shift.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                ];
                let [x, s, g, b] = inputs.clone();
                let y = B::group_norm_act_shifted(x, s, g, b, groups, eps, silu);
                prep.finish((inputs, groups, eps, silu), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::group_norm_act_shifted(
                x.into_primitive(),
                shift.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                groups,
                eps,
                silu,
            )),
        }
    }

    /// Not differentiable again (no second derivatives): the result is a constant.
    fn group_norm_act_shifted_backward(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let (dx, ds, dg, db) = B::group_norm_act_shifted_backward(
            x.into_primitive(),
            shift.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
            grad.into_primitive(),
            groups,
            eps,
            silu,
        );
        (
            Self::from_inner(dx),
            Self::from_inner(ds),
            Self::from_inner(dg),
            Self::from_inner(db),
        )
    }

    fn group_norm_act(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> FloatTensor<Self> {
        match GroupNormActBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, gamma, beta) = (
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                );
                let state = (x.clone(), gamma.clone(), beta.clone(), groups, eps, silu);
                prep.finish(state, B::group_norm_act(x, gamma, beta, groups, eps, silu))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::group_norm_act(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                groups,
                eps,
                silu,
            )),
        }
    }

    /// Not differentiable again (no second derivatives): the result is a constant.
    fn group_norm_act_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dgamma, dbeta) = B::group_norm_act_backward(
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
            grad.into_primitive(),
            groups,
            eps,
            silu,
        );
        (
            Self::from_inner(dx),
            Self::from_inner(dgamma),
            Self::from_inner(dbeta),
        )
    }
}

/// Runs the extension through burn's dispatch: the shifted op when there is a `shift`
/// (`[n, c]`). The caller guarantees a flex device (with or without autodiff), f32 values,
/// `x: [n, c, h, w]`, `gamma, beta: [c]` and `groups | c`.
pub(crate) fn forward(
    x: Tensor<4>,
    shift: Option<Tensor<2>>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Tensor<4> {
    let (x, gamma, beta) = (
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
    );
    let out = match shift {
        Some(shift) => <Dispatch as GroupNormActOps>::group_norm_act_shifted(
            x,
            shift.into_dispatch(),
            gamma,
            beta,
            groups,
            eps,
            silu,
        ),
        None => <Dispatch as GroupNormActOps>::group_norm_act(x, gamma, beta, groups, eps, silu),
    };
    Tensor::from_dispatch(out)
}
