//! Train a DDPM on MNIST (or Fashion-MNIST), sample from it and look at the digits.
//!
//! ```text
//! cargo run --release --example mnist                      # quick preset: ~15 min on a 2-core CPU
//! cargo run --release --example mnist -- train --help
//! cargo run --release --example mnist -- sample --checkpoint runs/quick --sampler dpm++2m-sde --steps 20
//! ```
//!
//! Everything here is argument parsing and printing: training, checkpoints, sampling to files
//! and evaluation are library calls (`ddpm::train`, `ddpm::checkpoint`, `ddpm::sampling`,
//! `ddpm::eval`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Module;
use clap::{Args, Parser, Subcommand};
use ddpm::backend::DeviceSpec;
use ddpm::checkpoint::{self, Skipped};
use ddpm::core::{
    BetaSchedule, Clip, Condition, DiffusionConfig, EmaConfig, EmaWarmup, GaussianDiffusion,
    Guided, InpaintConfig, LossWeighting, NoisePredictor, Objective, SamplerConfig, SamplerKind,
    ScheduleConfig, TimestepSpacing, VarianceType,
};
use ddpm::data::{Dataset, ImageSet, Split};
use ddpm::eval::NllOptions;
use ddpm::models::{ImagePredictor, ModelPreset, ModelSpec};
use ddpm::sampling::{Mask, SampleJob, Start};
use ddpm::train::{FitOptions, StopReason, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

type AnyError = Box<dyn std::error::Error>;

#[derive(Parser)]
#[command(
    version,
    about = "Train a DDPM on MNIST and sample from it. With no subcommand: the quick preset."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    global: Global,
}

/// Options of every command.
#[derive(Args, Clone, Default)]
struct Global {
    /// flex, wgpu, cuda:1 ... (those compiled in; default: flex).
    #[arg(long, global = true)]
    device: Option<DeviceSpec>,
    /// Folder holding the dataset (default: $DDPM_DATA_DIR, then ./data; downloaded if absent).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (or resume a run with --resume).
    Train(TrainArgs),
    /// Sample images from a checkpoint: grid PNG, one PNG per sample and a GIF of the denoising.
    Sample(SampleArgs),
    /// The quick preset: train for a bounded time on the CPU, then sample a grid.
    Quick(QuickArgs),
    /// Spherical interpolation between the x_T of two seeds, denoised deterministically: a PNG
    /// strip and a GIF.
    Interpolate(InterpolateArgs),
    /// Evaluate a checkpoint or samples.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Write a trained U-Net as a diffusers directory (UNet2DModel + DDPMScheduler), with
    /// io.safetensors: its outputs on fixed inputs, to check the export in diffusers.
    Export {
        /// A run directory or a checkpoint folder.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The directory to write.
        #[arg(long)]
        diffusers: PathBuf,
        /// Export the raw weights instead of the EMA weights.
        #[arg(long)]
        no_ema: bool,
    },
    /// Rewrite a checkpoint of an older ddpm (format 2) in the current format, to resume it.
    Upgrade {
        /// The checkpoint folder (checkpoints/step-NNNNNNNN).
        #[arg(long)]
        checkpoint: PathBuf,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Negative log-likelihood bound in bits/dim on the first N test images (Table 1's NLL).
    Nll(NllArgs),
    /// Train the small CNN used by `eval quality` (cached in the data directory).
    TrainClassifier(ClassifierArgs),
    /// Classifier-FID, confidence, class histogram and background of a folder of PNGs.
    Quality(QualityArgs),
}

#[derive(Args, Clone)]
struct ClassifierArgs {
    /// mnist or fashion-mnist.
    #[arg(long, default_value = "mnist")]
    dataset: Dataset,
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Clone)]
struct QualityArgs {
    /// Folder of generated 28x28 PNGs (or a `sample` output folder holding samples/).
    #[arg(long)]
    samples: PathBuf,
    /// The samples were drawn by `sample --classes all --num N`: N per class, in class order;
    /// report the share the classifier assigns to the requested class.
    #[arg(long)]
    per_class: Option<usize>,
    #[command(flatten)]
    classifier: ClassifierArgs,
}

#[derive(Args, Clone)]
struct NllArgs {
    /// A run directory (its newest intact checkpoint) or a checkpoint folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Test images to evaluate.
    #[arg(long, default_value_t = 256)]
    num: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Reverse-process variance: large (beta, as the paper's CIFAR10 NLL) or small (beta tilde).
    #[arg(long, default_value = "large")]
    variance: VarianceType,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    no_ema: bool,
}

#[derive(Args, Clone)]
struct TrainArgs {
    /// The noise predictor: unet, unet-small or mlp.
    #[arg(long, default_value = "unet")]
    model: ModelPreset,
    /// mnist or fashion-mnist.
    #[arg(long, default_value = "mnist")]
    dataset: Dataset,
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
    /// What the network predicts: eps (the paper), x0 or v.
    #[arg(long, default_value = "eps")]
    objective: Objective,
    /// Beta schedule over T = 1000 steps: linear (the paper) or cosine.
    #[arg(long, default_value = "linear")]
    schedule: BetaSchedule,
    /// Min-SNR-gamma loss weighting with this gamma (Hang et al. 2023 use 5); off by default.
    #[arg(long)]
    min_snr_gamma: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run directory: checkpoints, loss.csv, loss.png.
    #[arg(long, default_value = "runs/mnist")]
    out: PathBuf,
    /// Continue the newest intact checkpoint of this run directory (--steps may extend it).
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    checkpoint_every: u64,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// Write a loss line to loss.csv every this many steps.
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// Stop (with a checkpoint) after this many minutes.
    #[arg(long, value_parser = minutes)]
    max_minutes: Option<f64>,
    /// Class-conditional training on the data set's labels (classifier-free guidance).
    #[arg(long)]
    conditional: bool,
    /// With --conditional: probability of replacing a label by the null class.
    #[arg(long, default_value_t = 0.1)]
    p_uncond: f64,
    /// Data-parallel over these devices (`cuda:0,cuda:1`); --batch-size is the global batch.
    #[arg(long, value_delimiter = ',')]
    devices: Vec<DeviceSpec>,
}

#[derive(Args, Clone)]
struct SampleArgs {
    /// A run directory (its newest intact checkpoint) or a checkpoint folder.
    #[arg(
        long,
        required_unless_present = "pretrained",
        conflicts_with = "pretrained"
    )]
    checkpoint: Option<PathBuf>,
    /// A diffusers model directory instead of a checkpoint (config.json,
    /// diffusion_pytorch_model.safetensors, scheduler_config.json), e.g. the paper's
    /// google/ddpm-cifar10-32: sampled at its own size and channels.
    #[arg(long)]
    pretrained: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    num: usize,
    /// ddpm | ddim | dpm++2m | dpm++3m | dpm++2m-sde | euler | heun. The default scored best
    /// at 20 model calls on MNIST (docs/results.md).
    #[arg(long, default_value = "dpm++2m-sde")]
    sampler: SamplerKind,
    /// Denoising steps (DDPM respaced when below T, `--steps 1000` is Algorithm 2; Heun calls
    /// the model 2 steps - 1 times).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// linspace, leading, trailing, log-snr or karras (default: the sampler's own).
    #[arg(long)]
    spacing: Option<TimestepSpacing>,
    /// DDIM eta (0: deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Clipping of the x_0 estimate: none, unit ([-1, 1], the data range), dynamic (Imagen's
    /// dynamic thresholding) or dynamic:MAX.
    #[arg(long, default_value = "unit")]
    clip: Clip,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (default: <run>/samples-<sampler>-<steps>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    no_ema: bool,
    /// Frames in the denoising GIF (0: none).
    #[arg(long, default_value_t = 25)]
    gif_frames: usize,
    /// Samples drawn per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Class of every sample (a class-conditional checkpoint).
    #[arg(long)]
    class: Option<usize>,
    /// `all`: one grid row per class, --num samples each.
    #[arg(long, value_parser = ["all"])]
    classes: Option<String>,
    /// Classifier-free guidance scale of a class-conditional checkpoint (0: its null class, 1:
    /// plain conditional; 1.5 scored best on the quick preset's checkpoint, docs/results.md).
    #[arg(long, default_value_t = QUICK_GUIDANCE)]
    guidance: f64,
    /// SDEdit: start from this PNG noised to --strength.
    #[arg(long)]
    from: Option<PathBuf>,
    /// With --from: 0 returns the image, 1 is plain sampling.
    #[arg(long, default_value_t = 0.5)]
    strength: f64,
    /// RePaint inpainting of this PNG (ancestral DDPM with --steps steps).
    #[arg(long)]
    inpaint: Option<PathBuf>,
    /// With --inpaint: the region to generate: left, right, top, bottom, center or a PNG (white).
    #[arg(long, default_value = "right")]
    mask: Mask,
    /// With --inpaint: RePaint's resamplings per step.
    #[arg(long, default_value_t = 4)]
    resample: usize,
}

#[derive(Args, Clone)]
struct InterpolateArgs {
    /// A run directory (its newest intact checkpoint) or a checkpoint folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The two seeds whose x_T are interpolated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    seeds: Vec<u64>,
    #[arg(long, default_value_t = 10)]
    frames: usize,
    /// A deterministic sampler: ddim, dpm++2m, dpm++3m, euler, heun.
    #[arg(long, default_value = "ddim")]
    sampler: SamplerKind,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Class of every frame (a class-conditional checkpoint; default: its null class).
    #[arg(long)]
    class: Option<usize>,
    /// Classifier-free guidance scale with --class (0: unconditional, 1: conditional).
    #[arg(long, default_value_t = QUICK_GUIDANCE)]
    guidance: f64,
    /// Output folder (default: <run>/interpolation-<seed>-<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct QuickArgs {
    /// Minutes of training.
    #[arg(long, default_value_t = 14.0, value_parser = minutes)]
    minutes: f64,
    #[arg(long, default_value = "runs/quick")]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// A number of minutes that is a duration (finite, >= 0, not absurdly long).
fn minutes(s: &str) -> Result<f64, String> {
    let m: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    ddpm::train::minutes_to_duration(m).map_err(|e| e.to_string())?;
    Ok(m)
}

fn report_skipped(skipped: &[Skipped]) {
    for s in skipped {
        eprintln!("warning: skipped {}: {}", s.dir.display(), s.reason);
    }
}

fn bar(template: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Trains and returns the run directory.
fn train(a: TrainArgs, g: &Global) -> Result<PathBuf, AnyError> {
    let device = DeviceSpec::open_or_default(g.device)?;
    // `--resume RUN/checkpoints/step-N` continues in RUN, where a later `--resume RUN` looks.
    let run_dir = match &a.resume {
        Some(dir) if checkpoint::is_checkpoint_dir(dir) => checkpoint::run_dir_of(dir),
        Some(dir) => dir.clone(),
        None => a.out.clone(),
    };
    // A resumed run keeps the data set (and model) it was started with.
    let dataset = match &a.resume {
        Some(dir) => checkpoint::resolve(dir)?.checkpoint.meta.dataset,
        None => Some(a.dataset),
    }
    .unwrap_or(Dataset::Mnist);
    let data = ImageSet::load(dataset, Split::Train, g.data_dir.as_deref())?;
    let mut trainer = match &a.resume {
        Some(dir) => {
            let t = Trainer::resume_images(dir, &device, Some(a.steps))?;
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
                p_uncond: a.p_uncond,
            };
            let weighting = match a.min_snr_gamma {
                Some(gamma) => LossWeighting::MinSnr { gamma },
                None => LossWeighting::None,
            };
            let schedule = ScheduleConfig {
                beta_schedule: a.schedule.clone(),
                ..ScheduleConfig::default()
            };
            let diffusion = GaussianDiffusion::new(
                DiffusionConfig::new(schedule)
                    .with_objective(a.objective)
                    .with_loss_weighting(weighting),
            )?;
            let spec = a
                .model
                .spec(a.dropout)
                .with_classes(a.conditional.then_some(10));
            Trainer::new_images(spec, diffusion, config, data.count, &device)?.with_dataset(dataset)
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
        "{dataset}: {} training images; model {} with {} parameters",
        data.count,
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

/// The sampler of `sample`'s flags: the kind's defaults, `--steps` (all T for DDPM at T),
/// `--eta` for DDIM, `--spacing` if given, and `--clip` (default: x_0 clipped to [-1, 1]).
fn sampler_config(a: &SampleArgs, t_max: usize) -> SamplerConfig {
    let mut cfg = a.sampler.with_steps(a.steps.min(t_max));
    match &mut cfg {
        SamplerConfig::Ddim { eta, .. } => *eta = a.eta,
        SamplerConfig::Ddpm { steps, .. } if a.steps >= t_max => *steps = None,
        _ => {}
    }
    if let Some(s) = a.spacing {
        cfg = cfg.with_spacing(s);
    }
    cfg.with_clip(a.clip)
}

/// Samples and returns the output folder.
/// What `sample` draws from: a checkpoint of ours or a diffusers directory.
struct Source {
    model: ImagePredictor,
    diffusion: GaussianDiffusion,
    /// `[channels, height, width]`.
    shape: [usize; 3],
    /// The checkpoint folder or the diffusers directory.
    dir: PathBuf,
    /// Where outputs go by default.
    root: PathBuf,
    /// A diffusers scheduler's variance for DDPM sampling.
    variance: Option<VarianceType>,
}

fn open_source(a: &SampleArgs, device: &burn::tensor::Device) -> Result<Source, AnyError> {
    if let Some(dir) = &a.pretrained {
        let started = std::time::Instant::now();
        let p = ddpm::diffusers::load(dir, device)?;
        println!(
            "{}: a diffusers UNet2DModel, {} parameters, {:?} images (loaded in {:.1} s)",
            dir.display(),
            p.model.num_params(),
            p.image_shape(),
            started.elapsed().as_secs_f64()
        );
        return Ok(Source {
            diffusion: p.diffusion()?,
            shape: p.image_shape(),
            variance: Some(p.scheduler.variance),
            dir: dir.clone(),
            root: dir.clone(),
            model: ImagePredictor::Unet(p.model),
        });
    }
    let path = a
        .checkpoint
        .as_ref()
        .ok_or("give --checkpoint or --pretrained")?;
    let loaded = checkpoint::load_predictor(path, !a.no_ema, device)?;
    report_skipped(&loaded.skipped);
    Ok(Source {
        diffusion: loaded.checkpoint.meta.diffusion()?,
        shape: [1, 28, 28],
        variance: None,
        root: checkpoint::run_dir_of(&loaded.checkpoint.dir),
        dir: loaded.checkpoint.dir,
        model: loaded.model,
    })
}

fn sample(a: SampleArgs, g: &Global) -> Result<PathBuf, AnyError> {
    let device = DeviceSpec::open_or_default(g.device)?;
    let src = open_source(&a, &device)?;
    let loaded = &src;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| src.root.join(format!("samples-{}-{}", a.sampler, a.steps)));
    let diffusion = &src.diffusion;
    let mut config = sampler_config(&a, diffusion.num_timesteps());
    // A diffusers scheduler names the variance its authors sample with.
    if let (SamplerConfig::Ddpm { variance, .. }, Some(v)) = (&mut config, src.variance) {
        *variance = v;
    }
    let mut job = SampleJob::new(a.num, config)
        .with_batch(a.batch)
        .with_seed(a.seed)
        .with_gif_frames(a.gif_frames);
    if let Some(c) = a.class {
        job = job.with_classes(vec![c; a.num], a.guidance);
    }
    if a.classes.is_some() {
        let k = loaded
            .model
            .num_classes()
            .ok_or("--classes all needs a class-conditional checkpoint (train --conditional)")?;
        let labels = (0..k).flat_map(|c| std::iter::repeat_n(c, a.num)).collect();
        job = job.with_classes(labels, a.guidance).with_grid_cols(a.num);
        job.num = k * a.num;
    }
    // Plain sampling of a class-conditional checkpoint without --class/--classes: every class
    // in turn, one grid column each (the null class alone draws poor samples: it saw 10 % of
    // the labels). SDEdit and inpainting keep the null class unless a class is given.
    let plain = a.from.is_none() && a.inpaint.is_none();
    if let (true, None, None, Some(k)) = (plain, a.class, &a.classes, loaded.model.num_classes()) {
        println!(
            "class-conditional checkpoint: sample i is class i mod {k} at guidance {} \
             (--class N: one class; --classes all: a row per class; --guidance 0: the null class)",
            a.guidance
        );
        job = job.with_every_class(k, a.guidance);
    }
    let shape = src.shape;
    if let Some(path) = &a.from {
        let image = ddpm::sampling::load_png(path, shape, &device)?;
        job = job.with_start(Start::Image {
            image,
            strength: a.strength,
        });
    }
    if let Some(path) = &a.inpaint {
        let known = ddpm::sampling::load_png(path, shape, &device)?;
        let mask = a.mask.known(shape, &device)?;
        let steps = a.steps.min(diffusion.num_timesteps());
        let config = InpaintConfig {
            steps,
            resample: a.resample,
            ..InpaintConfig::default()
        };
        job = job.with_start(Start::Inpaint {
            known,
            mask,
            config,
        });
    }
    println!(
        "sampling {} images from {} ({}, {} steps)",
        job.num,
        src.dir.display(),
        match job.start {
            Start::Inpaint { .. } => "RePaint".to_string(),
            _ => a.sampler.to_string(),
        },
        a.steps
    );
    let r = ddpm::sampling::sample_to_dir(diffusion, &loaded.model, shape, &device, &job, &out)?;
    println!("{r}");
    Ok(out)
}

/// A U-Net checkpoint as a diffusers directory, with its probe outputs.
fn export(run: &Path, out: &Path, ema: bool, g: &Global) -> Result<(), AnyError> {
    let device = DeviceSpec::open_or_default(g.device)?;
    let loaded = checkpoint::load_predictor(run, ema, &device)?;
    report_skipped(&loaded.skipped);
    let (ImagePredictor::Unet(net), ModelSpec::Unet { config }) =
        (&loaded.model, &loaded.checkpoint.meta.model)
    else {
        return Err("only U-Net checkpoints export as a diffusers UNet2DModel".into());
    };
    // DDPM with sigma^2 = beta and x_0 clipped to [-1, 1], as `sample --sampler ddpm` draws.
    let scheduler = ddpm::diffusers::SchedulerSettings {
        diffusion: loaded.checkpoint.meta.diffusion.clone(),
        variance: VarianceType::FixedLarge,
        clip: Clip::unit(),
    };
    ddpm::diffusers::export(net, config, &scheduler, out)?;
    let t = loaded.checkpoint.meta.diffusion()?.num_timesteps();
    ddpm::diffusers::write_probe(net, config, t, out, &device)?;
    println!(
        "wrote {} (from {}): load it with UNet2DModel.from_pretrained and \
         DDPMScheduler.from_pretrained; check it with \
         python3 tests/fixtures/diffusers/check_export.py {}",
        out.display(),
        loaded.checkpoint.dir.display(),
        out.display()
    );
    Ok(())
}

/// Frames between the x_T of two seeds.
fn interpolate(a: InterpolateArgs, g: &Global) -> Result<(), AnyError> {
    let device = DeviceSpec::open_or_default(g.device)?;
    let loaded = checkpoint::load_predictor(&a.checkpoint, true, &device)?;
    report_skipped(&loaded.skipped);
    let diffusion = loaded.checkpoint.meta.diffusion()?;
    let [s1, s2] = a.seeds[..] else {
        return Err(format!("--seeds takes two seeds (1,2), got {:?}", a.seeds).into());
    };
    let out = a.out.unwrap_or_else(|| {
        checkpoint::run_dir_of(&loaded.checkpoint.dir).join(format!("interpolation-{s1}-{s2}"))
    });
    let sampler = a.sampler.with_steps(a.steps).with_clip(Clip::unit());
    let shape = [1, 28, 28];
    let model = &loaded.model;
    let run = |model: &dyn NoisePredictor<4>| {
        ddpm::sampling::interpolate_to_dir(
            &diffusion,
            model,
            &sampler,
            (s1, s2),
            a.frames,
            shape,
            &device,
            &out,
        )
    };
    match a.class {
        Some(c) => run(&Guided::new(
            model,
            Condition::Classes(vec![c; a.frames]),
            a.guidance,
        )?)?,
        None => {
            if model.num_classes().is_some() {
                println!("class-conditional checkpoint: --class N interpolates within digit N");
            }
            run(model)?
        }
    };
    println!(
        "{} frames: {}/interpolation.png, {}/interpolation.gif",
        a.frames,
        out.display(),
        out.display()
    );
    Ok(())
}

/// NLL in bits/dim through the variational bound (all T terms, the decoder and the prior).
fn eval_nll(a: NllArgs, g: &Global) -> Result<(), AnyError> {
    let device = DeviceSpec::open_or_default(g.device)?;
    let loaded = checkpoint::load_predictor(&a.checkpoint, !a.no_ema, &device)?;
    report_skipped(&loaded.skipped);
    let meta = &loaded.checkpoint.meta;
    let test = ImageSet::load(
        meta.dataset.unwrap_or(Dataset::Mnist),
        Split::Test,
        g.data_dir.as_deref(),
    )?;
    let options = NllOptions {
        num: a.num,
        batch: a.batch,
        variance: a.variance,
        seed: a.seed,
    };
    let bar = bar("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} model calls eta {eta}");
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let r = ddpm::eval::nll(
        &meta.diffusion()?,
        &loaded.model,
        &test,
        options,
        &device,
        &mut progress,
    )?;
    bar.finish();
    println!(
        "checkpoint {} ({}), {} test images, variance {:?}",
        loaded.checkpoint.dir.display(),
        meta.model.name(),
        r.images,
        a.variance
    );
    println!("{r}");
    Ok(())
}

/// Loads the cached classifier, training it first when absent.
fn classifier(a: &ClassifierArgs, g: &Global) -> Result<ddpm::eval::Classifier, AnyError> {
    let device = DeviceSpec::open_or_default(g.device)?;
    let bar = bar("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} classifier steps eta {eta}");
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let (model, acc) = ddpm::eval::cached_classifier(
        a.dataset,
        g.data_dir.as_deref(),
        a.epochs,
        a.seed,
        &device,
        &mut progress,
    )?;
    bar.finish_and_clear();
    let path = ddpm::eval::classifier_path(a.dataset, g.data_dir.as_deref(), a.epochs, a.seed)?;
    match acc {
        None => println!("classifier: {} (cached)", path.display()),
        Some(acc) => {
            println!(
                "classifier test accuracy {:.2}%, saved {}",
                100.0 * acc,
                path.display()
            );
            if acc < 0.99 {
                eprintln!("warning: accuracy below 99%: train longer with --epochs");
            }
        }
    }
    Ok(model)
}

/// Classifier FID of the samples against the test set, with the train-vs-test floor.
fn eval_quality(a: QualityArgs, g: &Global) -> Result<(), AnyError> {
    let device = DeviceSpec::open_or_default(g.device)?;
    let model = classifier(&a.classifier, g)?;
    let samples = ddpm::eval::load_pngs(&a.samples, &device)?;
    let dataset = a.classifier.dataset;
    let dir = g.data_dir.as_deref();
    let train = ImageSet::load(dataset, Split::Train, dir)?;
    let test = ImageSet::load(dataset, Split::Test, dir)?;
    if let Some(per) = a.per_class {
        let n = samples.dims()[0];
        let requested: Vec<usize> = (0..n).map(|i| i / per.max(1)).collect();
        let share = ddpm::eval::requested_class_share(&model, samples.clone(), &requested)?;
        println!(
            "share assigned to the requested class: {:.1} %",
            100.0 * share
        );
    }
    let r = ddpm::eval::quality(&model, samples, &train, &test, &device)?;
    println!("{} samples from {}\n{r}", r.samples, a.samples.display());
    Ok(())
}

/// Parses `line` (split at spaces) followed by `paths` as the example's command line.
fn parse(line: &str, paths: &[&dyn AsRef<std::ffi::OsStr>]) -> Cli {
    let words = line.split_whitespace().map(std::ffi::OsString::from);
    let paths = paths.iter().map(|p| p.as_ref().to_os_string());
    Cli::parse_from(std::iter::once("mnist".into()).chain(words).chain(paths))
}

/// The quick preset's training recipe: the best combination of the time-to-quality ablation
/// (`benches/quick_ablation.sh`, row `cond+lr-2e-3+min-snr-5`; docs/results.md): the small
/// U-Net, class-conditional (classifier-free guidance, the null class 10 % of the time), batch
/// 32 at lr 2e-3, Min-SNR-5 loss weighting, EMA 0.995, no dropout.
const QUICK_RECIPE: &str = "--model unet-small --batch-size 32 --lr 2e-3 --warmup-steps 100 \
     --ema-decay 0.995 --dropout 0 --grad-clip 1 --objective eps --schedule linear \
     --min-snr-gamma 5 --conditional";
/// The quick preset's guidance scale: the best of the ablation's sweep (w 1, 1.5, 2, 3) on its
/// checkpoint, 1,000 samples: FID 29.4 with 98.4 % confident digits (w 1: 18.2 but 88.9 %;
/// w 2: 58.2, 99.4 %; w 3 over-guides: 110.3).
const QUICK_GUIDANCE: f64 = 1.5;
/// Samples per class the quick preset draws (one grid row per digit).
const QUICK_PER_CLASS: usize = 10;
/// The quick preset's sampler: the best measured at about 20 model calls, on the quick
/// preset's own checkpoint and on a trained one (docs/results.md).
const QUICK_SAMPLER: &str = "dpm++2m-sde";
/// Its steps (model calls, each doubled by the guidance): on the preset's checkpoint 50 score
/// better than 20 (FID 29.4 against 35.8 at 1,000 samples) for about 12 s more on its 100
/// samples.
const QUICK_STEPS: usize = 50;

fn quick(a: QuickArgs, g: &Global) -> Result<(), AnyError> {
    println!(
        "Quick preset: {} minutes of training of a small class-conditional U-Net on MNIST, then \
         {QUICK_PER_CLASS} samples of each digit ({QUICK_SAMPLER}, {QUICK_STEPS} steps, \
         guidance {QUICK_GUIDANCE}).\n\
         Results go to {}. Interrupt with Ctrl-C at any time: a checkpoint is saved.",
        a.minutes,
        a.out.display()
    );
    // The preset is two command lines; a run directory that exists is resumed.
    let resume = if checkpoint::list(&a.out).is_empty() {
        "--out"
    } else {
        "--resume"
    };
    let train_line = format!(
        "train {QUICK_RECIPE} --steps 100000 --checkpoint-every 500 --keep 2 --max-minutes {} \
         --seed {}",
        a.minutes, a.seed
    );
    let Some(Command::Train(train_args)) = parse(&train_line, &[&resume, &a.out]).command else {
        unreachable!("a train command")
    };
    let run = train(train_args, g)?;
    // A run of an earlier, unconditional preset resumes as it was: 64 unconditional samples.
    let conditional = checkpoint::resolve(&run)?
        .checkpoint
        .meta
        .model
        .num_classes()
        .is_some();
    let what = if conditional {
        format!(
            "--classes all --num {QUICK_PER_CLASS} --batch {} --guidance {QUICK_GUIDANCE}",
            10 * QUICK_PER_CLASS
        )
    } else {
        "--num 64".to_string()
    };
    let sample_line = format!(
        "sample --sampler {QUICK_SAMPLER} --steps {QUICK_STEPS} {what} --seed {}",
        a.seed
    );
    let samples = a.out.join("samples");
    let paths: [&dyn AsRef<std::ffi::OsStr>; 4] = [&"--out", &samples, &"--checkpoint", &run];
    let Some(Command::Sample(sample_args)) = parse(&sample_line, &paths).command else {
        unreachable!("a sample command")
    };
    let out = sample(sample_args, g)?;
    println!(
        "Done. Look at {}/grid.png and {}/denoising.gif",
        out.display(),
        out.display()
    );
    // A number beside the picture, when the project's classifier is at hand.
    let per_class = if conditional {
        format!("--per-class {QUICK_PER_CLASS} ")
    } else {
        String::new()
    };
    let Some(Command::Eval(EvalCommand::Quality(q))) =
        parse(&format!("eval quality {per_class}--samples"), &[&out]).command
    else {
        unreachable!("an eval quality command")
    };
    let c = &q.classifier;
    let cached = ddpm::eval::classifier_path(c.dataset, g.data_dir.as_deref(), c.epochs, c.seed)?;
    if cached.exists() {
        println!(
            "Scoring the samples with the cached classifier ({}):",
            cached.display()
        );
        eval_quality(q, g)?;
    } else {
        println!(
            "To score the samples: `cargo run --release --example mnist -- eval train-classifier` \
             (about 9 minutes, once), then \
             `cargo run --release --example mnist -- eval quality --samples {}`.",
            out.display()
        );
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let g = &cli.global;
    let result = match cli.command {
        Some(Command::Train(a)) => train(a, g).map(|_| ()),
        Some(Command::Sample(a)) => sample(a, g).map(|_| ()),
        Some(Command::Quick(a)) => quick(a, g),
        Some(Command::Interpolate(a)) => interpolate(a, g),
        Some(Command::Eval(EvalCommand::Nll(a))) => eval_nll(a, g),
        Some(Command::Eval(EvalCommand::TrainClassifier(a))) => classifier(&a, g).map(|_| ()),
        Some(Command::Eval(EvalCommand::Quality(a))) => eval_quality(a, g),
        Some(Command::Export {
            checkpoint,
            diffusers,
            no_ema,
        }) => export(&checkpoint, &diffusers, !no_ema, g),
        Some(Command::Upgrade { checkpoint }) => checkpoint::upgrade(&checkpoint)
            .map(|c| println!("{} is now in format {}", c.dir.display(), c.meta.format))
            .map_err(Into::into),
        None => quick(
            QuickArgs {
                minutes: 14.0,
                out: "runs/quick".into(),
                seed: 0,
            },
            g,
        ),
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
