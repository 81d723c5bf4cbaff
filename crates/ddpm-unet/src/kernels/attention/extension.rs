//! Self-attention on channel-major planes as a burn backend extension: per image and head,
//! `P = softmax(q^T k / sqrt(d))` (rows over the keys) and `ctx = v P^T`, the `n x n` scores in one
//! task's memory between the two products; the backward pass from the kept `P`.

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

use crate::kernels::flex_tensor::{Shared, contiguous, f32s, flex_tensor};
use crate::kernels::group_norm::slices::exp;
use crate::kernels::strided::{Operand, mm, mm_raw, rows, transposed};
use crate::kernels::vectorize::vectorized;

/// Attention over the `n` positions of stacked `[q; k; v]` planes, and its gradient.
///
/// Called only through [`forward`], whose caller checks the shapes and the dtype (f32).
#[backend_extension(Flex, Autodiff)]
pub trait AttentionPlanesOps: Backend {
    /// Per image and head `j` (channels `j d .. (j + 1) d` of each of q, k and v):
    /// `ctx_j = v_j softmax(q_j^T k_j / sqrt(d))^T`, the softmax over each row (query) of the
    /// scores.
    ///
    /// # Shapes
    /// - `qkv`: `[b, 3c, n]` (q, then k, then v, each `c = heads d` channels); output `[b, c, n]`
    fn attention_planes(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;

    /// [`attention_planes`](Self::attention_planes) and the probabilities `P_j` it used.
    ///
    /// # Shapes
    /// - `qkv`: `[b, 3c, n]`; outputs: `[b, c, n]` and `[b, heads, n, n]`
    fn attention_planes_with_probs(
        qkv: FloatTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradient of `qkv` for the output gradient `grad`, from the forward pass's `probs`.
    ///
    /// # Shapes
    /// - `qkv`: `[b, 3c, n]`, `probs`: `[b, heads, n, n]`, `grad`: `[b, c, n]`; output: `[b, 3c, n]`
    fn attention_planes_backward(
        qkv: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self>;
}

/// Each row of `s` (`n` values) replaced by the softmax of `scale s` (`scale > 0`):
/// `exp(scale (x - max)) / sum`.
fn softmax_rows(s: &mut [f32], n: usize, scale: f32) {
    vectorized(|| {
        for row in s.chunks_exact_mut(n) {
            let mut max = f32::NEG_INFINITY;
            for &x in row.iter() {
                max = max.max(x);
            }
            let mut sum = 0.0f32;
            for x in row.iter_mut() {
                *x = exp((*x - max) * scale);
                sum += *x;
            }
            let inv = 1.0 / sum;
            for x in row.iter_mut() {
                *x *= inv;
            }
        }
    });
}

/// `dP` replaced by `dS = scale P (dP - rowsum(dP P))`, row by row (the adjoint of
/// [`softmax_rows`]).
fn softmax_rows_adjoint(dp: &mut [f32], p: &[f32], n: usize, scale: f32) {
    vectorized(|| {
        for (g, p) in dp.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
            let mut dot = 0.0f32;
            for (&g, &p) in g.iter().zip(p) {
                dot += g * p;
            }
            for (g, &p) in g.iter_mut().zip(p) {
                *g = scale * p * (*g - dot);
            }
        }
    });
}

/// Sizes: `b` images of `3c` planes of `n` positions, `heads` heads of `d` channels; the
/// scores' scale `1 / sqrt(d)`.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    c: usize,
    n: usize,
    heads: usize,
    d: usize,
    scale: f32,
}

impl Geometry {
    fn of(qkv: &FlexTensor, heads: usize) -> (usize, Self) {
        let s = qkv.shape();
        let (b, c, n) = (s[0], s[1] / 3, s[2]);
        (
            b,
            Self {
                c,
                n,
                heads,
                d: c / heads,
                scale: ((c / heads) as f64).powf(-0.5) as f32,
            },
        )
    }

    /// Head `j`'s q, k and v planes (`[d, n]` each) in one image's `[3c, n]` values.
    fn parts(self, image: &[f32], j: usize) -> [&[f32]; 3] {
        let (c, d, n) = (self.c, self.d, self.n);
        [0, 1, 2].map(|p| &image[(p * c + j * d) * n..][..d * n])
    }
}

/// Query rows (rows of the scores) per forward task: fixed by the shapes, so that the tasks,
/// and with them the bits, do not depend on the thread count; 64 rows of 256 keys are 64 KiB
/// of scores, and a CIFAR-10 batch of 1 (256 positions, one head) four tasks.
const QUERY_ROWS: usize = 64;

/// The forward pass of `b` images (`qkv`, `[b, 3c, n]`): each head's context into `ctx`
/// (`[b, c, n]`, every value written), its probabilities into `probs` (`[b, heads, n, n]`)
/// when given. One task per image, head and block of [`QUERY_ROWS`] queries: `S = q^T k` for
/// its rows, their softmax, and their columns of `ctx = v P^T`.
fn forward_tasks(qkv: &[f32], b: usize, g: Geometry, ctx: &mut [f32], probs: Option<&mut [f32]>) {
    let (c, d, n, heads) = (g.c, g.d, g.n, g.heads);
    assert_eq!(qkv.len(), b * 3 * c * n, "qkv's length");
    assert_eq!(ctx.len(), b * c * n, "the context's length");
    assert!(probs.as_ref().is_none_or(|p| p.len() == b * heads * n * n));
    let blocks = n.div_ceil(QUERY_ROWS);
    let out = Shared(ctx.as_mut_ptr());
    let kept = probs.map(|p| Shared(p.as_mut_ptr()));
    (0..b * heads * blocks).into_par_iter().for_each(|t| {
        let (unit, block) = (t / blocks, t % blocks); // unit: image i, head j
        let (i, j) = (unit / heads, unit % heads);
        let (r0, rows_here) = (block * QUERY_ROWS, QUERY_ROWS.min(n - block * QUERY_ROWS));
        let [q, k, v] = g.parts(&qkv[i * 3 * c * n..][..3 * c * n], j);
        let mut local = Vec::new();
        let s: &mut [f32] = match kept {
            // SAFETY: rows r0 .. r0 + rows_here of head (i, j)'s `n x n` block of `probs`
            // (length checked above): this task's alone.
            Some(p) => unsafe {
                std::slice::from_raw_parts_mut(p.add((unit * n + r0) * n).ptr(), rows_here * n)
            },
            None => {
                local.resize(rows_here * n, 0.0);
                &mut local
            }
        };
        let q_rows = Operand {
            values: &q[r0..],
            rs: 1,
            cs: n,
        }; // q^T's rows r0.., `[rows_here, d]`
        mm(s, q_rows, rows(k, n), [rows_here, n, d]); // S = q^T k
        softmax_rows(s, n, g.scale);
        // SAFETY: columns r0 .. r0 + rows_here of head (i, j)'s `d` rows of `ctx` (length
        // checked above): this task's alone, and `ctx` aliases no operand.
        unsafe {
            let dst = out.add((i * c + j * d) * n + r0);
            mm_raw(dst, n, rows(v, n), transposed(s, n), [d, rows_here, n]); // ctx = v P^T
        }
    });
}

/// One image's gradient `dqkv` (`[3c, n]`) from its output gradient `grad` (`[c, n]`).
fn image_backward(g: Geometry, image: &[f32], probs: &[f32], grad: &[f32], dqkv: &mut [f32]) {
    let (c, d, n) = (g.c, g.d, g.n);
    let mut ds = vec![0.0f32; n * n];
    let (dq_all, rest) = dqkv.split_at_mut(c * n);
    let (dk_all, dv_all) = rest.split_at_mut(c * n);
    for j in 0..g.heads {
        let [q, k, v] = g.parts(image, j);
        let p = &probs[j * n * n..][..n * n];
        let dctx = &grad[j * d * n..][..d * n];
        let head = j * d * n..(j + 1) * d * n;
        mm(
            &mut dv_all[head.clone()],
            rows(dctx, n),
            rows(p, n),
            [d, n, n],
        ); // dv = dctx P
        mm(&mut ds, transposed(dctx, n), rows(v, n), [n, n, d]); // dP = dctx^T v
        softmax_rows_adjoint(&mut ds, p, n, g.scale); // dS
        mm(
            &mut dq_all[head.clone()],
            rows(k, n),
            transposed(&ds, n),
            [d, n, n],
        ); // dq = k dS^T
        mm(&mut dk_all[head], rows(q, n), rows(&ds, n), [d, n, n]); // dk = q dS
    }
}

impl AttentionPlanesOps for Flex {
    fn attention_planes(qkv: FlexTensor, heads: usize) -> FlexTensor {
        let qkv = contiguous(qkv);
        let (b, g) = Geometry::of(&qkv, heads);
        let mut ctx = vec![0.0f32; b * g.c * g.n];
        forward_tasks(f32s(&qkv), b, g, &mut ctx, None);
        flex_tensor([b, g.c, g.n], ctx)
    }

    fn attention_planes_with_probs(qkv: FlexTensor, heads: usize) -> (FlexTensor, FlexTensor) {
        let qkv = contiguous(qkv);
        let (b, g) = Geometry::of(&qkv, heads);
        let n = g.n;
        let mut ctx = vec![0.0f32; b * g.c * n];
        let mut probs = vec![0.0f32; b * heads * n * n];
        forward_tasks(f32s(&qkv), b, g, &mut ctx, Some(&mut probs));
        (
            flex_tensor([b, g.c, n], ctx),
            flex_tensor([b, heads, n, n], probs),
        )
    }

    fn attention_planes_backward(
        qkv: FlexTensor,
        probs: FlexTensor,
        grad: FlexTensor,
        heads: usize,
    ) -> FlexTensor {
        let (qkv, probs, grad) = (contiguous(qkv), contiguous(probs), contiguous(grad));
        let (b, g) = Geometry::of(&qkv, heads);
        let (c, n) = (g.c, g.n);
        let mut dqkv = vec![0.0f32; b * 3 * c * n];
        dqkv.par_chunks_mut(3 * c * n)
            .zip(f32s(&qkv).par_chunks(3 * c * n))
            .zip(f32s(&probs).par_chunks(heads * n * n))
            .zip(f32s(&grad).par_chunks(c * n))
            .for_each(|(((dqkv, image), probs), grad)| {
                image_backward(g, image, probs, grad, dqkv);
            });
        flex_tensor([b, 3 * c, n], dqkv)
    }
}

/// The backward node: the input and the probabilities of the forward pass, and the heads.
#[derive(Debug)]
struct AttentionPlanesBackward;

impl<B: AttentionPlanesOps> Backward<B, 1> for AttentionPlanesBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (qkv, probs, heads) = ops.state;
        if let Some(node) = node {
            let dqkv = B::attention_planes_backward(qkv, probs, grad, heads);
            grads.register::<B>(node.id, dqkv);
        }
    }
}

impl<B: AttentionPlanesOps, C: CheckpointStrategy> AttentionPlanesOps for Autodiff<B, C> {
    fn attention_planes(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        match AttentionPlanesBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let qkv = qkv.into_primitive();
                let (ctx, probs) = B::attention_planes_with_probs(qkv.clone(), heads);
                prep.finish((qkv, probs, heads), ctx)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::attention_planes(qkv.into_primitive(), heads))
            }
        }
    }

    /// Not differentiable (the training path is [`attention_planes`](Self::attention_planes)).
    fn attention_planes_with_probs(
        qkv: FloatTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (ctx, probs) = B::attention_planes_with_probs(qkv.into_primitive(), heads);
        (Self::from_inner(ctx), Self::from_inner(probs))
    }

    /// Not differentiable again (no second derivatives): the result is a constant.
    fn attention_planes_backward(
        qkv: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        let (qkv, probs, grad) = (
            qkv.into_primitive(),
            probs.into_primitive(),
            grad.into_primitive(),
        );
        Self::from_inner(B::attention_planes_backward(qkv, probs, grad, heads))
    }
}

/// [`AttentionPlanesOps::attention_planes`] through burn's dispatch. The caller guarantees a
/// flex device (with or without autodiff), f32 values, no empty dimension, and `heads`
/// dividing `c`.
///
/// # Shapes
/// - `qkv`: `[b, 3c, n]`; output: `[b, c, n]`
pub(super) fn forward(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as AttentionPlanesOps>::attention_planes(
        qkv.into_dispatch(),
        heads,
    ))
}
