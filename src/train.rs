//! Training with Algorithm 1 of the paper, for any [`NoisePredictor`] of any rank: Adam with a
//! linear warm-up, gradient clipping by global norm, an EMA of the weights, and checkpoints
//! that are written atomically and resume exactly.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use ddpm_core::{DdpmError, Ema, EmaConfig, GaussianDiffusion, NoisePredictor, NoiseRng};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::adam::Adam;
use crate::data::{EpochSampler, ImageSet};

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
    /// A checkpoint could not be written or read.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// No checkpoint to resume from.
    #[error(
        "no checkpoint found in {0}: expected a 'checkpoints/step-NNNNNNNN' folder written by `train`"
    )]
    NoCheckpoint(PathBuf),
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
}

impl BatchSource<4> for ImageSet {
    fn len(&self) -> usize {
        self.count
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Tensor<4> {
        ImageSet::batch(self, indices, device)
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

/// What `state.json` of a checkpoint holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointMeta {
    format: u32,
    train: TrainConfig,
    /// The caller's description of the model and diffusion (compared on resume).
    model: serde_json::Value,
    state: TrainState,
}

/// Format 2: the optimizer state is ours (`optim.bin`), not burn's `optim.bpk`.
const FORMAT: u32 = 2;
const OPTIM_FILE: &str = "optim.bin";

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
pub struct Trainer<M: Module + NoisePredictor<D>, const D: usize> {
    diffusion: GaussianDiffusion,
    model: M,
    optim: Adam,
    ema: Ema<M>,
    config: TrainConfig,
    state: TrainState,
    device: Device,
}

impl<M: Module + NoisePredictor<D>, const D: usize> std::fmt::Debug for Trainer<M, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("state", &self.state)
            .finish()
    }
}

fn seed_mix(seed: u64, step: u64) -> u64 {
    let mut rng = NoiseRng::new(seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03));
    rng.next_u64()
}

impl<M: Module + NoisePredictor<D>, const D: usize> Trainer<M, D> {
    /// Starts a run. `model` must live on an autodiff device (`device.autodiff()`).
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
        let state = TrainState {
            step: 0,
            rng: NoiseRng::new(config.seed),
            sampler: EpochSampler::new(data_len, config.seed),
            ema_updates: 0,
        };
        Ok(Self {
            diffusion,
            model,
            optim,
            ema,
            config,
            state,
            device,
        })
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
        let step = self.state.step;
        // Dropout draws from the device's generator: seed it per step so that a resumed run
        // draws the same masks.
        self.device.seed(seed_mix(self.config.seed, step));
        let indices = self.state.sampler.next_batch(self.config.batch_size);
        let x0 = data.batch(&indices, &self.device); // [batch, ...]
        let loss = self.diffusion.loss(&self.model, x0, &mut self.state.rng)?; // [1]
        let value = loss.clone().into_scalar::<f32>() as f64;
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: step + 1,
                value,
            });
        }
        let mut grads = GradientsParams::from_grads(loss.backward(), &self.model);
        let grad_norm = match self.config.grad_clip_norm {
            Some(max) => clip_global_norm(&self.model, &mut grads, max),
            None => f64::NAN,
        };
        let lr = self.config.lr_at(step);
        self.model = self.optim.step(lr, self.model.clone(), grads);
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

    /// Writes a checkpoint of the current step into `run_dir/checkpoints/step-NNNNNNNN/`:
    /// weights, EMA weights, optimizer state and `state.json` (step, RNG, data position, the
    /// training config and `model_meta`). The folder is assembled under a temporary name and
    /// renamed, so a crash never leaves a half-written checkpoint; older ones beyond
    /// `keep_checkpoints` are removed afterwards.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] on any I/O or encoding failure.
    pub fn save_checkpoint(
        &self,
        run_dir: &Path,
        model_meta: &serde_json::Value,
    ) -> Result<PathBuf, TrainError> {
        let root = run_dir.join("checkpoints");
        let name = format!("step-{:08}", self.state.step);
        let final_dir = root.join(&name);
        let tmp = root.join(format!(".{name}.tmp"));
        let fail = |path: &Path, e: &dyn std::fmt::Display| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| fail(&tmp, &e))?;
        self.model
            .clone()
            .save_file(tmp.join("model.bpk"))
            .map_err(|e| fail(&tmp, &e))?;
        self.ema
            .model()
            .clone()
            .save_file(tmp.join("ema.bpk"))
            .map_err(|e| fail(&tmp, &e))?;
        self.optim
            .save(&tmp.join(OPTIM_FILE))
            .map_err(|e| fail(&tmp, &e))?;
        let meta = CheckpointMeta {
            format: FORMAT,
            train: self.config.clone(),
            model: model_meta.clone(),
            state: self.state.clone(),
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| fail(&tmp, &e))?;
        crate::fsutil::write_atomic(&tmp.join("state.json"), &json).map_err(|e| fail(&tmp, &e))?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| fail(&final_dir, &e))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| fail(&final_dir, &e))?;
        let mut all = list_checkpoints(run_dir);
        while all.len() > self.config.keep_checkpoints {
            let (_, old) = all.remove(0);
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(final_dir)
    }

    /// Resumes the newest checkpoint of `run_dir`. `template` is a freshly built model of the
    /// same configuration on the autodiff device; `model_meta` must equal the one saved.
    /// `steps` overrides the total number of steps (to train longer than first planned).
    ///
    /// # Errors
    /// [`TrainError::NoCheckpoint`], [`TrainError::ConfigMismatch`], or
    /// [`TrainError::Checkpoint`] for a truncated or foreign checkpoint.
    pub fn resume(
        run_dir: &Path,
        diffusion: GaussianDiffusion,
        template: M,
        model_meta: &serde_json::Value,
        steps: Option<u64>,
    ) -> Result<Self, TrainError> {
        let dir = latest_checkpoint(run_dir)?;
        let meta = read_meta(&dir)?;
        if meta.format < FORMAT {
            return Err(TrainError::Checkpoint {
                path: dir,
                reason: format!(
                    "checkpoint format {} (burn's optimizer file) cannot be resumed by this                      version (format {FORMAT}); its weights still load for sampling and eval,                      or start a new run",
                    meta.format
                ),
            });
        }
        if &meta.model != model_meta {
            return Err(TrainError::ConfigMismatch {
                path: dir,
                saved: meta.model.to_string(),
                current: model_meta.to_string(),
            });
        }
        let mut config = meta.train.clone();
        if let Some(s) = steps {
            config.steps = s;
        }
        let mut trainer = Self::new(diffusion, template.clone(), config, meta.state.sampler.len)?;
        let bad = |path: PathBuf, e: &dyn std::fmt::Display| TrainError::Checkpoint {
            path,
            reason: format!(
                "{e}: the file is damaged or belongs to another model; delete this checkpoint to fall back to an older one"
            ),
        };
        let model = template
            .clone()
            .try_load_file(dir.join("model.bpk"))
            .map_err(|e| bad(dir.join("model.bpk"), &e))?;
        let shadow = template
            .valid()
            .try_load_file(dir.join("ema.bpk"))
            .map_err(|e| bad(dir.join("ema.bpk"), &e))?;
        // The optimizer state goes to the run's device, never to `Device::default()` (which is
        // a GPU in a build with `wgpu` or `cuda`).
        let inner = trainer.device.clone().without_autodiff();
        let optim =
            Adam::load(&dir.join(OPTIM_FILE), &inner).map_err(|e| bad(dir.join(OPTIM_FILE), &e))?;
        trainer.model = model;
        trainer.optim = optim;
        trainer.ema.restore(shadow, meta.state.ema_updates);
        // The sampler's permutation is not saved: it is rebuilt from (seed, epoch).
        trainer.state = meta.state;
        Ok(trainer)
    }
}

/// Every complete checkpoint of `run_dir` as `(step, folder)`, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(run_dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            e.path()
                .join("state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The newest complete checkpoint folder of `run_dir`.
///
/// # Errors
/// [`TrainError::NoCheckpoint`].
pub fn latest_checkpoint(run_dir: &Path) -> Result<PathBuf, TrainError> {
    list_checkpoints(run_dir)
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| TrainError::NoCheckpoint(run_dir.to_path_buf()))
}

fn read_meta(dir: &Path) -> Result<CheckpointMeta, TrainError> {
    let path = dir.join("state.json");
    let bytes = std::fs::read(&path).map_err(|e| TrainError::Checkpoint {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let meta: CheckpointMeta =
        serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint {
            path: path.clone(),
            reason: format!("state.json is damaged ({e})"),
        })?;
    if !(1..=FORMAT).contains(&meta.format) {
        return Err(TrainError::Checkpoint {
            path,
            reason: format!(
                "checkpoint format {} is not supported (expected {FORMAT})",
                meta.format
            ),
        });
    }
    Ok(meta)
}

/// Reads the model description saved with a checkpoint (to rebuild the model for sampling).
///
/// # Errors
/// [`TrainError::Checkpoint`] when `state.json` is missing or damaged.
pub fn checkpoint_model_meta(dir: &Path) -> Result<serde_json::Value, TrainError> {
    Ok(read_meta(dir)?.model)
}

/// Loads the weights (`ema = true`: the EMA weights) of checkpoint `dir` into `template`.
///
/// # Errors
/// [`TrainError::Checkpoint`] for a missing, truncated or foreign file.
pub fn load_weights<M: Module>(dir: &Path, template: M, ema: bool) -> Result<M, TrainError> {
    let path = dir.join(if ema { "ema.bpk" } else { "model.bpk" });
    template
        .try_load_file(&path)
        .map_err(|e| TrainError::Checkpoint {
            path,
            reason: format!("{e}: the file is damaged or belongs to another model"),
        })
}

/// An image set seen as `[n, rows * cols]` vectors, for predictors of flattened images such as
/// the MLP.
#[derive(Debug, Clone, Copy)]
pub struct Flattened<'a>(pub &'a ImageSet);

impl BatchSource<2> for Flattened<'_> {
    fn len(&self) -> usize {
        self.0.count
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Tensor<2> {
        let size = self.0.rows * self.0.cols;
        self.0.batch(indices, device).reshape([indices.len(), size])
    }
}
