//! Training with Algorithm 1 of the paper, for any [`NoisePredictor`] of any rank: Adam with a
//! linear warm-up, gradient clipping by global norm, an EMA of the weights, and checkpoints
//! that are written atomically and resume exactly.
//!
//! Split by job: [`config`](TrainConfig) and state, one step on one or several devices (this
//! file and `parallel.rs`), the gradient visitors (`grads.rs`), the fit loop with its observers
//! (`fit.rs`), and the errors (`error.rs`). Batches come from [`BatchSource`]s
//! (`crate::data`); checkpoints are read and written by [`crate::checkpoint`].

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use ddpm_core::{
    Condition, Conditioned, DiffusionConfig, Ema, GaussianDiffusion, NoisePredictor, NoiseRng,
};

use crate::adam::Adam;
use crate::checkpoint::{self, CheckpointError, CheckpointMeta, Resolved};
use crate::data::{BatchSource, DataInfo, Dataset};
use crate::models::{ImagePredictor, ModelSpec};

pub(crate) mod config;
mod error;
mod fit;
mod grads;
mod parallel;

pub use config::{TrainConfig, TrainState, minutes_to_duration};
pub use error::TrainError;
pub use fit::{FitOptions, FitReport, StopReason, read_loss_csv};
pub use grads::clip_global_norm;

/// The examples `indices` of `data`, mirrored as `mirror` says (no mirroring when empty).
pub(crate) fn fetch<const D: usize>(
    data: &impl BatchSource<D>,
    indices: &[usize],
    mirror: &[bool],
    device: &Device,
) -> Result<Tensor<D>, TrainError> {
    if mirror.is_empty() {
        return Ok(data.batch(indices, device));
    }
    data.batch_mirrored(indices, mirror, device).ok_or_else(|| {
        TrainError::Config(
            "TrainConfig::hflip is set but this data source cannot mirror its examples \
             (BatchSource::batch_mirrored returns None)"
                .into(),
        )
    })
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
    data: Option<DataInfo>,
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

/// `device` with autodiff (itself when it has it).
fn autodiff(device: &Device) -> Device {
    if device.is_autodiff() {
        device.clone()
    } else {
        device.clone().autodiff()
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
            data: None,
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

    /// Records the data trained on: its source with options, image shape and class names
    /// (saved in every checkpoint; a built-in IDX source also sets
    /// [`with_dataset`](Self::with_dataset)).
    pub fn with_data(mut self, info: DataInfo) -> Self {
        if let Some(d) = info.source.dataset() {
            self.dataset = Some(d);
        }
        self.data = Some(info);
        self
    }

    /// The data recorded with [`with_data`](Self::with_data) or by the resumed checkpoint.
    pub fn data(&self) -> Option<&DataInfo> {
        self.data.as_ref()
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
        let main = autodiff(main);
        if main != self.device {
            self.model = self.model.clone().fork(&main);
            self.ema = self.config.ema.init(&self.model)?;
            self.device = main.clone();
        }
        self.devices = devices.iter().map(autodiff).collect();
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
        let mirror: Vec<bool> = if self.config.hflip {
            (0..batch).map(|_| self.state.rng.uniform() < 0.5).collect()
        } else {
            Vec::new()
        };
        let (value, mut grads) = if self.replicas.is_empty() {
            let x0 = fetch(data, &indices, &mirror, &self.device)?; // [batch, ...]
            let noise = self.state.rng.normal(x0.dims(), &self.device); // [batch, ...]
            let loss = match self.draw_condition(data, &indices)? {
                None => self.diffusion.loss_with(&self.model, x0, &t, noise)?,
                Some(c) => {
                    let model = Conditioned::new(&self.model, c);
                    self.diffusion.loss_with(&model, x0, &t, noise)?
                }
            }; // [1]
            let value = loss.clone().into_scalar::<f32>() as f64;
            let grads = value
                .is_finite()
                .then(|| GradientsParams::from_grads(loss.backward(), &self.model));
            (value, grads.unwrap_or_default())
        } else {
            self.data_parallel_grads(data, &indices, &mirror, &t)?
        };
        // One check for both paths: the weights stay as they were.
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: step + 1,
                value,
            });
        }
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
        if let Some(dims) = data.example_dims()
            && let Err(reason) = self.spec.accepts(&dims)
        {
            return Err(TrainError::ShapeMismatch { dims, reason });
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

    /// The metadata a checkpoint of the current step records.
    pub fn checkpoint_meta(&self) -> CheckpointMeta {
        CheckpointMeta {
            format: checkpoint::FORMAT,
            crate_version: env!("CARGO_PKG_VERSION").into(),
            model: self.spec.clone(),
            diffusion: self.diffusion.config().clone(),
            train: self.config.clone(),
            dataset: self.dataset,
            data: self.data.clone(),
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
        trainer.data = meta.data.clone();
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
        let device = autodiff(device);
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
        let device = autodiff(device);
        let meta = checkpoint::resolve(run_dir)?.checkpoint.meta;
        let template = meta.model.init(&device)?;
        Self::resume(run_dir, meta.diffusion()?, template, &meta.model, steps)
    }
}
