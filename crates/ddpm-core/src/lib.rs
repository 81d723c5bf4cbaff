//! # ddpm-core
//!
//! The mathematics of Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel, 2020) on
//! [burn](https://burn.dev): noise schedules, the forward process `q`, the training loss
//! (Algorithm 1), the variational bound in bits/dim, the ancestral sampler (Algorithm 2), DDIM
//! (Song et al., 2021), DPM-Solver++ (Lu et al., 2022) and EDM's Euler and Heun (Karras et
//! al., 2022) on a stepping [`Scheduler`] API, an exponential moving average of model
//! weights, and control of what is generated: class conditioning with classifier-free guidance
//! ([`Condition`], [`Guided`]), SDEdit ([`SamplerConfig::img2img`]), RePaint inpainting
//! ([`inpaint`]) and spherical interpolation of x_T ([`slerp`]).
//!
//! Nothing here knows about a network. Any model that predicts noise from `(x_t, t)` plugs in
//! through the [`NoisePredictor`] trait, for data of any rank: a `[batch, features]` MLP and a
//! `[batch, channels, height, width]` U-Net are driven by the same code.
//!
//! Equation numbers in the documentation refer to Ho et al. (2020) unless another paper is named.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use ddpm_core::{DiffusionConfig, GaussianDiffusion, NoisePredictor, PredictorError};
//!
//! /// A predictor that always answers "no noise": enough to show the plumbing.
//! struct Zero;
//! impl NoisePredictor<2> for Zero {
//!     fn predict(&self, x_t: Tensor<2>, _t: Tensor<1, burn::tensor::Int>) -> Result<Tensor<2>, PredictorError> {
//!         Ok(x_t.zeros_like())
//!     }
//! }
//!
//! let device = Device::flex();
//! let diffusion = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
//! let x0 = Tensor::<2>::zeros([4, 2], &device);
//! let mut rng = ddpm_core::NoiseRng::new(0);
//! let loss = diffusion.loss(&Zero, x0, &mut rng).unwrap();
//! // With x0 = 0 and a zero prediction, L_simple is E[eps^2] ~ 1.
//! assert!(loss.into_scalar::<f32>() > 0.0);
//! ```
#![deny(missing_docs)]

mod coef;
mod condition;
mod control;
mod diffusion;
mod ema;
mod embedding;
mod error;
mod guidance;
mod indices;
mod likelihood;
mod loss;
mod predictor;
mod rng;
mod sample_io;
mod sampler_config;
mod schedule;
mod scheduler;
mod solvers;
mod spacing;
pub mod toy;

pub use condition::{Condition, check_class_labels};
pub use control::{InpaintConfig, inpaint, slerp};
pub use diffusion::{
    DiffusionConfig, GaussianDiffusion, LossWeighting, MeanVariance, Objective,
    PosteriorMeanVariance, VarianceType,
};
pub use ema::{Ema, EmaConfig, EmaWarmup};
pub use embedding::{sinusoidal_embedding, sinusoidal_embedding_with};
pub use error::{DdpmError, PredictorError};
pub use guidance::{Conditioned, Guided};
pub use indices::timestep_tensor;
pub use likelihood::{
    BpdReport, approx_standard_normal_cdf, discretized_gaussian_log_likelihood, normal_kl,
};
pub use predictor::NoisePredictor;
pub use rng::NoiseRng;
pub use sample_io::{Clip, SampleOptions, SampleOutput, TrajectoryFrame};
pub use sampler_config::{SamplerConfig, SamplerKind};
pub use schedule::{BetaSchedule, MAX_TIMESTEPS, NoiseSchedule, ScheduleConfig, space_timesteps};
pub use scheduler::{
    DdimScheduler, DdpmScheduler, Scheduler, StepOutput, ddim_coefficients, denoise,
};
pub use solvers::{
    DpmSolverScheduler, EdmMethod, EdmScheduler, SolverOrder, SolverVariant, exponential_weights,
};
pub use spacing::TimestepSpacing;
