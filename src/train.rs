//! Training with Algorithm 1 of the paper, for any [`NoisePredictor`] of any rank: Adam with a
//! linear warm-up, gradient clipping by global norm, an EMA of the weights, and checkpoints
//! that are written atomically and resume exactly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use ddpm_core::{
    Condition, Conditioned, DdpmError, DiffusionConfig, Ema, EmaConfig, GaussianDiffusion,
    NoisePredictor, NoiseRng,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::adam::Adam;
use crate::checkpoint::{self, CheckpointError, CheckpointMeta, Resolved, RunLock};
use crate::data::{Dataset, EpochSampler, ImageSet};
use crate::models::{ImagePredictor, ModelSpec};

/// Errors of training and checkpointing.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrainError {
    /// An invalid training setting.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// An error of the diffusion maths or the predictor.
    #[error(transparent)]
    Ddpm(#[from] DdpmError),
    /// The loss became NaN or infinite.
    #[error(
        "the loss became {value} at step {step}: training stopped and the last good checkpoint \
         was left untouched; lower the learning rate or check the data"
    )]
    NonFiniteLoss {
        /// The step (1-based) whose loss was not finite.
        step: u64,
        /// The loss value.
        value: f64,
    },
    /// A checkpoint could not be written, read or verified, or the run directory is in use.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The model description cannot be built.
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// The checkpoint was written for another configuration.
    #[error(
        "checkpoint {path} was written for another configuration:\n  checkpoint: {saved}\n  \
         current:    {current}\nresume with the same --model and settings, or start a new run"
    )]
    ConfigMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// Its configuration.
        saved: String,
        /// The current configuration.
        current: String,
    },
    /// The data given is not the data the run was started (or resumed) with.
    #[error(
        "the run's position refers to a data set of {expected} examples, but the data given has \
         {actual}: train on the same data set as the checkpoint, or start a new run"
    )]
    DataMismatch {
        /// Examples in the run's data.
        expected: usize,
        /// Examples in the data given.
        actual: usize,
    },
    /// The run directory holds checkpoints of later steps than this run's position: continuing
    /// would interleave two histories, and resuming the run later would pick the other one.
    #[error(
        "{run_dir} holds a checkpoint of step {newer}, later than this run's step {step}: to \
         branch from an older checkpoint, copy its folder into a new run directory and resume \
         that"
    )]
    NewerCheckpoints {
        /// The run directory.
        run_dir: PathBuf,
        /// The step of this run.
        step: u64,
        /// The latest step found there.
        newer: u64,
    },
    /// A time limit that is not a finite, non-negative duration.
    #[error("a time limit of {0} minutes is not a duration: give a finite number >= 0")]
    TimeLimit(f64),
    /// The run directory already holds checkpoints of another run.
    #[error("{0} already holds checkpoints: resume them (--resume), or choose another directory")]
    RunExists(PathBuf),
    /// The loss log or plot could not be written.
    #[error("{path}: {reason}")]
    Log {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

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

/// A source of training batches of rank `D`, indexed by example.
pub trait BatchSource<const D: usize> {
    /// Number of examples.
    fn len(&self) -> usize;
    /// Whether there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The examples `indices` as one tensor `[indices.len(), ...]`.
    fn batch(&self, indices: &[usize], device: &Device) -> Tensor<D>;
    /// The class labels of examples `indices`, when the data has labels (needed to train a
    /// class-conditional model). `None` by default.
    fn labels(&self, indices: &[usize]) -> Option<Vec<usize>> {
        let _ = indices;
        None
    }
}

impl BatchSource<4> for ImageSet {
    fn len(&self) -> usize {
        self.count
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Tensor<4> {
        ImageSet::batch(self, indices, device)
    }
    fn labels(&self, indices: &[usize]) -> Option<Vec<usize>> {
        Some(indices.iter().map(|&i| self.labels[i] as usize).collect())
    }
}

/// Points of dimension `dim` held in memory (toy data, flattened images).
#[derive(Debug, Clone, PartialEq)]
pub struct Points {
    /// Row-major values, `len * dim`.
    pub values: Vec<f32>,
    /// Dimension of each point.
    pub dim: usize,
}

impl Points {
    /// Copies a `[n, dim]` tensor to the host.
    pub fn from_tensor(t: Tensor<2>) -> Self {
        let [_, dim] = t.dims();
        let values = t.into_data().convert::<f32>().iter::<f32>().collect();
        Self { values, dim }
    }
}

impl BatchSource<2> for Points {
    fn len(&self) -> usize {
        self.values.len() / self.dim.max(1)
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Tensor<2> {
        let d = self.dim;
        let mut v = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            v.extend_from_slice(&self.values[i * d..(i + 1) * d]);
        }
        Tensor::from_data(TensorData::new(v, [indices.len(), d]), device)
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

/// Global-norm gradient clipping (`tf.clip_by_global_norm`, as the paper's code); burn's own
/// clipping works tensor by tensor.
struct GradNorm<'a> {
    grads: &'a GradientsParams,
    sum_sq: Option<Tensor<1>>,
    ids: Vec<ParamId>,
}

impl ModuleVisitor for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum(); // [1]
            self.sum_sq = Some(match self.sum_sq.take() {
                Some(acc) => acc + s,
                None => s,
            });
            self.ids.push(param.id);
        }
    }
}

struct GradScale<'a> {
    grads: &'a mut GradientsParams,
    scale: f64,
}

impl ModuleVisitor for GradScale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.scale));
        }
    }
}

/// Adds the gradients of `other` to those of `acc`, parameter by parameter.
struct GradSum<'a> {
    acc: &'a mut GradientsParams,
    other: GradientsParams,
}

impl ModuleVisitor for GradSum<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        match (
            self.acc.remove::<D>(param.id),
            self.other.remove::<D>(param.id),
        ) {
            (Some(a), Some(b)) => self.acc.register(param.id, a + b),
            (Some(g), None) | (None, Some(g)) => self.acc.register(param.id, g),
            (None, None) => {}
        }
    }
}

/// Clips `grads` of `model` to global L2 norm `max_norm`; returns the norm before clipping.
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut v = GradNorm {
        grads,
        sum_sq: None,
        ids: Vec::new(),
    };
    model.visit(&mut v);
    let Some(sum_sq) = v.sum_sq else { return 0.0 };
    let norm = (sum_sq.into_scalar::<f32>() as f64).sqrt();
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        model.visit(&mut GradScale { grads, scale });
    }
    norm
}

/// What one training step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The step number after this step (1-based).
    pub step: u64,
    /// The loss of the batch.
    pub loss: f64,
    /// The learning rate used.
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
}

/// A training run of a [`NoisePredictor`] `M` on data of rank `D`.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use burn::tensor::Device;
/// use ddpm::core::{DiffusionConfig, GaussianDiffusion};
/// use ddpm::data::{Dataset, ImageSet, Split};
/// use ddpm::models::ModelPreset;
/// use ddpm::train::{FitOptions, TrainConfig, Trainer};
///
/// let data = ImageSet::load(Dataset::Mnist, Split::Train, None)?;
/// let diffusion = GaussianDiffusion::new(DiffusionConfig::default())?;
/// let config = TrainConfig { steps: 2000, batch_size: 32, ..TrainConfig::default() };
/// let device = Device::flex().autodiff();
/// let mut trainer = Trainer::new_images(ModelPreset::UnetSmall.spec(0.0), diffusion, config,
///                                       data.count, &device)?;
/// let report = trainer.fit(&data, FitOptions::new("runs/small"))?;
/// println!("{:?} at step {}", report.reason, report.step);
/// # Ok(()) }
/// ```
pub struct Trainer<M: Module + NoisePredictor<D>, const D: usize> {
    diffusion: GaussianDiffusion,
    model: M,
    optim: Adam,
    ema: Ema<M>,
    config: TrainConfig,
    state: TrainState,
    device: Device,
    spec: ModelSpec,
    dataset: Option<Dataset>,
    resumed: Option<Resolved>,
    run_dir: Option<PathBuf>,
    /// The step of the newest checkpoint this trainer wrote or resumed from.
    saved_step: Option<u64>,
    /// Data-parallel replicas of the model on the other devices (empty on one device).
    replicas: Vec<M>,
    /// Every device, the model's first.
    devices: Vec<Device>,
}

impl<M: Module + NoisePredictor<D>, const D: usize> std::fmt::Debug for Trainer<M, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("state", &self.state)
            .field("model", &self.spec.name())
            .finish()
    }
}

fn seed_mix(seed: u64, step: u64) -> u64 {
    let mut rng = NoiseRng::new(seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03));
    rng.next_u64()
}

impl<M: Module + NoisePredictor<D>, const D: usize> Trainer<M, D> {
    /// Starts a run. `model` must live on an autodiff device (`device.autodiff()`).
    /// Checkpoints describe the model as [`ModelSpec::Custom`] named after `M` until
    /// [`with_spec`](Self::with_spec) says otherwise.
    ///
    /// # Errors
    /// An invalid [`TrainConfig`] or an empty data set.
    pub fn new(
        diffusion: GaussianDiffusion,
        model: M,
        config: TrainConfig,
        data_len: usize,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        if data_len == 0 {
            return Err(TrainError::Config("the training set is empty".into()));
        }
        let device = model
            .devices()
            .first()
            .cloned()
            .ok_or_else(|| TrainError::Config("the model has no parameters".into()))?;
        if !device.is_autodiff() {
            return Err(TrainError::Config(
                "the model must be built on an autodiff device (device.autodiff())".into(),
            ));
        }
        let ema = config.ema.init(&model)?;
        let optim = Adam::new(config.adam_epsilon);
        let state = TrainState::new(data_len, config.seed);
        let devices = vec![device.clone()];
        Ok(Self {
            diffusion,
            model,
            optim,
            ema,
            config,
            state,
            device,
            spec: ModelSpec::Custom {
                name: std::any::type_name::<M>().to_string(),
                config: serde_json::Value::Null,
            },
            dataset: None,
            resumed: None,
            run_dir: None,
            saved_step: None,
            replicas: Vec::new(),
            devices,
        })
    }

    /// Records how to rebuild the model (saved in every checkpoint, compared on resume).
    pub fn with_spec(mut self, spec: ModelSpec) -> Self {
        self.spec = spec;
        self
    }

    /// Records the built-in data set trained on (saved in every checkpoint).
    pub fn with_dataset(mut self, dataset: Dataset) -> Self {
        self.dataset = Some(dataset);
        self
    }

    /// Trains data-parallel on `devices` (the first one the main device): each step's batch is
    /// split into near-equal shards, one per device, each replica computes the gradient of its
    /// shard's share of the loss, the gradients are summed on the main device (through the host
    /// when the devices differ), and the optimizer and the EMA step there, after which every
    /// replica gets the new weights. Timesteps and noise of the whole batch are drawn from the
    /// host-side [`NoiseRng`] before splitting, so the same [`TrainConfig`] means the same run
    /// on one device or on several (up to the summation order of floats), and checkpoints are
    /// the same. Distinct devices work in parallel threads; shards on the same device run one
    /// after another.
    ///
    /// # Errors
    /// [`TrainError::Config`] for no device, or more devices than examples per batch.
    pub fn with_devices(mut self, devices: &[Device]) -> Result<Self, TrainError> {
        let Some(main) = devices.first() else {
            return Err(TrainError::Config("no device given".into()));
        };
        if devices.len() > self.config.batch_size {
            return Err(TrainError::Config(format!(
                "{} devices need a batch of at least {} examples, got batch_size {}",
                devices.len(),
                devices.len(),
                self.config.batch_size
            )));
        }
        let ad = |d: &Device| {
            if d.is_autodiff() {
                d.clone()
            } else {
                d.clone().autodiff()
            }
        };
        let main = ad(main);
        if main != self.device {
            self.model = self.model.clone().fork(&main);
            self.ema = self.config.ema.init(&self.model)?;
            self.device = main.clone();
        }
        self.devices = devices.iter().map(ad).collect();
        self.replicas = self.devices[1..]
            .iter()
            .map(|d| self.model.clone().fork(d))
            .collect();
        Ok(self)
    }

    /// The devices trained on, the main one first.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The model being trained.
    pub fn model(&self) -> &M {
        &self.model
    }
    /// The EMA of the weights (what the paper samples from), without autodiff.
    pub fn ema(&self) -> &Ema<M> {
        &self.ema
    }
    /// The optimizer and its state.
    pub fn optimizer(&self) -> &Adam {
        &self.optim
    }
    /// The diffusion.
    pub fn diffusion(&self) -> &GaussianDiffusion {
        &self.diffusion
    }
    /// The settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
    /// Steps done, RNG and data position.
    pub fn state(&self) -> &TrainState {
        &self.state
    }
    /// How checkpoints describe the model.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    /// The checkpoint this run was resumed from, with the damaged ones skipped on the way.
    pub fn resumed_from(&self) -> Option<&Resolved> {
        self.resumed.as_ref()
    }
    /// Whether all configured steps are done.
    pub fn finished(&self) -> bool {
        self.state.step >= self.config.steps
    }

    /// One step of Algorithm 1 on the next shuffled batch of `data`: draw t and eps, take a
    /// gradient step on L_simple, update the EMA.
    ///
    /// # Errors
    /// [`TrainError::NonFiniteLoss`] when the loss is NaN or infinite (the weights are left as
    /// they were before the step); predictor errors.
    pub fn step(&mut self, data: &impl BatchSource<D>) -> Result<StepReport, TrainError> {
        self.check_data(data)?;
        let step = self.state.step;
        // Dropout draws from the device's generator: seed it per step so that a resumed run
        // draws the same masks.
        for (k, device) in self.devices.iter().enumerate() {
            device.seed(seed_mix(self.config.seed ^ k as u64, step));
        }
        let indices = self.state.sampler.next_batch(self.config.batch_size);
        let batch = indices.len();
        // Algorithm 1, lines 3-4, for the whole batch (the order of `GaussianDiffusion::loss`).
        let t = self
            .state
            .rng
            .timesteps(batch, self.diffusion.num_timesteps());
        let (value, mut grads) = if self.replicas.is_empty() {
            let x0 = data.batch(&indices, &self.device); // [batch, ...]
            let noise = self.state.rng.normal(x0.dims(), &self.device); // [batch, ...]
            let loss = match self.draw_condition(data, &indices)? {
                None => self.diffusion.loss_with(&self.model, x0, &t, noise)?,
                Some(c) => {
                    let model = Conditioned::new(&self.model, c);
                    self.diffusion.loss_with(&model, x0, &t, noise)?
                }
            }; // [1]
            let value = loss.clone().into_scalar::<f32>() as f64;
            if !value.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    step: step + 1,
                    value,
                });
            }
            (
                value,
                GradientsParams::from_grads(loss.backward(), &self.model),
            )
        } else {
            self.data_parallel_grads(data, &indices, &t, step)?
        };
        let grad_norm = match self.config.grad_clip_norm {
            Some(max) => clip_global_norm(&self.model, &mut grads, max),
            None => f64::NAN,
        };
        let lr = self.config.lr_at(step);
        self.model = self.optim.step(lr, self.model.clone(), grads);
        for (replica, device) in self.replicas.iter_mut().zip(&self.devices[1..]) {
            *replica = self.model.clone().fork(device);
        }
        self.ema.update(&self.model)?;
        self.state.ema_updates = self.ema.num_updates();
        self.state.step += 1;
        Ok(StepReport {
            step: self.state.step,
            loss: value,
            lr,
            grad_norm,
        })
    }

    /// The data must be the data the run's position refers to (the same length: a resumed run
    /// with a smaller or larger data set would index outside it or shuffle differently).
    fn check_data(&self, data: &impl BatchSource<D>) -> Result<(), TrainError> {
        let expected = self.state.sampler.len;
        if data.len() != expected {
            return Err(TrainError::DataMismatch {
                expected,
                actual: data.len(),
            });
        }
        Ok(())
    }

    /// The labels of a class-conditional model's batch, each replaced by the null class with
    /// probability `p_uncond` (drawn from the run's [`NoiseRng`], after the noise); `None` for
    /// an unconditional model.
    fn draw_condition(
        &mut self,
        data: &impl BatchSource<D>,
        indices: &[usize],
    ) -> Result<Option<Condition>, TrainError> {
        let Some(k) = self.model.num_classes() else {
            return Ok(None);
        };
        let labels = data.labels(indices).ok_or_else(|| {
            TrainError::Config(format!(
                "the model is class-conditional ({k} classes) but the training data has no labels"
            ))
        })?;
        if let Some(bad) = labels.iter().find(|&&c| c >= k) {
            return Err(TrainError::Config(format!(
                "the data has label {bad}, out of range for a model of {k} classes (0..{k})"
            )));
        }
        let p = self.config.p_uncond;
        let rng = &mut self.state.rng;
        Ok(Some(Condition::Classes(
            labels
                .into_iter()
                .map(|c| if rng.uniform() < p { k } else { c })
                .collect(),
        )))
    }

    /// The loss of the batch and its gradient summed on the main device, one shard per device.
    fn data_parallel_grads(
        &mut self,
        data: &impl BatchSource<D>,
        indices: &[usize],
        t: &[usize],
        step: u64,
    ) -> Result<(f64, GradientsParams), TrainError> {
        let n = self.devices.len();
        let batch = indices.len();
        let mut shards = Vec::with_capacity(n);
        let mut start = 0;
        for (k, device) in self.devices.iter().enumerate() {
            let len = batch / n + usize::from(k < batch % n);
            let x0 = data.batch(&indices[start..start + len], device); // [len, ...]
            shards.push((start, len, x0));
            start += len;
        }
        // The noise of the whole batch in one draw, as on one device, then split.
        let numel: usize = shards[0].2.dims()[1..].iter().product();
        let noise = self.state.rng.normal_vec(batch * numel);
        let labels = match self.draw_condition(data, indices)? {
            Some(Condition::Classes(l)) => Some(l),
            _ => None,
        };
        let models: Vec<M> = std::iter::once(self.model.clone())
            .chain(self.replicas.iter().cloned())
            .collect();
        let diffusion = &self.diffusion;
        let work = |(model, (start, len, x0)): (M, (usize, usize, Tensor<D>))| {
            let device = x0.device();
            let dims = x0.dims();
            let eps = Tensor::<D>::from_data(
                TensorData::new(noise[start * numel..(start + len) * numel].to_vec(), dims),
                &device,
            ); // [len, ...]
            let ts = &t[start..start + len];
            let loss = match &labels {
                None => diffusion.loss_with(&model, x0, ts, eps)?,
                Some(l) => {
                    let shard = Condition::Classes(l[start..start + len].to_vec());
                    diffusion.loss_with(&Conditioned::new(&model, shard), x0, ts, eps)?
                }
            }; // [1]
            let loss = loss.mul_scalar(len as f64 / batch as f64); // this shard's share
            let value = loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            Ok::<_, DdpmError>((value, grads, model))
        };
        let jobs: Vec<_> = models.into_iter().zip(shards).collect();
        let distinct = (0..n).all(|i| (0..i).all(|j| self.devices[i] != self.devices[j]));
        let results: Vec<Result<_, DdpmError>> = if distinct {
            std::thread::scope(|scope| {
                let handles: Vec<_> = jobs
                    .into_iter()
                    .map(|job| scope.spawn(|| work(job)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a replica's thread panicked"))
                    .collect()
            })
        } else {
            jobs.into_iter().map(work).collect()
        };
        let mut value = 0.0;
        let mut total: Option<GradientsParams> = None;
        for result in results {
            let (v, grads, model) = result?;
            value += v;
            let grads = grads.to_device(&self.device, &model);
            total = Some(match total {
                None => grads,
                Some(mut acc) => {
                    self.model.visit(&mut GradSum {
                        acc: &mut acc,
                        other: grads,
                    });
                    acc
                }
            });
        }
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: step + 1,
                value,
            });
        }
        Ok((value, total.unwrap_or_default()))
    }

    /// The metadata a checkpoint of the current step records.
    pub fn checkpoint_meta(&self) -> CheckpointMeta {
        CheckpointMeta {
            format: checkpoint::FORMAT,
            crate_version: env!("CARGO_PKG_VERSION").into(),
            model: self.spec.clone(),
            diffusion: self.diffusion.config().clone(),
            train: self.config.clone(),
            dataset: self.dataset,
            num_classes: self.model.num_classes(),
            state: self.state.clone(),
            files: Default::default(),
        }
    }

    /// Writes a checkpoint of the current step into `run_dir/checkpoints/step-NNNNNNNN/`:
    /// weights, EMA weights, optimizer state and `state.json` ([`CheckpointMeta`] with a
    /// checksum of each file and of itself), through [`checkpoint::save`]: assembled under a
    /// temporary name, fsynced and renamed, so a crash or a full disk never leaves a
    /// half-written checkpoint nor touches an earlier one; older ones beyond
    /// `keep_checkpoints` are removed afterwards.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] on any I/O or encoding failure.
    pub fn save_checkpoint(&mut self, run_dir: &Path) -> Result<PathBuf, TrainError> {
        let dir = checkpoint::save(
            run_dir,
            &self.model,
            self.ema.model(),
            &self.optim,
            self.checkpoint_meta(),
            self.config.keep_checkpoints,
        )?;
        self.run_dir = Some(run_dir.to_path_buf());
        self.saved_step = Some(self.state.step);
        Ok(dir)
    }

    /// Resumes the newest intact checkpoint of `run_dir` (damaged newer ones are skipped:
    /// [`resumed_from`](Self::resumed_from) lists them). `template` is a freshly built model
    /// of the same configuration on the autodiff device; `spec` and `diffusion` must equal the
    /// saved ones. `steps` overrides the total number of steps (to train longer than planned).
    ///
    /// # Errors
    /// [`TrainError::ConfigMismatch`], or [`TrainError::Checkpoint`] when no checkpoint is
    /// intact, or it belongs to another model or an older format.
    pub fn resume(
        run_dir: &Path,
        diffusion: GaussianDiffusion,
        template: M,
        spec: &ModelSpec,
        steps: Option<u64>,
    ) -> Result<Self, TrainError> {
        let resolved = checkpoint::resolve(run_dir)?;
        let ckpt = &resolved.checkpoint;
        let meta = &ckpt.meta;
        if meta.format < checkpoint::RESUMABLE_FORMAT {
            return Err(CheckpointError::Legacy(ckpt.dir.clone()).into());
        }
        if &meta.model != spec || &meta.diffusion != diffusion.config() {
            let show = |m: &ModelSpec, d: &DiffusionConfig| {
                serde_json::json!({ "model": m, "diffusion": d }).to_string()
            };
            return Err(TrainError::ConfigMismatch {
                path: ckpt.dir.clone(),
                saved: show(&meta.model, &meta.diffusion),
                current: show(spec, diffusion.config()),
            });
        }
        let mut config = meta.train.clone();
        if let Some(s) = steps {
            config.steps = s;
        }
        let mut trainer = Self::new(diffusion, template.clone(), config, meta.state.sampler.len)?
            .with_spec(spec.clone());
        trainer.dataset = meta.dataset;
        let model = checkpoint::load_weights(ckpt, template.clone(), false)?;
        let shadow = checkpoint::load_weights(ckpt, template.valid(), true)?;
        // The optimizer state goes to the run's device, never to `Device::default()` (which is
        // a GPU in a build with `wgpu` or `cuda`).
        let inner = trainer.device.clone().without_autodiff();
        let optim_path = ckpt.dir.join(checkpoint::OPTIM_FILE);
        let optim = Adam::load(&optim_path, &inner).map_err(|e| CheckpointError::Foreign {
            path: optim_path.clone(),
            reason: e.to_string(),
        })?;
        trainer.model = model;
        trainer.optim = optim;
        trainer.ema.restore(shadow, meta.state.ema_updates);
        // The sampler's permutation is not saved: it is rebuilt from (seed, epoch).
        trainer.state = meta.state.clone();
        // Given one checkpoint folder, the run continues in its run directory (where a later
        // resume of the run looks), not inside the folder.
        trainer.run_dir = Some(resolved.run_dir());
        trainer.saved_step = Some(trainer.state.step);
        trainer.resumed = Some(resolved);
        Ok(trainer)
    }

    /// Trains until the configured steps are done, the time limit passes or the stop flag is
    /// raised, with a progress bar (on a terminal), a loss log (`loss.csv`), checkpoints every
    /// `checkpoint_every` steps and at the end, and a loss plot (`loss.png`). The run directory
    /// is locked for the duration ([`RunLock`]).
    ///
    /// # Errors
    /// [`TrainError::RunExists`] when a fresh run would write into a directory holding another
    /// run's checkpoints; [`CheckpointError::Locked`]; errors of [`step`](Self::step) (the last
    /// checkpoint is kept) and of saving.
    pub fn fit(
        &mut self,
        data: &impl BatchSource<D>,
        mut options: FitOptions<'_>,
    ) -> Result<FitReport, TrainError> {
        // One checkpoint folder given as the run directory: the run directory it belongs to.
        let run_dir = if checkpoint::is_checkpoint_dir(&options.run_dir) {
            checkpoint::run_dir_of(&options.run_dir)
        } else {
            options.run_dir.clone()
        };
        self.check_data(data)?;
        let _lock = RunLock::acquire(&run_dir)?;
        let existing = checkpoint::list(&run_dir);
        if self.run_dir.as_deref() != Some(run_dir.as_path()) && !existing.is_empty() {
            return Err(TrainError::RunExists(run_dir));
        }
        if let Some(&(newer, _)) = existing.last()
            && newer > self.state.step
        {
            return Err(TrainError::NewerCheckpoints {
                run_dir,
                step: self.state.step,
                newer,
            });
        }
        let log_err = |path: &Path, e: &dyn std::fmt::Display| TrainError::Log {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let csv_path = run_dir.join("loss.csv");
        let new_csv = !csv_path.exists();
        let mut csv = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&csv_path)
            .map_err(|e| log_err(&csv_path, &e))?;
        if new_csv {
            writeln!(csv, "step,loss,loss_smoothed,lr,grad_norm,images_per_s")
                .map_err(|e| log_err(&csv_path, &e))?;
        }
        let bar = if options.progress {
            let bar = ProgressBar::new(self.config.steps).with_position(self.state.step);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        let started = Instant::now();
        let first_step = self.state.step;
        let mut smoothed: Option<f64> = None;
        let mut window = Instant::now();
        let mut window_images = 0usize;
        let batch = self.config.batch_size;
        let every = self.config.checkpoint_every;
        let log_every = options.log_every.max(1);
        let mut reason = StopReason::Finished;
        let mut last_checkpoint = None;
        while !self.finished() {
            if options
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::SeqCst))
            {
                reason = StopReason::Interrupted;
                break;
            }
            if options.time_limit.is_some_and(|l| started.elapsed() >= l) {
                reason = StopReason::TimeLimit;
                break;
            }
            let report = match self.step(data) {
                Ok(r) => r,
                Err(e) => {
                    bar.abandon();
                    return Err(e);
                }
            };
            window_images += batch;
            let s = smoothed.map_or(report.loss, |v| 0.98 * v + 0.02 * report.loss);
            smoothed = Some(s);
            let ips = window_images as f64 / window.elapsed().as_secs_f64().max(1e-9);
            if report.step.is_multiple_of(log_every) {
                writeln!(
                    csv,
                    "{},{:.6},{:.6},{:.3e},{:.4},{:.1}",
                    report.step, report.loss, s, report.lr, report.grad_norm, ips
                )
                .map_err(|e| log_err(&csv_path, &e))?;
                window = Instant::now();
                window_images = 0;
            }
            bar.set_position(report.step);
            bar.set_message(format!("loss {s:.4} | {ips:.0} img/s"));
            if let Some(f) = options.on_step.as_mut() {
                f(&report);
            }
            if every > 0 && report.step.is_multiple_of(every) {
                last_checkpoint = Some(self.save_checkpoint(&run_dir)?);
            }
        }
        bar.finish_with_message(format!("{reason} at step {}", self.state.step));
        // Every step done (in this call or by `step` before it) ends up in a checkpoint.
        if self.saved_step != Some(self.state.step) || checkpoint::list(&run_dir).is_empty() {
            last_checkpoint = Some(self.save_checkpoint(&run_dir)?);
        }
        let checkpoint = match last_checkpoint {
            Some(p) => p,
            None => checkpoint::resolve(&run_dir)?.checkpoint.dir,
        };
        csv.flush().map_err(|e| log_err(&csv_path, &e))?;
        let loss_plot = if options.plot {
            let path = run_dir.join("loss.png");
            crate::plot::plot_loss(&read_loss_csv(&csv_path), &path)
                .map_err(|e| log_err(&path, &e))?;
            Some(path)
        } else {
            None
        };
        let elapsed = started.elapsed();
        let steps_run = self.state.step - first_step;
        Ok(FitReport {
            reason,
            step: self.state.step,
            steps_run,
            elapsed,
            smoothed_loss: smoothed,
            images_per_s: (steps_run as usize * batch) as f64 / elapsed.as_secs_f64().max(1e-9),
            checkpoint,
            loss_plot,
        })
    }
}

impl Trainer<ImagePredictor, 4> {
    /// A fresh run of a network of this workspace, built from `spec` on `device` (an autodiff
    /// device; a plain one is made autodiff).
    ///
    /// # Errors
    /// An invalid spec or config, an empty data set.
    pub fn new_images(
        spec: ModelSpec,
        diffusion: GaussianDiffusion,
        config: TrainConfig,
        data_len: usize,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let device = if device.is_autodiff() {
            device.clone()
        } else {
            device.clone().autodiff()
        };
        let model = spec.init(&device)?;
        Ok(Self::new(diffusion, model, config, data_len)?.with_spec(spec))
    }

    /// Resumes the newest intact checkpoint of `run_dir` with the model and diffusion it
    /// records (no template needed).
    ///
    /// # Errors
    /// As [`resume`](Self::resume).
    pub fn resume_images(
        run_dir: &Path,
        device: &Device,
        steps: Option<u64>,
    ) -> Result<Self, TrainError> {
        let device = if device.is_autodiff() {
            device.clone()
        } else {
            device.clone().autodiff()
        };
        let meta = checkpoint::resolve(run_dir)?.checkpoint.meta;
        let template = meta.model.init(&device)?;
        Self::resume(run_dir, meta.diffusion()?, template, &meta.model, steps)
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

/// Why [`Trainer::fit`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// All configured steps are done.
    Finished,
    /// The time limit passed.
    TimeLimit,
    /// The stop flag was raised (Ctrl-C).
    Interrupted,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::Finished => "finished",
            StopReason::TimeLimit => "time limit reached",
            StopReason::Interrupted => "interrupted",
        })
    }
}

/// A callback of [`FitOptions::on_step`].
type StepHook<'a> = Box<dyn FnMut(&StepReport) + 'a>;

/// How [`Trainer::fit`] runs: where it writes, when it stops, what it reports.
pub struct FitOptions<'a> {
    run_dir: PathBuf,
    time_limit: Option<Duration>,
    stop: Option<Arc<AtomicBool>>,
    log_every: u64,
    progress: bool,
    plot: bool,
    on_step: Option<StepHook<'a>>,
}

impl std::fmt::Debug for FitOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FitOptions")
            .field("run_dir", &self.run_dir)
            .field("time_limit", &self.time_limit)
            .field("log_every", &self.log_every)
            .field("progress", &self.progress)
            .field("plot", &self.plot)
            .finish()
    }
}

impl<'a> FitOptions<'a> {
    /// Checkpoints, `loss.csv` and `loss.png` go to `run_dir`; no time limit; a loss line
    /// every 10 steps; a progress bar; a loss plot at the end.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        Self {
            run_dir: run_dir.into(),
            time_limit: None,
            stop: None,
            log_every: 10,
            progress: true,
            plot: true,
            on_step: None,
        }
    }
    /// Stops (with a checkpoint) after `minutes` minutes, checked as [`minutes_to_duration`]
    /// checks them.
    ///
    /// # Errors
    /// [`TrainError::TimeLimit`] for NaN, a negative or an unrepresentably long time.
    pub fn with_time_limit_minutes(self, minutes: f64) -> Result<Self, TrainError> {
        Ok(self.with_time_limit(minutes_to_duration(minutes)?))
    }

    /// Stops after `limit` (with a checkpoint).
    pub fn with_time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }
    /// Stop (with a checkpoint) when `flag` becomes true (set it from a Ctrl-C handler).
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = Some(flag);
        self
    }
    /// Write a line to `loss.csv` every `steps` steps.
    pub fn with_log_every(mut self, steps: u64) -> Self {
        self.log_every = steps;
        self
    }
    /// Show a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub fn with_progress(mut self, show: bool) -> Self {
        self.progress = show;
        self
    }
    /// Plot `loss.png` at the end.
    pub fn with_plot(mut self, plot: bool) -> Self {
        self.plot = plot;
        self
    }
    /// Call `f` after every step.
    pub fn on_step(mut self, f: impl FnMut(&StepReport) + 'a) -> Self {
        self.on_step = Some(Box::new(f));
        self
    }
}

/// What [`Trainer::fit`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    /// Why it stopped.
    pub reason: StopReason,
    /// The step reached.
    pub step: u64,
    /// Steps run by this call.
    pub steps_run: u64,
    /// Wall time of this call.
    pub elapsed: Duration,
    /// Exponentially smoothed loss (weight 0.02) at the end; `None` when no step ran.
    pub smoothed_loss: Option<f64>,
    /// Training images per second over this call.
    pub images_per_s: f64,
    /// The newest checkpoint.
    pub checkpoint: PathBuf,
    /// The loss plot, when drawn.
    pub loss_plot: Option<PathBuf>,
}

impl std::fmt::Display for FitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: step {} ({} this run) in {:.1} min, {:.1} images/s, {}; checkpoint {}",
            self.reason,
            self.step,
            self.steps_run,
            self.elapsed.as_secs_f64() / 60.0,
            self.images_per_s,
            match self.smoothed_loss {
                Some(l) => format!("smoothed loss {l:.4}"),
                None => "no step run".to_string(),
            },
            self.checkpoint.display()
        )
    }
}

/// `(step, loss)` of a `loss.csv` written by [`Trainer::fit`].
pub fn read_loss_csv(path: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut it = l.split(',');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// An image set seen as `[n, rows * cols]` vectors, for predictors of flattened images such as
/// the MLP.
#[derive(Debug, Clone, Copy)]
pub struct Flattened<'a>(pub &'a ImageSet);

impl BatchSource<2> for Flattened<'_> {
    fn len(&self) -> usize {
        self.0.count
    }
    fn labels(&self, indices: &[usize]) -> Option<Vec<usize>> {
        BatchSource::<4>::labels(self.0, indices)
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Tensor<2> {
        let size = self.0.rows * self.0.cols;
        self.0.batch(indices, device).reshape([indices.len(), size])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_report_says_when_no_step_ran() {
        let mut r = FitReport {
            reason: StopReason::Finished,
            step: 3268,
            steps_run: 0,
            elapsed: Duration::from_secs(0),
            smoothed_loss: None,
            images_per_s: 0.0,
            checkpoint: PathBuf::from("run/checkpoints/step-00003268"),
            loss_plot: None,
        };
        let text = r.to_string();
        assert!(
            text.contains("no step run") && !text.contains("NaN"),
            "{text}"
        );
        r.smoothed_loss = Some(0.01664);
        r.steps_run = 10;
        let text = r.to_string();
        assert!(
            text.starts_with("finished: step 3268 (10 this run)")
                && text.contains("smoothed loss 0.0166;"),
            "{text}"
        );
    }
}
