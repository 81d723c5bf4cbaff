//! Self-attention on channel-major planes ([`attention_planes`], the U-Net's attention
//! block under [`Kernels::Fused`](super::Kernels::Fused) on flex): the [`extension`]'s one op
//! per image and head, forward and backward.

#[cfg(feature = "flex")]
mod extension;

use burn::tensor::Tensor;

#[cfg(feature = "flex")]
use super::fused_available;

/// Per image and head `j`: `ctx_j = v_j softmax(q_j^T k_j / sqrt(d))^T` on `[d, n]` planes
/// (channels `j d .. (j + 1) d` of each of q, k and v), the softmax over the keys. On flex (f32) one op whose tasks keep each head's `n x n` scores in their own memory
/// between the two products, and whose backward pass reuses the probabilities; `None`
/// elsewhere, or when the shapes do not fit (`3c` planes, `heads` dividing `c`, no empty
/// dimension).
///
/// # Shapes
/// - `qkv`: `[b, 3c, n]`, q then k then v; output: `[b, c, n]`
pub(crate) fn attention_planes(qkv: Tensor<3>, heads: usize) -> Option<Tensor<3>> {
    let [_, c3, _] = qkv.dims();
    let fits = heads > 0
        && c3.is_multiple_of(3)
        && (c3 / 3).is_multiple_of(heads)
        && !qkv.dims().contains(&0);
    #[cfg(feature = "flex")]
    if fits && fused_available(&qkv) {
        return Some(extension::forward(qkv, heads));
    }
    let _ = fits;
    None
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::kernels::test_support::{rel, with_threads};
    use burn::tensor::activation::softmax;
    use burn::tensor::{Device, Distribution};

    /// The same attention as burn's ops: matmul, softmax, matmul on each head's planes.
    fn reference(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
        let [b, c3, n] = qkv.dims();
        let (c, d) = (c3 / 3, c3 / 3 / heads);
        let part = |i: usize| qkv.clone().narrow(1, i * c, c).reshape([b, heads, d, n]);
        let s = part(0).swap_dims(2, 3).matmul(part(1)) / (d as f64).sqrt();
        let p = softmax(s, 3); // [b, heads, n, n]
        part(2).matmul(p.swap_dims(2, 3)).reshape([b, c, n])
    }

    /// Values and the gradient of `qkv` against burn's ops (one and several heads, one
    /// position, a batch of 1, the MNIST and CIFAR-10 U-Nets' shapes at small batch), and the
    /// same bits for 1, 2 and 3 threads.
    #[test]
    fn planes_attention_equals_burns_ops_and_its_gradient() {
        let device = Device::flex().autodiff();
        device.seed(3);
        for (b, c, heads, n) in [
            (2, 8, 1, 5),
            (1, 6, 3, 1),
            (3, 64, 1, 49),
            (2, 16, 2, 16),
            (1, 256, 1, 256),
        ] {
            let normal = |dims| Tensor::<3>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let qkv = normal([b, 3 * c, n]) * 0.5;
            let weights = normal([b, c, n]);
            let run = |fused: bool| {
                let x = qkv.clone().detach().require_grad();
                let y = match fused {
                    true => attention_planes(x.clone(), heads).expect("fits"),
                    false => reference(x.clone(), heads),
                };
                let g = (y.clone() * weights.clone()).sum().backward();
                (y.inner(), x.grad(&g).unwrap())
            };
            let case = (b, c, heads, n);
            let ((y, dx), (y0, dx0)) = (run(true), run(false));
            assert!(
                rel(y.flatten(0, 2), y0.flatten(0, 2)) < 1e-5,
                "values {case:?}"
            );
            assert!(
                rel(dx.clone().flatten(0, 2), dx0.flatten(0, 2)) < 1e-5,
                "grad {case:?}"
            );
            let one = with_threads(1, || run(true).1.into_data());
            for threads in [2, 3] {
                let other = with_threads(threads, || run(true).1.into_data());
                assert!(other == one, "{threads} threads differ from 1 {case:?}");
            }
        }
    }

    /// Shapes that do not fit are refused, not run.
    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let device = Device::flex();
        let t = |dims| Tensor::<3>::zeros(dims, &device);
        assert!(
            attention_planes(t([1, 8, 4]), 1).is_none(),
            "8 planes are not 3c"
        );
        assert!(
            attention_planes(t([1, 12, 4]), 3).is_none(),
            "3 heads do not divide 4"
        );
        assert!(attention_planes(t([1, 12, 4]), 0).is_none(), "no heads");
        assert!(
            attention_planes(t([0, 12, 4]), 1).is_none(),
            "an empty batch"
        );
        assert!(attention_planes(t([1, 12, 4]), 2).is_some());
    }
}
