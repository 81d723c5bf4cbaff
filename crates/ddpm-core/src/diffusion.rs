//! [`GaussianDiffusion`]: the forward process, the parameterizations, the reverse-process
//! Gaussians and the training loss. Each method is one equation.

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::coef::{column, scale};
use crate::error::DdpmError;
use crate::indices::timestep_tensor;
use crate::predictor::NoisePredictor;
use crate::sample_io::Clip;
use crate::schedule::{NoiseSchedule, ScheduleConfig, space_timesteps};

/// What the network predicts (lucidrains' `objective`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Objective {
    /// The noise eps (the paper's choice, eq. 11 and 14).
    #[default]
    Epsilon,
    /// The clean sample x_0 directly.
    Sample,
    /// The velocity v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022).
    Velocity,
}

/// The fixed variance sigma_t^2 of the reverse process (section 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum VarianceType {
    /// sigma_t^2 = beta tilde_t, optimal for x_0 deterministic.
    FixedSmall,
    /// sigma_t^2 = beta_t, optimal for x_0 ~ N(0, I); beta tilde at the last step, as in the
    /// original code. The default, as every sampler's (the paper's CIFAR-10 setting).
    #[default]
    FixedLarge,
}

/// Parses `eps` / `epsilon`, `x0` / `sample` and `v` / `velocity`.
impl std::str::FromStr for Objective {
    type Err = DdpmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "eps" | "epsilon" => Ok(Self::Epsilon),
            "x0" | "sample" => Ok(Self::Sample),
            "v" | "velocity" => Ok(Self::Velocity),
            other => Err(DdpmError::InvalidConfig(format!(
                "unknown objective '{other}': choose eps (the paper), x0 or v"
            ))),
        }
    }
}

/// Parses `small` / `fixed-small` and `large` / `fixed-large`.
impl std::str::FromStr for VarianceType {
    type Err = DdpmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "small" | "fixed-small" => Ok(Self::FixedSmall),
            "large" | "fixed-large" => Ok(Self::FixedLarge),
            other => Err(DdpmError::InvalidConfig(format!(
                "unknown variance '{other}': choose small (beta tilde) or large (beta)"
            ))),
        }
    }
}

/// Per-example weighting of the training loss.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub enum LossWeighting {
    /// L_simple, eq. 14: every timestep weighted equally (the paper).
    #[default]
    None,
    /// Min-SNR-gamma (Hang et al. 2023): the x_0-space weight min(SNR, gamma), expressed in the
    /// objective's space.
    MinSnr {
        /// gamma (5 in the paper).
        gamma: f64,
    },
}

/// Everything that defines a [`GaussianDiffusion`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DiffusionConfig {
    /// The noise schedule (T = 1000, linear 1e-4..0.02 by default).
    pub schedule: ScheduleConfig,
    /// What the network predicts.
    pub objective: Objective,
    /// How training examples are weighted.
    pub loss_weighting: LossWeighting,
}

impl DiffusionConfig {
    /// A config with the given schedule, predicting eps, unweighted (the paper).
    pub fn new(schedule: ScheduleConfig) -> Self {
        Self {
            schedule,
            ..Self::default()
        }
    }
    /// Sets the objective.
    pub fn with_objective(mut self, objective: Objective) -> Self {
        self.objective = objective;
        self
    }
    /// Sets the loss weighting.
    pub fn with_loss_weighting(mut self, loss_weighting: LossWeighting) -> Self {
        self.loss_weighting = loss_weighting;
        self
    }
}

/// Mean and (log-)variance of a diagonal Gaussian over `x_{t-1}` or `x_t`.
///
/// `variance` and `log_variance` are `[batch, 1, ..., 1]` and broadcast against `mean`.
#[derive(Debug, Clone)]
pub struct MeanVariance<const D: usize> {
    /// The mean, `[batch, ...]`.
    pub mean: Tensor<D>,
    /// The variance, `[batch, 1, ..., 1]`.
    pub variance: Tensor<D>,
    /// Its logarithm, `[batch, 1, ..., 1]`.
    pub log_variance: Tensor<D>,
}

/// The reverse-process Gaussian p_theta(x_{t-1} | x_t) with the model's x_0 estimate.
#[derive(Debug, Clone)]
pub struct PosteriorMeanVariance<const D: usize> {
    /// Mean, variance and log-variance.
    pub gaussian: MeanVariance<D>,
    /// The model's estimate of x_0 (after clipping).
    pub pred_x0: Tensor<D>,
    /// The model's estimate of eps (consistent with the clipped x_0).
    pub pred_noise: Tensor<D>,
}

/// A DDPM: the noise schedule and the equations of the paper, independent of any network.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use ddpm_core::{DiffusionConfig, GaussianDiffusion};
///
/// let device = Device::flex();
/// let diffusion = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
/// let x0 = Tensor::<2>::ones([2, 3], &device);
/// let noise = Tensor::<2>::zeros([2, 3], &device);
/// // With zero noise, x_t = sqrt(abar_t) x_0 (eq. 4).
/// let x_t = diffusion.q_sample(x0, &[999, 999], noise).unwrap();
/// let expected = diffusion.schedule().sqrt_alphas_cumprod()[999] as f32;
/// let got: Vec<f32> = x_t.into_data().to_vec().unwrap();
/// assert!((got[0] - expected).abs() < 1e-6);
/// ```
#[derive(Debug, Clone)]
pub struct GaussianDiffusion {
    config: DiffusionConfig,
    schedule: NoiseSchedule,
    /// sigma_t^2 of `VarianceType::FixedLarge` and its log.
    large_variance: (Vec<f64>, Vec<f64>),
    /// For a respaced diffusion, the original timestep of each kept step; identity otherwise.
    timestep_map: Vec<usize>,
}

impl GaussianDiffusion {
    /// Builds the schedule and validates the configuration.
    ///
    /// # Errors
    /// An invalid schedule (see [`ScheduleConfig::build`]) or a min-SNR gamma that is not a
    /// positive number.
    pub fn new(config: DiffusionConfig) -> Result<Self, DdpmError> {
        if let LossWeighting::MinSnr { gamma } = config.loss_weighting
            && !(gamma.is_finite() && gamma > 0.0)
        {
            return Err(DdpmError::InvalidConfig(format!(
                "min-SNR gamma must be a positive number, got {gamma} (the paper uses 5)"
            )));
        }
        let schedule = config.schedule.build()?;
        let timestep_map = (0..schedule.num_timesteps()).collect();
        Ok(Self {
            config,
            large_variance: large_variance(&schedule),
            schedule,
            timestep_map,
        })
    }

    /// The configuration this diffusion was built from.
    pub fn config(&self) -> &DiffusionConfig {
        &self.config
    }
    /// The schedule's tables.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }
    /// The number of steps of this (possibly respaced) chain.
    pub fn num_timesteps(&self) -> usize {
        self.schedule.num_timesteps()
    }
    /// The original timestep that step `t` of this chain corresponds to (identity unless
    /// respaced); this is what the network sees.
    pub fn timestep_map(&self) -> &[usize] {
        &self.timestep_map
    }
    /// What the network predicts.
    pub fn objective(&self) -> Objective {
        self.config.objective
    }

    /// The same diffusion restricted to `count` evenly spaced steps (Nichol & Dhariwal 2021,
    /// section 4). The network still receives the original timesteps.
    ///
    /// # Errors
    /// [`DdpmError::InvalidSampler`] when `count` is 0 or above T.
    pub fn respaced(&self, count: usize) -> Result<Self, DdpmError> {
        let kept = space_timesteps(self.num_timesteps(), count)?;
        self.respaced_on(&kept)
    }

    /// The same diffusion restricted to the steps `kept` (strictly increasing, in `0..T`):
    /// betas `1 - abar_{k_i} / abar_{k_{i-1}}` of the *kept* steps, so that abar is unchanged
    /// there (Nichol & Dhariwal 2021, section 4). The network still receives the original
    /// timesteps.
    ///
    /// # Errors
    /// [`DdpmError::InvalidSampler`] for an empty, unsorted or out-of-range list.
    pub fn respaced_on(&self, kept: &[usize]) -> Result<Self, DdpmError> {
        let schedule = self.schedule.respace(kept)?;
        let timestep_map = kept.iter().map(|&i| self.timestep_map[i]).collect();
        Ok(Self {
            config: self.config.clone(),
            large_variance: large_variance(&schedule),
            schedule,
            timestep_map,
        })
    }

    pub(crate) fn check_t(&self, t: &[usize], batch: usize) -> Result<(), DdpmError> {
        if batch == 0 {
            return Err(DdpmError::EmptyBatch);
        }
        if t.len() != batch {
            return Err(DdpmError::TimestepBatchMismatch {
                timesteps: t.len(),
                batch,
            });
        }
        t.iter().try_for_each(|&v| self.schedule.check_timestep(v))
    }

    /// Mean and variance of q(x_t | x_0) (eq. 4): `N(sqrt(abar_t) x_0, (1 - abar_t) I)`.
    ///
    /// # Errors
    /// Timesteps out of range or not one per example.
    pub fn q_mean_variance<const D: usize>(
        &self,
        x0: Tensor<D>,
        t: &[usize],
    ) -> Result<MeanVariance<D>, DdpmError> {
        self.check_t(t, x0.dims()[0])?;
        let device = x0.device();
        let s = &self.schedule;
        Ok(MeanVariance {
            mean: scale(x0, s.sqrt_alphas_cumprod(), t),
            variance: column(s.one_minus_alphas_cumprod(), t, &device),
            log_variance: column(s.log_one_minus_alphas_cumprod(), t, &device),
        })
    }

    /// Draws x_t ~ q(x_t | x_0) in one step (eq. 4):
    /// `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`.
    ///
    /// # Shapes
    /// `x0`, `noise`: `[batch, ...]`; `t`: one 0-based index per example.
    ///
    /// # Errors
    /// Timesteps out of range or not one per example; `noise` of another shape.
    pub fn q_sample<const D: usize>(
        &self,
        x0: Tensor<D>,
        t: &[usize],
        noise: Tensor<D>,
    ) -> Result<Tensor<D>, DdpmError> {
        crate::coef::same_shape("q_sample noise", &x0.dims(), &noise.dims())?;
        self.check_t(t, x0.dims()[0])?;
        let s = &self.schedule;
        Ok(scale(x0, s.sqrt_alphas_cumprod(), t)
            + scale(noise, s.sqrt_one_minus_alphas_cumprod(), t))
    }

    /// One step of the forward Markov chain (eq. 2): draws x_t ~ q(x_t | x_{t-1}) =
    /// `N(sqrt(1 - beta_t) x_{t-1}, beta_t I)`.
    ///
    /// # Errors
    /// As [`q_sample`](Self::q_sample).
    pub fn q_step<const D: usize>(
        &self,
        x_prev: Tensor<D>,
        t: &[usize],
        noise: Tensor<D>,
    ) -> Result<Tensor<D>, DdpmError> {
        crate::coef::same_shape("q_step noise", &x_prev.dims(), &noise.dims())?;
        self.check_t(t, x_prev.dims()[0])?;
        let s = &self.schedule;
        Ok(scale(x_prev, s.sqrt_alphas(), t) + scale(noise, s.sqrt_betas(), t))
    }

    /// The forward-process posterior q(x_{t-1} | x_t, x_0) (eqs. 6-7):
    /// mean `mu tilde_t = coef1 x_0 + coef2 x_t`, variance `beta tilde_t`.
    ///
    /// # Errors
    /// Shapes that differ, timesteps out of range or not one per example.
    pub fn q_posterior<const D: usize>(
        &self,
        x0: Tensor<D>,
        x_t: Tensor<D>,
        t: &[usize],
    ) -> Result<MeanVariance<D>, DdpmError> {
        crate::coef::same_shape("q_posterior x_t", &x0.dims(), &x_t.dims())?;
        self.check_t(t, x0.dims()[0])?;
        let device = x0.device();
        let s = &self.schedule;
        Ok(MeanVariance {
            mean: scale(x0, s.posterior_mean_coef1(), t) + scale(x_t, s.posterior_mean_coef2(), t),
            variance: column(s.posterior_variance(), t, &device),
            log_variance: column(s.posterior_log_variance_clipped(), t, &device),
        })
    }

    /// x_0 from x_t and eps, eq. 4 solved for x_0 (the estimate behind eq. 15):
    /// `x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps`.
    pub fn predict_start_from_noise<const D: usize>(
        &self,
        x_t: Tensor<D>,
        t: &[usize],
        noise: Tensor<D>,
    ) -> Tensor<D> {
        let s = &self.schedule;
        scale(x_t, s.sqrt_recip_alphas_cumprod(), t)
            - scale(noise, s.sqrt_recipm1_alphas_cumprod(), t)
    }

    /// eps from x_t and x_0, eq. 4 solved for eps: `(sqrt(1/abar_t) x_t - x_0) / sqrt(1/abar_t - 1)`.
    pub fn predict_noise_from_start<const D: usize>(
        &self,
        x_t: Tensor<D>,
        t: &[usize],
        x0: Tensor<D>,
    ) -> Tensor<D> {
        let s = &self.schedule;
        scale(
            scale(x_t, s.sqrt_recip_alphas_cumprod(), t) - x0,
            s.sqrt_snr(),
            t,
        )
    }

    /// The velocity target `v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0` (Salimans & Ho 2022).
    pub fn predict_v<const D: usize>(
        &self,
        x0: Tensor<D>,
        t: &[usize],
        noise: Tensor<D>,
    ) -> Tensor<D> {
        let s = &self.schedule;
        scale(noise, s.sqrt_alphas_cumprod(), t) - scale(x0, s.sqrt_one_minus_alphas_cumprod(), t)
    }

    /// x_0 from x_t and v: `x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v`.
    pub fn predict_start_from_v<const D: usize>(
        &self,
        x_t: Tensor<D>,
        t: &[usize],
        v: Tensor<D>,
    ) -> Tensor<D> {
        let s = &self.schedule;
        scale(x_t, s.sqrt_alphas_cumprod(), t) - scale(v, s.sqrt_one_minus_alphas_cumprod(), t)
    }

    /// eps from x_t and v: `eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v`.
    pub fn predict_noise_from_v<const D: usize>(
        &self,
        x_t: Tensor<D>,
        t: &[usize],
        v: Tensor<D>,
    ) -> Tensor<D> {
        let s = &self.schedule;
        scale(x_t, s.sqrt_one_minus_alphas_cumprod(), t) + scale(v, s.sqrt_alphas_cumprod(), t)
    }

    /// Runs the network on x_t at (this chain's) steps `t`, checking its output shape.
    ///
    /// # Errors
    /// [`DdpmError::Predictor`] if the model fails, [`DdpmError::PredictorShape`] if it returns
    /// another shape.
    pub fn model_output<const D: usize, P: NoisePredictor<D> + ?Sized>(
        &self,
        model: &P,
        x_t: Tensor<D>,
        t: &[usize],
    ) -> Result<Tensor<D>, DdpmError> {
        self.check_t(t, x_t.dims()[0])?;
        let expected = x_t.dims();
        let mapped: Vec<usize> = t.iter().map(|&i| self.timestep_map[i]).collect();
        let t_tensor = timestep_tensor(&mapped, &x_t.device());
        let out = model.predict(x_t, t_tensor).map_err(DdpmError::Predictor)?;
        if out.dims() != expected {
            return Err(DdpmError::PredictorShape {
                expected: expected.to_vec(),
                actual: out.dims().to_vec(),
            });
        }
        Ok(out)
    }

    /// The model's (eps, x_0) estimates at x_t, whatever the [`Objective`]. With clipping,
    /// x_0 is clamped and eps re-derived from it so that the two stay consistent.
    ///
    /// # Errors
    /// As [`model_output`](Self::model_output).
    pub fn model_predictions<const D: usize, P: NoisePredictor<D> + ?Sized>(
        &self,
        model: &P,
        x_t: Tensor<D>,
        t: &[usize],
        clip: Clip,
    ) -> Result<(Tensor<D>, Tensor<D>), DdpmError> {
        let out = self.model_output(model, x_t.clone(), t)?;
        Ok(self.split_output(x_t, t, out, clip))
    }

    /// The (eps, x_0) estimates implied by a raw model output at x_t, whatever the
    /// [`Objective`] (eq. 4 solved for the missing one, or the v relations). With clipping,
    /// x_0 is clamped and eps re-derived from it. Every sampler converts through this, so that
    /// x_0- and v-predicting models drive the same updates as eps-predicting ones.
    pub fn split_output<const D: usize>(
        &self,
        x_t: Tensor<D>,
        t: &[usize],
        out: Tensor<D>,
        clip: Clip,
    ) -> (Tensor<D>, Tensor<D>) {
        let (noise, x0) = match self.objective() {
            Objective::Epsilon => {
                let x0 = self.predict_start_from_noise(x_t.clone(), t, out.clone());
                (out, x0)
            }
            Objective::Sample => (
                self.predict_noise_from_start(x_t.clone(), t, out.clone()),
                out,
            ),
            Objective::Velocity => (
                self.predict_noise_from_v(x_t.clone(), t, out.clone()),
                self.predict_start_from_v(x_t.clone(), t, out),
            ),
        };
        match clip {
            Clip::None => (noise, x0),
            Clip::Range { .. } | Clip::Dynamic { .. } => {
                let x0 = clip.apply(x0);
                (self.predict_noise_from_start(x_t, t, x0.clone()), x0)
            }
        }
    }

    /// The fixed reverse variance sigma_t^2 and its log for each example (section 3.2).
    pub fn model_variance<const D: usize>(
        &self,
        variance: VarianceType,
        t: &[usize],
        device: &Device,
    ) -> (Tensor<D>, Tensor<D>) {
        let s = &self.schedule;
        match variance {
            VarianceType::FixedSmall => (
                column(s.posterior_variance(), t, device),
                column(s.posterior_log_variance_clipped(), t, device),
            ),
            VarianceType::FixedLarge => (
                column(&self.large_variance.0, t, device),
                column(&self.large_variance.1, t, device),
            ),
        }
    }

    /// p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) (eq. 1 and 11): the model's
    /// x_0 estimate plugged into the posterior mean of eq. 7.
    ///
    /// # Errors
    /// As [`model_output`](Self::model_output).
    pub fn p_mean_variance<const D: usize, P: NoisePredictor<D> + ?Sized>(
        &self,
        model: &P,
        x_t: Tensor<D>,
        t: &[usize],
        variance: VarianceType,
        clip: Clip,
    ) -> Result<PosteriorMeanVariance<D>, DdpmError> {
        let out = self.model_output(model, x_t.clone(), t)?;
        self.p_mean_variance_from_output(x_t, t, out, variance, clip)
    }

    /// [`p_mean_variance`](Self::p_mean_variance) given the model's raw output at x_t
    /// (what a stepping scheduler receives).
    ///
    /// # Errors
    /// Timesteps out of range or not one per example; an output of another shape.
    pub fn p_mean_variance_from_output<const D: usize>(
        &self,
        x_t: Tensor<D>,
        t: &[usize],
        out: Tensor<D>,
        variance: VarianceType,
        clip: Clip,
    ) -> Result<PosteriorMeanVariance<D>, DdpmError> {
        let device = x_t.device();
        let (pred_noise, pred_x0) = self.split_output(x_t.clone(), t, out, clip);
        let posterior = self.q_posterior(pred_x0.clone(), x_t, t)?;
        let (variance, log_variance) = self.model_variance(variance, t, &device);
        Ok(PosteriorMeanVariance {
            gaussian: MeanVariance {
                mean: posterior.mean,
                variance,
                log_variance,
            },
            pred_x0,
            pred_noise,
        })
    }

    /// One step of Algorithm 2 at step `t` shared by the batch:
    /// `x_{t-1} = mu_theta(x_t, t) + sigma_t z`, with `z = 0` at the last step (t index 0).
    /// Returns x_{t-1} and the model's x_0 estimate.
    ///
    /// # Errors
    /// As [`p_mean_variance`](Self::p_mean_variance); `noise` of another shape.
    pub fn p_sample<const D: usize, P: NoisePredictor<D> + ?Sized>(
        &self,
        model: &P,
        x_t: Tensor<D>,
        t: usize,
        variance: VarianceType,
        clip: Clip,
        noise: Tensor<D>,
    ) -> Result<(Tensor<D>, Tensor<D>), DdpmError> {
        crate::coef::same_shape("p_sample noise", &x_t.dims(), &noise.dims())?;
        let batch = x_t.dims()[0];
        let ts = vec![t; batch];
        let p = self.p_mean_variance(model, x_t, &ts, variance, clip)?;
        let x_prev = if t == 0 {
            p.gaussian.mean
        } else {
            p.gaussian.mean + noise * p.gaussian.log_variance.mul_scalar(0.5).exp()
        };
        Ok((x_prev, p.pred_x0))
    }
}

/// betas with the first replaced by beta tilde_1, as `model_var_type = 'fixedlarge'` in the
/// original code (beta tilde_0 is 0 and would give an infinite log-likelihood), and its log.
fn large_variance(s: &NoiseSchedule) -> (Vec<f64>, Vec<f64>) {
    let mut v = s.betas().to_vec();
    if v.len() > 1 {
        v[0] = s.posterior_variance()[1];
    }
    let log = v.iter().map(|x| x.ln()).collect();
    (v, log)
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn objectives_and_variances_parse_by_name() {
        for (name, want) in [
            ("eps", Objective::Epsilon),
            ("epsilon", Objective::Epsilon),
            ("x0", Objective::Sample),
            ("v", Objective::Velocity),
            ("velocity", Objective::Velocity),
        ] {
            assert_eq!(name.parse::<Objective>().unwrap(), want);
        }
        let e = "noise".parse::<Objective>().unwrap_err().to_string();
        assert!(e.contains("'noise'") && e.contains("eps"), "{e}");
        assert_eq!(
            "large".parse::<VarianceType>().unwrap(),
            VarianceType::FixedLarge
        );
    }
}
