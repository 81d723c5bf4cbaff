//! The [`NoisePredictor`] trait: the only thing ddpm-core asks of a network.

use burn::tensor::{Int, Tensor};

use crate::condition::Condition;
use crate::error::PredictorError;

/// A model `eps_theta(x_t, t)` that predicts, from a noisy sample `x_t` and its timestep, the
/// quantity named by the diffusion's [`Objective`](crate::Objective) (the noise `eps` in the
/// paper).
///
/// `D` is the rank of the data, batch dimension included: `2` for `[batch, features]` models,
/// `4` for `[batch, channels, height, width]` images. Everything in ddpm-core is generic over it.
///
/// # Contract
/// - `t` holds one **0-based** timestep index per example (`t - 1` in the paper's 1-based
///   notation, as in the original code), each in `0..T`.
/// - The output has exactly `x_t`'s shape; the loss and the samplers check this and return
///   [`DdpmError::PredictorShape`](crate::DdpmError::PredictorShape) otherwise.
///
/// # Shapes
/// - `x_t`: `[batch, ...]`
/// - `t`: `[batch]`
/// - output: `[batch, ...]`, the same as `x_t`
pub trait NoisePredictor<const D: usize> {
    /// Predict the model output for `x_t` at timesteps `t`.
    ///
    /// # Errors
    /// Whatever the model rejects (an input shape it cannot handle, say).
    fn predict(&self, x_t: Tensor<D>, t: Tensor<1, Int>) -> Result<Tensor<D>, PredictorError>;

    /// The prediction under `condition` (one entry per example; see [`Condition`]). A
    /// conditional predictor overrides this and [`num_classes`](Self::num_classes); the
    /// default refuses every condition, so unconditional predictors need not mention it.
    ///
    /// # Errors
    /// The default: always (the predictor is unconditional).
    fn predict_conditional(
        &self,
        x_t: Tensor<D>,
        t: Tensor<1, Int>,
        condition: &Condition,
    ) -> Result<Tensor<D>, PredictorError> {
        let _ = (x_t, t);
        Err(
            format!("this predictor is unconditional: it cannot take the condition {condition:?}")
                .into(),
        )
    }

    /// The number of classes of a class-conditional predictor (labels `0..n`, `n` the null
    /// class); `None` (the default) for an unconditional one.
    fn num_classes(&self) -> Option<usize> {
        None
    }
}

impl<const D: usize, P: NoisePredictor<D> + ?Sized> NoisePredictor<D> for &P {
    fn predict(&self, x_t: Tensor<D>, t: Tensor<1, Int>) -> Result<Tensor<D>, PredictorError> {
        (**self).predict(x_t, t)
    }
    fn predict_conditional(
        &self,
        x_t: Tensor<D>,
        t: Tensor<1, Int>,
        condition: &Condition,
    ) -> Result<Tensor<D>, PredictorError> {
        (**self).predict_conditional(x_t, t, condition)
    }
    fn num_classes(&self) -> Option<usize> {
        (**self).num_classes()
    }
}
