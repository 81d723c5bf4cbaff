//! Train a DDPM on MNIST (or Fashion-MNIST), sample from it and look at the digits.
//!
//! ```text
//! cargo run --release --example mnist                      # quick preset: ~15 min on a 2-core CPU
//! cargo run --release --example mnist -- train --help
//! cargo run --release --example mnist -- sample --checkpoint runs/quick --sampler ddim --steps 50
//! ```

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ddpm::backend::Backend;
use ddpm::core::{
    Clip, DiffusionConfig, EmaConfig, EmaWarmup, GaussianDiffusion, NoisePredictor, SampleOptions,
    SampleOutput, Sampler, SamplerConfig, SamplerKind, TimestepSpacing, VarianceType,
};
use ddpm::data::{Dataset, ImageSet, Split};
use ddpm::mlp::{MlpPredictor, MlpPredictorConfig};
use ddpm::train::{BatchSource, Flattened, TrainConfig, TrainError, Trainer};
use ddpm::unet::{UNet, UNetConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

type AnyError = Box<dyn std::error::Error>;

#[derive(Parser)]
#[command(
    version,
    about = "Train a DDPM on MNIST and sample from it. With no subcommand: the quick preset."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (or resume a run with --resume).
    Train(TrainArgs),
    /// Sample images from a checkpoint: grid PNG, one PNG per sample and a GIF of the denoising.
    Sample(SampleArgs),
    /// The quick preset: train for a bounded time on the CPU, then sample a grid with DDIM.
    Quick(QuickArgs),
    /// Evaluate a checkpoint.
    #[command(subcommand)]
    Eval(EvalCommand),
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Negative log-likelihood bound in bits/dim on the first N test images (Table 1's NLL).
    Nll(NllArgs),
    /// Train the small CNN used by `eval quality` (cached in the data directory).
    TrainClassifier(ClassifierArgs),
    /// Classifier-FID, confidence and class histogram of a folder of generated PNGs.
    Quality(QualityArgs),
}

#[derive(Args, Clone)]
struct ClassifierArgs {
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: DatasetArg,
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    device: Option<String>,
}

#[derive(Args, Clone)]
struct QualityArgs {
    /// Folder of generated 28x28 PNGs (or a `sample` output folder holding samples/).
    #[arg(long)]
    samples: PathBuf,
    #[command(flatten)]
    classifier: ClassifierArgs,
}

#[derive(Args, Clone)]
struct NllArgs {
    /// A run directory (its newest checkpoint) or a checkpoint folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Test images to evaluate.
    #[arg(long, default_value_t = 256)]
    num: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Reverse-process variance: large (beta, as the paper's CIFAR10 NLL) or small (beta tilde).
    #[arg(long, value_enum, default_value = "large")]
    variance: VarianceArg,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    no_ema: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum VarianceArg {
    Large,
    Small,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ModelKind {
    /// The paper's U-Net (ddpm_mnist preset).
    Unet,
    /// A small U-Net (ch 16) that trains in minutes on a CPU.
    UnetSmall,
    /// A tiny MLP on flattened images.
    Mlp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DatasetArg {
    Mnist,
    FashionMnist,
}

impl From<DatasetArg> for Dataset {
    fn from(d: DatasetArg) -> Self {
        match d {
            DatasetArg::Mnist => Dataset::Mnist,
            DatasetArg::FashionMnist => Dataset::FashionMnist,
        }
    }
}

/// `--spacing`: which timesteps a sampler visits (default: the sampler's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SpacingArg {
    /// Evenly spaced, both ends included (DDPM and DDIM's default).
    Linspace,
    /// i * floor(T / steps), from 0.
    Leading,
    /// Ending at T - 1.
    Trailing,
    /// Evenly spaced in log-SNR (DPM-Solver++, Euler and Heun's default).
    LogSnr,
    /// EDM's sigma spacing, rho = 7.
    Karras,
}

impl From<SpacingArg> for TimestepSpacing {
    fn from(s: SpacingArg) -> Self {
        match s {
            SpacingArg::Linspace => TimestepSpacing::Linspace,
            SpacingArg::Leading => TimestepSpacing::Leading,
            SpacingArg::Trailing => TimestepSpacing::Trailing,
            SpacingArg::LogSnr => TimestepSpacing::LogSnr,
            SpacingArg::Karras => TimestepSpacing::karras(),
        }
    }
}

#[derive(Args, Clone)]
struct TrainArgs {
    /// The noise predictor.
    #[arg(long, value_enum, default_value = "unet")]
    model: ModelKind,
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: DatasetArg,
    /// Optimizer steps in total.
    #[arg(long, default_value_t = 20_000)]
    steps: u64,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate (Adam, linear warm-up).
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    #[arg(long, default_value_t = 1000)]
    warmup_steps: u64,
    /// EMA decay of the weights (the paper's 0.9999 suits runs of 100k+ steps).
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// Dropout in the U-Net's residual blocks.
    #[arg(long, default_value_t = 0.1)]
    dropout: f64,
    /// Gradient clipping by global norm (0 disables).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run directory: checkpoints, loss.csv, loss.png.
    #[arg(long, default_value = "runs/mnist")]
    out: PathBuf,
    /// Continue the newest checkpoint of this run directory (--steps may extend it).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Backend: flex, ndarray, wgpu or cuda (those compiled in).
    #[arg(long)]
    device: Option<String>,
    /// Folder holding the dataset (default: $DDPM_DATA_DIR, then ./data; downloaded if absent).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    checkpoint_every: u64,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// Write a loss line to loss.csv every this many steps.
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// Stop (with a checkpoint) after this many minutes.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Data-parallel training over these devices with burn-train's Learner and its DDP
    /// strategy, e.g. `cuda:0,cuda:1` (needs a backend with collective operations: cuda).
    /// --batch-size is then the global batch, split evenly between the devices.
    #[arg(long, value_delimiter = ',')]
    devices: Option<Vec<String>>,
    /// Passes over the training set (with --devices; the single-device trainer counts --steps).
    #[arg(long, default_value_t = 1)]
    epochs: usize,
}

#[derive(Args, Clone)]
struct SampleArgs {
    /// A run directory (its newest checkpoint) or a checkpoint folder.
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, default_value_t = 64)]
    num: usize,
    /// ddpm | ddim | dpm++2m | dpm++3m | dpm++2m-sde | euler | heun.
    #[arg(long, default_value = "ddim", value_parser = |s: &str| s.parse::<SamplerKind>())]
    sampler: SamplerKind,
    /// Denoising steps (DDPM respaced when below T; Heun calls the model 2 steps - 1 times).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Which timesteps the sampler visits (default: the sampler's own).
    #[arg(long, value_enum)]
    spacing: Option<SpacingArg>,
    /// DDIM eta (0: deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (default: <run>/samples-<sampler>-<steps>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    device: Option<String>,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    no_ema: bool,
    /// Frames in the denoising GIF.
    #[arg(long, default_value_t = 25)]
    gif_frames: usize,
    /// Samples drawn per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

#[derive(Args, Clone)]
struct QuickArgs {
    /// Minutes of training.
    #[arg(long, default_value_t = 14.0)]
    minutes: f64,
    #[arg(long, default_value = "runs/quick")]
    out: PathBuf,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    device: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Everything that defines the model of a run; saved with each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ModelMeta {
    model: ModelKind,
    dataset: Dataset,
    unet: Option<UNetConfig>,
    mlp: Option<MlpPredictorConfig>,
    diffusion: DiffusionConfig,
}

impl ModelMeta {
    fn new(model: ModelKind, dataset: Dataset, dropout: f64) -> Self {
        let (unet, mlp) = match model {
            ModelKind::Unet => (Some(UNetConfig::ddpm_mnist().with_dropout(dropout)), None),
            ModelKind::UnetSmall => (Some(small_unet().with_dropout(dropout)), None),
            ModelKind::Mlp => (
                None,
                Some(
                    MlpPredictorConfig::new(784)
                        .with_hidden(1024)
                        .with_depth(4)
                        .with_time_dim(64),
                ),
            ),
        };
        Self {
            model,
            dataset,
            unet,
            mlp,
            diffusion: DiffusionConfig::default(),
        }
    }
    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("serialisable")
    }

    /// The U-Net of checkpoint `dir` (EMA weights when `ema`), ready for inference.
    fn load_unet(&self, dir: &Path, device: &Device, ema: bool) -> Result<UNet, AnyError> {
        let cfg = self
            .unet
            .as_ref()
            .ok_or("the checkpoint describes no U-Net")?;
        Ok(ddpm::train::load_weights(dir, cfg.init(device)?, use_ema(dir, ema)?)?.valid())
    }

    /// The MLP of checkpoint `dir` (EMA weights when `ema`), ready for inference.
    fn load_mlp(&self, dir: &Path, device: &Device, ema: bool) -> Result<MlpPredictor, AnyError> {
        let cfg = self.mlp.as_ref().ok_or("the checkpoint describes no MLP")?;
        Ok(ddpm::train::load_weights(dir, cfg.init(device)?, use_ema(dir, ema)?)?.valid())
    }
}

/// The model description beside the final weights of a `train --devices` run.
const PARALLEL_META: &str = "model.json";

/// Whether to load the EMA weights: runs of burn-train's Learner keep none.
fn use_ema(dir: &Path, ema: bool) -> Result<bool, AnyError> {
    if ema && dir.join(PARALLEL_META).is_file() && !dir.join("ema.bpk").is_file() {
        return Err(format!(
            "{} comes from `train --devices` (burn-train's Learner), which keeps no EMA \
             weights: pass --no-ema",
            dir.display()
        )
        .into());
    }
    Ok(ema)
}

/// `train --devices`: burn-train's Learner with its DDP strategy over the devices.
fn train_parallel(a: &TrainArgs, names: &[String]) -> Result<PathBuf, AnyError> {
    use ddpm::parallel::{
        DiffusionDataset, DiffusionModel, ParallelConfig, ParallelStrategy,
        latest_epoch_checkpoint, launch,
    };
    // --resume RUN continues burn-train's newest epoch checkpoint of RUN, with its model.
    let run_dir = a.resume.clone().unwrap_or_else(|| a.out.clone());
    let resume_epoch = match &a.resume {
        Some(dir) => Some(latest_epoch_checkpoint(dir).ok_or_else(|| {
            format!(
                "{} holds no burn-train checkpoint (checkpoint/model-N.bpk) to resume",
                dir.display()
            )
        })?),
        None => None,
    };
    let meta_path = run_dir.join(PARALLEL_META);
    let devices = names
        .iter()
        .map(|n| parse_device(n))
        .collect::<Result<Vec<_>, _>>()?;
    let meta = match resume_epoch {
        Some(_) => serde_json::from_slice::<ModelMeta>(&std::fs::read(&meta_path)?)
            .map_err(|e| format!("{}: damaged ({e})", meta_path.display()))?,
        None => ModelMeta::new(a.model, a.dataset.into(), a.dropout),
    };
    std::fs::create_dir_all(&run_dir)?;
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta.json())?)?;
    let load = |split| -> Result<Vec<f32>, AnyError> {
        let set = ImageSet::load(meta.dataset, split, a.data_dir.as_deref())?;
        let all: Vec<usize> = (0..set.count).collect();
        Ok(set.scaled(&all))
    };
    let train = DiffusionDataset::new(load(Split::Train)?, 784)?;
    let valid = DiffusionDataset::new(load(Split::Test)?, 784)?;
    let config = ParallelConfig {
        global_batch: a.batch_size,
        epochs: a.epochs,
        lr: a.lr,
        grad_clip: a.grad_clip,
        seed: a.seed,
        valid_examples: 1024,
        strategy: ParallelStrategy::Auto,
        resume_epoch,
    };
    println!(
        "data-parallel training on {} device(s) {:?}: global batch {}, {} epoch(s)",
        devices.len(),
        names,
        a.batch_size,
        a.epochs
    );
    let diffusion = GaussianDiffusion::new(meta.diffusion.clone())?;
    let main = devices[0].clone().autodiff();
    let final_dir = run_dir.join("final");
    let tmp = run_dir.join(".final.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    match meta.model {
        ModelKind::Unet | ModelKind::UnetSmall => {
            let net = meta.unet.as_ref().ok_or("no U-Net config")?.init(&main)?;
            let model = DiffusionModel::new(net, diffusion);
            let out = launch(
                model,
                train,
                valid,
                [1, 1, 28, 28],
                &devices,
                &config,
                &run_dir,
            )?;
            out.model.predictor.save_file(tmp.join("model.bpk"))?;
        }
        ModelKind::Mlp => {
            let net = meta.mlp.as_ref().ok_or("no MLP config")?.init(&main)?;
            let model = DiffusionModel::new(net, diffusion);
            let out = launch(model, train, valid, [1, 784], &devices, &config, &run_dir)?;
            out.model.predictor.save_file(tmp.join("model.bpk"))?;
        }
    }
    std::fs::write(
        tmp.join(PARALLEL_META),
        serde_json::to_vec_pretty(&meta.json())?,
    )?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir)?;
    println!(
        "final weights: {} (sample with `sample --checkpoint {} --no-ema`)",
        final_dir.display(),
        run_dir.display()
    );
    Ok(run_dir)
}

/// `flex`, `cuda:1`, `wgpu:0` ...: a backend and a device index.
fn parse_device(name: &str) -> Result<Device, AnyError> {
    let (backend, index) = match name.split_once(':') {
        Some((b, i)) => (
            b.parse::<Backend>()?,
            i.parse::<usize>()
                .map_err(|_| format!("'{name}': the device index must be a number"))?,
        ),
        None => (name.parse::<Backend>()?, 0),
    };
    Ok(backend.device_at(index)?)
}

/// `[n, 784]` vectors of the MLP as `[n, 1, 28, 28]` images.
fn flat_to_images(x: Tensor<2>) -> Tensor<4> {
    let n = x.dims()[0];
    x.reshape([n, 1, 28, 28])
}

/// `[n, 1, 28, 28]` images as the MLP's `[n, 784]` vectors.
fn images_to_flat(x: Tensor<4>) -> Tensor<2> {
    let n = x.dims()[0];
    x.reshape([n, 784])
}

/// The quick preset's U-Net: the ddpm_mnist layout at ch 16 (about 4x cheaper).
fn small_unet() -> UNetConfig {
    UNetConfig {
        ch: 16,
        ..UNetConfig::ddpm_mnist()
    }
}

fn pick_device(name: Option<&str>) -> Result<Device, AnyError> {
    let backend = match name {
        Some(n) => n.parse::<Backend>()?,
        None => {
            Backend::default_compiled().ok_or("no backend compiled in: enable the flex feature")?
        }
    };
    Ok(backend.device()?)
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Train(a)) => train(a).map(|_| ()),
        Some(Command::Sample(a)) => sample(a).map(|_| ()),
        Some(Command::Quick(a)) => quick(a),
        Some(Command::Eval(EvalCommand::Nll(a))) => eval_nll(a),
        Some(Command::Eval(EvalCommand::TrainClassifier(a))) => train_classifier(&a).map(|_| ()),
        Some(Command::Eval(EvalCommand::Quality(a))) => eval_quality(a),
        None => quick(QuickArgs {
            minutes: 14.0,
            out: "runs/quick".into(),
            data_dir: None,
            device: None,
            seed: 0,
        }),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        let mut source = e.source();
        while let Some(s) = source {
            eprintln!("  caused by: {s}");
            source = s.source();
        }
        std::process::exit(1);
    }
}

fn quick(a: QuickArgs) -> Result<(), AnyError> {
    println!(
        "Quick preset: {} minutes of training of a small U-Net on MNIST, then 64 DDIM samples.\n\
         Results go to {}. Interrupt with Ctrl-C at any time: a checkpoint is saved.",
        a.minutes,
        a.out.display()
    );
    let resume = ddpm::train::latest_checkpoint(&a.out)
        .is_ok()
        .then(|| a.out.clone());
    let run = train(TrainArgs {
        model: ModelKind::UnetSmall,
        dataset: DatasetArg::Mnist,
        steps: 100_000,
        batch_size: 32,
        lr: 1e-3,
        warmup_steps: 100,
        ema_decay: 0.995,
        dropout: 0.0,
        grad_clip: 1.0,
        seed: a.seed,
        out: a.out.clone(),
        resume,
        device: a.device.clone(),
        data_dir: a.data_dir.clone(),
        checkpoint_every: 500,
        keep: 2,
        log_every: 10,
        max_minutes: Some(a.minutes),
        devices: None,
        epochs: 1,
    })?;
    let out = sample(SampleArgs {
        checkpoint: run,
        num: 64,
        sampler: SamplerKind::Ddim,
        steps: 50,
        spacing: None,
        eta: 0.0,
        seed: a.seed,
        out: Some(a.out.join("samples")),
        device: a.device,
        no_ema: false,
        gif_frames: 25,
        batch: 64,
    })?;
    println!(
        "Done. Look at {}/grid.png and {}/denoising.gif",
        out.display(),
        out.display()
    );
    Ok(())
}

/// Trains and returns the run directory.
fn train(a: TrainArgs) -> Result<PathBuf, AnyError> {
    if let Some(devices) = &a.devices {
        return train_parallel(&a, devices);
    }
    let device = pick_device(a.device.as_deref())?;
    let dataset: Dataset = a.dataset.into();
    let run_dir = a.resume.clone().unwrap_or_else(|| a.out.clone());
    // A resumed run keeps the model it was started with.
    let meta = match &a.resume {
        Some(dir) => read_meta(&ddpm::train::latest_checkpoint(dir)?)?,
        None => ModelMeta::new(a.model, dataset, a.dropout),
    };
    let data = ImageSet::load(meta.dataset, Split::Train, a.data_dir.as_deref())?;
    println!(
        "{}: {} training images of {}x{}",
        meta.dataset, data.count, data.rows, data.cols
    );
    let config = TrainConfig {
        steps: a.steps,
        batch_size: a.batch_size,
        lr: a.lr,
        warmup_steps: a.warmup_steps,
        grad_clip_norm: (a.grad_clip > 0.0).then_some(a.grad_clip),
        adam_epsilon: 1e-8,
        ema: EmaConfig {
            decay: a.ema_decay,
            warmup: EmaWarmup::NumUpdates,
        },
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        keep_checkpoints: a.keep.max(1),
    };
    let ad = device.autodiff();
    let diffusion = GaussianDiffusion::new(meta.diffusion.clone())?;
    match meta.model {
        ModelKind::Unet | ModelKind::UnetSmall => {
            let template = meta
                .unet
                .as_ref()
                .ok_or("the checkpoint describes no U-Net")?
                .init(&ad)?;
            run_training(&a, &run_dir, &meta, config, diffusion, template, &data)
        }
        ModelKind::Mlp => {
            let template = meta
                .mlp
                .as_ref()
                .ok_or("the checkpoint describes no MLP")?
                .init(&ad)?;
            run_training(
                &a,
                &run_dir,
                &meta,
                config,
                diffusion,
                template,
                &Flattened(&data),
            )
        }
    }?;
    Ok(run_dir)
}

/// The training loop, the same for every predictor.
fn run_training<M, const D: usize, S>(
    a: &TrainArgs,
    run_dir: &Path,
    meta: &ModelMeta,
    config: TrainConfig,
    diffusion: GaussianDiffusion,
    template: M,
    data: &S,
) -> Result<(), AnyError>
where
    M: Module + NoisePredictor<D>,
    S: BatchSource<D>,
{
    std::fs::create_dir_all(run_dir)?;
    let meta_json = meta.json();
    let mut trainer = if a.resume.is_some() {
        let t = Trainer::resume(run_dir, diffusion, template, &meta_json, Some(a.steps))?;
        println!("resuming {} at step {}", run_dir.display(), t.state().step);
        t
    } else {
        if ddpm::train::latest_checkpoint(run_dir).is_ok() {
            return Err(format!(
                "{} already holds checkpoints: pass --resume {} to continue, or choose another --out",
                run_dir.display(),
                run_dir.display()
            )
            .into());
        }
        Trainer::new(diffusion, template, config, data.len())?
    };
    println!(
        "model: {:?}, {} parameters",
        meta.model,
        trainer.model().num_params()
    );
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while saving kills the process as usual.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    let csv_path = run_dir.join("loss.csv");
    let new_csv = !csv_path.exists();
    let mut csv = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&csv_path)?;
    if new_csv {
        writeln!(csv, "step,loss,loss_smoothed,lr,grad_norm,images_per_s")?;
    }
    let total = trainer.config().steps;
    let bar = ProgressBar::new(total).with_position(trainer.state().step);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} eta {eta}",
    )?);
    let started = Instant::now();
    let limit = a.max_minutes.map(|m| Duration::from_secs_f64(m * 60.0));
    let mut smoothed: Option<f64> = None;
    let mut window = Instant::now();
    let mut window_images = 0usize;
    let mut since_ckpt = 0u64;
    let batch = trainer.config().batch_size;
    let every = trainer.config().checkpoint_every;
    let mut reason = "finished";
    while !trainer.finished() {
        if stop.load(Ordering::SeqCst) {
            reason = "interrupted";
            break;
        }
        if limit.is_some_and(|l| started.elapsed() >= l) {
            reason = "time limit reached";
            break;
        }
        let report = match trainer.step(data) {
            Ok(r) => r,
            Err(e @ TrainError::NonFiniteLoss { .. }) => {
                bar.abandon();
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        window_images += batch;
        since_ckpt += 1;
        let s = smoothed.map_or(report.loss, |v| 0.98 * v + 0.02 * report.loss);
        smoothed = Some(s);
        let ips = window_images as f64 / window.elapsed().as_secs_f64().max(1e-9);
        if report.step.is_multiple_of(a.log_every.max(1)) {
            writeln!(
                csv,
                "{},{:.6},{:.6},{:.3e},{:.4},{:.1}",
                report.step, report.loss, s, report.lr, report.grad_norm, ips
            )?;
            window = Instant::now();
            window_images = 0;
        }
        bar.set_position(report.step);
        bar.set_message(format!("loss {s:.4} | {ips:.0} img/s"));
        if every > 0 && report.step.is_multiple_of(every) {
            trainer.save_checkpoint(run_dir, &meta_json)?;
            since_ckpt = 0;
        }
    }
    bar.finish_with_message(format!("{reason} at step {}", trainer.state().step));
    if since_ckpt > 0 || ddpm::train::latest_checkpoint(run_dir).is_err() {
        let path = trainer.save_checkpoint(run_dir, &meta_json)?;
        println!("checkpoint: {}", path.display());
    }
    csv.flush()?;
    let points = read_loss_csv(&csv_path);
    ddpm::images::plot_loss(&points, &run_dir.join("loss.png"))?;
    println!(
        "{reason}: step {} in {:.1} min, smoothed loss {:.4}; loss curve {}",
        trainer.state().step,
        started.elapsed().as_secs_f64() / 60.0,
        smoothed.unwrap_or(f64::NAN),
        run_dir.join("loss.png").display()
    );
    if reason == "interrupted" {
        std::process::exit(130);
    }
    Ok(())
}

fn read_loss_csv(path: &Path) -> Vec<(u64, f64)> {
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

/// Samples and returns the output folder.
fn sample(a: SampleArgs) -> Result<PathBuf, AnyError> {
    let device = pick_device(a.device.as_deref())?;
    let dir = checkpoint_dir(&a.checkpoint)?;
    let meta = read_meta(&dir)?;
    // <run>/checkpoints/step-N, or <run>/final for `train --devices`.
    let levels = if dir.join(PARALLEL_META).is_file() {
        1
    } else {
        2
    };
    let run_dir = dir
        .ancestors()
        .nth(levels)
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| run_dir.join(format!("samples-{}-{}", a.sampler, a.steps)));
    std::fs::create_dir_all(out.join("samples"))?;
    let diffusion = GaussianDiffusion::new(meta.diffusion.clone())?;
    println!(
        "sampling {} images from {} ({}, {} steps)",
        a.num,
        dir.display(),
        a.sampler,
        a.steps
    );
    let started = Instant::now();
    match meta.model {
        ModelKind::Unet | ModelKind::UnetSmall => {
            let net = meta.load_unet(&dir, &device, !a.no_ema)?;
            draw(
                &a,
                &diffusion,
                &net,
                [1, 28, 28],
                &device,
                &out,
                |x: Tensor<4>| x,
            )?;
        }
        ModelKind::Mlp => {
            let net = meta.load_mlp(&dir, &device, !a.no_ema)?;
            draw(&a, &diffusion, &net, [784], &device, &out, flat_to_images)?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} samples in {secs:.1} s ({:.2} images/s): {}/grid.png, {}/samples/, {}/denoising.gif",
        a.num,
        a.num as f64 / secs,
        out.display(),
        out.display(),
        out.display()
    );
    Ok(out)
}

/// The sampler of `sample`'s flags: the kind's defaults, `--steps` (all T for DDPM at T),
/// `--eta` for DDIM, `--spacing` if given, and x_0 clipped to the data range [-1, 1].
fn sampler_config(a: &SampleArgs, t_max: usize) -> SamplerConfig {
    let mut cfg = a.sampler.with_steps(a.steps.min(t_max));
    match &mut cfg {
        SamplerConfig::Ddim { eta, .. } => *eta = a.eta,
        SamplerConfig::Ddpm { steps, .. } if a.steps >= t_max => *steps = None,
        _ => {}
    }
    if let Some(s) = a.spacing {
        cfg = cfg.with_spacing(s.into());
    }
    cfg.with_clip(Clip::unit())
}

/// Runs the chosen sampler batch by batch and writes the pictures.
fn draw<P, const D: usize, const R: usize>(
    a: &SampleArgs,
    diffusion: &GaussianDiffusion,
    model: &P,
    item: [usize; R],
    device: &Device,
    out: &Path,
    to_images: impl Fn(Tensor<D>) -> Tensor<4>,
) -> Result<(), AnyError>
where
    P: NoisePredictor<D>,
{
    assert_eq!(R + 1, D, "item shape has one dimension less than the data");
    let sampler = sampler_config(a, diffusion.num_timesteps());
    let total_steps = sampler.model_calls(diffusion)?;
    let every = (total_steps / a.gif_frames.max(1)).max(1);
    let bar = ProgressBar::new((a.num.div_ceil(a.batch.max(1)) * total_steps) as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps eta {eta}",
    )?);
    let mut grid_parts = Vec::new();
    let mut gif_frames: Vec<Tensor<4>> = Vec::new();
    let mut written = 0;
    let mut b = 0;
    while written < a.num {
        let n = a.batch.max(1).min(a.num - written);
        let mut shape = [0usize; D];
        shape[0] = n;
        shape[1..].copy_from_slice(&item);
        let done_before = bar.position();
        let mut progress = |done: usize, _total: usize| bar.set_position(done_before + done as u64);
        let mut options = SampleOptions::new(a.seed.wrapping_add(b)).with_progress(&mut progress);
        if b == 0 {
            options = options.with_trajectory(every);
        }
        let SampleOutput {
            samples,
            trajectory,
        } = sampler.sample(diffusion, model, shape, device, options)?;
        if b == 0 {
            gif_frames = trajectory.into_iter().map(|f| to_images(f.x_t)).collect();
        }
        let images = to_images(samples);
        ddpm::images::save_each(images.clone(), &out.join("samples"), written)?;
        grid_parts.push(images);
        written += n;
        b += 1;
    }
    bar.finish();
    let all = Tensor::cat(grid_parts, 0);
    let cols = (a.num as f64).sqrt().ceil() as usize;
    ddpm::images::save_grid(all, &out.join("grid.png"), cols, 2)?;
    if !gif_frames.is_empty() {
        let gcols = (gif_frames[0].dims()[0] as f64).sqrt().ceil() as usize;
        ddpm::images::save_gif(&gif_frames, &out.join("denoising.gif"), gcols, 2, 120)?;
    }
    Ok(())
}

fn checkpoint_dir(path: &Path) -> Result<PathBuf, AnyError> {
    if path.join(PARALLEL_META).is_file() && path.join("model.bpk").is_file() {
        return Ok(path.to_path_buf());
    }
    if path.join("final").join(PARALLEL_META).is_file() {
        return Ok(path.join("final"));
    }
    if path.join("state.json").is_file() {
        Ok(path.to_path_buf())
    } else {
        Ok(ddpm::train::latest_checkpoint(path)?)
    }
}

fn read_meta(dir: &Path) -> Result<ModelMeta, AnyError> {
    let parallel = dir.join(PARALLEL_META);
    if parallel.is_file() {
        let bytes = std::fs::read(&parallel)?;
        return Ok(serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: damaged ({e})", parallel.display()))?);
    }
    Ok(
        serde_json::from_value(ddpm::train::checkpoint_model_meta(dir)?)
            .map_err(|e| format!("{}: not a checkpoint of this example ({e})", dir.display()))?,
    )
}

/// NLL in bits/dim through the variational bound (all T terms, the decoder and the prior).
fn eval_nll(a: NllArgs) -> Result<(), AnyError> {
    let device = pick_device(a.device.as_deref())?;
    let dir = checkpoint_dir(&a.checkpoint)?;
    let meta = read_meta(&dir)?;
    let test = ImageSet::load(meta.dataset, Split::Test, a.data_dir.as_deref())?;
    let num = a.num.min(test.count).max(1);
    let diffusion = GaussianDiffusion::new(meta.diffusion.clone())?;
    let variance = match a.variance {
        VarianceArg::Large => VarianceType::FixedLarge,
        VarianceArg::Small => VarianceType::FixedSmall,
    };
    let batches: Vec<Vec<usize>> = (0..num)
        .collect::<Vec<_>>()
        .chunks(a.batch.max(1))
        .map(|c| c.to_vec())
        .collect();
    let bar = ProgressBar::new((batches.len() * diffusion.num_timesteps()) as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} model calls eta {eta}",
    )?);
    let started = Instant::now();
    let [total, prior, decoder, kl] = match meta.model {
        ModelKind::Unet | ModelKind::UnetSmall => {
            let net = meta.load_unet(&dir, &device, !a.no_ema)?;
            nll_batches(
                &a,
                &diffusion,
                &net,
                &test,
                &batches,
                variance,
                &device,
                &bar,
                |x: Tensor<4>| x,
            )?
        }
        ModelKind::Mlp => {
            let net = meta.load_mlp(&dir, &device, !a.no_ema)?;
            nll_batches(
                &a,
                &diffusion,
                &net,
                &test,
                &batches,
                variance,
                &device,
                &bar,
                images_to_flat,
            )?
        }
    };
    bar.finish();
    println!(
        "checkpoint {} ({:?}), {num} test images, variance {:?}",
        dir.display(),
        meta.model,
        a.variance
    );
    println!("NLL bound: {total:.4} bits/dim");
    println!("  prior L_T        {prior:.6}");
    println!("  decoder L_0      {decoder:.4}");
    println!("  sum of KL terms  {kl:.4}");
    println!("({:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// Averages the bound's terms over `batches` of test images: `[total, prior, decoder, kl]`.
#[allow(clippy::too_many_arguments)]
fn nll_batches<P: NoisePredictor<D>, const D: usize>(
    a: &NllArgs,
    diffusion: &GaussianDiffusion,
    model: &P,
    test: &ImageSet,
    batches: &[Vec<usize>],
    variance: VarianceType,
    device: &Device,
    bar: &ProgressBar,
    to_data: impl Fn(Tensor<4>) -> Tensor<D>,
) -> Result<[f64; 4], AnyError> {
    let num: usize = batches.iter().map(Vec::len).sum();
    let mut rng = ddpm::core::NoiseRng::new(a.seed);
    let mut acc = [0.0; 4];
    for idx in batches {
        let x0 = to_data(test.batch(idx, device));
        let done_before = bar.position();
        let mut progress = |done: usize, _: usize| bar.set_position(done_before + done as u64);
        let r =
            diffusion.calc_bpd_loop(model, x0, variance, Clip::unit(), &mut rng, &mut progress)?;
        let w = idx.len() as f64 / num as f64;
        for (slot, v) in acc.iter_mut().zip([r.total, r.prior, r.decoder, r.kl_sum]) {
            *slot += w * v;
        }
    }
    Ok(acc)
}

/// Where the classifier of `a` is cached: beside the dataset when that folder is writable,
/// else under ./data.
fn classifier_path(a: &ClassifierArgs) -> Result<PathBuf, AnyError> {
    let dataset: Dataset = a.dataset.into();
    let files = ddpm::data::locate_or_download(dataset, a.data_dir.as_deref())?;
    let name = format!("classifier-seed{}-epochs{}.bpk", a.seed, a.epochs);
    let beside = files[0].parent().unwrap_or(Path::new(".")).join(&name);
    let writable = beside
        .parent()
        .and_then(|d| std::fs::metadata(d).ok())
        .is_some_and(|m| !m.permissions().readonly());
    Ok(if writable || beside.exists() {
        beside
    } else {
        PathBuf::from("data").join(dataset.dir_name()).join(name)
    })
}

/// Loads the cached classifier, training it first when absent.
fn train_classifier(a: &ClassifierArgs) -> Result<ddpm::eval::Classifier, AnyError> {
    let device = pick_device(a.device.as_deref())?;
    let path = classifier_path(a)?;
    let template = ddpm::eval::ClassifierConfig::new().init(&device);
    if path.is_file() {
        println!("classifier: {} (cached)", path.display());
        return Ok(template
            .try_load_file(&path)
            .map_err(|e| format!("{}: {e}; delete it to retrain", path.display()))?);
    }
    let dataset: Dataset = a.dataset.into();
    let train = ImageSet::load(dataset, Split::Train, a.data_dir.as_deref())?;
    let test = ImageSet::load(dataset, Split::Test, a.data_dir.as_deref())?;
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} classifier steps eta {eta}",
    )?);
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let (model, acc) =
        ddpm::eval::train_classifier(&train, &test, a.epochs, a.seed, &device, &mut progress);
    bar.finish();
    println!("classifier test accuracy: {:.2}%", 100.0 * acc);
    if acc < 0.99 {
        eprintln!("warning: accuracy below 99%: train longer with --epochs");
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("bpk.tmp");
    model.clone().save_file(&tmp)?;
    std::fs::rename(&tmp, &path)?;
    println!("saved {}", path.display());
    Ok(model)
}

fn load_pngs(dir: &Path, device: &Device) -> Result<Tensor<4>, AnyError> {
    let dir = if dir.join("samples").is_dir() {
        dir.join("samples")
    } else {
        dir.to_path_buf()
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no PNG files in {}", dir.display()).into());
    }
    let mut values = Vec::with_capacity(files.len() * 784);
    for f in &files {
        let img = image::open(f)
            .map_err(|e| format!("{}: {e}", f.display()))?
            .to_luma8();
        if img.dimensions() != (28, 28) {
            return Err(
                format!("{} is {:?}, expected 28x28", f.display(), img.dimensions()).into(),
            );
        }
        values.extend(img.pixels().map(|p| p.0[0] as f32 / 127.5 - 1.0));
    }
    Ok(Tensor::from_data(
        burn::tensor::TensorData::new(values, [files.len(), 1, 28, 28]),
        device,
    ))
}

/// Classifier FID of the samples against the test set, with the train-vs-test floor.
fn eval_quality(a: QualityArgs) -> Result<(), AnyError> {
    let device = pick_device(a.classifier.device.as_deref())?;
    let classifier = train_classifier(&a.classifier)?;
    let samples = load_pngs(&a.samples, &device)?;
    let n = samples.dims()[0];
    let dataset: Dataset = a.classifier.dataset.into();
    let test = ImageSet::load(dataset, Split::Test, a.classifier.data_dir.as_deref())?;
    let train = ImageSet::load(dataset, Split::Train, a.classifier.data_dir.as_deref())?;
    let all_test: Vec<usize> = (0..test.count).collect();
    let train_idx: Vec<usize> = (0..n.min(train.count)).collect();
    let d = ddpm::eval::ClassifierConfig::new().features;
    let (f_test, _) = ddpm::eval::features_and_probs(&classifier, test.batch(&all_test, &device));
    let (f_train, _) =
        ddpm::eval::features_and_probs(&classifier, train.batch(&train_idx, &device));
    let (f_s, p_s) = ddpm::eval::features_and_probs(&classifier, samples);
    let fid = ddpm::eval::frechet_distance_of(&f_s, &f_test, d);
    let floor = ddpm::eval::frechet_distance_of(&f_train, &f_test, d);
    let (conf, hist, kl) = ddpm::eval::class_stats(&p_s, 10);
    println!("{n} samples from {}", a.samples.display());
    println!("classifier FID (samples vs test set):     {fid:.3}");
    println!("classifier FID floor ({n} train vs test):  {floor:.3}");
    println!("mean max-softmax confidence:              {conf:.4}");
    println!("class histogram: {hist:?}");
    println!("KL(histogram || uniform):                 {kl:.4} nats");
    println!(
        "(comparable only with numbers computed by this command, same classifier and sample count)"
    );
    Ok(())
}
