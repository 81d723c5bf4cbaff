//! The variational bound in bits/dim (Table 1's NLL).

use burn::tensor::Device;

use ddpm_core::NoiseRng;

use super::error::EvalError;
use crate::data::ImageSet;

/// The negative log-likelihood bound of a model on test images (Table 1's NLL), in bits/dim.
#[derive(Debug, Clone, PartialEq)]
pub struct NllReport {
    /// Images evaluated.
    pub images: usize,
    /// The bound: prior + decoder + KL terms.
    pub total: f64,
    /// L_T, the prior term.
    pub prior: f64,
    /// L_0, the discretized decoder.
    pub decoder: f64,
    /// The sum of the KL terms L_1 .. L_{T-1}.
    pub kl_sum: f64,
}

impl std::fmt::Display for NllReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "NLL bound on {} test images: {:.4} bits/dim",
            self.images, self.total
        )?;
        writeln!(f, "  prior L_T        {:.6}", self.prior)?;
        writeln!(f, "  decoder L_0      {:.4}", self.decoder)?;
        write!(f, "  sum of KL terms  {:.4}", self.kl_sum)
    }
}

/// Settings of [`nll`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NllOptions {
    /// Test images (the first `num` of the set).
    pub num: usize,
    /// Images per batch.
    pub batch: usize,
    /// Reverse-process variance (`FixedLarge`, as the paper's CIFAR10 NLL).
    pub variance: ddpm_core::VarianceType,
    /// Seed of the noise of each term.
    pub seed: u64,
}

impl Default for NllOptions {
    fn default() -> Self {
        Self {
            num: 256,
            batch: 64,
            variance: ddpm_core::VarianceType::FixedLarge,
            seed: 0,
        }
    }
}

/// The NLL bound in bits/dim of `model` on the first `options.num` images of `set` (all T
/// terms, the decoder and the prior). `on_step(done, total)` counts model calls.
///
/// # Errors
/// [`EvalError::Invalid`] for an empty set, `num` or `batch` of 0; model errors.
pub fn nll<P: ddpm_core::NoisePredictor<4> + ?Sized>(
    diffusion: &ddpm_core::GaussianDiffusion,
    model: &P,
    set: &ImageSet,
    options: NllOptions,
    device: &Device,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<NllReport, EvalError> {
    let num = options.num.min(set.count);
    if num == 0 || options.batch == 0 {
        return Err(EvalError::Invalid(format!(
            "num ({}) and batch ({}) must be at least 1, and the set non-empty ({} images)",
            options.num, options.batch, set.count
        )));
    }
    let batches: Vec<Vec<usize>> = (0..num)
        .collect::<Vec<_>>()
        .chunks(options.batch)
        .map(<[usize]>::to_vec)
        .collect();
    let total_calls = batches.len() * diffusion.num_timesteps();
    let mut rng = NoiseRng::new(options.seed);
    let mut acc = [0.0; 4];
    for (b, idx) in batches.iter().enumerate() {
        let done_before = b * diffusion.num_timesteps();
        let mut progress = |done: usize, _: usize| on_step(done_before + done, total_calls);
        let r = diffusion.calc_bpd_loop(
            model,
            set.batch(idx, device),
            options.variance,
            ddpm_core::Clip::unit(),
            &mut rng,
            &mut progress,
        )?;
        let w = idx.len() as f64 / num as f64;
        for (slot, v) in acc.iter_mut().zip([r.total, r.prior, r.decoder, r.kl_sum]) {
            *slot += w * v;
        }
    }
    Ok(NllReport {
        images: num,
        total: acc[0],
        prior: acc[1],
        decoder: acc[2],
        kl_sum: acc[3],
    })
}
