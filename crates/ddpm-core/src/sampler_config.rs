//! [`SamplerConfig`]: every sampler as one serialisable value, chosen at run time.

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::diffusion::{GaussianDiffusion, VarianceType};
use crate::error::DdpmError;
use crate::predictor::NoisePredictor;
use crate::rng::NoiseRng;
use crate::sample_io::{Clip, SampleOptions, SampleOutput};
use crate::scheduler::{DdimScheduler, DdpmScheduler, Scheduler, denoise, sample_with};
use crate::solvers::{DpmSolverScheduler, EdmMethod, EdmScheduler, SolverOrder, SolverVariant};
use crate::spacing::TimestepSpacing;

/// A sampler and its settings: the one sampling entry point. [`sample`](Self::sample) draws
/// x_T from the seed and runs it; [`build`](Self::build) gives its stepping [`Scheduler`] as a
/// trait object; [`from_str`](std::str::FromStr) reads `kind[:steps]` (`ddim:50`,
/// `dpm++2m-sde:20`, `ddpm`: all T steps).
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use ddpm_core::{DiffusionConfig, GaussianDiffusion, NoisePredictor, PredictorError,
///                 SampleOptions, SamplerConfig};
///
/// struct Shrink;
/// impl NoisePredictor<2> for Shrink {
///     fn predict(&self, x: Tensor<2>, _t: Tensor<1, Int>) -> Result<Tensor<2>, PredictorError> {
///         Ok(x.mul_scalar(0.5))
///     }
/// }
/// let diffusion = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
/// let sampler: SamplerConfig = "dpm++2m".parse::<ddpm_core::SamplerKind>().unwrap().with_steps(20);
/// let out = sampler
///     .sample(&diffusion, &Shrink, [8, 2], &Device::flex(), SampleOptions::new(0))
///     .unwrap();
/// assert_eq!(sampler.model_calls(&diffusion).unwrap(), 20);
/// assert_eq!(out.samples.dims(), [8, 2]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum SamplerConfig {
    /// Ancestral sampling (Algorithm 2) on `steps` timesteps (`None`: all T).
    Ddpm {
        /// Steps (`None`: all T, the paper's sampler).
        steps: Option<usize>,
        /// Which timesteps.
        spacing: TimestepSpacing,
        /// sigma_t^2.
        variance: VarianceType,
        /// Clipping of the x_0 estimate.
        clip: Clip,
    },
    /// DDIM (Song et al. 2021).
    Ddim {
        /// Steps (model calls).
        steps: usize,
        /// Which timesteps.
        spacing: TimestepSpacing,
        /// Noise scale (0: deterministic).
        eta: f64,
        /// Clipping of the x_0 estimate.
        clip: Clip,
    },
    /// DPM-Solver++ multistep (Lu et al. 2022).
    DpmSolver {
        /// Steps (model calls).
        steps: usize,
        /// Which timesteps.
        spacing: TimestepSpacing,
        /// 2 (2M) or 3 (3M).
        order: SolverOrder,
        /// ODE or SDE.
        variant: SolverVariant,
        /// Clipping of the x_0 estimate.
        clip: Clip,
    },
    /// Euler or Heun on the probability-flow ODE in EDM's parameterization.
    Edm {
        /// Steps (noise levels); Heun makes 2 steps - 1 model calls.
        steps: usize,
        /// Which timesteps.
        spacing: TimestepSpacing,
        /// Euler or Heun.
        method: EdmMethod,
        /// Clipping of the x_0 estimate.
        clip: Clip,
    },
}

/// The sampler families, by name (`FromStr`/`Display`: `ddpm`, `ddim`, `dpm++2m`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SamplerKind {
    /// `ddpm`: ancestral sampling.
    Ddpm,
    /// `ddim`: DDIM, eta 0.
    Ddim,
    /// `dpm++2m`: DPM-Solver++(2M).
    DpmSolver2M,
    /// `dpm++3m`: DPM-Solver++(3M).
    DpmSolver3M,
    /// `dpm++2m-sde`: DPM-Solver++(2M) SDE.
    DpmSolver2MSde,
    /// `euler`: EDM's Euler.
    Euler,
    /// `heun`: EDM's Heun.
    Heun,
}

impl SamplerKind {
    /// Every kind with its name.
    pub const ALL: [(SamplerKind, &'static str); 7] = [
        (SamplerKind::Ddpm, "ddpm"),
        (SamplerKind::Ddim, "ddim"),
        (SamplerKind::DpmSolver2M, "dpm++2m"),
        (SamplerKind::DpmSolver3M, "dpm++3m"),
        (SamplerKind::DpmSolver2MSde, "dpm++2m-sde"),
        (SamplerKind::Euler, "euler"),
        (SamplerKind::Heun, "heun"),
    ];

    /// The sampler with this crate's defaults (measured in docs/results.md) and `steps`
    /// steps: linspace spacing for DDPM and DDIM (as Nichol & Dhariwal and the DDIM paper's
    /// code), log-SNR spacing for DPM-Solver++ and Heun/Euler, no clipping, DDPM with
    /// `FixedLarge`.
    pub fn with_steps(self, steps: usize) -> SamplerConfig {
        let dpm = |order, variant| SamplerConfig::DpmSolver {
            steps,
            spacing: TimestepSpacing::LogSnr,
            order,
            variant,
            clip: Clip::None,
        };
        let edm = |method| SamplerConfig::Edm {
            steps,
            spacing: TimestepSpacing::LogSnr,
            method,
            clip: Clip::None,
        };
        match self {
            SamplerKind::Ddpm => SamplerConfig::Ddpm {
                steps: Some(steps),
                spacing: TimestepSpacing::Linspace,
                variance: VarianceType::FixedLarge,
                clip: Clip::None,
            },
            SamplerKind::Ddim => SamplerConfig::Ddim {
                steps,
                spacing: TimestepSpacing::Linspace,
                eta: 0.0,
                clip: Clip::None,
            },
            SamplerKind::DpmSolver2M => dpm(SolverOrder::Second, SolverVariant::Ode),
            SamplerKind::DpmSolver3M => dpm(SolverOrder::Third, SolverVariant::Ode),
            SamplerKind::DpmSolver2MSde => dpm(SolverOrder::Second, SolverVariant::Sde),
            SamplerKind::Euler => edm(EdmMethod::Euler),
            SamplerKind::Heun => edm(EdmMethod::Heun),
        }
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(k, _)| k == self)
            .map_or("?", |(_, n)| n);
        f.write_str(name)
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = DdpmError;
    fn from_str(s: &str) -> Result<Self, DdpmError> {
        let lower = s.to_ascii_lowercase();
        Self::ALL
            .iter()
            .find(|(_, name)| *name == lower)
            .map(|(k, _)| *k)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(_, n)| *n).collect();
                DdpmError::InvalidSampler(format!(
                    "unknown sampler '{s}': choose one of {}",
                    names.join(", ")
                ))
            })
    }
}

impl SamplerConfig {
    /// The same sampler on another spacing.
    pub fn with_spacing(mut self, new: TimestepSpacing) -> Self {
        match &mut self {
            SamplerConfig::Ddpm { spacing, .. }
            | SamplerConfig::Ddim { spacing, .. }
            | SamplerConfig::DpmSolver { spacing, .. }
            | SamplerConfig::Edm { spacing, .. } => *spacing = new,
        }
        self
    }

    /// The same sampler with another clipping of x_0.
    pub fn with_clip(mut self, new: Clip) -> Self {
        match &mut self {
            SamplerConfig::Ddpm { clip, .. }
            | SamplerConfig::Ddim { clip, .. }
            | SamplerConfig::DpmSolver { clip, .. }
            | SamplerConfig::Edm { clip, .. } => *clip = new,
        }
        self
    }

    /// Ancestral sampling, Algorithm 2 of Ho et al., on all T steps (`None`) or `steps`
    /// evenly spaced ones (Nichol & Dhariwal's respacing, linspace), with `variance`, no
    /// clipping.
    pub fn ddpm(steps: Option<usize>, variance: VarianceType) -> Self {
        SamplerConfig::Ddpm {
            steps,
            spacing: TimestepSpacing::Linspace,
            variance,
            clip: Clip::None,
        }
    }

    /// DDIM (Song, Meng & Ermon 2021, eq. 12) on `steps` linspace timesteps with noise scale
    /// `eta` (0: deterministic; 1: DDPM's posterior variance), no clipping.
    pub fn ddim(steps: usize, eta: f64) -> Self {
        SamplerConfig::Ddim {
            steps,
            spacing: TimestepSpacing::Linspace,
            eta,
            clip: Clip::None,
        }
    }

    /// Its stepping scheduler, boxed (pick a sampler at run time without a generic match).
    ///
    /// # Errors
    /// Settings out of range ([`DdpmError::InvalidSampler`] saying which and what is allowed).
    pub fn build<const D: usize>(
        &self,
        diffusion: &GaussianDiffusion,
    ) -> Result<Box<dyn Scheduler<D>>, DdpmError> {
        Ok(match *self {
            SamplerConfig::Ddpm {
                steps,
                spacing,
                variance,
                clip,
            } => Box::new(DdpmScheduler::new(
                diffusion, steps, spacing, variance, clip,
            )?),
            SamplerConfig::Ddim {
                steps,
                spacing,
                eta,
                clip,
            } => Box::new(DdimScheduler::new(diffusion, steps, spacing, eta, clip)?),
            SamplerConfig::DpmSolver {
                steps,
                spacing,
                order,
                variant,
                clip,
            } => Box::new(DpmSolverScheduler::<D>::new(
                diffusion, steps, spacing, order, variant, clip,
            )?),
            SamplerConfig::Edm {
                steps,
                spacing,
                method,
                clip,
            } => Box::new(EdmScheduler::<D>::new(
                diffusion, steps, spacing, method, clip,
            )?),
        })
    }

    /// How many times a run calls the model (network function evaluations).
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub fn model_calls(&self, diffusion: &GaussianDiffusion) -> Result<usize, DdpmError> {
        Ok(self.build::<1>(diffusion)?.timesteps().len())
    }

    /// Runs the sampler from a given `x_start` (x_T, or a noised image with
    /// `options.start_index` past 0), with `options.seed` seeding the noise of stochastic
    /// steps.
    ///
    /// # Errors
    /// As [`build`](Self::build) and [`denoise`].
    pub fn sample_from<const D: usize, P: NoisePredictor<D> + ?Sized>(
        &self,
        diffusion: &GaussianDiffusion,
        model: &P,
        x_start: Tensor<D>,
        mut options: SampleOptions<'_>,
    ) -> Result<SampleOutput<D>, DdpmError> {
        let mut scheduler = self.build::<D>(diffusion)?;
        let mut rng = NoiseRng::new(options.seed);
        denoise(scheduler.as_mut(), model, x_start, &mut rng, &mut options)
    }
}

impl SamplerConfig {
    /// Draws `shape[0]` samples of shape `shape[1..]` from `x_T ~ N(0, I)` (seeded by
    /// `options.seed`): the one way to sample; [`build`](Self::build) gives the stepping
    /// scheduler to drive by hand.
    ///
    /// # Errors
    /// Invalid sampler settings, a failing model or one whose output has another shape.
    pub fn sample<const D: usize, P: NoisePredictor<D> + ?Sized>(
        &self,
        diffusion: &GaussianDiffusion,
        model: &P,
        shape: [usize; D],
        device: &Device,
        options: SampleOptions<'_>,
    ) -> Result<SampleOutput<D>, DdpmError> {
        sample_with(
            self.build::<D>(diffusion)?.as_mut(),
            model,
            shape,
            device,
            options,
        )
    }
}

/// Parses `kind[:steps]`: a [`SamplerKind`] name with its defaults
/// ([`SamplerKind::with_steps`]), at `steps` (default: 50; `ddpm` without steps runs all T).
impl std::str::FromStr for SamplerConfig {
    type Err = DdpmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, steps) = match s.split_once(':') {
            Some((k, n)) => (k, Some(n)),
            None => (s, None),
        };
        let kind: SamplerKind = kind.parse()?;
        let steps = steps
            .map(|n| {
                n.trim().parse::<usize>().map_err(|_| {
                    DdpmError::InvalidSampler(format!(
                        "'{s}': the steps after ':' must be a whole number (e.g. ddim:50)"
                    ))
                })
            })
            .transpose()?;
        Ok(match (kind, steps) {
            (SamplerKind::Ddpm, None) => SamplerConfig::ddpm(None, VarianceType::FixedLarge),
            (kind, steps) => kind.with_steps(steps.unwrap_or(50)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kind[:steps]` gives the kind's defaults at those steps; bad names and steps are errors
    /// that say what is allowed.
    #[test]
    fn sampler_configs_parse_from_kind_and_steps() {
        let parse = |s: &str| s.parse::<SamplerConfig>();
        assert_eq!(parse("ddim:50").unwrap(), SamplerKind::Ddim.with_steps(50));
        assert_eq!(
            parse("dpm++2m-sde:20").unwrap(),
            SamplerKind::DpmSolver2MSde.with_steps(20)
        );
        assert_eq!(parse("heun").unwrap(), SamplerKind::Heun.with_steps(50));
        assert_eq!(
            parse("ddpm").unwrap(),
            SamplerConfig::ddpm(None, VarianceType::FixedLarge)
        );
        assert_eq!(
            parse("ddpm:100").unwrap(),
            SamplerConfig::ddpm(Some(100), VarianceType::FixedLarge)
        );
        let e = parse("ddim:fast").unwrap_err().to_string();
        assert!(e.contains("whole number"), "{e}");
        let e = parse("plms:20").unwrap_err().to_string();
        assert!(e.contains("dpm++2m") && e.contains("plms"), "{e}");
        // serde round trip: the config is a value a recipe or a checkpoint can hold.
        let c = parse("ddim:7").unwrap().with_clip(Clip::unit());
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<SamplerConfig>(&json).unwrap(), c);
    }
}
