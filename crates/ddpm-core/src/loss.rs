//! Algorithm 1's objective on [`GaussianDiffusion`]: the regression target of the objective,
//! Min-SNR weights, [`loss_with`](GaussianDiffusion::loss_with) (L_simple, eq. 14) and
//! [`loss`](GaussianDiffusion::loss) (t and eps drawn).

use burn::tensor::Tensor;

use crate::coef::values_column;
use crate::diffusion::{GaussianDiffusion, LossWeighting, Objective};
use crate::error::DdpmError;
use crate::predictor::NoisePredictor;
use crate::rng::NoiseRng;

impl GaussianDiffusion {
    /// The regression target of the objective: eps, x_0 or v.
    fn target<const D: usize>(&self, x0: Tensor<D>, t: &[usize], noise: Tensor<D>) -> Tensor<D> {
        match self.objective() {
            Objective::Epsilon => noise,
            Objective::Sample => x0,
            Objective::Velocity => self.predict_v(x0, t, noise),
        }
    }

    /// Per-example loss weights of the configured [`LossWeighting`].
    fn loss_weights(&self, t: &[usize]) -> Option<Vec<f64>> {
        let LossWeighting::MinSnr { gamma } = self.config().loss_weighting else {
            return None;
        };
        Some(
            t.iter()
                .map(|&i| {
                    let snr = self.schedule().snr(i);
                    let clipped = snr.min(gamma);
                    match self.objective() {
                        Objective::Epsilon => clipped / snr,
                        Objective::Sample => clipped,
                        Objective::Velocity => clipped / (snr + 1.0),
                    }
                })
                .collect(),
        )
    }

    /// The training loss at given timesteps and noise (Algorithm 1, line 5; L_simple, eq. 14):
    /// `|| eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2`, averaged over
    /// elements and the batch (weighted per example when a [`LossWeighting`] is set).
    ///
    /// # Shapes
    /// `x0`, `noise`: `[batch, ...]`; `t`: `batch` 0-based indices; output: `[1]`.
    ///
    /// # Errors
    /// Bad timesteps, a noise tensor of another shape, a failing model or a model output of
    /// another shape.
    pub fn loss_with<const D: usize, P: NoisePredictor<D> + ?Sized>(
        &self,
        model: &P,
        x0: Tensor<D>,
        t: &[usize],
        noise: Tensor<D>,
    ) -> Result<Tensor<1>, DdpmError> {
        let x_t = self.q_sample(x0.clone(), t, noise.clone())?;
        let target = self.target(x0, t, noise);
        let out = self.model_output(model, x_t, t)?;
        let dims = out.dims();
        let batch = dims[0];
        let per_elem = (out - target).square(); // [batch, ...]
        match self.loss_weights(t) {
            None => Ok(per_elem.mean().reshape([1])),
            Some(weights) => {
                let numel: usize = dims[1..].iter().product();
                let per_example = per_elem.reshape([batch, numel]).mean_dim(1); // [batch, 1]
                let weights = values_column::<2>(&weights, &per_example.device()); // [batch, 1]
                Ok((per_example * weights).mean().reshape([1]))
            }
        }
    }

    /// Algorithm 1, lines 2-5: draws `t ~ Uniform({1..T})` and `eps ~ N(0, I)` from `rng` and
    /// returns [`loss_with`](Self::loss_with).
    ///
    /// # Errors
    /// As [`loss_with`](Self::loss_with).
    pub fn loss<const D: usize, P: NoisePredictor<D> + ?Sized>(
        &self,
        model: &P,
        x0: Tensor<D>,
        rng: &mut NoiseRng,
    ) -> Result<Tensor<1>, DdpmError> {
        let dims = x0.dims();
        if dims[0] == 0 {
            return Err(DdpmError::EmptyBatch);
        }
        let t = rng.timesteps(dims[0], self.num_timesteps());
        let noise = rng.normal(dims, &x0.device());
        self.loss_with(model, x0, &t, noise)
    }
}
