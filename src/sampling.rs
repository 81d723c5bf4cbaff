//! Sampling images to files: batches through any [`SamplerConfig`], a PNG per sample, a grid
//! and a GIF of the denoising, with a progress bar.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use burn::tensor::Device;
//! use ddpm::core::{NoisePredictor, SamplerKind};
//! use ddpm::sampling::{SampleJob, sample_to_dir};
//!
//! let device = Device::flex();
//! let loaded = ddpm::checkpoint::load_predictor("runs/quick".as_ref(), true, &device)?;
//! let diffusion = loaded.checkpoint.meta.diffusion()?;
//! let mut job = SampleJob::new(64, SamplerKind::DpmSolver2M.with_steps(20));
//! // The quick preset's model is class-conditional: every digit in turn, guided.
//! if let Some(k) = loaded.model.num_classes() {
//!     job = job.with_every_class(k, 1.5);
//! }
//! let report = sample_to_dir(&diffusion, &loaded.model, [1, 28, 28], &device, &job,
//!                            "runs/quick/samples".as_ref())?;
//! println!("{} images in {:.1} s: {}", report.num, report.elapsed.as_secs_f64(),
//!          report.grid.display());
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::{Device, Tensor, TensorData};
use ddpm_core::{
    Condition, DdpmError, GaussianDiffusion, Guided, InpaintConfig, NoisePredictor, NoiseRng,
    SampleOptions, SampleOutput, SamplerConfig, inpaint, slerp,
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
#[derive(Debug, Clone)]
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
    /// Where the samples start: noise (plain sampling), an image (SDEdit) or a partly known
    /// image (inpainting).
    pub start: Start,
    /// One class label per image, for a class-conditional model (`None`: unconditional).
    pub classes: Option<Vec<usize>>,
    /// Classifier-free guidance scale `w` with `classes` (1: plain conditional sampling).
    pub guidance: f64,
    /// Columns of the grid (default: a square).
    pub grid_cols: Option<usize>,
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
            start: Start::Noise,
            classes: None,
            guidance: 1.0,
            grid_cols: None,
        }
    }
    /// Sets where the samples start.
    pub fn with_start(mut self, start: Start) -> Self {
        self.start = start;
        self
    }
    /// Conditions image `i` on class `classes[i]` with guidance scale `w`.
    pub fn with_classes(mut self, classes: Vec<usize>, guidance: f64) -> Self {
        self.classes = Some(classes);
        self.guidance = guidance;
        self
    }
    /// Conditions image `i` on class `i mod num_classes` with guidance scale `w`, one grid
    /// column per class: every class in turn, as balanced as `num` allows.
    ///
    /// Call it after setting `num`. Without it a class-conditional model draws from its null
    /// class (unconditional sampling, which for a model trained with `p_uncond` 0.1 saw a tenth
    /// of the batches). `num_classes` 0 makes [`sample_to_dir`] return
    /// [`SampleError::Invalid`].
    ///
    /// ```
    /// use ddpm::core::SamplerKind;
    /// use ddpm::sampling::SampleJob;
    ///
    /// let job = SampleJob::new(12, SamplerKind::DpmSolver2M.with_steps(20)).with_every_class(10, 2.0);
    /// assert_eq!(job.classes, Some(vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]));
    /// assert_eq!((job.guidance, job.grid_cols), (2.0, Some(10)));
    /// ```
    pub fn with_every_class(self, num_classes: usize, guidance: f64) -> Self {
        let labels = match num_classes {
            0 => Vec::new(),
            k => (0..self.num).map(|i| i % k).collect(),
        };
        self.with_classes(labels, guidance)
            .with_grid_cols(num_classes.max(1))
    }
    /// Sets the grid's column count.
    pub fn with_grid_cols(mut self, cols: usize) -> Self {
        self.grid_cols = Some(cols);
        self
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
    if let Some(classes) = &job.classes
        && classes.len() != job.num
    {
        return Err(SampleError::Invalid(format!(
            "{} class labels for {} images: give one per image",
            classes.len(),
            job.num
        )));
    }
    check_start(&job.start, image)?;
    let calls = match &job.start {
        Start::Inpaint { config, .. } => config.steps * (config.resample + 1),
        _ => job.sampler.model_calls(diffusion)?,
    };
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
        } = match &job.classes {
            None => draw_batch(diffusion, model, job, shape, device, options)?,
            Some(classes) => {
                let labels = classes[written..written + n].to_vec();
                let guided = Guided::new(model, Condition::Classes(labels), job.guidance)?;
                draw_batch(diffusion, &guided, job, shape, device, options)?
            }
        };
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
    let cols = job
        .grid_cols
        .unwrap_or_else(|| (job.num as f64).sqrt().ceil() as usize);
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

/// Checks that the start's images fit the model's image shape.
fn check_start(start: &Start, image: [usize; 3]) -> Result<(), SampleError> {
    let [c, h, w] = image;
    let given: Vec<(&str, [usize; 4])> = match start {
        Start::Noise => Vec::new(),
        Start::Image { image, strength } => {
            if !(0.0..=1.0).contains(strength) {
                return Err(SampleError::Invalid(format!(
                    "strength must lie in [0, 1] (0: the image itself, 1: plain sampling), got {strength}"
                )));
            }
            vec![("the image", image.dims())]
        }
        Start::Inpaint { known, mask, .. } => {
            vec![("the image", known.dims()), ("the mask", mask.dims())]
        }
    };
    for (what, dims) in given {
        if dims != [1, c, h, w] {
            return Err(SampleError::Invalid(format!(
                "{what} has shape {dims:?}, the model makes [1, {c}, {h}, {w}] (one image of \
                 {c} channel(s), {w}x{h})"
            )));
        }
    }
    Ok(())
}

/// One batch of `shape[0]` samples from `model` as `job.start` says.
fn draw_batch<Q: NoisePredictor<4> + ?Sized>(
    diffusion: &GaussianDiffusion,
    model: &Q,
    job: &SampleJob,
    shape: [usize; 4],
    device: &Device,
    options: SampleOptions<'_>,
) -> Result<SampleOutput<4>, SampleError> {
    let n = shape[0];
    Ok(match &job.start {
        Start::Noise => job
            .sampler
            .sample(diffusion, model, shape, device, options)?,
        Start::Image { image, strength } => {
            let images = image.clone().repeat_dim(0, n); // [n, c, h, w]
            job.sampler
                .img2img(diffusion, model, images, *strength, options)?
        }
        Start::Inpaint {
            known,
            mask,
            config,
        } => SampleOutput {
            samples: inpaint(
                diffusion,
                model,
                known.clone().repeat_dim(0, n),
                mask.clone().repeat_dim(0, n),
                *config,
                options.seed,
            )?,
            trajectory: Vec::new(),
        },
    })
}

/// Where the samples of a [`SampleJob`] start.
#[derive(Debug, Clone, Default)]
// One per job, never in a hot loop: boxing the tensors would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum Start {
    /// x_T ~ N(0, I) from each batch's seed: plain sampling.
    #[default]
    Noise,
    /// SDEdit / img2img ([`SamplerConfig::img2img`]): `image` (`[1, c, h, w]`, repeated for
    /// every sample) noised to `strength * T`, then denoised by the job's sampler.
    Image {
        /// The image, in `[-1, 1]`.
        image: Tensor<4>,
        /// 0: the image itself; 1: plain sampling.
        strength: f64,
    },
    /// RePaint inpainting ([`ddpm_core::inpaint`], ancestral DDPM whatever the job's sampler):
    /// pixels where `mask` is 1 are kept from `known`, the others generated.
    Inpaint {
        /// The image, `[1, c, h, w]` in `[-1, 1]`.
        known: Tensor<4>,
        /// 1: known, 0: to generate; `[1, c, h, w]`.
        mask: Tensor<4>,
        /// Steps and resampling.
        config: InpaintConfig,
    },
}

/// A region to regenerate in inpainting: a named half or the centre, or a PNG whose white
/// pixels mark the region. Parses `left`, `right`, `top`, `bottom`, `center` or a file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mask {
    /// The left half.
    Left,
    /// The right half.
    Right,
    /// The top half.
    Top,
    /// The bottom half.
    Bottom,
    /// The central square of half the width and height.
    Center,
    /// A PNG of the image's size: white (>= 128) where pixels are to be generated.
    File(PathBuf),
}

impl std::str::FromStr for Mask {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "left" => Mask::Left,
            "right" => Mask::Right,
            "top" => Mask::Top,
            "bottom" => Mask::Bottom,
            "center" | "centre" => Mask::Center,
            path => Mask::File(PathBuf::from(path)),
        })
    }
}

impl Mask {
    /// The mask as `[1, channels, h, w]`: 1 where pixels are known (kept), 0 in the region to
    /// generate.
    ///
    /// # Errors
    /// [`SampleError::Invalid`] for an unreadable mask file or one of another size.
    pub fn known(&self, image: [usize; 3], device: &Device) -> Result<Tensor<4>, SampleError> {
        let [c, h, w] = image;
        let region: Vec<bool> = match self {
            Mask::File(path) => {
                let m = load_png(path, [1, h, w], device)?; // [1, 1, h, w] in [-1, 1]
                m.into_data()
                    .convert::<f32>()
                    .iter::<f32>()
                    .map(|v| v >= 0.0)
                    .collect()
            }
            named => (0..h * w)
                .map(|i| {
                    let (y, x) = (i / w, i % w);
                    match named {
                        Mask::Left => x < w / 2,
                        Mask::Right => x >= w / 2,
                        Mask::Top => y < h / 2,
                        Mask::Bottom => y >= h / 2,
                        _ => {
                            (h / 4..h / 4 + h / 2).contains(&y)
                                && (w / 4..w / 4 + w / 2).contains(&x)
                        }
                    }
                })
                .collect(),
        };
        let plane: Vec<f32> = region.iter().map(|&r| if r { 0.0 } else { 1.0 }).collect();
        let values: Vec<f32> = (0..c).flat_map(|_| plane.iter().copied()).collect();
        Ok(Tensor::from_data(
            TensorData::new(values, [1, c, h, w]),
            device,
        ))
    }
}

/// Reads a PNG as `[1, c, h, w]` in `[-1, 1]` (gray for `c = 1`, RGB for `c = 3`).
///
/// # Errors
/// [`SampleError::Invalid`] for an unreadable file or another size than `[h, w]`.
pub fn load_png(path: &Path, image: [usize; 3], device: &Device) -> Result<Tensor<4>, SampleError> {
    let [c, h, w] = image;
    let bad = |reason: String| SampleError::Invalid(format!("{}: {reason}", path.display()));
    let max = (
        u32::try_from(w).unwrap_or(u32::MAX),
        u32::try_from(h).unwrap_or(u32::MAX),
    );
    // Its size is read from the header and checked before any pixel is decoded.
    let img = crate::images::read_image_bounded(path, max).map_err(|e| {
        bad(format!(
            "{e} (the model makes {w}x{h} images: give a PNG of that size)"
        ))
    })?;
    if (img.width() as usize, img.height() as usize) != (w, h) {
        return Err(bad(format!(
            "the image is {}x{}, the model makes {w}x{h} images",
            img.width(),
            img.height()
        )));
    }
    let values: Vec<f32> = match c {
        1 => img
            .to_luma8()
            .pixels()
            .map(|p| p.0[0] as f32 / 127.5 - 1.0)
            .collect(),
        3 => {
            let rgb = img.to_rgb8();
            (0..3)
                .flat_map(|k| {
                    rgb.pixels()
                        .map(move |p| p.0[k] as f32 / 127.5 - 1.0)
                        .collect::<Vec<_>>()
                })
                .collect()
        }
        _ => {
            return Err(bad(format!(
                "{c} channels: only 1 (gray) and 3 (RGB) load from PNG"
            )));
        }
    };
    Ok(Tensor::from_data(
        TensorData::new(values, [1, c, h, w]),
        device,
    ))
}

/// Spherical interpolation between the x_T of two seeds (drawn as [`SamplerConfig::sample`](crate::core::SamplerConfig::sample) draws
/// them, so the end frames equal plain sampling with those seeds under a deterministic
/// sampler), `frames` steps, each denoised by `sampler` (use a deterministic one: DDIM with
/// eta 0, DPM-Solver++ 2M/3M, Euler, Heun). Writes `interpolation.png` (a strip) and
/// `interpolation.gif` into `out` and returns the frames `[frames, c, h, w]`.
///
/// # Errors
/// [`SampleError::Invalid`] for fewer than 2 frames; sampler, model and I/O errors.
#[allow(clippy::too_many_arguments)]
pub fn interpolate_to_dir<P: NoisePredictor<4> + ?Sized>(
    diffusion: &GaussianDiffusion,
    model: &P,
    sampler: &SamplerConfig,
    seeds: (u64, u64),
    frames: usize,
    image: [usize; 3],
    device: &Device,
    out: &Path,
) -> Result<Tensor<4>, SampleError> {
    if frames < 2 {
        return Err(SampleError::Invalid(format!(
            "an interpolation needs at least 2 frames, got {frames}"
        )));
    }
    std::fs::create_dir_all(out).map_err(|source| SampleError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let [c, h, w] = image;
    let a = NoiseRng::new(seeds.0).normal([1, c, h, w], device);
    let b = NoiseRng::new(seeds.1).normal([1, c, h, w], device);
    let starts = (0..frames)
        .map(|i| slerp(a.clone(), b.clone(), i as f64 / (frames - 1) as f64))
        .collect::<Result<Vec<_>, _>>()?;
    let x_start = Tensor::cat(starts, 0); // [frames, c, h, w]
    let result = sampler.sample_from(diffusion, model, x_start, SampleOptions::new(seeds.0))?;
    let x = result.samples;
    images::save_grid(x.clone(), &out.join("interpolation.png"), frames, 2)?;
    let single: Vec<Tensor<4>> = (0..frames).map(|i| x.clone().narrow(0, i, 1)).collect();
    images::save_gif(&single, &out.join("interpolation.gif"), 1, 4, 200)?;
    Ok(x)
}
