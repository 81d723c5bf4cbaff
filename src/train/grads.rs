//! Visitors over the gradients: the global norm, scaling, and the sum of two devices'.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// Global-norm gradient clipping (`tf.clip_by_global_norm`, as the paper's code); burn's own
/// clipping works tensor by tensor.
struct GradNorm<'a> {
    grads: &'a GradientsParams,
    sum_sq: Option<Tensor<1>>,
    ids: Vec<ParamId>,
}

impl ModuleVisitor for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum(); // [1]
            self.sum_sq = Some(match self.sum_sq.take() {
                Some(acc) => acc + s,
                None => s,
            });
            self.ids.push(param.id);
        }
    }
}

struct GradScale<'a> {
    grads: &'a mut GradientsParams,
    scale: f64,
}

impl ModuleVisitor for GradScale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.scale));
        }
    }
}

/// Adds the gradients of `other` to those of `acc`, parameter by parameter.
pub(super) struct GradSum<'a> {
    pub acc: &'a mut GradientsParams,
    pub other: GradientsParams,
}

impl ModuleVisitor for GradSum<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        match (
            self.acc.remove::<D>(param.id),
            self.other.remove::<D>(param.id),
        ) {
            (Some(a), Some(b)) => self.acc.register(param.id, a + b),
            (Some(g), None) | (None, Some(g)) => self.acc.register(param.id, g),
            (None, None) => {}
        }
    }
}

/// Clips `grads` of `model` to global L2 norm `max_norm`; returns the norm before clipping.
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut v = GradNorm {
        grads,
        sum_sq: None,
        ids: Vec::new(),
    };
    model.visit(&mut v);
    let Some(sum_sq) = v.sum_sq else { return 0.0 };
    let norm = (sum_sq.into_scalar::<f32>() as f64).sqrt();
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        model.visit(&mut GradScale { grads, scale });
    }
    norm
}
