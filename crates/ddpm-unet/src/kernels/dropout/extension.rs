//! Dropout with a counter-based mask: element `i` is kept when `hash(seed, i)` clears the
//! threshold, so the mask is made in parallel, never stored, and recomputed for the backward
//! pass (which is the same op applied to the gradient). burn's dropout draws a Bernoulli
//! tensor from the device RNG on one thread and keeps it for the backward.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::kernels::flex_tensor::{f32s, flex_tensor, unwritten, written};
use crate::kernels::vectorize::vectorized;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// `y_i = x_i / (1 - prob)` where `hash(seed, i)` keeps element `i`, else 0.
///
/// Called only through [`forward`], which checks `0 < prob < 1` and the dtype (f32) first.
#[backend_extension(Flex, Autodiff)]
pub trait HashDropoutOps: Backend {
    /// # Shapes
    /// - `x`, output: any shape
    fn hash_dropout(x: FloatTensor<Self>, prob: f64, seed: u64) -> FloatTensor<Self>;
}

/// splitmix64's finaliser: a bijective mix of a 64-bit counter.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether element `i` is kept: the top 32 bits of `mix(seed + i * golden)` at or above
/// `threshold = prob * 2^32`.
#[inline(always)]
fn keep(seed: u64, i: u64, threshold: u64) -> bool {
    mix(seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))) >> 32 >= threshold
}

impl HashDropoutOps for Flex {
    fn hash_dropout(x: FlexTensor, prob: f64, seed: u64) -> FlexTensor {
        let x = x.to_contiguous();
        let xs = f32s(&x);
        let threshold = (prob * 4_294_967_296.0) as u64;
        let scale = (1.0 / (1.0 - prob)) as f32;
        let mut y = unwritten(xs.len());
        y.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (ys, xs))| {
                let base = (c * CHUNK) as u64;
                // Compiled for AVX-512 where the CPU has it: the 64-bit multiplies of the hash
                // vectorise there (8 lanes), they cannot with SSE2 or AVX2.
                vectorized(
                    #[inline(always)]
                    || {
                        for (j, (o, &v)) in ys.iter_mut().zip(xs).enumerate() {
                            let kept = keep(seed, base + j as u64, threshold);
                            o.write(if kept { v * scale } else { 0.0 });
                        }
                    },
                )
            });
        // SAFETY: the chunks cover `y`, every value of each written above.
        flex_tensor(x.shape(), unsafe { written(y) })
    }
}

/// The backward node: the same mask on the gradient.
#[derive(Debug)]
struct HashDropoutBackward;

impl<B: HashDropoutOps> Backward<B, 1> for HashDropoutBackward {
    type State = (f64, u64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (prob, seed) = ops.state;
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::hash_dropout(grad, prob, seed));
        }
    }
}

impl<B: HashDropoutOps, C: CheckpointStrategy> HashDropoutOps for Autodiff<B, C> {
    fn hash_dropout(x: FloatTensor<Self>, prob: f64, seed: u64) -> FloatTensor<Self> {
        match HashDropoutBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                (prob, seed),
                B::hash_dropout(x.into_primitive(), prob, seed),
            ),
            OpsKind::UnTracked(prep) => {
                prep.finish(B::hash_dropout(x.into_primitive(), prob, seed))
            }
        }
    }
}

/// Runs the extension through burn's dispatch. The caller guarantees a flex device, f32 values
/// and `0 < prob < 1`.
pub(crate) fn forward<const D: usize>(x: Tensor<D>, prob: f64, seed: u64) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as HashDropoutOps>::hash_dropout(
        x.into_dispatch(),
        prob,
        seed,
    ))
}
