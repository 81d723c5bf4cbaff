//! Data-parallel training through burn-train (feature `ddp`, on by default).
//!
//! [`crate::train::Trainer`] runs Algorithm 1 on one device with exact resume and an EMA. To
//! train on several devices, this module plugs the same loss into burn-train's
//! [`Learner`](burn::train::Learner) and its distributed data-parallel strategy
//! ([`ExecutionStrategy::ddp`](burn::train::ExecutionStrategy::ddp)): one model replica per
//! device, each on its share of every epoch, gradients averaged across devices by an
//! `all_reduce` after each backward pass (so a global batch behaves as on one device).
//!
//! - [`DiffusionModel`] wraps any [`NoisePredictor`] with its [`GaussianDiffusion`] and
//!   implements burn-train's `TrainStep` / `InferenceStep` with `L_simple` (eq. 14): `t` and
//!   `eps` are drawn inside the step, on the replica's device.
//! - [`DiffusionDataset`] + [`DiffusionBatcher`] feed examples (images or points) to burn's
//!   data loaders.
//! - [`probe_collectives`] runs one real `all_reduce` over the devices before training starts,
//!   so a backend without collective operations is an error, not a panic in a worker thread.
//!
//! Which backends have collective operations (burn 0.22.1, checked by
//! [`probe_collectives`] and by reading the sources): `cuda` (through NCCL, when
//! `libnccl` is present). `flex` and `ndarray` have none (burn's dispatch answers
//! "Distributed operations are not supported for tensor kind Flex(..)"; their
//! `DistributedOps` keep the trait's `unimplemented!()` defaults), and the other cubecl
//! runtimes (`wgpu`, `cpu`) refuse collectives ("no transport between its devices"). On one CPU, data parallelism is therefore not
//! available; [`launch`] with a single device runs the same `Learner` path without
//! collectives.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::module::{Module, ModuleDisplay};
use burn::optim::AdamConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::tensor::ExecutionError;
use burn::tensor::distributed::{DistributedConfig, ReduceOperation, all_reduce};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{Adaptor, LossInput, LossMetric};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use burn::train::{
    ExecutionStrategy, InferenceStep, ItemLazy, Learner, SupervisedTraining, TrainOutput,
    TrainStep, TrainingStrategy,
};
use ddpm_core::{DdpmError, GaussianDiffusion, NoisePredictor};
use thiserror::Error;

/// Why data-parallel training cannot start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ParallelError {
    /// No device was given.
    #[error("no device was given: pass at least one (e.g. `--devices cuda:0,cuda:1`)")]
    NoDevices,
    /// The backend of these devices has no collective operations.
    #[error(
        "the devices {devices} cannot run data-parallel training: their backend has no \
         collective operations (all_reduce failed: {reason}). In burn 0.22.1 only `cuda` \
         (with NCCL) implements them; train on one device instead, or on CUDA GPUs"
    )]
    NoCollectives {
        /// The devices, as debug strings.
        devices: String,
        /// What the backend said.
        reason: String,
    },
    /// An `all_reduce` over the devices returned a wrong sum.
    #[error("all_reduce over {devices} returned {got} instead of {expected}")]
    WrongReduction {
        /// The devices, as debug strings.
        devices: String,
        /// The value returned.
        got: f32,
        /// The value expected (the number of devices).
        expected: f32,
    },
    /// The predictor refused a batch of the dataset's shape.
    #[error("the model refuses the data: {0}")]
    Model(#[from] DdpmError),
    /// Training stopped on an error.
    #[error("data-parallel training failed: {0}")]
    Training(String),
    /// Invalid settings.
    #[error("invalid data-parallel settings: {0}")]
    Invalid(String),
}

fn describe(devices: &[Device]) -> String {
    let names: Vec<String> = devices.iter().map(|d| format!("{d:?}")).collect();
    format!("[{}]", names.join(", "))
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the backend panicked".into())
}

/// Runs one `all_reduce` (sum of a one on each device) over `devices`, one thread per device
/// as a data-parallel run would, and checks that every device reads back `devices.len()`.
/// One device is probed too (a collective with one peer), as burn's DDP strategy would use it.
///
/// # Errors
/// [`ParallelError::NoCollectives`] when the backend panics or does not answer within 60 s,
/// [`ParallelError::WrongReduction`] when the sum is wrong.
pub fn probe_collectives(devices: &[Device]) -> Result<(), ParallelError> {
    if devices.is_empty() {
        return Err(ParallelError::NoDevices);
    }
    let (tx, rx) = mpsc::channel();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for device in devices {
        let (device, all, tx) = (device.clone(), devices.to_vec(), tx.clone());
        std::thread::spawn(move || {
            let result = std::panic::catch_unwind(move || {
                let x = Tensor::<1>::ones([1], &device);
                all_reduce(x, ReduceOperation::Sum, all)
                    .resolve()
                    .into_scalar::<f32>()
            });
            let _ = tx.send(result.map_err(|e| panic_text(e.as_ref())));
        });
    }
    drop(tx);
    // Wait for every thread before restoring the panic hook, so that no late panic prints.
    let mut outcome = Ok(());
    for _ in devices {
        let answer = rx.recv_timeout(Duration::from_secs(60));
        if outcome.is_err() {
            continue;
        }
        outcome = match answer {
            Ok(Ok(v)) if (v - devices.len() as f32).abs() < 1e-3 => Ok(()),
            Ok(Ok(v)) => Err(ParallelError::WrongReduction {
                devices: describe(devices),
                got: v,
                expected: devices.len() as f32,
            }),
            Ok(Err(reason)) => Err(ParallelError::NoCollectives {
                devices: describe(devices),
                reason,
            }),
            Err(_) => Err(ParallelError::NoCollectives {
                devices: describe(devices),
                reason: "no answer within 60 s".into(),
            }),
        };
    }
    std::panic::set_hook(previous);
    outcome
}

/// One training example: its values (in `[-1, 1]` for images) and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionItem {
    /// Row-major values.
    pub values: Vec<f32>,
}

/// Examples of equal shape held in memory, for burn's data loaders.
#[derive(Debug, Clone)]
pub struct DiffusionDataset {
    values: Arc<Vec<f32>>,
    item_len: usize,
    len: usize,
}

impl DiffusionDataset {
    /// `values` holds `values.len() / item_len` examples of `item_len` values each.
    ///
    /// # Errors
    /// [`ParallelError::Invalid`] when `item_len` is zero or does not divide `values.len()`.
    pub fn new(values: Vec<f32>, item_len: usize) -> Result<Self, ParallelError> {
        if item_len == 0 || values.is_empty() || !values.len().is_multiple_of(item_len) {
            return Err(ParallelError::Invalid(format!(
                "{} values cannot be split into examples of {item_len}",
                values.len()
            )));
        }
        let len = values.len() / item_len;
        Ok(Self {
            values: Arc::new(values),
            item_len,
            len,
        })
    }

    /// The first `n` examples (all of them when `n` is larger).
    pub fn take(&self, n: usize) -> Self {
        Self {
            values: self.values.clone(),
            item_len: self.item_len,
            len: n.min(self.len),
        }
    }
}

impl Dataset<DiffusionItem> for DiffusionDataset {
    fn get(&self, index: usize) -> Result<DiffusionItem, DatasetError> {
        if index >= self.len {
            return Err(DatasetError::new(ParallelError::Invalid(format!(
                "index {index} is past the {} examples",
                self.len
            ))));
        }
        Ok(DiffusionItem {
            values: self.values[index * self.item_len..(index + 1) * self.item_len].to_vec(),
        })
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// A batch of clean examples `x_0`, shape `[batch, ..item_shape]`.
#[derive(Debug, Clone)]
pub struct DiffusionBatch<const D: usize> {
    /// Clean data.
    pub x0: Tensor<D>,
}

/// Stacks [`DiffusionItem`]s into a `[batch, ..item_shape]` tensor.
#[derive(Debug, Clone)]
pub struct DiffusionBatcher<const D: usize> {
    item_shape: [usize; D],
}

impl<const D: usize> DiffusionBatcher<D> {
    /// `item_shape` is the shape of a batch of one: `[1, 1, 28, 28]` for MNIST images,
    /// `[1, 784]` for flattened ones.
    ///
    /// # Errors
    /// [`ParallelError::Invalid`] when the first dimension is not 1.
    pub fn new(item_shape: [usize; D]) -> Result<Self, ParallelError> {
        if D == 0 || item_shape[0] != 1 || item_shape.contains(&0) {
            return Err(ParallelError::Invalid(format!(
                "item shape {item_shape:?} must start with 1 and have no zero dimension"
            )));
        }
        Ok(Self { item_shape })
    }
}

impl<const D: usize> Batcher<DiffusionItem, DiffusionBatch<D>> for DiffusionBatcher<D> {
    fn batch(&self, items: Vec<DiffusionItem>, device: &Device) -> DiffusionBatch<D> {
        let mut shape = self.item_shape;
        shape[0] = items.len();
        let values: Vec<f32> = items.into_iter().flat_map(|i| i.values).collect();
        DiffusionBatch {
            x0: Tensor::from_data(TensorData::new(values, shape), device),
        }
    }
}

/// The loss of one step, for burn-train's metrics.
#[derive(Debug, Clone)]
pub struct DiffusionOutput {
    /// `L_simple` of the batch, `[1]`.
    pub loss: Tensor<1>,
}

impl ItemLazy for DiffusionOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        self.loss.device().flush()?;
        Ok(Self {
            loss: self.loss.without_autodiff(),
        })
    }
}

impl Adaptor<LossInput> for DiffusionOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

/// A noise predictor and its diffusion, trained by burn-train with `L_simple`.
#[derive(Module, Debug)]
pub struct DiffusionModel<M: Module> {
    /// The noise predictor.
    pub predictor: M,
    /// The forward process (no parameters).
    #[module(skip)]
    pub diffusion: GaussianDiffusion,
}

impl<M: Module> DiffusionModel<M> {
    /// Wraps `predictor` with `diffusion`.
    pub fn new(predictor: M, diffusion: GaussianDiffusion) -> Self {
        Self {
            predictor,
            diffusion,
        }
    }

    /// `L_simple` of a batch with `t ~ U{0..T-1}` and `eps ~ N(0, I)` drawn on the batch's
    /// device.
    ///
    /// # Errors
    /// [`DdpmError`] when the predictor refuses the batch.
    pub fn loss<const D: usize>(&self, x0: Tensor<D>) -> Result<Tensor<1>, DdpmError>
    where
        M: NoisePredictor<D>,
    {
        let dims = x0.dims();
        let device = x0.device();
        let t_max = self.diffusion.num_timesteps() as f64;
        let t: Vec<usize> =
            Tensor::<1, Int>::random([dims[0]], Distribution::Uniform(0.0, t_max), &device)
                .into_data()
                .convert::<i64>()
                .iter::<i64>()
                .map(|v| (v.max(0) as usize).min(self.diffusion.num_timesteps() - 1))
                .collect();
        let noise = Tensor::random(dims, Distribution::Normal(0.0, 1.0), &device);
        self.diffusion.loss_with(&self.predictor, x0, &t, noise)
    }
}

/// A predictor that [`DiffusionModel`] can train through burn-train: it names the batch type
/// of its data rank. Implemented for [`ddpm_unet::UNet`] (images, rank 4) and
/// [`ddpm_mlp::MlpPredictor`] (vectors, rank 2); for another predictor of rank `D`, set
/// `type Batch = DiffusionBatch<D>` and forward to [`DiffusionModel::loss`].
pub trait BatchLoss: Module + ModuleDisplay + Sized + 'static {
    /// The batch type of this predictor's data.
    type Batch: Send + 'static;

    /// `L_simple` of `batch`.
    ///
    /// # Errors
    /// [`DdpmError`] when the predictor refuses the batch.
    fn batch_loss(model: &DiffusionModel<Self>, batch: Self::Batch)
    -> Result<Tensor<1>, DdpmError>;
}

impl BatchLoss for ddpm_unet::UNet {
    type Batch = DiffusionBatch<4>;
    fn batch_loss(
        model: &DiffusionModel<Self>,
        batch: Self::Batch,
    ) -> Result<Tensor<1>, DdpmError> {
        model.loss(batch.x0)
    }
}

impl BatchLoss for ddpm_mlp::MlpPredictor {
    type Batch = DiffusionBatch<2>;
    fn batch_loss(
        model: &DiffusionModel<Self>,
        batch: Self::Batch,
    ) -> Result<Tensor<1>, DdpmError> {
        model.loss(batch.x0)
    }
}

/// The training step panics only if the predictor refuses a batch, which [`launch`] rules out
/// by checking one batch before training starts.
impl<M: BatchLoss> TrainStep for DiffusionModel<M> {
    type Input = M::Batch;
    type Output = DiffusionOutput;

    fn step(&self, batch: M::Batch) -> TrainOutput<DiffusionOutput> {
        let loss = M::batch_loss(self, batch).expect("the batch shape was checked before training");
        let grads = loss.backward();
        TrainOutput::new(self, grads, DiffusionOutput { loss })
    }
}

impl<M: BatchLoss> InferenceStep for DiffusionModel<M> {
    type Input = M::Batch;
    type Output = DiffusionOutput;

    fn step(&self, batch: M::Batch) -> DiffusionOutput {
        let loss = M::batch_loss(self, batch).expect("the batch shape was checked before training");
        DiffusionOutput { loss }
    }
}

/// How [`launch`] runs its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParallelStrategy {
    /// burn's single-device strategy for one device, DDP for several.
    #[default]
    Auto,
    /// burn's DDP strategy even for one device (its collectives then run with one peer):
    /// exercises the distributed path on a machine with a single GPU.
    Ddp,
}

/// Settings of a [`launch`].
#[derive(Debug, Clone, PartialEq)]
pub struct ParallelConfig {
    /// Examples per optimizer step, summed over the devices (divided evenly between them).
    pub global_batch: usize,
    /// Passes over the training set.
    pub epochs: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Gradient clipping by norm (per parameter tensor, as burn clips), 0 for none.
    pub grad_clip: f64,
    /// Seed of the weights' initialisation is the caller's; this seeds the devices' RNGs
    /// (timesteps and noise) and the shuffling.
    pub seed: u64,
    /// Held-out examples for the validation loss after each epoch.
    pub valid_examples: usize,
    /// Single-device or DDP strategy.
    pub strategy: ParallelStrategy,
    /// Continue from burn-train's checkpoint of this epoch (see [`latest_epoch_checkpoint`]);
    /// `epochs` is then the total, not the number still to run.
    pub resume_epoch: Option<usize>,
}

/// The newest epoch of `run_dir/checkpoint/` for which burn-train saved the model, the
/// optimizer and the scheduler.
pub fn latest_epoch_checkpoint(run_dir: &std::path::Path) -> Option<usize> {
    let dir = run_dir.join("checkpoint");
    std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let epoch = name
                .strip_prefix("model-")?
                .strip_suffix(".bpk")?
                .parse()
                .ok()?;
            let complete = ["optim", "scheduler"]
                .iter()
                .all(|p| dir.join(format!("{p}-{epoch}.bpk")).is_file());
            complete.then_some(epoch)
        })
        .max()
}

/// What a [`launch`] returns.
pub struct ParallelOutcome<M: Module> {
    /// The trained model (on the first device, validation mode).
    pub model: DiffusionModel<M>,
    /// Whether training stopped early (an interruption).
    pub interrupted: bool,
}

/// Trains `model` (built on `devices[0].autodiff()`) with burn-train's `Learner` on `devices`:
/// burn's DDP strategy when there are several, the single-device strategy otherwise.
/// Checkpoints (model, optimizer, scheduler; the last two epochs) go to
/// `run_dir/checkpoint/`, the per-step losses to `run_dir/train/epoch-N/Loss.log` and
/// `run_dir/valid/epoch-N/Loss.log`.
///
/// # Errors
/// [`ParallelError`] when the devices have no collective operations, the settings are
/// invalid, or the model refuses the data's shape.
pub fn launch<M, const D: usize>(
    model: DiffusionModel<M>,
    train: DiffusionDataset,
    valid: DiffusionDataset,
    item_shape: [usize; D],
    devices: &[Device],
    config: &ParallelConfig,
    run_dir: &std::path::Path,
) -> Result<ParallelOutcome<M>, ParallelError>
where
    M: BatchLoss<Batch = DiffusionBatch<D>>,
{
    if devices.is_empty() {
        return Err(ParallelError::NoDevices);
    }
    let n = devices.len();
    if config.global_batch == 0 || !config.global_batch.is_multiple_of(n) {
        return Err(ParallelError::Invalid(format!(
            "the global batch {} must be a positive multiple of the {n} devices",
            config.global_batch
        )));
    }
    let lr_ok = config.lr.is_finite() && config.lr > 0.0;
    let clip_ok = config.grad_clip.is_finite() && config.grad_clip >= 0.0;
    if config.epochs == 0 || !lr_ok || !clip_ok {
        return Err(ParallelError::Invalid(format!(
            "epochs must be >= 1, lr > 0 and grad_clip >= 0, got {config:?}"
        )));
    }
    if config.strategy == ParallelStrategy::Ddp || n > 1 {
        probe_collectives(devices)?;
    }
    let batcher = DiffusionBatcher::new(item_shape)?;
    // Check the shape once, outside the workers: a refusal is an error here, not a panic
    // in a training thread.
    if let Ok(item) = train.get(0) {
        let x0 = batcher.batch(vec![item], &devices[0].clone().autodiff());
        M::batch_loss(&model, x0)?;
    }
    for d in devices {
        d.seed(config.seed);
    }
    let loader_train = DataLoaderBuilder::new(batcher.clone())
        .batch_size(config.global_batch / n)
        .shuffle(config.seed)
        .build(train);
    let loader_valid = DataLoaderBuilder::new(batcher)
        .batch_size(config.global_batch / n)
        .build(valid.take(config.valid_examples.max(1)));
    let mut adam = AdamConfig::new();
    if config.grad_clip > 0.0 {
        adam = adam.with_grad_clipping(Some(GradientClippingConfig::Norm(config.grad_clip as f32)));
    }
    let learner = Learner::new(model, adam.init(), ConstantLr::new(config.lr));
    let single = n == 1 && config.strategy == ParallelStrategy::Auto;
    let strategy: TrainingStrategy<DiffusionModel<M>> = if single {
        ExecutionStrategy::single(devices[0].clone().autodiff()).into()
    } else {
        let ad: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
        ExecutionStrategy::ddp(
            ad,
            DistributedConfig {
                all_reduce_op: ReduceOperation::Mean,
            },
        )
        .into()
    };
    let mut training = SupervisedTraining::new(run_dir, loader_train, loader_valid);
    if let Some(epoch) = config.resume_epoch {
        if latest_epoch_checkpoint(run_dir).is_none_or(|last| last < epoch) {
            return Err(ParallelError::Invalid(format!(
                "no complete checkpoint of epoch {epoch} under {}",
                run_dir.join("checkpoint").display()
            )));
        }
        training = training.checkpoint(epoch);
    }
    let result = training
        .metrics((LossMetric::new(),))
        .num_epochs(config.epochs)
        .with_default_checkpointers()
        .with_training_strategy(strategy)
        .renderer(Box::new(BarRenderer::new()))
        .launch(learner);
    if let Some(error) = result.error {
        return Err(ParallelError::Training(error.to_string()));
    }
    Ok(ParallelOutcome {
        model: result.model,
        interrupted: result.interrupted.is_some(),
    })
}

/// burn-train's progress and metrics shown as one terminal progress bar per split (epoch
/// number, items, the latest training loss, rate and ETA), instead of burn's line-per-step
/// output when its TUI is not compiled in.
pub struct BarRenderer {
    bar: Option<indicatif::ProgressBar>,
    epochs: usize,
    epoch: usize,
    loss: Option<f64>,
}

impl BarRenderer {
    /// A renderer that draws nothing until training starts.
    pub fn new() -> Self {
        Self {
            bar: None,
            epochs: 0,
            epoch: 0,
            loss: None,
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

impl Default for BarRenderer {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsRendererTraining for BarRenderer {
    fn update_train(&mut self, state: MetricState) {
        if let MetricState::Numeric(_, Some(value)) = state {
            self.loss = Some(value.current());
        }
        if let (Some(bar), Some(loss)) = (&self.bar, self.loss) {
            bar.set_message(format!("loss {loss:.4}"));
        }
    }
    fn update_valid(&mut self, _state: MetricState) {}
}

impl TrainingProgressLogger for BarRenderer {
    fn start(
        &mut self,
        total: usize,
        starting: usize,
        _items: Option<usize>,
        _label: Option<&str>,
    ) {
        self.epochs = total;
        self.epoch = starting;
    }
    fn update_epoch(&mut self, epoch: usize) {
        self.epoch = epoch;
    }
    fn start_split(&mut self, split: &str, total_items: usize) {
        self.finish();
        let bar = indicatif::ProgressBar::new(total_items as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {msg} {per_sec} ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(format!("epoch {}/{} {split}", self.epoch + 1, self.epochs));
        self.bar = Some(bar);
    }
    fn update_split(&mut self, items_processed: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(items_processed as u64);
        }
    }
    fn end_split(&mut self) {
        self.finish();
    }
    fn end(&mut self) {
        self.finish();
    }
    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for BarRenderer {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, name: &str, total_items: usize) {
        self.start_split(name, total_items);
    }
    fn update_test_progress(&mut self, items_processed: usize) {
        self.update_split(items_processed);
    }
    fn end_test(&mut self) {
        self.finish();
    }
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRendererEvaluation for BarRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl MetricsRenderer for BarRenderer {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _definition: burn::train::metric::MetricDefinition) {}
}
