//! Train a DDPM on MNIST, Fashion-MNIST, CIFAR-10 or a folder of your own pictures, sample
//! from it and look at the results.
//!
//! ```text
//! cargo run --release --example mnist                      # quick preset: ~15 min on a 2-core CPU
//! cargo run --release --example mnist -- train --help
//! cargo run --release --example mnist -- sample --checkpoint runs/quick --sampler dpm++2m-sde --steps 20
//! cargo run --release --example mnist -- train --data my-pictures --labels folders --conditional
//! ```
//!
//! Everything here is argument parsing and printing: training, checkpoints, sampling to files
//! and evaluation are library calls (`ddpm::train`, `ddpm::checkpoint`, `ddpm::sampling`,
//! `ddpm::eval`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ddpm::backend::DeviceSpec;
use ddpm::checkpoint::{self, Skipped};
use indicatif::{ProgressBar, ProgressStyle};

mod data;
mod eval;
mod images;
mod quick;
mod sample;
mod train;

use eval::{ClassifierArgs, NllArgs, QualityArgs, classifier, eval_nll, eval_quality};
use quick::{QuickArgs, quick};
use sample::{InterpolateArgs, SampleArgs, export, interpolate, sample};
use train::{TrainArgs, train};

type AnyError = Box<dyn std::error::Error>;

#[derive(Parser)]
#[command(
    version,
    about = "Train a DDPM on MNIST, CIFAR-10 or a folder of your own pictures, and sample from \
             it. With no subcommand: the quick preset (14 minutes on MNIST)."
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
    /// For runs on any data (your folder, CIFAR-10): a classifier trained on the data's own
    /// labels (its held-out accuracy stated) gives a Frechet distance and the per-class
    /// accuracy of conditional samples; and a memorisation check against the training images.
    Images(images::ImagesArgs),
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

fn main() {
    // Freed tensors reused rather than mapped and zeroed again each step (10-15 % of a CPU
    // step, docs/results.md).
    ddpm::allocator::keep_freed_memory();
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
        Some(Command::Eval(EvalCommand::Images(a))) => images::eval_images(a, g),
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
        // The library speaks of its API; here is what that means in this program's flags.
        use ddpm::train::TrainError;
        match e.downcast_ref::<TrainError>() {
            Some(TrainError::RunExists(dir)) => {
                eprintln!(
                    "hint: continue it with `train --resume {}`, or pass another --out",
                    dir.display()
                )
            }
            Some(TrainError::ConfigMismatch { .. }) => {
                eprintln!(
                    "hint: `train --resume` takes the model and settings from the checkpoint: drop --model and the recipe flags"
                )
            }
            _ => {}
        }
        std::process::exit(1);
    }
}
