//! The variational bound (eq. 5) evaluated as a negative log-likelihood in bits/dim, as the
//! original code's `calc_bpd_loop` does (Table 1's NLL column).

use burn::tensor::Tensor;

use crate::coef::to_vec;
use crate::diffusion::{GaussianDiffusion, VarianceType};
use crate::error::DdpmError;
use crate::predictor::NoisePredictor;
use crate::rng::NoiseRng;
use crate::sample_io::Clip;

/// KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats. Every argument
/// broadcasts against the others.
pub fn normal_kl<const D: usize>(
    mean1: Tensor<D>,
    logvar1: Tensor<D>,
    mean2: Tensor<D>,
    logvar2: Tensor<D>,
) -> Tensor<D> {
    // 0.5 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2))
    let diff = (mean1 - mean2).square();
    let ratio = (logvar1.clone() - logvar2.clone()).exp();
    let scaled = diff * logvar2.clone().neg().exp();
    (logvar2 - logvar1 + ratio + scaled)
        .sub_scalar(1.0)
        .mul_scalar(0.5)
}

/// A fast approximation of the standard normal CDF (Page 1977), as in the original code:
/// `0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn approx_standard_normal_cdf<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let cube = x.clone().powi_scalar(3).mul_scalar(0.044715);
    ((x + cube)
        .mul_scalar((2.0 / std::f64::consts::PI).sqrt())
        .tanh()
        .add_scalar(1.0))
    .mul_scalar(0.5)
}

/// log-likelihood, in nats, of data `x` in `[-1, 1]` quantized to 256 levels under a Gaussian
/// discretized into bins of width 2/255 (section 3.3, eq. 13), with open-ended edge bins.
///
/// # Shapes
/// `x`, `means`: `[batch, ...]`; `log_scales` broadcasts against them.
pub fn discretized_gaussian_log_likelihood<const D: usize>(
    x: Tensor<D>,
    means: Tensor<D>,
    log_scales: Tensor<D>,
) -> Tensor<D> {
    let centered = x.clone() - means;
    let inv_stdv = log_scales.neg().exp();
    let half_bin = 1.0 / 255.0;
    let cdf_plus =
        approx_standard_normal_cdf(centered.clone().add_scalar(half_bin) * inv_stdv.clone());
    let cdf_min = approx_standard_normal_cdf(centered.sub_scalar(half_bin) * inv_stdv);
    let log_cdf_plus = cdf_plus.clone().clamp_min(1e-12).log();
    let log_one_minus_cdf_min = cdf_min.clone().neg().add_scalar(1.0).clamp_min(1e-12).log();
    let log_cdf_delta = (cdf_plus - cdf_min).clamp_min(1e-12).log();
    let low = x.clone().lower_elem(-0.999);
    let high = x.greater_elem(0.999);
    log_cdf_delta
        .mask_where(high, log_one_minus_cdf_min)
        .mask_where(low, log_cdf_plus)
}

/// The terms of the variational bound for a batch, in bits/dim, averaged over the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BpdReport {
    /// Total NLL bound per example: prior + sum of all T terms.
    pub total_per_example: Vec<f64>,
    /// Mean of `total_per_example`.
    pub total: f64,
    /// L_T = KL(q(x_T | x_0) || N(0, I)), the prior term.
    pub prior: f64,
    /// L_0 = -log p(x_0 | x_1), the discretized decoder.
    pub decoder: f64,
    /// sum_{t > 1} L_{t-1}, the KL terms between posterior and model.
    pub kl_sum: f64,
    /// Every term L_{t-1} by 0-based index t (index 0 is the decoder).
    pub terms: Vec<f64>,
    /// Mean squared error of the x_0 estimate at each t.
    pub x0_mse: Vec<f64>,
}

fn mean_flat_bits<const D: usize>(x: Tensor<D>) -> Result<Vec<f64>, DdpmError> {
    let dims = x.dims();
    let batch = dims[0];
    let numel: usize = dims[1..].iter().product();
    let per = x.reshape([batch, numel]).mean_dim(1); // [batch, 1]
    Ok(to_vec(per)?
        .into_iter()
        .map(|v| v as f64 / std::f64::consts::LN_2)
        .collect())
}

impl GaussianDiffusion {
    /// The prior term L_T = KL(q(x_T | x_0) || N(0, I)) per example, in bits/dim. It does not
    /// depend on the model.
    ///
    /// # Errors
    /// An empty batch.
    pub fn prior_bpd<const D: usize>(&self, x0: Tensor<D>) -> Result<Vec<f64>, DdpmError> {
        let batch = x0.dims()[0];
        let last = self.num_timesteps() - 1;
        let q = self.q_mean_variance(x0, &vec![last; batch])?;
        let zeros = q.mean.zeros_like();
        let kl = normal_kl(q.mean, q.log_variance, zeros.clone(), zeros);
        mean_flat_bits(kl)
    }

    /// The bound's term at step `t` for each example, in bits/dim (eq. 5):
    /// `KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))` for t > 0, and the discretized
    /// decoder NLL `-log p_theta(x_0 | x_1)` at t = 0. Also returns the x_0 estimate.
    ///
    /// # Errors
    /// As [`GaussianDiffusion::p_mean_variance`].
    pub fn vb_terms_bpd<const D: usize, P: NoisePredictor<D> + ?Sized>(
        &self,
        model: &P,
        x0: Tensor<D>,
        x_t: Tensor<D>,
        t: usize,
        variance: VarianceType,
        clip: Clip,
    ) -> Result<(Vec<f64>, Tensor<D>), DdpmError> {
        let batch = x0.dims()[0];
        let ts = vec![t; batch];
        let true_posterior = self.q_posterior(x0.clone(), x_t.clone(), &ts)?;
        let p = self.p_mean_variance(model, x_t, &ts, variance, clip)?;
        let terms = if t == 0 {
            let ll = discretized_gaussian_log_likelihood(
                x0,
                p.gaussian.mean,
                p.gaussian.log_variance.mul_scalar(0.5),
            );
            mean_flat_bits(ll.neg())?
        } else {
            let kl = normal_kl(
                true_posterior.mean,
                true_posterior.log_variance,
                p.gaussian.mean,
                p.gaussian.log_variance,
            );
            mean_flat_bits(kl)?
        };
        Ok((terms, p.pred_x0))
    }

    /// The whole variational bound in bits/dim for data `x0` in `[-1, 1]` (quantized to 256
    /// levels): every term L_{T-1} .. L_0 plus the prior L_T, as `calc_bpd_loop` in the
    /// original code. `on_step(done, total)` is called after each of the T model evaluations.
    ///
    /// # Errors
    /// As [`vb_terms_bpd`](Self::vb_terms_bpd).
    pub fn calc_bpd_loop<const D: usize, P: NoisePredictor<D> + ?Sized>(
        &self,
        model: &P,
        x0: Tensor<D>,
        variance: VarianceType,
        clip: Clip,
        rng: &mut NoiseRng,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<BpdReport, DdpmError> {
        let dims = x0.dims();
        let batch = dims[0];
        if batch == 0 {
            return Err(DdpmError::EmptyBatch);
        }
        let total_steps = self.num_timesteps();
        let mut per_example = self.prior_bpd(x0.clone())?;
        let prior = mean(&per_example);
        let mut terms = vec![0.0; total_steps];
        let mut x0_mse = vec![0.0; total_steps];
        for (done, t) in (0..total_steps).rev().enumerate() {
            let noise = rng.normal(dims, &x0.device());
            let x_t = self.q_sample(x0.clone(), &vec![t; batch], noise)?;
            let (vals, pred_x0) = self.vb_terms_bpd(model, x0.clone(), x_t, t, variance, clip)?;
            for (acc, v) in per_example.iter_mut().zip(&vals) {
                *acc += v;
            }
            terms[t] = mean(&vals);
            let mse = (pred_x0 - x0.clone()).square().mean();
            x0_mse[t] = to_vec(mse)?[0] as f64;
            on_step(done + 1, total_steps);
        }
        let decoder = terms[0];
        let kl_sum = terms[1..].iter().sum();
        Ok(BpdReport {
            total: mean(&per_example),
            total_per_example: per_example,
            prior,
            decoder,
            kl_sum,
            terms,
            x0_mse,
        })
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}
