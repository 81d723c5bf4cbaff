//! The stepping API: a [`Scheduler`] owns the timesteps of one sampling run and advances
//! `x_t` by one model call at a time, knowing nothing of the model (the shape diffusers and
//! candle users know). [`denoise`] is the loop that drives any scheduler with any
//! [`NoisePredictor`]; a hand-written loop does the same:
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use ddpm_core::{DdimScheduler, DiffusionConfig, GaussianDiffusion, NoiseRng, Scheduler,
//!                 TimestepSpacing, Clip};
//!
//! let device = Device::flex();
//! let diffusion = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
//! let mut scheduler: Box<dyn Scheduler<2>> = Box::new(
//!     DdimScheduler::new(&diffusion, 10, TimestepSpacing::Linspace, 0.0, Clip::None).unwrap(),
//! );
//! let mut rng = NoiseRng::new(0);
//! let mut x = rng.normal([4, 2], &device); // x_T
//! let timesteps = scheduler.timesteps().to_vec();
//! for (i, &t) in timesteps.iter().enumerate() {
//!     let eps = x.clone().mul_scalar(0.1); // your model's output at (x, t)
//!     x = scheduler.step(eps, i, x, &mut rng).unwrap().prev_sample;
//! }
//! assert_eq!(x.dims(), [4, 2]);
//! ```

use burn::tensor::{Device, Tensor};

use crate::diffusion::{GaussianDiffusion, VarianceType};
use crate::error::DdpmError;
use crate::predictor::NoisePredictor;
use crate::rng::NoiseRng;
use crate::sample_io::{Clip, SampleOptions, SampleOutput, TrajectoryFrame};
use crate::spacing::TimestepSpacing;

/// What one [`Scheduler::step`] returns.
#[derive(Debug, Clone)]
pub struct StepOutput<const D: usize> {
    /// The sample to feed to the next model call (x at the next timestep), or the final x_0
    /// after the last call.
    pub prev_sample: Tensor<D>,
    /// The model's x_0 estimate at this call.
    pub pred_x0: Tensor<D>,
}

/// A sampler that advances one model call at a time. Object safe: a program can hold a
/// `Box<dyn Scheduler<4>>` chosen at run time (see [`SamplerConfig::build`](crate::SamplerConfig::build)).
///
/// The protocol: call [`reset`](Self::reset) (a new scheduler is already reset), then for
/// `i` in `start..timesteps().len()`, run the model on `(x, timesteps()[i])` and pass its raw
/// output to `step(output, i, x, rng)`; the returned `prev_sample` is the next `x`. After the
/// last call it is the sample x_0, with no noise left. Indices must be consecutive after the
/// first call of a run; a run may start at any index (img2img starts part-way).
pub trait Scheduler<const D: usize> {
    /// The original (0-based) timesteps of the model calls, in call order. A second-order
    /// method such as Heun lists a timestep twice (predictor and corrector).
    fn timesteps(&self) -> &[usize];

    /// The diffusion whose tables this scheduler applies (and which runs the model).
    fn diffusion(&self) -> &GaussianDiffusion;

    /// Advances `x_t` (the input of model call `index`) given the model's raw output there
    /// (eps, x_0 or v, as the diffusion's [`Objective`](crate::Objective) says).
    ///
    /// # Errors
    /// [`DdpmError::InvalidSampler`] for an index out of range or out of order, and
    /// [`DdpmError::ShapeMismatch`] when the output and `x_t` differ in shape.
    fn step(
        &mut self,
        model_output: Tensor<D>,
        index: usize,
        x_t: Tensor<D>,
        rng: &mut NoiseRng,
    ) -> Result<StepOutput<D>, DdpmError>;

    /// Forgets the state of a run (multistep history, Heun's predictor), ready for a new one.
    fn reset(&mut self);

    /// The index of the first model call at a timestep `<= t` at which a run may start (for
    /// img2img: `t = strength * T`); `timesteps().len()` when there is none.
    fn start_index(&self, t: usize) -> usize {
        self.timesteps()
            .iter()
            .position(|&s| s <= t)
            .unwrap_or(self.timesteps().len())
    }
}

/// Tracks that a run's indices are consecutive.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cursor {
    next: Option<usize>,
}

impl Cursor {
    pub(crate) fn advance(&mut self, index: usize, len: usize) -> Result<(), DdpmError> {
        if index >= len {
            return Err(DdpmError::InvalidSampler(format!(
                "step index {index} is out of range: this scheduler makes {len} model calls"
            )));
        }
        if let Some(expected) = self.next
            && expected != index
        {
            return Err(DdpmError::InvalidSampler(format!(
                "step index {index} out of order: expected {expected}; call reset() to start a \
                 new run"
            )));
        }
        self.next = Some(index + 1);
        Ok(())
    }
    pub(crate) fn reset(&mut self) {
        self.next = None;
    }
}

/// The checks every `step` starts with: the call is in range and in order, and the model
/// output has x_t's shape.
pub(crate) fn begin_step<const D: usize>(
    cursor: &mut Cursor,
    calls: usize,
    index: usize,
    output: &Tensor<D>,
    x_t: &Tensor<D>,
) -> Result<(), DdpmError> {
    cursor.advance(index, calls)?;
    crate::coef::same_shape("scheduler step: model output", &x_t.dims(), &output.dims())
}

/// Draws x_T ~ N(0, I) of `shape` from `options.seed` and runs `scheduler` from it: what
/// [`SamplerConfig::sample`](crate::SamplerConfig::sample) does.
pub(crate) fn sample_with<
    const D: usize,
    S: Scheduler<D> + ?Sized,
    P: NoisePredictor<D> + ?Sized,
>(
    scheduler: &mut S,
    model: &P,
    shape: [usize; D],
    device: &Device,
    mut options: SampleOptions<'_>,
) -> Result<SampleOutput<D>, DdpmError> {
    crate::sample_io::check_shape(&shape)?;
    let mut rng = NoiseRng::new(options.seed);
    // Algorithm 2, line 1: x_T ~ N(0, I).
    let x = rng.normal(shape, device);
    denoise(scheduler, model, x, &mut rng, &mut options)
}

/// Runs `scheduler` with `model` from `x_start` (x at the timestep of call
/// `options.start_index`) through call `options.end_index` (exclusive; all by default),
/// recording the trajectory and reporting progress as `options` asks. `rng` supplies the
/// noise of stochastic steps.
///
/// # Errors
/// A failing model, an output of the wrong shape, an empty batch or a range that does not fit
/// the scheduler's calls.
pub fn denoise<const D: usize, S: Scheduler<D> + ?Sized, P: NoisePredictor<D> + ?Sized>(
    scheduler: &mut S,
    model: &P,
    x_start: Tensor<D>,
    rng: &mut NoiseRng,
    options: &mut SampleOptions<'_>,
) -> Result<SampleOutput<D>, DdpmError> {
    crate::sample_io::check_shape(&x_start.dims())?;
    let n = scheduler.timesteps().len();
    let start = options.start_index;
    let end = options.end_index.unwrap_or(n);
    if start > end || end > n {
        return Err(DdpmError::InvalidSampler(format!(
            "cannot run model calls {start}..{end}: this scheduler makes {n} (0..{n})"
        )));
    }
    scheduler.reset();
    let batch = x_start.dims()[0];
    let mut x = x_start;
    let mut trajectory = Vec::new();
    let total = end - start;
    for i in start..end {
        let t = scheduler.timesteps()[i];
        let ts = vec![t; batch];
        let out = scheduler.diffusion().model_output(model, x.clone(), &ts)?;
        let step = scheduler.step(out, i, x, rng)?;
        x = step.prev_sample;
        let done = i + 1 - start;
        if options.wants_frame(done, total) {
            trajectory.push(TrajectoryFrame {
                t,
                x_t: x.clone(),
                pred_x0: step.pred_x0,
            });
        }
        options.report(done, total);
    }
    Ok(SampleOutput {
        samples: x,
        trajectory,
    })
}

/// Ancestral sampling, Algorithm 2, on the chain restricted to the chosen timesteps: each
/// step draws from `p(x_prev | x_t) = N(mu_theta, sigma^2 I)` with the posterior of the
/// *kept* steps, `beta = 1 - abar_t / abar_prev` (never `beta_{t-1}` of the full chain).
#[derive(Debug, Clone)]
pub struct DdpmScheduler {
    base: GaussianDiffusion,
    /// The chain on the kept steps (chain index j <-> kept[j]).
    chain: GaussianDiffusion,
    timesteps: Vec<usize>,
    variance: VarianceType,
    clip: Clip,
    cursor: Cursor,
}

impl DdpmScheduler {
    /// `steps` timesteps chosen by `spacing` (`None`: all T, the paper's sampler).
    ///
    /// # Errors
    /// [`DdpmError::InvalidSampler`] for a step count outside `1..=T` or a `clip` that fails
    /// [`Clip::validate`].
    pub fn new(
        diffusion: &GaussianDiffusion,
        steps: Option<usize>,
        spacing: TimestepSpacing,
        variance: VarianceType,
        clip: Clip,
    ) -> Result<Self, DdpmError> {
        clip.validate()?;
        let t_max = diffusion.num_timesteps();
        let kept = spacing.timesteps(diffusion.schedule(), steps.unwrap_or(t_max))?;
        // All T steps: the original tables, bit for bit.
        let chain = if kept.len() == t_max {
            diffusion.clone()
        } else {
            diffusion.respaced_on(&kept)?
        };
        Ok(Self {
            base: diffusion.clone(),
            chain,
            timesteps: kept.into_iter().rev().collect(),
            variance,
            clip,
            cursor: Cursor::default(),
        })
    }
}

impl<const D: usize> Scheduler<D> for DdpmScheduler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }
    fn diffusion(&self) -> &GaussianDiffusion {
        &self.base
    }
    fn reset(&mut self) {
        self.cursor.reset();
    }

    /// Algorithm 2, lines 3-4: `x_{t-1} = mu_theta(x_t, t) + sigma_t z`, `z = 0` at the last
    /// step.
    fn step(
        &mut self,
        model_output: Tensor<D>,
        index: usize,
        x_t: Tensor<D>,
        rng: &mut NoiseRng,
    ) -> Result<StepOutput<D>, DdpmError> {
        let n = self.timesteps.len();
        begin_step(&mut self.cursor, n, index, &model_output, &x_t)?;
        let j = n - 1 - index; // chain index
        let shape = x_t.dims();
        // Line 3: z ~ N(0, I) if t > 1, else z = 0 (drawn before the update, as Algorithm 2).
        let z = (j > 0).then(|| rng.normal(shape, &x_t.device()));
        let ts = vec![j; shape[0]];
        let p = self.chain.p_mean_variance_from_output(
            x_t,
            &ts,
            model_output,
            self.variance,
            self.clip,
        )?;
        let pred_x0 = p.pred_x0;
        let prev_sample = match z {
            None => p.gaussian.mean,
            Some(z) => p.gaussian.mean + z * p.gaussian.log_variance.mul_scalar(0.5).exp(),
        };
        Ok(StepOutput {
            prev_sample,
            pred_x0,
        })
    }
}

/// The coefficients of DDIM's update (Song et al. 2021, eq. 12 with sigma of eq. 16):
/// `x_prev = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z`,
/// `sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)`.
/// Returns `(sqrt(abar_prev), sqrt(1 - abar_prev - sigma^2), sigma)`.
pub fn ddim_coefficients(eta: f64, abar_t: f64, abar_prev: f64) -> (f64, f64, f64) {
    let sigma = eta * ((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)).sqrt();
    let dir = (1.0 - abar_prev - sigma * sigma).max(0.0).sqrt();
    (abar_prev.sqrt(), dir, sigma)
}

/// DDIM (Song, Meng & Ermon 2021, eq. 12) on chosen timesteps. The previous timestep of a
/// step is the previous *kept* one, and abar = 1 after the last, so the last step returns the
/// x_0 estimate with no noise. `eta = 0` is deterministic (the probability-flow ODE's Euler
/// step in sigma); `eta = 1` has DDPM's posterior variance.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    base: GaussianDiffusion,
    timesteps: Vec<usize>,
    eta: f64,
    clip: Clip,
    cursor: Cursor,
}

impl DdimScheduler {
    /// `steps` timesteps chosen by `spacing`, noise scale `eta`.
    ///
    /// # Errors
    /// [`DdpmError::InvalidSampler`] for a step count outside `1..=T` or eta that is not a
    /// number >= 0, or a `clip` that fails [`Clip::validate`].
    pub fn new(
        diffusion: &GaussianDiffusion,
        steps: usize,
        spacing: TimestepSpacing,
        eta: f64,
        clip: Clip,
    ) -> Result<Self, DdpmError> {
        clip.validate()?;
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(DdpmError::InvalidSampler(format!(
                "DDIM eta must be a number >= 0, got {eta}"
            )));
        }
        let kept = spacing.timesteps(diffusion.schedule(), steps)?;
        Ok(Self {
            base: diffusion.clone(),
            timesteps: kept.into_iter().rev().collect(),
            eta,
            clip,
            cursor: Cursor::default(),
        })
    }
}

impl<const D: usize> Scheduler<D> for DdimScheduler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }
    fn diffusion(&self) -> &GaussianDiffusion {
        &self.base
    }
    fn reset(&mut self) {
        self.cursor.reset();
    }

    /// Eq. 12 of Song et al.: x_0 and eps from the model (converted from x_0 or v), then the
    /// update to the previous kept step.
    fn step(
        &mut self,
        model_output: Tensor<D>,
        index: usize,
        x_t: Tensor<D>,
        rng: &mut NoiseRng,
    ) -> Result<StepOutput<D>, DdpmError> {
        let n = self.timesteps.len();
        begin_step(&mut self.cursor, n, index, &model_output, &x_t)?;
        let abar = self.base.schedule().alphas_cumprod();
        let t = self.timesteps[index];
        let abar_prev = if index + 1 < n {
            abar[self.timesteps[index + 1]]
        } else {
            1.0
        };
        let shape = x_t.dims();
        let ts = vec![t; shape[0]];
        let (eps, pred_x0) = self
            .base
            .split_output(x_t.clone(), &ts, model_output, self.clip);
        let (c_x0, c_eps, sigma) = ddim_coefficients(self.eta, abar[t], abar_prev);
        let mut prev_sample = pred_x0.clone().mul_scalar(c_x0) + eps.mul_scalar(c_eps);
        if sigma > 0.0 {
            prev_sample = prev_sample + rng.normal(shape, &x_t.device()).mul_scalar(sigma);
        }
        Ok(StepOutput {
            prev_sample,
            pred_x0,
        })
    }
}
