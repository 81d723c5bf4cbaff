//! The data movement of [`upsampled`](super::upsampled)'s four output phases, as burn backend
//! extensions: the phases' 2x2 kernels summed from a 3x3 kernel (and the adjoint that gives
//! the 3x3 kernel's gradient), and the four phase outputs interleaved into an image of twice
//! the size (`out[2i + a, 2j + b] = p_ab[i, j]`, and the adjoint that takes them apart). One
//! op and one pass each way where burn's slices, sums, `stack` and `reshape` take a dozen
//! ops (0.6 ms per call for the kernels at batch 1) and copy value by value (the MNIST
//! U-Net's two interleaves at batch 64: 14.8 ms a call on average against 0.7).

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
use std::mem::MaybeUninit;

use super::cache::{self, Transform};
use crate::kernels::flex_tensor::{contiguous, f32s, flex_tensor, unwritten, written};

/// Output planes per parallel task at the least (a 28x28 plane is 3 KiB).
const PLANES_PER_TASK: usize = 8;

/// The four phases `(p00, p01, p10, p11)`.
type Quad<T> = (T, T, T, T);

/// The phases' kernels, four `[n, c, h, w]` phases interleaved into `[n, c, 2h, 2w]`, and
/// their adjoints.
///
/// Called only through [`kernels`] and [`interleave`], whose callers check the shapes and the dtype (f32) first.
#[backend_extension(Flex, Autodiff)]
pub trait PhaseOps: Backend {
    /// The 2x2 kernels `W_ab` of the four phases (`ab` = 00, 01, 10, 11) of a 3x3 `weight`:
    /// along each axis, phase 0 keeps tap 0 and sums taps 1 and 2, phase 1 sums taps 0 and 1
    /// and keeps tap 2.
    ///
    /// # Shapes
    /// - `weight`: `[c_out, c_in, 3, 3]`; output: `[4, c_out, c_in, 2, 2]`
    fn phase_kernels(weight: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The adjoint of [`phase_kernels`](Self::phase_kernels): each 3x3 tap the sum of the
    /// phase taps it went into.
    ///
    /// # Shapes
    /// - `grad`: `[4, c_out, c_in, 2, 2]`; output: `[c_out, c_in, 3, 3]`
    fn phase_kernels_adjoint(grad: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `out[.., 2i + a, 2j + b] = p_ab[.., i, j]`.
    ///
    /// # Shapes
    /// - `p00`, `p01`, `p10`, `p11`: `[n, c, h, w]`; output: `[n, c, 2h, 2w]`
    fn interleave_phases(
        p00: FloatTensor<Self>,
        p01: FloatTensor<Self>,
        p10: FloatTensor<Self>,
        p11: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The four phases of `x`, the adjoint (and inverse) of
    /// [`interleave_phases`](Self::interleave_phases).
    ///
    /// # Shapes
    /// - `x`: `[n, c, 2h, 2w]`; each output (`p00`, `p01`, `p10`, `p11`): `[n, c, h, w]`
    #[allow(clippy::type_complexity)]
    fn split_phases(
        x: FloatTensor<Self>,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );
}

/// The 3x3 taps that phase `a`'s tap `r` sums, along one axis.
const TAPS: [[&[usize]; 2]; 2] = [[&[0], &[1, 2]], [&[0, 1], &[2]]];

/// The four phases' 2x2 kernels of one 3x3 kernel `w` (row-major), `out[2a + b][2r + c]`.
fn phase_kernel(w: &[f32]) -> [[f32; 4]; 4] {
    let mut out = [[0.0; 4]; 4];
    for (ab, k) in out.iter_mut().enumerate() {
        let (rows, cols) = (TAPS[ab / 2], TAPS[ab % 2]);
        for (rc, v) in k.iter_mut().enumerate() {
            let (ys, xs) = (rows[rc / 2], cols[rc % 2]);
            // Sums of one or two taps along each axis, rows first: no products, so an
            // infinite weight stays infinite as in the 3x3 convolution of the upsampled image.
            let row_sum = |y: usize| xs.iter().map(|&x| w[3 * y + x]).fold(0.0, |s, t| s + t);
            *v = ys.iter().map(|&y| row_sum(y)).fold(0.0, |s, t| s + t);
        }
    }
    out
}

/// The adjoint of [`phase_kernel`]: the 3x3 kernel's gradient from the phases' (`g[ab][rc]`).
fn phase_kernel_adjoint(g: [[f32; 4]; 4]) -> [f32; 9] {
    let mut out = [0.0; 9];
    for (ab, k) in g.iter().enumerate() {
        let (rows, cols) = (TAPS[ab / 2], TAPS[ab % 2]);
        for (rc, &v) in k.iter().enumerate() {
            for &y in rows[rc / 2] {
                for &x in cols[rc % 2] {
                    out[3 * y + x] += v;
                }
            }
        }
    }
    out
}

/// One output plane (`2h x 2w`) from the four phase planes (`h x w` each).
fn interleave_plane(p: [&[f32]; 4], w: usize, dst: &mut [MaybeUninit<f32>]) {
    for (i, rows) in dst.chunks_exact_mut(4 * w).enumerate() {
        let (top, bottom) = rows.split_at_mut(2 * w);
        for (row, [left, right]) in [(top, [p[0], p[1]]), (bottom, [p[2], p[3]])] {
            let (left, right) = (&left[i * w..][..w], &right[i * w..][..w]);
            for ((pair, &l), &r) in row.chunks_exact_mut(2).zip(left).zip(right) {
                pair[0].write(l);
                pair[1].write(r);
            }
        }
    }
}

/// The four phase planes of one output plane.
fn split_plane(src: &[f32], w: usize, dst: [&mut [MaybeUninit<f32>]; 4]) {
    let [d0, d1, d2, d3] = dst;
    for (i, rows) in src.chunks_exact(4 * w).enumerate() {
        let (top, bottom) = rows.split_at(2 * w);
        let (d0, d1) = (&mut d0[i * w..][..w], &mut d1[i * w..][..w]);
        for ((pair, l), r) in top.chunks_exact(2).zip(d0).zip(d1) {
            l.write(pair[0]);
            r.write(pair[1]);
        }
        let (d2, d3) = (&mut d2[i * w..][..w], &mut d3[i * w..][..w]);
        for ((pair, l), r) in bottom.chunks_exact(2).zip(d2).zip(d3) {
            l.write(pair[0]);
            r.write(pair[1]);
        }
    }
}

impl PhaseOps for Flex {
    fn phase_kernels(weight: FlexTensor) -> FlexTensor {
        let weight = contiguous(weight);
        let s = weight.shape();
        let w = f32s(&weight);
        let compute = || {
            let pairs = s[0] * s[1]; // (output, input) channel pairs
            let mut out = vec![0.0f32; 16 * pairs];
            for (q, k) in w.chunks_exact(9).enumerate() {
                for (ab, phase) in phase_kernel(k).into_iter().enumerate() {
                    out[(ab * pairs + q) * 4..][..4].copy_from_slice(&phase);
                }
            }
            flex_tensor([4, s[0], s[1], 2, 2], out)
        };
        // Kept while the weights are (sampling), so that the phase convolutions find their
        // packed kernels kept under the same addresses.
        cache::transformed_tensor(w, &weight, Transform::Phases, [s[0], s[1]], compute)
    }

    fn phase_kernels_adjoint(grad: FlexTensor) -> FlexTensor {
        let grad = contiguous(grad);
        let s = grad.shape();
        let pairs = s[1] * s[2];
        let g = f32s(&grad);
        let mut out = vec![0.0f32; 9 * pairs];
        for (q, dst) in out.chunks_exact_mut(9).enumerate() {
            let at = |ab: usize| -> [f32; 4] {
                let p = &g[(ab * pairs + q) * 4..][..4];
                [p[0], p[1], p[2], p[3]]
            };
            dst.copy_from_slice(&phase_kernel_adjoint([at(0), at(1), at(2), at(3)]));
        }
        flex_tensor([s[1], s[2], 3, 3], out)
    }

    fn interleave_phases(
        p00: FlexTensor,
        p01: FlexTensor,
        p10: FlexTensor,
        p11: FlexTensor,
    ) -> FlexTensor {
        let phases = [p00, p01, p10, p11].map(contiguous);
        let s = phases[0].shape();
        let (planes, h, w) = (s[0] * s[1], s[2], s[3]);
        let plane = h * w;
        let mut out = unwritten(4 * planes * plane);
        let src = [0, 1, 2, 3].map(|k| f32s(&phases[k]));
        if plane > 0 {
            out.par_chunks_mut(4 * plane)
                .with_min_len(PLANES_PER_TASK)
                .enumerate()
                .for_each(|(q, dst)| {
                    let p = src.map(|s| &s[q * plane..][..plane]);
                    interleave_plane(p, w, dst);
                });
        }
        // SAFETY: the chunks cover `out` (one per plane), each row of each written in full.
        flex_tensor([s[0], s[1], 2 * h, 2 * w], unsafe { written(out) })
    }

    fn split_phases(x: FlexTensor) -> Quad<FlexTensor> {
        let x = contiguous(x);
        let s = x.shape();
        let (n, c, h, w) = (s[0], s[1], s[2] / 2, s[3] / 2);
        let plane = h * w;
        let mut out: [Vec<MaybeUninit<f32>>; 4] = std::array::from_fn(|_| unwritten(n * c * plane));
        let src = f32s(&x);
        if plane > 0 {
            let [o0, o1, o2, o3] = &mut out;
            o0.par_chunks_mut(plane)
                .zip(o1.par_chunks_mut(plane))
                .zip(o2.par_chunks_mut(plane))
                .zip(o3.par_chunks_mut(plane))
                .with_min_len(PLANES_PER_TASK)
                .enumerate()
                .for_each(|(q, (((d0, d1), d2), d3))| {
                    split_plane(&src[4 * q * plane..][..4 * plane], w, [d0, d1, d2, d3]);
                });
        }
        // SAFETY: the chunks cover each output (one per plane), every value written.
        let [o0, o1, o2, o3] = out.map(|v| flex_tensor([n, c, h, w], unsafe { written(v) }));
        (o0, o1, o2, o3)
    }
}

/// The backward node of [`PhaseOps::phase_kernels`] (a linear map: nothing to keep).
#[derive(Debug)]
struct PhaseKernelsBackward;

impl<B: PhaseOps> Backward<B, 1> for PhaseKernelsBackward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            grads.register::<B>(node.id, B::phase_kernels_adjoint(grad));
        }
    }
}

/// The backward node of [`PhaseOps::interleave_phases`] (nothing to keep: the shapes come
/// with the gradient).
#[derive(Debug)]
struct InterleaveBackward;

impl<B: PhaseOps> Backward<B, 4> for InterleaveBackward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (d00, d01, d10, d11) = B::split_phases(grad);
        let parts = [d00, d01, d10, d11];
        for (node, part) in ops.parents.into_iter().zip(parts) {
            if let Some(node) = node {
                grads.register::<B>(node.id, part);
            }
        }
    }
}

impl<B: PhaseOps, C: CheckpointStrategy> PhaseOps for Autodiff<B, C> {
    fn phase_kernels(weight: FloatTensor<Self>) -> FloatTensor<Self> {
        match PhaseKernelsBackward
            .prepare::<C>([weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((), B::phase_kernels(weight.into_primitive())),
            OpsKind::UnTracked(prep) => prep.finish(B::phase_kernels(weight.into_primitive())),
        }
    }

    /// Not differentiable again (no second derivatives): the result is a constant.
    fn phase_kernels_adjoint(grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::phase_kernels_adjoint(grad.into_primitive()))
    }

    fn interleave_phases(
        p00: FloatTensor<Self>,
        p01: FloatTensor<Self>,
        p10: FloatTensor<Self>,
        p11: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [p00.node(), p01.node(), p10.node(), p11.node()];
        let [a, b, c, d] = [p00, p01, p10, p11].map(|p| p.into_primitive());
        match InterleaveBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((), B::interleave_phases(a, b, c, d)),
            OpsKind::UnTracked(prep) => prep.finish(B::interleave_phases(a, b, c, d)),
        }
    }

    /// Not differentiable again (no second derivatives): the results are constants.
    fn split_phases(x: FloatTensor<Self>) -> Quad<FloatTensor<Self>> {
        let (a, b, c, d) = B::split_phases(x.into_primitive());
        (
            Self::from_inner(a),
            Self::from_inner(b),
            Self::from_inner(c),
            Self::from_inner(d),
        )
    }
}

/// [`PhaseOps::phase_kernels`] through burn's dispatch. The caller guarantees a flex device
/// (with or without autodiff) and f32 values.
///
/// # Shapes
/// - `weight`: `[c_out, c_in, 3, 3]`; output: `[4, c_out, c_in, 2, 2]`
pub(super) fn kernels(weight: Tensor<4>) -> Tensor<5> {
    Tensor::from_dispatch(<Dispatch as PhaseOps>::phase_kernels(
        weight.into_dispatch(),
    ))
}

/// [`PhaseOps::interleave_phases`] through burn's dispatch. The caller guarantees a flex
/// device (with or without autodiff), f32 values and four phases of one shape.
///
/// # Shapes
/// - each of `phases`: `[n, c, h, w]`; output: `[n, c, 2h, 2w]`
pub(super) fn interleave(phases: [Tensor<4>; 4]) -> Tensor<4> {
    let [a, b, c, d] = phases.map(|p| p.into_dispatch());
    Tensor::from_dispatch(<Dispatch as PhaseOps>::interleave_phases(a, b, c, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// Each phase tap is the sum of the 3x3 taps it covers (weights that are distinct powers
    /// of two, so that every sum names its taps), and the adjoint satisfies
    /// `<P w, g> = <w, P^T g>` exactly on small integers.
    #[test]
    fn phase_kernels_sum_the_taps_they_cover_and_the_adjoint_is_the_transpose() {
        let w: Vec<f32> = (0..9).map(|i| (1u32 << i) as f32).collect();
        let p = phase_kernel(&w);
        let t = |y: usize, x: usize| w[3 * y + x];
        // Phase (0, 0): tap (0, 0) alone, tap (1, 1) the four taps (1..3, 1..3).
        assert_eq!(p[0][0], t(0, 0));
        assert_eq!(p[0][3], t(1, 1) + t(1, 2) + t(2, 1) + t(2, 2));
        // Phase (0, 1): row 0, columns 0 and 1 summed; then column 2.
        assert_eq!(p[1][0], t(0, 0) + t(0, 1));
        assert_eq!(p[1][1], t(0, 2));
        // Phase (1, 0): rows 0 and 1, column 0; phase (1, 1): tap (2, 2) alone.
        assert_eq!(p[2][0], t(0, 0) + t(1, 0));
        assert_eq!(p[3][3], t(2, 2));
        // Every 3x3 tap goes into exactly 4 of the 16 phase taps (each phase covers all nine).
        let total: f32 = p.iter().flatten().sum();
        assert_eq!(total, 4.0 * w.iter().sum::<f32>());
        let g: [[f32; 4]; 4] =
            std::array::from_fn(|ab| std::array::from_fn(|rc| (ab * 4 + rc) as f32 - 7.0));
        let lhs: f32 = p
            .iter()
            .flatten()
            .zip(g.iter().flatten())
            .map(|(a, b)| a * b)
            .sum();
        let adj = phase_kernel_adjoint(g);
        let rhs: f32 = w.iter().zip(adj).map(|(a, b)| a * b).sum();
        assert_eq!(lhs, rhs);
    }

    /// The interleave puts phase `(a, b)`'s pixel `(i, j)` at `(2i + a, 2j + b)`, and the
    /// split is its inverse, bit for bit (odd and non-square sizes, a 1x1 phase).
    #[test]
    fn interleave_places_each_phase_and_split_takes_it_back() {
        let device = Device::flex();
        for (n, c, h, w) in [(2, 3, 5, 4), (1, 1, 1, 1), (3, 2, 1, 7)] {
            let len = n * c * h * w;
            let phase = |ab: usize| {
                let v: Vec<f32> = (0..len).map(|i| (ab * len + i) as f32).collect();
                Tensor::<4>::from_data(TensorData::new(v, [n, c, h, w]), &device)
            };
            let out = interleave([0, 1, 2, 3].map(phase));
            assert_eq!(out.dims(), [n, c, 2 * h, 2 * w]);
            let v = out.clone().into_data().try_to_vec::<f32>().unwrap();
            for q in 0..n * c {
                for y in 0..2 * h {
                    for x in 0..2 * w {
                        let (ab, i, j) = (2 * (y % 2) + x % 2, y / 2, x / 2);
                        let want = (ab * len + (q * h + i) * w + j) as f32;
                        assert_eq!(v[(q * 2 * h + y) * 2 * w + x], want, "{:?}", (n, c, h, w));
                    }
                }
            }
            let back = <Dispatch as PhaseOps>::split_phases(out.into_dispatch());
            let back = [back.0, back.1, back.2, back.3].map(Tensor::<4>::from_dispatch);
            for (ab, part) in back.into_iter().enumerate() {
                assert_eq!(part.into_data(), phase(ab).into_data(), "phase {ab}");
            }
        }
    }
}
