//! `eval images`: the measures for data that is not MNIST (a folder of your own, CIFAR-10).

use std::path::PathBuf;

use clap::Args;
use ddpm::backend::DeviceSpec;
use ddpm::checkpoint;
use ddpm::data::Split;
use ddpm::eval::OwnDataOptions;

use crate::{AnyError, Global, bar};

#[derive(Args, Clone)]
pub struct ImagesArgs {
    /// The run (or checkpoint) whose training data the samples are compared with.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Folder of samples (a `sample` output folder, or PNGs).
    #[arg(long)]
    samples: PathBuf,
    /// The samples were drawn by `sample --classes all --num N`: N per class, in class order;
    /// report the share classified as asked, per class.
    #[arg(long)]
    per_class: Option<usize>,
    /// Epochs of the classifier trained on the data's own labels.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Share of each class held out from the classifier (the real images compared with).
    #[arg(long, default_value_t = 0.1)]
    held_out: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn eval_images(a: ImagesArgs, g: &Global) -> Result<(), AnyError> {
    let device = DeviceSpec::open_or_default(g.device)?;
    let ckpt = checkpoint::resolve(&a.checkpoint)?.checkpoint;
    let info = ckpt.meta.data.clone().ok_or(
        "this checkpoint does not record its training data (written before image folders): \
         use `eval quality` for MNIST runs",
    )?;
    let run = checkpoint::run_dir_of(&ckpt.dir);
    let loaded = info.source.load(
        Split::Train,
        g.data_dir.as_deref(),
        Some(&run.join("data-cache.bin")),
    )?;
    if let Some(report) = &loaded.report {
        println!("{}: {report}", info.source);
    }
    let samples = ddpm::eval::load_pngs_as(&a.samples, info.image_dims[0], &device)?;
    let n = samples.dims()[0];
    let requested: Option<Vec<usize>> = a
        .per_class
        .map(|per| (0..n).map(|i| i / per.max(1)).collect());
    let options = OwnDataOptions {
        held_out: a.held_out,
        classifier_epochs: a.epochs,
        seed: a.seed,
        ..OwnDataOptions::default()
    };
    let bar = bar("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} classifier steps eta {eta}");
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let report = ddpm::eval::evaluate_own_data(
        samples,
        requested.as_deref(),
        &loaded.set,
        &options,
        &device,
        &mut progress,
    )?;
    bar.finish_and_clear();
    println!("{n} samples from {}\n{report}", a.samples.display());
    Ok(())
}
