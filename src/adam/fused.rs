//! Adam's update of one parameter as one pass over memory on the flex backend: the weight,
//! its gradient and both moments read once, the weight and the moments written once, in
//! place where the tensors are not shared. Composed of burn's element-wise ops, the same
//! update is about 13 passes, each reading and writing every value (for the 35.7M parameters
//! of the CIFAR-10 U-Net, 143 MB a pass; docs/results.md).
//!
//! The arithmetic is the composed ops', operation by operation in `f32`
//! (`super::composed_moments` and `super::composed_step`), so both paths give the same values.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::Coefficients;

/// Values per rayon task.
const CHUNK: usize = 1 << 14;

/// `(theta', m', v')` of one Adam step for the flattened parameter `theta`, gradient `g` and
/// moments `m`, `v` (all `[n]`, f32):
/// `m' = b1 m + (1 - b1) g`, `v' = b2 v + (1 - b2) g^2`,
/// `theta' = theta - lr (factor m') / (sqrt(v') + eps)`.
///
/// Called only through [`step`], which checks the device and the dtype first.
#[backend_extension(Flex)]
pub(super) trait AdamStepOps: Backend {
    /// # Shapes
    /// - `theta`, `g`, `m`, `v` and the three outputs: `[n]`
    #[allow(clippy::too_many_arguments)]
    fn adam_step(
        theta: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        b1: f32,
        b2: f32,
        factor: f32,
        eps: f32,
        lr: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// `t` whose storage is exactly its values, in order: flex's `to_contiguous` keeps a tensor
/// that covers its whole buffer from offset 0 and copies any other (a view, a prefix of a
/// larger buffer). `t` itself is dropped, so a tensor that was unique stays unique.
fn whole(t: FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

impl AdamStepOps for Flex {
    fn adam_step(
        theta: FlexTensor,
        g: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        b1: f32,
        b2: f32,
        factor: f32,
        eps: f32,
        lr: f32,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (mut theta, g, mut m, mut v) = (whole(theta), whole(g), whole(m), whole(v));
        let gs = g.storage::<f32>();
        // Copies only where a tensor is shared (copy-on-write).
        let ts = theta.storage_mut::<f32>();
        let ms = m.storage_mut::<f32>();
        let vs = v.storage_mut::<f32>();
        assert!(
            gs.len() == ts.len() && ms.len() == ts.len() && vs.len() == ts.len(),
            "Adam step: a parameter, its gradient and its moments of different sizes"
        );
        ts.par_chunks_mut(CHUNK)
            .zip(ms.par_chunks_mut(CHUNK))
            .zip(vs.par_chunks_mut(CHUNK))
            .zip(gs.par_chunks(CHUNK))
            .for_each(|(((t, m), v), g)| {
                for (((t, m), v), &g) in t.iter_mut().zip(m).zip(v).zip(g) {
                    // The composed ops' order: m b1 + g (1 - b1), v b2 + g^2 (1 - b2),
                    // ((m' factor) / (sqrt(v') + eps)) lr, theta - step.
                    *m = *m * b1 + g * (1.0 - b1);
                    *v = *v * b2 + (g * g) * (1.0 - b2);
                    *t -= ((*m * factor) / (v.sqrt() + eps)) * lr;
                }
            });
        (theta, m, v)
    }
}

/// [`AdamStepOps::adam_step`] through burn's dispatch, for tensors on the flex device with
/// f32 values (the caller checks).
pub(super) fn step(
    theta: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    c: Coefficients,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let (theta, m, v) = <Dispatch as AdamStepOps>::adam_step(
        theta.into_dispatch(),
        g.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        c.b1,
        c.b2,
        c.factor,
        c.eps,
        c.lr,
    );
    (
        Tensor::from_dispatch(theta),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    )
}

#[cfg(test)]
mod tests {
    use super::super::{Moments, composed_moments, composed_step};
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// The one-pass update gives the composed ops' values bit for bit, on the first step
    /// (moments from zeros) and on a later one, for a length that leaves a partial chunk.
    #[test]
    fn one_pass_equals_the_composed_ops() {
        let device = Device::flex();
        let n = 3 * CHUNK + 77;
        let normal = || Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
        let (theta, g) = (normal(), normal());
        let m = normal();
        let v = normal().abs();
        let c = Coefficients {
            b1: 0.9,
            b2: 0.999,
            factor: 0.7,
            eps: 1e-8,
            lr: 0.01,
        };
        for previous in [
            None,
            Some(Moments {
                time: 4,
                shape: vec![n],
                m: m.clone(),
                v: v.clone(),
            }),
        ] {
            let (m0, v0) = match &previous {
                Some(s) => (s.m.clone(), s.v.clone()),
                None => (Tensor::zeros([n], &device), Tensor::zeros([n], &device)),
            };
            let want = composed_moments(previous, g.clone(), 5, vec![n], c);
            let want_theta = theta.clone() - composed_step(&want, c);
            // Copies, so that the fused op's in-place writes leave the inputs above alone.
            let copy = |t: &Tensor<1>| Tensor::<1>::from_data(t.to_data(), &device);
            let (t1, m1, v1) = step(copy(&theta), copy(&g), copy(&m0), copy(&v0), c);
            assert_eq!(t1.into_data(), want_theta.into_data());
            assert_eq!(m1.into_data(), want.m.into_data());
            assert_eq!(v1.into_data(), want.v.into_data());
        }
    }
}
