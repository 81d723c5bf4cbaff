//! The quick preset: `ddpm::recipe::Recipe::quick()` trained for a bounded time on MNIST, then
//! sampled one grid row per digit and scored when the project's classifier is at hand.

use std::path::PathBuf;

use clap::Args;
use ddpm::backend::DeviceSpec;
use ddpm::checkpoint;
use ddpm::core::NoisePredictor;
use ddpm::data::{DataSource, Dataset};
use ddpm::recipe::Recipe;
use ddpm::sampling::SampleJob;

use crate::eval::{ClassifierArgs, QualityArgs, eval_quality};
use crate::train::{Run, run_training};
use crate::{AnyError, Global, minutes};

#[derive(Args, Clone)]
pub struct QuickArgs {
    /// Minutes of training.
    #[arg(long, default_value_t = 14.0, value_parser = minutes)]
    pub minutes: f64,
    #[arg(long, default_value = "runs/quick")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn quick(a: QuickArgs, g: &Global) -> Result<(), AnyError> {
    let mut recipe = Recipe::quick();
    recipe.train.seed = a.seed;
    let s = recipe.sampling.clone();
    println!(
        "Quick preset: {} minutes of training of a small class-conditional U-Net on MNIST, then \
         {} samples of each digit ({}, {} steps, guidance {}).\n\
         Results go to {}. Interrupt with Ctrl-C at any time: a checkpoint is saved.",
        a.minutes,
        s.per_class,
        s.sampler,
        s.steps,
        s.guidance,
        a.out.display()
    );
    // A run directory that exists is resumed.
    let resume = (!checkpoint::list(&a.out).is_empty()).then(|| a.out.clone());
    let run = run_training(
        Run {
            recipe,
            source: DataSource::Idx {
                dataset: Dataset::Mnist,
            },
            out: a.out.clone(),
            resume,
            steps: None,
            max_minutes: Some(a.minutes),
            log_every: 10,
            devices: Vec::new(),
        },
        g,
    )?;
    let device = DeviceSpec::open_or_default(g.device)?;
    let loaded = checkpoint::load_predictor(&run, true, &device)?;
    let diffusion = loaded.checkpoint.meta.diffusion()?;
    let config = s.sampler_config(diffusion.num_timesteps());
    // A run of an earlier, unconditional preset resumes as it was: 64 unconditional samples.
    let classes = loaded.model.num_classes();
    let job = match classes {
        Some(k) => {
            let labels = (0..k)
                .flat_map(|c| std::iter::repeat_n(c, s.per_class))
                .collect();
            SampleJob::new(k * s.per_class, config)
                .with_batch(10 * s.per_class)
                .with_classes(labels, s.guidance)
                .with_grid_cols(s.per_class)
        }
        None => SampleJob::new(64, config).with_batch(64),
    }
    .with_seed(a.seed)
    .with_gif_frames(25);
    let out = a.out.join("samples");
    let shape = loaded.checkpoint.meta.image_dims();
    let r = ddpm::sampling::sample_to_dir(&diffusion, &loaded.model, shape, &device, &job, &out)?;
    println!("{r}");
    println!(
        "Done. Look at {}/grid.png and {}/denoising.gif",
        out.display(),
        out.display()
    );
    // A number beside the picture, when the project's classifier is at hand.
    let q = QualityArgs {
        samples: out.clone(),
        per_class: classes.map(|_| s.per_class),
        classifier: ClassifierArgs {
            dataset: Dataset::Mnist,
            epochs: 2,
            seed: 0,
        },
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
