//! `sample`, `interpolate` and `export`: drawing from a checkpoint or a diffusers directory.

use std::path::{Path, PathBuf};

use burn::module::Module;
use clap::Args;
use ddpm::backend::DeviceSpec;
use ddpm::checkpoint;
use ddpm::core::{
    Clip, Condition, GaussianDiffusion, Guided, InpaintConfig, NoisePredictor, SamplerConfig,
    SamplerKind, TimestepSpacing, VarianceType,
};
use ddpm::models::{ImagePredictor, ModelSpec};
use ddpm::sampling::{Mask, SampleJob, Start};

use crate::{AnyError, Global, report_skipped};

#[derive(Args, Clone)]
pub struct SampleArgs {
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
    /// Class of every sample (a class-conditional checkpoint): its name (`--class Flags`) or
    /// its label number.
    #[arg(long)]
    class: Option<String>,
    /// `all`: one grid row per class, --num samples each.
    #[arg(long, value_parser = ["all"])]
    classes: Option<String>,
    /// Classifier-free guidance scale of a class-conditional checkpoint (0: its null class, 1:
    /// plain conditional; 1.5 scored best on the quick preset's checkpoint, docs/results.md).
    #[arg(long, default_value_t = ddpm::recipe::Recipe::quick().sampling.guidance)]
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
pub struct InterpolateArgs {
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
    #[arg(long, default_value_t = ddpm::recipe::Recipe::quick().sampling.guidance)]
    guidance: f64,
    /// Output folder (default: <run>/interpolation-<seed>-<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The sampler of `sample`'s flags: the kind's defaults, `--steps` (all T for DDPM at T),
/// `--eta` for DDIM, `--spacing` if given, and `--clip` (default: x_0 clipped to [-1, 1]).
pub fn sampler_config(a: &SampleArgs, t_max: usize) -> SamplerConfig {
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
pub struct Source {
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
    /// The class names of the training data, by label (empty: unknown).
    class_names: Vec<String>,
}

impl Source {
    /// The label of `--class NAME` (a class name of the training data, or a number).
    fn class_index(&self, name: &str) -> Result<usize, AnyError> {
        if let Some(i) = self.class_names.iter().position(|n| n == name) {
            return Ok(i);
        }
        let k = self
            .model
            .num_classes()
            .ok_or("--class needs a class-conditional checkpoint")?;
        match name.parse::<usize>() {
            Ok(i) if i < k => Ok(i),
            _ if self.class_names.is_empty() => {
                Err(format!("--class {name}: give 0 to {}", k - 1).into())
            }
            _ => Err(format!(
                "--class {name}: the classes are {}",
                self.class_names.join(", ")
            )
            .into()),
        }
    }
}

pub fn open_source(a: &SampleArgs, device: &burn::tensor::Device) -> Result<Source, AnyError> {
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
            class_names: Vec::new(),
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
    let shape = loaded.checkpoint.meta.image_dims();
    let class_names = loaded
        .checkpoint
        .meta
        .data
        .as_ref()
        .map(|d| d.class_names.clone())
        .unwrap_or_default();
    Ok(Source {
        diffusion: loaded.checkpoint.meta.diffusion()?,
        shape,
        class_names,
        variance: None,
        root: checkpoint::run_dir_of(&loaded.checkpoint.dir),
        dir: loaded.checkpoint.dir,
        model: loaded.model,
    })
}

pub fn sample(a: SampleArgs, g: &Global) -> Result<PathBuf, AnyError> {
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
    let class = a.class.as_deref().map(|c| src.class_index(c)).transpose()?;
    if let Some(c) = class {
        job = job.with_classes(vec![c; a.num], a.guidance);
    }
    if a.classes.is_some() {
        let k = loaded
            .model
            .num_classes()
            .ok_or("--classes all needs a class-conditional checkpoint (train --conditional)")?;
        if !src.class_names.is_empty() {
            println!("one row per class: {}", src.class_names.join(", "));
        }
        let labels = (0..k).flat_map(|c| std::iter::repeat_n(c, a.num)).collect();
        job = job.with_classes(labels, a.guidance).with_grid_cols(a.num);
        job.num = k * a.num;
    }
    // Plain sampling of a class-conditional checkpoint without --class/--classes: every class
    // in turn, one grid column each (the null class alone draws poor samples: it saw 10 % of
    // the labels). SDEdit and inpainting keep the null class unless a class is given.
    let plain = a.from.is_none() && a.inpaint.is_none();
    if let (true, None, None, Some(k)) = (plain, class, &a.classes, loaded.model.num_classes()) {
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
pub fn export(run: &Path, out: &Path, ema: bool, g: &Global) -> Result<(), AnyError> {
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
pub fn interpolate(a: InterpolateArgs, g: &Global) -> Result<(), AnyError> {
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
    let shape = loaded.checkpoint.meta.image_dims();
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
