//! What a run is configured with ([`TrainConfig`]) and where it stands ([`TrainState`]).

use std::time::Duration;

use ddpm_core::{EmaConfig, NoiseRng};
use serde::{Deserialize, Serialize};

use super::error::TrainError;
use crate::data::EpochSampler;

/// Settings of a training run (the paper's recipe by default, section 4 and Appendix B).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Number of optimizer steps.
    pub steps: u64,
    /// Examples per step (128 in the paper for CIFAR10).
    pub batch_size: usize,
    /// Peak learning rate of Adam (2e-4 in the paper).
    pub lr: f64,
    /// Steps of linear warm-up from 0 to `lr` (5000 in the paper).
    pub warmup_steps: u64,
    /// Clip gradients to this global L2 norm (1.0 in the paper); `None` disables clipping.
    pub grad_clip_norm: Option<f64>,
    /// Adam's epsilon (1e-8, as TensorFlow and PyTorch).
    pub adam_epsilon: f64,
    /// EMA of the weights (decay 0.9999 in the paper).
    pub ema: EmaConfig,
    /// Seed of the data order, the timesteps, the noise and dropout.
    pub seed: u64,
    /// Save a checkpoint every this many steps (and at the end); 0 = only at the end.
    pub checkpoint_every: u64,
    /// Keep this many most recent checkpoints (at least 1).
    pub keep_checkpoints: usize,
    /// Class-conditional models: the probability that a training label is replaced by the null
    /// class, so that one network learns eps(x_t, t, c) and eps(x_t, t, null) for
    /// classifier-free guidance (0.1 in Ho & Salimans 2022). Unused by unconditional models.
    #[serde(default = "default_p_uncond")]
    pub p_uncond: f64,
    /// Mirror each training image left-right with probability 1/2 (the paper's augmentation
    /// for CIFAR-10 and the 256x256 sets), drawn from the run's [`NoiseRng`] after the
    /// timesteps, so a resumed run mirrors the same images. Needs a data source that can
    /// mirror ([`BatchSource::batch_mirrored`](crate::data::BatchSource::batch_mirrored): [`ImageSet`](crate::data::ImageSet) and [`Flattened`](crate::data::Flattened) can).
    #[serde(default)]
    pub hflip: bool,
}

fn default_p_uncond() -> f64 {
    0.1
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 10_000,
            batch_size: 128,
            lr: 2e-4,
            warmup_steps: 5000,
            grad_clip_norm: Some(1.0),
            adam_epsilon: 1e-8,
            ema: EmaConfig::default(),
            seed: 0,
            checkpoint_every: 1000,
            keep_checkpoints: 3,
            p_uncond: default_p_uncond(),
            hflip: false,
        }
    }
}

impl TrainConfig {
    /// Checks every value.
    ///
    /// # Errors
    /// [`TrainError::Config`] naming the offending setting.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be a positive number, got {}", self.lr));
        }
        if let Some(n) = self.grad_clip_norm
            && !(n.is_finite() && n > 0.0)
        {
            return bad(format!("grad_clip_norm must be a positive number, got {n}"));
        }
        if !(self.adam_epsilon.is_finite() && self.adam_epsilon > 0.0) {
            return bad(format!(
                "adam_epsilon must be positive, got {}",
                self.adam_epsilon
            ));
        }
        if !(0.0..1.0).contains(&self.ema.decay) {
            return bad(format!(
                "EMA decay must lie in [0, 1), got {}",
                self.ema.decay
            ));
        }
        if self.keep_checkpoints == 0 {
            return bad("keep_checkpoints must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.p_uncond) {
            return bad(format!(
                "p_uncond must lie in [0, 1], got {}",
                self.p_uncond
            ));
        }
        Ok(())
    }

    /// The learning rate of step `step` (0-based): linear warm-up, then constant.
    pub fn lr_at(&self, step: u64) -> f64 {
        if self.warmup_steps == 0 {
            self.lr
        } else {
            self.lr * ((step + 1) as f64 / self.warmup_steps as f64).min(1.0)
        }
    }
}

/// Everything besides the weights that a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    /// The stream of timesteps and noise.
    pub rng: NoiseRng,
    /// The position in the shuffled data.
    pub sampler: EpochSampler,
    /// EMA updates done.
    pub ema_updates: u64,
}

impl TrainState {
    /// The state of a fresh run over `data_len` examples.
    pub fn new(data_len: usize, seed: u64) -> Self {
        Self {
            step: 0,
            rng: NoiseRng::new(seed),
            sampler: EpochSampler::new(data_len, seed),
            ema_updates: 0,
        }
    }
}

/// `minutes` as a [`Duration`]: a finite number of minutes from 0 up to what a `Duration`
/// holds (about 3e17 minutes).
///
/// # Errors
/// [`TrainError::TimeLimit`] for NaN, infinities, negative numbers and times too long for a
/// `Duration`.
pub fn minutes_to_duration(minutes: f64) -> Result<Duration, TrainError> {
    if !(minutes.is_finite() && minutes >= 0.0) {
        return Err(TrainError::TimeLimit(minutes));
    }
    Duration::try_from_secs_f64(minutes * 60.0).map_err(|_| TrainError::TimeLimit(minutes))
}
