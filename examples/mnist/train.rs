//! `train`: a recipe from the flags (the library's defaults), the data, the run.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Module;
use clap::Args;
use ddpm::backend::DeviceSpec;
use ddpm::checkpoint;
use ddpm::core::{BetaSchedule, EmaWarmup, GaussianDiffusion, LossWeighting, Objective};
use ddpm::data::{DataInfo, DataSource, Dataset, Split};
use ddpm::models::ModelPreset;
use ddpm::recipe::Recipe;
use ddpm::train::{FitOptions, StopReason, Trainer};

use crate::{AnyError, Global, data, minutes, report_skipped};

/// The flags' defaults: the library's recipe (one set of defaults, `ddpm::recipe`).
fn base() -> Recipe {
    Recipe::default()
}

#[derive(Args, Clone)]
pub struct TrainArgs {
    /// The noise predictor: unet, unet-small or mlp (sized from the data).
    #[arg(long, default_value_t = base().model)]
    model: ModelPreset,
    /// Optimizer steps in total (default: 10,000, the recipe's; a resumed run keeps its own).
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long, default_value_t = base().train.batch_size)]
    batch_size: usize,
    /// Peak learning rate (Adam, linear warm-up).
    #[arg(long, default_value_t = base().train.lr)]
    lr: f64,
    #[arg(long, default_value_t = base().train.warmup_steps)]
    warmup_steps: u64,
    /// EMA decay of the weights (the paper's 0.9999 suits runs of 100k+ steps; 0.999 or 0.995
    /// for a few thousand).
    #[arg(long, default_value_t = base().train.ema.decay)]
    ema_decay: f64,
    /// Ramp the EMA decay up as min(decay, (1 + n) / (10 + n)) (TensorFlow's num_updates;
    /// the quick preset does) instead of the paper's constant decay.
    #[arg(long)]
    ema_warmup: bool,
    /// Dropout in the U-Net's residual blocks.
    #[arg(long, default_value_t = base().dropout)]
    dropout: f64,
    /// Gradient clipping by global norm (0 disables).
    #[arg(long, default_value_t = base().train.grad_clip_norm.unwrap_or(0.0))]
    grad_clip: f64,
    /// What the network predicts: eps (the paper's), x0 or v.
    #[arg(long)]
    objective: Option<Objective>,
    /// Beta schedule over T = 1000 steps: linear (the paper's) or cosine.
    #[arg(long)]
    schedule: Option<BetaSchedule>,
    /// Min-SNR-gamma loss weighting with this gamma (Hang et al. 2023 use 5); off by default.
    #[arg(long)]
    min_snr_gamma: Option<f64>,
    #[arg(long, default_value_t = base().train.seed)]
    seed: u64,
    /// Run directory: checkpoints, loss.csv, loss.png, the data cache.
    #[arg(long, default_value = "runs/mnist")]
    out: PathBuf,
    /// Continue the newest intact checkpoint of this run directory (--steps may extend it).
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, default_value_t = base().train.checkpoint_every)]
    checkpoint_every: u64,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = base().train.keep_checkpoints)]
    keep: usize,
    /// Write a loss line to loss.csv every this many steps.
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// Stop (with a checkpoint) after this many minutes.
    #[arg(long, value_parser = minutes)]
    max_minutes: Option<f64>,
    /// Class-conditional training on the data's labels (classifier-free guidance).
    #[arg(long)]
    conditional: bool,
    /// With --conditional: probability of replacing a label by the null class.
    #[arg(long, default_value_t = base().train.p_uncond)]
    p_uncond: f64,
    /// Mirror training images left-right at random (the paper's CIFAR-10 augmentation).
    #[arg(long)]
    hflip: bool,
    #[command(flatten)]
    data: data::DataArgs,
    /// Data-parallel over these devices (`cuda:0,cuda:1`); --batch-size is the global batch.
    #[arg(long, value_delimiter = ',')]
    devices: Vec<DeviceSpec>,
}

impl TrainArgs {
    /// The recipe of these flags: the library's defaults, each flag given overriding its field.
    fn recipe(&self) -> Recipe {
        let mut r = base();
        r.model = self.model;
        r.dropout = self.dropout;
        r.conditional = self.conditional;
        if let Some(o) = &self.objective {
            r.diffusion.objective = *o;
        }
        if let Some(s) = &self.schedule {
            r.diffusion.schedule.beta_schedule = s.clone();
        }
        if let Some(gamma) = self.min_snr_gamma {
            r.diffusion.loss_weighting = LossWeighting::MinSnr { gamma };
        }
        let t = &mut r.train;
        t.steps = self.steps.unwrap_or(t.steps);
        t.batch_size = self.batch_size;
        t.lr = self.lr;
        t.warmup_steps = self.warmup_steps;
        t.grad_clip_norm = (self.grad_clip > 0.0).then_some(self.grad_clip);
        t.ema.decay = self.ema_decay;
        if self.ema_warmup {
            t.ema.warmup = EmaWarmup::NumUpdates;
        }
        t.seed = self.seed;
        t.checkpoint_every = self.checkpoint_every;
        t.keep_checkpoints = self.keep.max(1);
        t.p_uncond = self.p_uncond;
        t.hflip = self.hflip;
        r
    }
}

/// A training run: its recipe, data, directory and limits.
pub struct Run {
    pub recipe: Recipe,
    /// The data of a new run (a resumed run keeps its own).
    pub source: DataSource,
    /// Where a new run goes.
    pub out: PathBuf,
    /// A run directory or checkpoint to continue.
    pub resume: Option<PathBuf>,
    /// The total steps of a resumed run, when given.
    pub steps: Option<u64>,
    pub max_minutes: Option<f64>,
    pub log_every: u64,
    pub devices: Vec<DeviceSpec>,
}

/// Trains and returns the run directory.
pub fn train(a: TrainArgs, g: &Global) -> Result<PathBuf, AnyError> {
    let run = Run {
        recipe: a.recipe(),
        source: a.data.source()?,
        out: a.out.clone(),
        resume: a.resume.clone(),
        steps: a.steps,
        max_minutes: a.max_minutes,
        log_every: a.log_every,
        devices: a.devices.clone(),
    };
    run_training(run, g)
}

/// Runs (or resumes) `run` and returns its run directory.
pub fn run_training(a: Run, g: &Global) -> Result<PathBuf, AnyError> {
    let device = DeviceSpec::open_or_default(g.device)?;
    // `--resume RUN/checkpoints/step-N` continues in RUN, where a later `--resume RUN` looks.
    let run_dir = match &a.resume {
        Some(dir) if checkpoint::is_checkpoint_dir(dir) => checkpoint::run_dir_of(dir),
        Some(dir) => dir.clone(),
        None => a.out.clone(),
    };
    // A resumed run keeps the data (and model) it was started with.
    let source = match &a.resume {
        Some(dir) => {
            let meta = checkpoint::resolve(dir)?.checkpoint.meta;
            match (meta.data, meta.dataset) {
                (Some(info), _) => info.source,
                (None, dataset) => DataSource::Idx {
                    dataset: dataset.unwrap_or(Dataset::Mnist),
                },
            }
        }
        None => a.source.clone(),
    };
    let cache = run_dir.join("data-cache.bin");
    let loaded = source.load(Split::Train, g.data_dir.as_deref(), Some(&cache))?;
    if let Some(report) = &loaded.report {
        println!("{source}: {report}");
    }
    let data = loaded.set;
    let info = DataInfo::of(source.clone(), &data);
    let mut trainer = match &a.resume {
        Some(dir) => {
            let t = Trainer::resume_images(dir, &device, a.steps)?;
            if let Some(r) = t.resumed_from() {
                report_skipped(&r.skipped);
                println!(
                    "resuming {} at step {}",
                    r.checkpoint.dir.display(),
                    t.state().step
                );
            }
            t
        }
        None => {
            a.recipe.validate()?;
            let diffusion = GaussianDiffusion::new(a.recipe.diffusion.clone())?;
            let [channels, rows, cols] = data.image_dims();
            if rows != cols {
                return Err(format!("the images are {rows}x{cols}: the presets are square").into());
            }
            let classes = data.class_names.len().max(1);
            let spec = a.recipe.spec_for(channels, rows, classes);
            let config = a.recipe.train.clone();
            Trainer::new_images(spec, diffusion, config, data.count, &device)?.with_data(info)
        }
    };
    if !a.devices.is_empty() {
        let devices = a
            .devices
            .iter()
            .map(|d| d.device())
            .collect::<Result<Vec<_>, _>>()?;
        trainer = trainer.with_devices(&devices)?;
        println!(
            "data-parallel over {} devices: {:?}",
            devices.len(),
            a.devices
        );
    }
    println!(
        "{source}: {} training images of {:?}; model {} with {} parameters",
        data.count,
        data.image_dims(),
        trainer.spec().name(),
        trainer.model().num_params()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // A second Ctrl-C while saving kills the process as usual.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    let mut options = FitOptions::new(&run_dir)
        .with_stop_flag(stop)
        .with_log_every(a.log_every);
    if let Some(m) = a.max_minutes {
        options = options.with_time_limit_minutes(m)?;
    }
    let r = trainer.fit(&data, options)?;
    println!("{r}");
    if r.reason == StopReason::Interrupted {
        std::process::exit(130);
    }
    Ok(run_dir)
}
