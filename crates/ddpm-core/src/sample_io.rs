//! What every sampling call takes and returns: [`SampleOptions`], [`SampleOutput`] with its
//! [`TrajectoryFrame`]s, the [`Clip`] of the x_0 estimate, and the shape check. Below the
//! diffusion, the schedulers and the samplers, which all use them.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::DdpmError;

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
    /// Dynamic thresholding (Saharia et al. 2022, "Imagen", section 2.3): per sample, `s` is
    /// the `percentile` quantile of `|x_0|`, raised to at least 1 and capped at `max`; x_0 is
    /// clamped to `[-s, s]` and divided by `s`. Estimates inside `[-1, 1]` are left alone;
    /// saturated ones are pulled back into the data range instead of being flattened at it.
    Dynamic {
        /// The quantile of `|x_0|` taken as the threshold, in `(0, 1]` (Imagen: 0.995).
        percentile: f64,
        /// The largest threshold, at least 1 (diffusers' `sample_max_value`).
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

    /// Imagen's dynamic thresholding at the 99.5th percentile, threshold at most `max`.
    ///
    /// # Errors
    /// [`DdpmError::InvalidSampler`] for a `max` that is not a number >= 1.
    pub fn dynamic(max: f64) -> Result<Self, DdpmError> {
        let clip = Clip::Dynamic {
            percentile: 0.995,
            max,
        };
        clip.validate()?;
        Ok(clip)
    }

    /// The clipped x_0 estimate.
    ///
    /// For [`Clip::Dynamic`], `s` is the sorted `|x_0|` of each sample at index
    /// `ceil(percentile n) - 1` (n values per sample), clamped to `[1, max]`, and the result is
    /// `clamp(x_0, -s, s) / s`.
    ///
    /// # Shapes
    /// `x0`: `[batch, ...]`; the result has the same shape.
    pub fn apply<const D: usize>(&self, x0: Tensor<D>) -> Tensor<D> {
        match *self {
            Clip::None => x0,
            Clip::Range { min, max } => x0.clamp(min, max),
            Clip::Dynamic { percentile, max } => {
                let shape = x0.dims();
                let batch = shape[0];
                let n: usize = shape[1..].iter().product();
                if batch == 0 || n == 0 {
                    return x0;
                }
                // In range for any percentile, validated or not.
                let k = ((percentile * n as f64).ceil() as usize).clamp(1, n) - 1;
                let mut per_sample = [1usize; D];
                per_sample[0] = batch;
                let s = x0
                    .clone()
                    .abs()
                    .reshape([batch, n]) // [b, n]
                    .sort(1)
                    .narrow(1, k, 1) // [b, 1]
                    .clamp(1.0, max.max(1.0))
                    .reshape(per_sample) // [b, 1, ...]
                    .expand(shape); // [b, ...]
                x0.max_pair(s.clone().neg()).min_pair(s.clone()) / s
            }
        }
    }

    /// Checks the bounds: `min < max` for a range; a percentile in `(0, 1]` and `max >= 1`
    /// for dynamic thresholding. Every scheduler checks its clipping when it is built.
    ///
    /// # Errors
    /// [`DdpmError::InvalidSampler`] naming the value and the range allowed.
    pub fn validate(&self) -> Result<(), DdpmError> {
        match *self {
            Clip::None => Ok(()),
            Clip::Range { min, max } if min < max => Ok(()),
            Clip::Range { min, max } => Err(DdpmError::InvalidSampler(format!(
                "clipping range [{min}, {max}] is empty: give numbers with min < max"
            ))),
            Clip::Dynamic { percentile, max } => {
                if percentile.is_nan() || percentile <= 0.0 || percentile > 1.0 {
                    Err(DdpmError::InvalidSampler(format!(
                        "dynamic thresholding percentile {percentile} is outside (0, 1] \
                         (Imagen uses 0.995)"
                    )))
                } else if max.is_nan() || max < 1.0 {
                    Err(DdpmError::InvalidSampler(format!(
                        "dynamic thresholding max {max} must be a number >= 1 (the data range \
                         is [-1, 1])"
                    )))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// `none`, `unit` ([-1, 1]), `dynamic` (Imagen: the 99.5th percentile, no cap) or
/// `dynamic:MAX` (the threshold capped at MAX >= 1).
impl std::str::FromStr for Clip {
    type Err = DdpmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Clip::None),
            "unit" => Ok(Clip::unit()),
            "dynamic" => Ok(Clip::Dynamic {
                percentile: 0.995,
                max: f64::MAX,
            }),
            other => match other.strip_prefix("dynamic:").map(str::parse::<f64>) {
                Some(Ok(max)) => Clip::dynamic(max),
                _ => Err(DdpmError::InvalidSampler(format!(
                    "unknown clipping '{other}': choose none, unit, dynamic or dynamic:MAX \
                     (MAX a number >= 1)"
                ))),
            },
        }
    }
}

impl std::fmt::Display for Clip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Clip::None => f.write_str("none"),
            Clip::Range { min, max } if min == -1.0 && max == 1.0 => f.write_str("unit"),
            Clip::Range { min, max } => write!(f, "[{min}, {max}]"),
            Clip::Dynamic { percentile, max } if max == f64::MAX && percentile == 0.995 => {
                f.write_str("dynamic")
            }
            Clip::Dynamic {
                percentile: 0.995,
                max,
            } => write!(f, "dynamic:{max}"),
            Clip::Dynamic { percentile, max } => {
                write!(f, "dynamic (percentile {percentile}, max {max})")
            }
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

/// Per-call options of a sampler: the seed, trajectory recording, a progress callback and
/// the range of model calls to run.
pub struct SampleOptions<'a> {
    /// Seed of the noise (x_T and every z): equal seeds give equal samples.
    pub seed: u64,
    /// The first model call to run (0: from x_T). A run from a given image starts part-way
    /// (see [`Scheduler::start_index`](crate::Scheduler::start_index)).
    pub start_index: usize,
    /// Stop before this model call (`None`: run to the end and return x_0).
    pub end_index: Option<usize>,
    /// Record `(x_t, x_0 estimate)` every this many steps (and at the last step).
    pub trajectory_every: Option<usize>,
    /// Called after each step with `(steps done, total steps)`.
    pub progress: Option<&'a mut dyn FnMut(usize, usize)>,
}

impl std::fmt::Debug for SampleOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleOptions")
            .field("seed", &self.seed)
            .field("start_index", &self.start_index)
            .field("end_index", &self.end_index)
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
            start_index: 0,
            end_index: None,
            trajectory_every: None,
            progress: None,
        }
    }
    /// Runs only model calls `start..end` (`end = None`: to the end).
    pub fn with_range(mut self, start: usize, end: Option<usize>) -> Self {
        self.start_index = start;
        self.end_index = end;
        self
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

    pub(crate) fn report(&mut self, done: usize, total: usize) {
        if let Some(p) = self.progress.as_mut() {
            p(done, total);
        }
    }

    pub(crate) fn wants_frame(&self, done: usize, total: usize) -> bool {
        match self.trajectory_every {
            Some(k) => done.is_multiple_of(k) || done == total,
            None => false,
        }
    }
}

pub(crate) fn check_shape(shape: &[usize]) -> Result<(), DdpmError> {
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
