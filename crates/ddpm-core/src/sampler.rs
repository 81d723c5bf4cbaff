//! Samplers: DDPM ancestral sampling (Algorithm 2, optionally respaced) and DDIM.

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::diffusion::{GaussianDiffusion, VarianceType};
use crate::error::DdpmError;
use crate::predictor::NoisePredictor;
use crate::rng::NoiseRng;
use crate::schedule::space_timesteps;

/// Clipping of the model's x_0 estimate during sampling.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub enum Clip {
    /// Leave x_0 as predicted.
    #[default]
    None,
    /// Clamp x_0 to `[min, max]`; `[-1, 1]` for images scaled as in the paper.
    Range {
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
    },
}

impl Clip {
    /// `[-1, 1]`, the data range of the paper's images (section 3.3).
    pub fn unit() -> Self {
        Clip::Range {
            min: -1.0,
            max: 1.0,
        }
    }
}

/// One recorded step of a sampling trajectory.
#[derive(Debug, Clone)]
pub struct TrajectoryFrame<const D: usize> {
    /// The original (0-based) timestep index of `x_t`.
    pub t: usize,
    /// The sample at that step.
    pub x_t: Tensor<D>,
    /// The model's estimate of x_0 at that step.
    pub pred_x0: Tensor<D>,
}

/// What a sampler returns.
#[derive(Debug, Clone)]
pub struct SampleOutput<const D: usize> {
    /// The final samples x_0.
    pub samples: Tensor<D>,
    /// The recorded trajectory (empty unless requested), from noisiest to cleanest.
    pub trajectory: Vec<TrajectoryFrame<D>>,
}

/// Per-call options of a sampler: the seed, trajectory recording and a progress callback.
pub struct SampleOptions<'a> {
    /// Seed of the noise (x_T and every z): equal seeds give equal samples.
    pub seed: u64,
    /// Record `(x_t, x_0 estimate)` every this many steps (and at the last step).
    pub trajectory_every: Option<usize>,
    /// Called after each step with `(steps done, total steps)`.
    pub progress: Option<&'a mut dyn FnMut(usize, usize)>,
}

impl std::fmt::Debug for SampleOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleOptions")
            .field("seed", &self.seed)
            .field("trajectory_every", &self.trajectory_every)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl<'a> SampleOptions<'a> {
    /// Options with a seed, no trajectory and no progress callback.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            trajectory_every: None,
            progress: None,
        }
    }
    /// Records the trajectory every `every` steps.
    pub fn with_trajectory(mut self, every: usize) -> Self {
        self.trajectory_every = Some(every.max(1));
        self
    }
    /// Reports progress after each step.
    pub fn with_progress(mut self, progress: &'a mut dyn FnMut(usize, usize)) -> Self {
        self.progress = Some(progress);
        self
    }

    fn report(&mut self, done: usize, total: usize) {
        if let Some(p) = self.progress.as_mut() {
            p(done, total);
        }
    }

    fn wants_frame(&self, done: usize, total: usize) -> bool {
        match self.trajectory_every {
            Some(k) => done.is_multiple_of(k) || done == total,
            None => false,
        }
    }
}

/// Draws samples from a trained model. Implemented by [`DdpmSampler`] and [`DdimSampler`].
pub trait Sampler {
    /// Draws `shape[0]` samples of shape `shape[1..]`, starting from `x_T ~ N(0, I)`.
    ///
    /// # Errors
    /// Invalid sampler settings, a failing model or one whose output has another shape.
    fn sample<const D: usize, P: NoisePredictor<D> + ?Sized>(
        &self,
        diffusion: &GaussianDiffusion,
        model: &P,
        shape: [usize; D],
        device: &Device,
        options: SampleOptions<'_>,
    ) -> Result<SampleOutput<D>, DdpmError>;
}

/// Ancestral sampling, Algorithm 2 of Ho et al., optionally on a respaced chain of fewer steps
/// (Nichol & Dhariwal 2021, section 4).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DdpmSampler {
    /// sigma_t^2: beta tilde (`FixedSmall`) or beta (`FixedLarge`).
    pub variance: VarianceType,
    /// Clipping of the x_0 estimate.
    pub clip: Clip,
    /// `Some(k)`: run `k` evenly spaced steps instead of all T.
    pub steps: Option<usize>,
}

impl Default for DdpmSampler {
    /// All T steps, `FixedLarge` (the paper's CIFAR10 setting), no clipping.
    fn default() -> Self {
        Self {
            variance: VarianceType::FixedLarge,
            clip: Clip::None,
            steps: None,
        }
    }
}

impl Sampler for DdpmSampler {
    fn sample<const D: usize, P: NoisePredictor<D> + ?Sized>(
        &self,
        diffusion: &GaussianDiffusion,
        model: &P,
        shape: [usize; D],
        device: &Device,
        mut options: SampleOptions<'_>,
    ) -> Result<SampleOutput<D>, DdpmError> {
        check_shape(&shape)?;
        let chain = match self.steps {
            Some(k) => diffusion.respaced(k)?,
            None => diffusion.clone(),
        };
        let mut rng = NoiseRng::new(options.seed);
        let total = chain.num_timesteps();
        // Algorithm 2, line 1: x_T ~ N(0, I).
        let mut x = rng.normal(shape, device);
        let mut trajectory = Vec::new();
        for (done, t) in (0..total).rev().enumerate() {
            // Line 3: z ~ N(0, I) if t > 1, else z = 0.
            let z = if t > 0 {
                rng.normal(shape, device)
            } else {
                Tensor::zeros(shape, device)
            };
            // Line 4.
            let (next, pred_x0) = chain.p_sample(model, x, t, self.variance, self.clip, z)?;
            x = next;
            let done = done + 1;
            if options.wants_frame(done, total) {
                trajectory.push(TrajectoryFrame {
                    t: chain.timestep_map()[t],
                    x_t: x.clone(),
                    pred_x0,
                });
            }
            options.report(done, total);
        }
        Ok(SampleOutput {
            samples: x,
            trajectory,
        })
    }
}

/// Denoising diffusion implicit models (Song, Meng & Ermon 2021, eq. 12) on `steps` evenly
/// spaced timesteps. `eta = 0` is deterministic; `eta = 1` matches DDPM's posterior variance.
///
/// The previous timestep of a strided step is the previous kept step, not `t - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DdimSampler {
    /// Number of steps (at most T).
    pub steps: usize,
    /// eta in eq. 16 of Song et al.: the scale of the injected noise.
    pub eta: f64,
    /// Clipping of the x_0 estimate (eps is re-derived from the clipped x_0).
    pub clip: Clip,
}

impl Default for DdimSampler {
    /// 50 deterministic steps, no clipping.
    fn default() -> Self {
        Self {
            steps: 50,
            eta: 0.0,
            clip: Clip::None,
        }
    }
}

impl DdimSampler {
    /// The (x_{prev}) update of eq. 12 of Song et al., given the model's estimates:
    /// `sqrt(abar_prev) x_0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z`, with
    /// `sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)` (eq. 16).
    pub fn step_coefficients(&self, abar_t: f64, abar_prev: f64) -> (f64, f64, f64) {
        let sigma =
            self.eta * ((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)).sqrt();
        let dir = (1.0 - abar_prev - sigma * sigma).max(0.0).sqrt();
        (abar_prev.sqrt(), dir, sigma)
    }
}

impl Sampler for DdimSampler {
    fn sample<const D: usize, P: NoisePredictor<D> + ?Sized>(
        &self,
        diffusion: &GaussianDiffusion,
        model: &P,
        shape: [usize; D],
        device: &Device,
        mut options: SampleOptions<'_>,
    ) -> Result<SampleOutput<D>, DdpmError> {
        check_shape(&shape)?;
        if !(self.eta.is_finite() && self.eta >= 0.0) {
            return Err(DdpmError::InvalidSampler(format!(
                "DDIM eta must be a number >= 0, got {}",
                self.eta
            )));
        }
        let kept = space_timesteps(diffusion.num_timesteps(), self.steps)?;
        let abar = diffusion.schedule().alphas_cumprod();
        let mut rng = NoiseRng::new(options.seed);
        let total = kept.len();
        let mut x = rng.normal(shape, device);
        let mut trajectory = Vec::new();
        let batch = shape[0];
        for i in (0..total).rev() {
            let t = kept[i];
            let abar_t = abar[t];
            // The previous *kept* step; abar = 1 beyond the first.
            let abar_prev = if i > 0 { abar[kept[i - 1]] } else { 1.0 };
            let ts = vec![t; batch];
            let (eps, x0) = diffusion.model_predictions(model, x.clone(), &ts, self.clip)?;
            let (c_x0, c_eps, sigma) = self.step_coefficients(abar_t, abar_prev);
            x = x0.clone().mul_scalar(c_x0) + eps.mul_scalar(c_eps);
            if sigma > 0.0 {
                x = x + rng.normal(shape, device).mul_scalar(sigma);
            }
            let done = total - i;
            if options.wants_frame(done, total) {
                trajectory.push(TrajectoryFrame {
                    t: diffusion.timestep_map()[t],
                    x_t: x.clone(),
                    pred_x0: x0,
                });
            }
            options.report(done, total);
        }
        Ok(SampleOutput {
            samples: x,
            trajectory,
        })
    }
}

fn check_shape(shape: &[usize]) -> Result<(), DdpmError> {
    if shape.first() == Some(&0) {
        return Err(DdpmError::EmptyBatch);
    }
    if shape.contains(&0) {
        return Err(DdpmError::InvalidSampler(format!(
            "cannot sample tensors of shape {shape:?}: every dimension must be at least 1"
        )));
    }
    Ok(())
}
