//! Predictor wrappers over a condition: [`Conditioned`] (a fixed condition, what training
//! feeds the loss) and classifier-free guidance (Ho & Salimans, 2022) as [`Guided`], so that
//! every sampler, present and future, guides without knowing about it.

use burn::tensor::{Int, Tensor};

use crate::condition::Condition;
use crate::error::{DdpmError, PredictorError};
use crate::predictor::NoisePredictor;

/// A conditional predictor with its condition fixed: [`predict`](NoisePredictor::predict)
/// answers `eps(x_t, t, condition)`. What the trainer feeds the loss.
#[derive(Debug, Clone)]
pub struct Conditioned<'a, P: ?Sized> {
    model: &'a P,
    condition: Condition,
}

impl<'a, P: ?Sized> Conditioned<'a, P> {
    /// `model` under `condition`.
    pub fn new(model: &'a P, condition: Condition) -> Self {
        Self { model, condition }
    }
}

impl<const D: usize, P: NoisePredictor<D> + ?Sized> NoisePredictor<D> for Conditioned<'_, P> {
    fn predict(&self, x_t: Tensor<D>, t: Tensor<1, Int>) -> Result<Tensor<D>, PredictorError> {
        self.model.predict_conditional(x_t, t, &self.condition)
    }
    fn num_classes(&self) -> Option<usize> {
        self.model.num_classes()
    }
}

/// Classifier-free guidance (Ho & Salimans 2022, eq. 6 with `w` = their `1 + w`):
/// `eps~(x_t, t, c) = eps(x_t, t, null) + w (eps(x_t, t, c) - eps(x_t, t, null))`, both
/// predictions from one forward pass on the doubled batch. `w = 1` is plain conditional
/// sampling, `w = 0` unconditional, `w > 1` trades diversity for fidelity to the class.
///
/// The combination is applied to the network's raw output. For the x_0 and v objectives this
/// guides the implied eps exactly: eps is an affine function of the output at fixed `(x_t, t)`
/// (`eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar)`, `eps = sqrt(1 - abar) x_t + sqrt(abar) v`)
/// and the weights `1 - w` and `w` sum to one, so combining outputs and then converting equals
/// converting and then combining.
///
/// ```
/// # use burn::tensor::{Device, Int, Tensor};
/// # use ddpm_core::{Condition, Guided, NoisePredictor, PredictorError};
/// /// eps = label (a constant per class; the null class is 2).
/// struct ByClass;
/// impl NoisePredictor<2> for ByClass {
///     fn predict(&self, x: Tensor<2>, t: Tensor<1, Int>) -> Result<Tensor<2>, PredictorError> {
///         self.predict_conditional(x.clone(), t, &Condition::null(x.dims()[0], 2))
///     }
///     fn predict_conditional(&self, x: Tensor<2>, _t: Tensor<1, Int>, c: &Condition)
///         -> Result<Tensor<2>, PredictorError> {
///         let Condition::Classes(l) = c else { unreachable!() };
///         let v: Vec<f32> = l.iter().map(|&k| k as f32).collect();
///         Ok(Tensor::<1>::from_floats(v.as_slice(), &x.device()).unsqueeze_dim(1))
///     }
///     fn num_classes(&self) -> Option<usize> { Some(2) }
/// }
/// let dev = Device::flex();
/// let guided = Guided::new(&ByClass, Condition::Classes(vec![1]), 3.0).unwrap();
/// let eps = guided.predict(Tensor::zeros([1, 1], &dev), ddpm_core::timestep_tensor(&[0], &dev)).unwrap();
/// // eps_null + 3 (eps_1 - eps_null) = 2 + 3 (1 - 2) = -1
/// assert_eq!(eps.into_scalar::<f32>(), -1.0);
/// ```
#[derive(Debug, Clone)]
pub struct Guided<'a, P: ?Sized> {
    model: &'a P,
    condition: Condition,
    null: Condition,
    scale: f64,
}

impl<'a, P: ?Sized> Guided<'a, P> {
    /// Guides `model` towards `condition` with scale `w`.
    ///
    /// # Errors
    /// [`DdpmError::InvalidConfig`] when the model is not conditional, a label is out of
    /// range, or `w` is not finite.
    pub fn new<const D: usize>(
        model: &'a P,
        condition: Condition,
        scale: f64,
    ) -> Result<Self, DdpmError>
    where
        P: NoisePredictor<D>,
    {
        let Some(k) = model.num_classes() else {
            return Err(DdpmError::InvalidConfig(
                "this model is unconditional: it was trained without classes, so it cannot be \
                 guided (train it with classes, or sample it without a Condition)"
                    .into(),
            ));
        };
        condition.check(k, condition.batch())?;
        if !scale.is_finite() {
            return Err(DdpmError::InvalidConfig(format!(
                "the guidance scale must be a finite number, got {scale}"
            )));
        }
        let null = Condition::null(condition.batch(), k);
        Ok(Self {
            model,
            condition,
            null,
            scale,
        })
    }
}

impl<const D: usize, P: NoisePredictor<D> + ?Sized> NoisePredictor<D> for Guided<'_, P> {
    fn predict(&self, x_t: Tensor<D>, t: Tensor<1, Int>) -> Result<Tensor<D>, PredictorError> {
        let batch = x_t.dims()[0];
        if batch != self.condition.batch() {
            return Err(format!(
                "the guidance condition has {} labels but the batch has {batch} examples",
                self.condition.batch()
            )
            .into());
        }
        if self.scale == 1.0 {
            return self.model.predict_conditional(x_t, t, &self.condition);
        }
        if self.scale == 0.0 {
            return self.model.predict_conditional(x_t, t, &self.null);
        }
        // One forward pass on [x_t; x_t] with [c; null].
        let x2 = Tensor::cat(vec![x_t.clone(), x_t], 0); // [2b, ...]
        let t2 = Tensor::cat(vec![t.clone(), t], 0); // [2b]
        let out = self
            .model
            .predict_conditional(x2, t2, &self.condition.concat(&self.null))?; // [2b, ...]
        let cond = out.clone().narrow(0, 0, batch); // [b, ...]
        let uncond = out.narrow(0, batch, batch); // [b, ...]
        Ok(uncond.clone() + (cond - uncond).mul_scalar(self.scale))
    }
    fn num_classes(&self) -> Option<usize> {
        self.model.num_classes()
    }
}
