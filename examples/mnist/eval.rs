//! `eval nll`, `eval train-classifier` and `eval quality`: the MNIST measures.

use std::path::PathBuf;

use clap::Args;
use ddpm::backend::DeviceSpec;
use ddpm::checkpoint;
use ddpm::core::VarianceType;
use ddpm::data::{Dataset, ImageSet, Split};
use ddpm::eval::NllOptions;

use crate::{AnyError, Global, bar, report_skipped};

#[derive(Args, Clone)]
pub struct ClassifierArgs {
    /// mnist or fashion-mnist.
    #[arg(long, default_value = "mnist")]
    pub dataset: Dataset,
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Clone)]
pub struct QualityArgs {
    /// Folder of generated 28x28 PNGs (or a `sample` output folder holding samples/).
    #[arg(long)]
    pub samples: PathBuf,
    /// The samples were drawn by `sample --classes all --num N`: N per class, in class order;
    /// report the share the classifier assigns to the requested class.
    #[arg(long)]
    pub per_class: Option<usize>,
    #[command(flatten)]
    pub classifier: ClassifierArgs,
}

#[derive(Args, Clone)]
pub struct NllArgs {
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

/// NLL in bits/dim through the variational bound (all T terms, the decoder and the prior).
pub fn eval_nll(a: NllArgs, g: &Global) -> Result<(), AnyError> {
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
pub fn classifier(a: &ClassifierArgs, g: &Global) -> Result<ddpm::eval::Classifier, AnyError> {
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
pub fn eval_quality(a: QualityArgs, g: &Global) -> Result<(), AnyError> {
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
