//! Sampling images to files: batches through any [`SamplerConfig`], a PNG per sample, a grid
//! and a GIF of the denoising, with a progress bar.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use burn::tensor::Device;
//! use ddpm::core::SamplerKind;
//! use ddpm::sampling::{SampleJob, sample_to_dir};
//!
//! let device = Device::flex();
//! let loaded = ddpm::checkpoint::load_predictor("runs/quick".as_ref(), true, &device)?;
//! let diffusion = loaded.checkpoint.meta.diffusion()?;
//! let job = SampleJob::new(64, SamplerKind::DpmSolver2M.with_steps(20));
//! let report = sample_to_dir(&diffusion, &loaded.model, [1, 28, 28], &device, &job,
//!                            "runs/quick/samples".as_ref())?;
//! println!("{} images in {:.1} s: {}", report.num, report.elapsed.as_secs_f64(),
//!          report.grid.display());
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::{Device, Tensor};
use ddpm_core::{
    DdpmError, GaussianDiffusion, NoisePredictor, SampleOptions, SampleOutput, Sampler,
    SamplerConfig,
};
use indicatif::{ProgressBar, ProgressStyle};
use thiserror::Error;

use crate::images::{self, ImageError};

/// Why sampling to files failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SampleError {
    /// The sampler or the model failed.
    #[error(transparent)]
    Ddpm(#[from] DdpmError),
    /// A picture could not be written.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The output folder could not be created.
    #[error("{path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An invalid setting.
    #[error("invalid sampling job: {0}")]
    Invalid(String),
}

/// What [`sample_to_dir`] draws and writes.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleJob {
    /// Images in total.
    pub num: usize,
    /// Images drawn per batch (memory grows with it).
    pub batch: usize,
    /// Seed of batch 0; batch `b` uses `seed + b`.
    pub seed: u64,
    /// The sampler.
    pub sampler: SamplerConfig,
    /// Frames of the denoising GIF of the first batch (0: no GIF).
    pub gif_frames: usize,
    /// Write `samples/NNNNNN.png` for every image (besides the grid).
    pub save_each: bool,
    /// Pixel scale of the grid and GIF.
    pub scale: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

impl SampleJob {
    /// `num` images in batches of 64, seed 0, a 25-frame GIF, every image saved, scale 2, a
    /// progress bar.
    pub fn new(num: usize, sampler: SamplerConfig) -> Self {
        Self {
            num,
            batch: 64,
            seed: 0,
            sampler,
            gif_frames: 25,
            save_each: true,
            scale: 2,
            progress: true,
        }
    }
    /// Sets the batch size.
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }
    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Sets the GIF's frame count (0: none).
    pub fn with_gif_frames(mut self, frames: usize) -> Self {
        self.gif_frames = frames;
        self
    }
    /// Shows or hides the progress bar.
    pub fn with_progress(mut self, show: bool) -> Self {
        self.progress = show;
        self
    }
}

/// What [`sample_to_dir`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleReport {
    /// Images drawn.
    pub num: usize,
    /// Model evaluations per image.
    pub model_calls: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// The grid of all images (`grid.png`).
    pub grid: PathBuf,
    /// The folder of single images, when written.
    pub each_dir: Option<PathBuf>,
    /// The GIF of the denoising, when written.
    pub gif: Option<PathBuf>,
}

impl std::fmt::Display for SampleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "{} samples ({} model calls each) in {secs:.1} s ({:.2} images/s): {}",
            self.num,
            self.model_calls,
            self.num as f64 / secs.max(1e-9),
            self.grid.display()
        )?;
        if let Some(d) = &self.each_dir {
            write!(f, ", {}/", d.display())?;
        }
        if let Some(g) = &self.gif {
            write!(f, ", {}", g.display())?;
        }
        Ok(())
    }
}

/// Draws `job.num` images of shape `image` (`[channels, height, width]`) from `model` and
/// writes `grid.png`, `samples/NNNNNN.png` and `denoising.gif` into `out`.
///
/// # Errors
/// [`SampleError::Invalid`] for `num` or `batch` of 0, sampler and model errors, I/O errors.
pub fn sample_to_dir<P: NoisePredictor<4> + ?Sized>(
    diffusion: &GaussianDiffusion,
    model: &P,
    image: [usize; 3],
    device: &Device,
    job: &SampleJob,
    out: &Path,
) -> Result<SampleReport, SampleError> {
    if job.num == 0 || job.batch == 0 {
        return Err(SampleError::Invalid(format!(
            "num ({}) and batch ({}) must be at least 1",
            job.num, job.batch
        )));
    }
    let each_dir = out.join("samples");
    let folder = if job.save_each { &each_dir } else { out };
    std::fs::create_dir_all(folder).map_err(|source| SampleError::Io {
        path: folder.to_path_buf(),
        source,
    })?;
    let calls = job.sampler.model_calls(diffusion)?;
    let every = (calls / job.gif_frames.max(1)).max(1);
    let bar = if job.progress {
        let bar = ProgressBar::new((job.num.div_ceil(job.batch) * calls) as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} model calls eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let mut grid_parts = Vec::new();
    let mut gif_frames: Vec<Tensor<4>> = Vec::new();
    let mut written = 0;
    let mut b = 0u64;
    while written < job.num {
        let n = job.batch.min(job.num - written);
        let done_before = bar.position();
        let mut progress = |done: usize, _total: usize| bar.set_position(done_before + done as u64);
        let mut options = SampleOptions::new(job.seed.wrapping_add(b)).with_progress(&mut progress);
        if b == 0 && job.gif_frames > 0 {
            options = options.with_trajectory(every);
        }
        let shape = [n, image[0], image[1], image[2]];
        let SampleOutput {
            samples,
            trajectory,
        } = job
            .sampler
            .sample(diffusion, model, shape, device, options)?;
        if b == 0 {
            gif_frames = trajectory.into_iter().map(|f| f.x_t).collect();
        }
        if job.save_each {
            images::save_each(samples.clone(), &each_dir, written)?;
        }
        grid_parts.push(samples);
        written += n;
        b += 1;
    }
    bar.finish();
    let grid = out.join("grid.png");
    let cols = (job.num as f64).sqrt().ceil() as usize;
    images::save_grid(Tensor::cat(grid_parts, 0), &grid, cols, job.scale)?;
    let gif = if gif_frames.is_empty() {
        None
    } else {
        let path = out.join("denoising.gif");
        let gcols = (gif_frames[0].dims()[0] as f64).sqrt().ceil() as usize;
        images::save_gif(&gif_frames, &path, gcols, job.scale, 120)?;
        Some(path)
    };
    Ok(SampleReport {
        num: job.num,
        model_calls: calls,
        elapsed: started.elapsed(),
        grid,
        each_dir: job.save_each.then_some(each_dir),
        gif,
    })
}
