//! Concatenation of two images along the channel axis (the U-Net's skip connections) as a
//! burn backend extension: one parallel copy per image, and a backward pass that splits the
//! gradient the same way. burn's `cat` copies on one thread, and its backward leaves two
//! strided views that the next op copies again.

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
use rayon::prelude::*;

use crate::kernels::flex_tensor::{contiguous, f32s, flex_tensor, unwritten, write_copy, written};

/// `[a, b]` along axis 1, and its adjoint.
///
/// Called only through [`forward`], which checks the shapes and the dtype (f32) first.
#[backend_extension(Flex, Autodiff)]
pub trait CatChannelsOps: Backend {
    /// # Shapes
    /// - `a`: `[n, c_a, h, w]`, `b`: `[n, c_b, h, w]`, output: `[n, c_a + c_b, h, w]`
    fn cat_channels(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The first `c_a` channels of `x` and the rest: the adjoint of
    /// [`cat_channels`](Self::cat_channels).
    ///
    /// # Shapes
    /// - `x`: `[n, c, h, w]`, outputs: `[n, c_a, h, w]` and `[n, c - c_a, h, w]`
    fn split_channels(x: FloatTensor<Self>, c_a: usize) -> (FloatTensor<Self>, FloatTensor<Self>);
}

impl CatChannelsOps for Flex {
    fn cat_channels(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        let (a, b) = (contiguous(a), contiguous(b));
        let (sa, sb) = (a.shape(), b.shape());
        let (n, hw) = (sa[0], sa[2] * sa[3]);
        let (la, lb) = (sa[1] * hw, sb[1] * hw); // values per image of each part
        let mut out = unwritten(n * (la + lb));
        let (xa, xb) = (f32s(&a), f32s(&b));
        if la + lb > 0 {
            out.par_chunks_mut(la + lb)
                .enumerate()
                .for_each(|(i, dst)| {
                    let (da, db) = dst.split_at_mut(la);
                    write_copy(da, &xa[i * la..][..la]);
                    write_copy(db, &xb[i * lb..][..lb]);
                });
        }
        // SAFETY: the chunks cover `out` (one per image), each written by its two copies.
        flex_tensor([n, sa[1] + sb[1], sa[2], sa[3]], unsafe { written(out) })
    }

    fn split_channels(x: FlexTensor, c_a: usize) -> (FlexTensor, FlexTensor) {
        let x = contiguous(x);
        let s = x.shape();
        let (n, hw) = (s[0], s[2] * s[3]);
        let (la, lb) = (c_a * hw, (s[1] - c_a) * hw);
        let (mut a, mut b) = (unwritten(n * la), unwritten(n * lb));
        let src = f32s(&x);
        if la > 0 {
            a.par_chunks_mut(la)
                .enumerate()
                .for_each(|(i, da)| write_copy(da, &src[i * (la + lb)..][..la]));
        }
        if lb > 0 {
            b.par_chunks_mut(lb)
                .enumerate()
                .for_each(|(i, db)| write_copy(db, &src[i * (la + lb) + la..][..lb]));
        }
        // SAFETY: the chunks cover `a` and `b` (one per image each), each written by a copy.
        let (a, b) = unsafe { (written(a), written(b)) };
        (
            flex_tensor([n, c_a, s[2], s[3]], a),
            flex_tensor([n, s[1] - c_a, s[2], s[3]], b),
        )
    }
}

/// The backward node: the split point.
#[derive(Debug)]
struct CatChannelsBackward;

impl<B: CatChannelsOps> Backward<B, 2> for CatChannelsBackward {
    type State = usize;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (da, db) = B::split_channels(grad, ops.state);
        if let Some(node) = node_a {
            grads.register::<B>(node.id, da);
        }
        if let Some(node) = node_b {
            grads.register::<B>(node.id, db);
        }
    }
}

impl<B: CatChannelsOps, C: CheckpointStrategy> CatChannelsOps for Autodiff<B, C> {
    fn cat_channels(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let c_a = a.shape()[1];
        match CatChannelsBackward
            .prepare::<C>([a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish(c_a, B::cat_channels(a.into_primitive(), b.into_primitive()))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::cat_channels(a.into_primitive(), b.into_primitive()))
            }
        }
    }

    /// Not differentiable again (no second derivatives): the results are constants.
    fn split_channels(x: FloatTensor<Self>, c_a: usize) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (a, b) = B::split_channels(x.into_primitive(), c_a);
        (Self::from_inner(a), Self::from_inner(b))
    }
}

/// Runs the extension through burn's dispatch. The caller guarantees a flex device, f32 values
/// and shapes that agree on every axis but 1.
pub(crate) fn forward(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CatChannelsOps>::cat_channels(
        a.into_dispatch(),
        b.into_dispatch(),
    ))
}
