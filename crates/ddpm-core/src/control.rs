//! Control of the start and of known pixels: SDEdit / img2img (Meng et al. 2022), RePaint
//! inpainting (Lugmayr et al. 2022) and spherical interpolation of x_T.

use burn::tensor::Tensor;

use crate::diffusion::{GaussianDiffusion, VarianceType};
use crate::error::DdpmError;
use crate::predictor::NoisePredictor;
use crate::rng::NoiseRng;
use crate::sample_io::{Clip, SampleOptions, SampleOutput};
use crate::sampler_config::SamplerConfig;
use crate::scheduler::{DdpmScheduler, Scheduler, denoise};
use crate::spacing::TimestepSpacing;

impl SamplerConfig {
    /// SDEdit (Meng et al. 2022): noises `image` to step `t_s = strength * T` with
    /// [`q_sample`](GaussianDiffusion::q_sample) (eq. 4) and runs this sampler from there. The
    /// run starts at the first of the sampler's timesteps `<= t_s`, and the image is noised to
    /// exactly that timestep. `strength = 0` returns the image itself; when the run starts at the
    /// sampler's first step (`strength = 1`), x_T is pure noise drawn exactly as
    /// [`SamplerConfig::sample`](crate::SamplerConfig::sample) draws it, so the result equals plain
    /// sampling with the same seed, bit for bit.
    ///
    /// # Shapes
    /// `image`: `[batch, ...]` in the data range; output as `image`.
    ///
    /// # Errors
    /// [`DdpmError::InvalidConfig`] for a strength outside `[0, 1]`; as
    /// [`sample_from`](Self::sample_from).
    pub fn img2img<const D: usize, P: NoisePredictor<D> + ?Sized>(
        &self,
        diffusion: &GaussianDiffusion,
        model: &P,
        image: Tensor<D>,
        strength: f64,
        mut options: SampleOptions<'_>,
    ) -> Result<SampleOutput<D>, DdpmError> {
        if !(0.0..=1.0).contains(&strength) {
            return Err(DdpmError::InvalidConfig(format!(
                "strength must lie in [0, 1] (0: the image itself, 1: plain sampling), got \
                 {strength}"
            )));
        }
        crate::sample_io::check_shape(&image.dims())?;
        if strength == 0.0 {
            return Ok(SampleOutput {
                samples: image,
                trajectory: Vec::new(),
            });
        }
        let mut scheduler = self.build::<D>(diffusion)?;
        let t_max = diffusion.num_timesteps() - 1;
        let t_s = ((strength * diffusion.num_timesteps() as f64).round() as usize).min(t_max);
        let start = scheduler.start_index(t_s);
        let mut rng = NoiseRng::new(options.seed);
        let noise = rng.normal(image.dims(), &image.device());
        let x_start = match scheduler.timesteps().get(start) {
            _ if start == 0 => noise,
            Some(&t) => diffusion.q_sample(image, &vec![t; noise.dims()[0]], noise)?,
            None => {
                return Ok(SampleOutput {
                    samples: image,
                    trajectory: Vec::new(),
                });
            }
        };
        options.start_index = start;
        denoise(scheduler.as_mut(), model, x_start, &mut rng, &mut options)
    }
}

/// Settings of [`inpaint`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InpaintConfig {
    /// Ancestral steps (the diffusion respaced to this many when below T).
    pub steps: usize,
    /// RePaint's resampling: after each step, jump back one step (re-noise with
    /// `q(x_t | x_{t-1})`, eq. 2) and redo it, this many times (0: plain replacement).
    pub resample: usize,
    /// Clipping of the x_0 estimate.
    pub clip: Clip,
    /// The reverse-process variance of each step.
    pub variance: VarianceType,
}

impl Default for InpaintConfig {
    fn default() -> Self {
        Self {
            steps: 250,
            resample: 4,
            clip: Clip::unit(),
            variance: VarianceType::FixedLarge,
        }
    }
}

/// RePaint inpainting (Lugmayr et al. 2022, Algorithm 1): ancestral sampling (Algorithm 2)
/// where, at every step, the known pixels are replaced by the known image noised to that
/// step with `q_sample` (eq. 4), `x_{t-1} = m * known_{t-1} + (1 - m) * x_{t-1}`; with
/// `resample = r`, each step is undone by one forward step `q(x_t | x_{t-1})` (eq. 2) and
/// redone `r` times, which lets the unknown region agree with the known one. The last step
/// uses the known image itself, so the known pixels of the result equal the given ones exactly.
///
/// # Shapes
/// `known`, `mask`: `[batch, ...]`; `mask` is 1 where the pixel is known, 0 where it is to be
/// generated (values in between blend).
///
/// # Errors
/// [`DdpmError::ShapeMismatch`] for a mask of another shape, [`DdpmError::InvalidConfig`] for
/// 0 steps or more than T; model errors.
pub fn inpaint<const D: usize, P: NoisePredictor<D> + ?Sized>(
    diffusion: &GaussianDiffusion,
    model: &P,
    known: Tensor<D>,
    mask: Tensor<D>,
    config: InpaintConfig,
    seed: u64,
) -> Result<Tensor<D>, DdpmError> {
    crate::coef::same_shape("inpainting mask", &known.dims(), &mask.dims())?;
    crate::sample_io::check_shape(&known.dims())?;
    let t_full = diffusion.num_timesteps();
    if config.steps == 0 || config.steps > t_full {
        return Err(DdpmError::InvalidConfig(format!(
            "inpainting steps must lie in 1..={t_full}, got {}",
            config.steps
        )));
    }
    // The reverse step is the DDPM scheduler's own (Algorithm 2 on the kept steps); the
    // forward jumps and the noised known image use the same respaced chain.
    let mut scheduler = DdpmScheduler::new(
        diffusion,
        Some(config.steps),
        TimestepSpacing::Linspace,
        config.variance,
        config.clip,
    )?;
    let chain = if config.steps < t_full {
        diffusion.respaced(config.steps)?
    } else {
        diffusion.clone()
    };
    let dims = known.dims();
    let device = known.device();
    let batch = dims[0];
    let mut rng = NoiseRng::new(seed);
    let keep = mask.clone();
    let free = mask.neg().add_scalar(1.0);
    let mut x = rng.normal(dims, &device); // x_T
    let calls = chain.num_timesteps();
    for (index, t) in (0..calls).rev().enumerate() {
        for u in 0..=config.resample {
            // A resampled step is run again from its own index: a fresh run of the scheduler
            // (DDPM keeps no history between steps).
            Scheduler::<D>::reset(&mut scheduler);
            let output = chain.model_output(model, x.clone(), &vec![t; batch])?;
            let generated = scheduler
                .step(output, index, x.clone(), &mut rng)?
                .prev_sample;
            let known_prev = if t == 0 {
                known.clone()
            } else {
                chain.q_sample(
                    known.clone(),
                    &vec![t - 1; batch],
                    rng.normal(dims, &device),
                )?
            };
            x = keep.clone() * known_prev + free.clone() * generated; // x_{t-1}
            if u < config.resample && t > 0 {
                // Jump back: x_t ~ q(x_t | x_{t-1}).
                x = chain.q_step(x, &vec![t; batch], rng.normal(dims, &device))?;
            }
        }
    }
    Ok(x)
}

/// Spherical interpolation between two x_T (Song et al. 2021's DDIM interpolation):
/// `sin((1 - a) theta) / sin(theta) x_a + sin(a theta) / sin(theta) x_b` per example, with
/// `theta` the angle between them; linear when they are (nearly) parallel.
///
/// # Shapes
/// `a`, `b`: `[batch, ...]`; output as `a`.
///
/// # Errors
/// [`DdpmError::ShapeMismatch`] when `a` and `b` differ in shape.
pub fn slerp<const D: usize>(
    a: Tensor<D>,
    b: Tensor<D>,
    alpha: f64,
) -> Result<Tensor<D>, DdpmError> {
    crate::coef::same_shape("slerp", &a.dims(), &b.dims())?;
    let dims = a.dims();
    let n = dims[0];
    let numel: usize = dims[1..].iter().product();
    let read = |x: Tensor<D>| -> Result<Vec<f32>, DdpmError> {
        x.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| DdpmError::Data(format!("{e:?}")))
    };
    let device = a.device();
    let (va, vb) = (read(a)?, read(b)?);
    let mut out = Vec::with_capacity(va.len());
    for (ra, rb) in va.chunks(numel).zip(vb.chunks(numel)) {
        let dot: f64 = ra.iter().zip(rb).map(|(x, y)| *x as f64 * *y as f64).sum();
        let na: f64 = ra.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = rb.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let cos = (dot / (na * nb).max(f64::MIN_POSITIVE)).clamp(-1.0, 1.0);
        let theta = cos.acos();
        let (wa, wb) = if theta.sin().abs() < 1e-6 {
            (1.0 - alpha, alpha)
        } else {
            (
                ((1.0 - alpha) * theta).sin() / theta.sin(),
                (alpha * theta).sin() / theta.sin(),
            )
        };
        out.extend(
            ra.iter()
                .zip(rb)
                .map(|(x, y)| (wa * *x as f64 + wb * *y as f64) as f32),
        );
    }
    let _ = n;
    Ok(Tensor::from_data(
        burn::tensor::TensorData::new(out, dims),
        &device,
    ))
}
