//! Fast samplers of the probability-flow ODE (and its SDE variant): DPM-Solver++ multistep
//! (Lu et al. 2022) and the Euler and Heun methods of EDM (Karras et al. 2022).
//!
//! Notation: `alpha_t = sqrt(abar_t)`, `sigma_t = sqrt(1 - abar_t)`, log-SNR
//! `lambda_t = log(alpha_t / sigma_t)`; EDM's noise level `s_t = sigma_t / alpha_t` and its
//! sample `x / alpha_t`. The schedulers keep `x` in the diffusion's own (variance-preserving)
//! scale, so the model is called on exactly what it was trained on.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::diffusion::GaussianDiffusion;
use crate::error::DdpmError;
use crate::rng::NoiseRng;
use crate::sample_io::Clip;
use crate::scheduler::{Cursor, Scheduler, StepOutput, begin_step};
use crate::spacing::{TimestepSpacing, log_snr};

/// The order of a multistep solver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SolverOrder {
    /// First order (DDIM's update in DPM-Solver++ form).
    First,
    /// Second order: DPM-Solver++(2M), Algorithm 2 of Lu et al.
    #[default]
    Second,
    /// Third order: DPM-Solver++(3M).
    Third,
}

impl SolverOrder {
    fn as_usize(self) -> usize {
        match self {
            SolverOrder::First => 1,
            SolverOrder::Second => 2,
            SolverOrder::Third => 3,
        }
    }
}

impl TryFrom<usize> for SolverOrder {
    type Error = DdpmError;
    fn try_from(order: usize) -> Result<Self, DdpmError> {
        match order {
            1 => Ok(SolverOrder::First),
            2 => Ok(SolverOrder::Second),
            3 => Ok(SolverOrder::Third),
            _ => Err(DdpmError::InvalidSampler(format!(
                "solver order must be 1, 2 or 3, got {order}"
            ))),
        }
    }
}

/// Deterministic (ODE) or stochastic (SDE) DPM-Solver++.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SolverVariant {
    /// The probability-flow ODE (`dpmsolver++`).
    #[default]
    Ode,
    /// The reverse SDE solved with the same exponential integrator (`sde-dpmsolver++`, Lu et
    /// al. 2022b, section 5 of the DPM-Solver++ paper): fresh noise each step.
    Sde,
}

/// The exponential-integrator weights of a step of length `h = lambda_t - lambda_s` for the
/// terms of the Taylor expansion of x_0 in lambda: `phi_k = int_0^h w(u) (h - u)^k / (k! h^k) du`
/// with `w(u) = e^(-u)` (ODE) or `2 e^(-2u)` (SDE). `h = inf` (the last step, to abar = 1)
/// gives `(1, 1, 1/2)`.
pub fn exponential_weights(h: f64, variant: SolverVariant) -> [f64; 3] {
    if h.is_infinite() {
        return [1.0, 1.0, 0.5];
    }
    // For the SDE the integrals are the ODE's with rate 2: phi_k(h; 2) in terms of g = 2h.
    let g = match variant {
        SolverVariant::Ode => h,
        SolverVariant::Sde => 2.0 * h,
    };
    let c0 = -(-g).exp_m1(); // 1 - e^-g
    if g < 1e-4 {
        // Series: c1 = g/2 - g^2/6, c2 = g/6 - g^2/24 (no cancellation).
        return [c0, g / 2.0 - g * g / 6.0, g / 6.0 - g * g / 24.0];
    }
    [c0, 1.0 - c0 / g, 0.5 - 1.0 / g + c0 / (g * g)]
}

/// DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling
/// of Diffusion Probabilistic Models"), in data-prediction form.
///
/// Each step goes from `s` to the next timestep `t` with the exact integral of the linear
/// part and a Taylor expansion of the model's x_0 estimate in lambda, its derivatives taken
/// from the previous steps' estimates (`r = h_prev / h`):
/// - order 1: `x_t = (sigma_t / sigma_s) x_s + alpha_t phi_0 m_0`, DDIM's update;
/// - 2M (Algorithm 2): `... + alpha_t phi_0 (m_0 + D_1 / 2)`, `D_1 = (m_0 - m_1) / r_0`;
/// - 3M: `... + alpha_t (phi_0 m_0 + phi_1 D_1 + phi_2 D_2)` with `D_1`, `D_2` from the
///   quadratic through the last three estimates (the Taylor-consistent weights of
///   [`exponential_weights`]; measured to converge at third order in the test
///   `solvers_converge_at_their_order`).
///
/// The SDE variant multiplies `x_s` by `e^-h` and adds `sigma_t sqrt(1 - e^(-2h)) z`. The
/// first step has no history (order 1); with fewer than 15 steps the second-to-last step is
/// at most second order and the last one returns the x_0 estimate (`lower_order_final`).
#[derive(Debug, Clone)]
pub struct DpmSolverScheduler<const D: usize> {
    base: GaussianDiffusion,
    timesteps: Vec<usize>,
    lambda: Vec<f64>,
    order: SolverOrder,
    variant: SolverVariant,
    lower_order_final: bool,
    clip: Clip,
    /// (lambda, x_0 estimate) of the previous calls, newest last (at most 3).
    history: Vec<(f64, Tensor<D>)>,
    cursor: Cursor,
}

impl<const D: usize> DpmSolverScheduler<D> {
    /// `steps` model calls on timesteps chosen by `spacing` ([`TimestepSpacing::LogSnr`] is
    /// the measured best, docs/results.md).
    ///
    /// # Errors
    /// [`DdpmError::InvalidSampler`] for a step count outside `1..=T` or a `clip` that fails
    /// [`Clip::validate`].
    pub fn new(
        diffusion: &GaussianDiffusion,
        steps: usize,
        spacing: TimestepSpacing,
        order: SolverOrder,
        variant: SolverVariant,
        clip: Clip,
    ) -> Result<Self, DdpmError> {
        clip.validate()?;
        let kept = spacing.timesteps(diffusion.schedule(), steps)?;
        Ok(Self {
            base: diffusion.clone(),
            timesteps: kept.into_iter().rev().collect(),
            lambda: log_snr(diffusion.schedule()),
            order,
            variant,
            lower_order_final: true,
            clip,
            history: Vec::new(),
            cursor: Cursor::default(),
        })
    }

    /// Turns the lowering of the order on the last steps of short runs on or off (on by
    /// default, as diffusers: it stabilises runs of fewer than 15 steps).
    pub fn with_lower_order_final(mut self, on: bool) -> Self {
        self.lower_order_final = on;
        self
    }
}

impl<const D: usize> Scheduler<D> for DpmSolverScheduler<D> {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }
    fn diffusion(&self) -> &GaussianDiffusion {
        &self.base
    }
    fn reset(&mut self) {
        self.history.clear();
        self.cursor.reset();
    }

    fn step(
        &mut self,
        model_output: Tensor<D>,
        index: usize,
        x_t: Tensor<D>,
        rng: &mut NoiseRng,
    ) -> Result<StepOutput<D>, DdpmError> {
        let n = self.timesteps.len();
        begin_step(&mut self.cursor, n, index, &model_output, &x_t)?;
        let shape = x_t.dims();
        let s = self.timesteps[index];
        let ts = vec![s; shape[0]];
        let (_, m0) = self
            .base
            .split_output(x_t.clone(), &ts, model_output, self.clip);
        // The last call goes to abar = 1 (lambda = inf): the update is the x_0 estimate.
        if index + 1 == n {
            return Ok(StepOutput {
                prev_sample: m0.clone(),
                pred_x0: m0,
            });
        }
        let abar = self.base.schedule().alphas_cumprod();
        let t = self.timesteps[index + 1];
        let (lambda_s, lambda_t) = (self.lambda[s], self.lambda[t]);
        let h = lambda_t - lambda_s;
        let (alpha_t, sigma_t, sigma_s) = (
            abar[t].sqrt(),
            (1.0 - abar[t]).sqrt(),
            (1.0 - abar[s]).sqrt(),
        );
        self.history.push((lambda_s, m0.clone()));
        if self.history.len() > 3 {
            self.history.remove(0);
        }
        let mut order = self.order.as_usize().min(self.history.len());
        if self.lower_order_final && n < 15 && index + 2 == n {
            order = order.min(2);
        }
        let [c0, c1, c2] = exponential_weights(h, self.variant);
        let k = self.history.len();
        let data_term = match order {
            1 => m0.clone().mul_scalar(c0),
            2 => {
                let (l1, m1) = &self.history[k - 2];
                let r0 = (lambda_s - l1) / h;
                let d1 = (m0.clone() - m1.clone()).div_scalar(r0);
                // Algorithm 2 of Lu et al.: phi_0 (m_0 + D_1 / 2).
                (m0.clone() + d1.mul_scalar(0.5)).mul_scalar(c0)
            }
            _ => {
                let (l1, m1) = &self.history[k - 2];
                let (l2, m2) = &self.history[k - 3];
                let (r0, r1) = ((lambda_s - l1) / h, (l1 - l2) / h);
                let d1_0 = (m0.clone() - m1.clone()).div_scalar(r0);
                let d1_1 = (m1.clone() - m2.clone()).div_scalar(r1);
                let diff = d1_0.clone() - d1_1;
                // h f'(lambda_s) and h^2 f''(lambda_s) from the quadratic through the three.
                let d1 = d1_0 + diff.clone().mul_scalar(r0 / (r0 + r1));
                let d2 = diff.mul_scalar(2.0 / (r0 + r1));
                m0.clone().mul_scalar(c0) + d1.mul_scalar(c1) + d2.mul_scalar(c2)
            }
        };
        let prev_sample = match self.variant {
            SolverVariant::Ode => x_t.mul_scalar(sigma_t / sigma_s) + data_term.mul_scalar(alpha_t),
            SolverVariant::Sde => {
                let noise = rng.normal(shape, &m0.device());
                x_t.mul_scalar(sigma_t / sigma_s * (-h).exp())
                    + data_term.mul_scalar(alpha_t)
                    + noise.mul_scalar(sigma_t * (-(-2.0 * h).exp_m1()).sqrt())
            }
        };
        Ok(StepOutput {
            prev_sample,
            pred_x0: m0,
        })
    }
}

/// The integrator of EDM's sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EdmMethod {
    /// Euler: one model call per step (identical to DDIM with eta = 0).
    Euler,
    /// Heun's second-order method (EDM's Algorithm 1): two calls per step, Euler on the last.
    #[default]
    Heun,
}

/// Euler and Heun on the probability-flow ODE in EDM's parameterization (Karras et al.
/// 2022, eq. 4 and Algorithm 1): with `s = sqrt((1 - abar) / abar)` and `y = x / sqrt(abar)`,
/// `dy/ds = (y - D(y; s)) / s`, `D` the model's x_0 estimate. The steps go through the
/// chosen timesteps' noise levels and end at s = 0, where `y` is the x_0 estimate.
///
/// Heun's [`timesteps`](Scheduler::timesteps) list each inner timestep twice: the corrector
/// of one step and the predictor of the next (2n - 1 calls for n steps, as diffusers).
#[derive(Debug, Clone)]
pub struct EdmScheduler<const D: usize> {
    base: GaussianDiffusion,
    /// The n steps' timesteps, decreasing.
    levels: Vec<usize>,
    /// The model calls' timesteps.
    calls: Vec<usize>,
    method: EdmMethod,
    clip: Clip,
    /// Heun: (y_i, d_i) of the step whose corrector comes next.
    pending: Option<(Tensor<D>, Tensor<D>)>,
    cursor: Cursor,
}

impl<const D: usize> EdmScheduler<D> {
    /// `steps` noise levels chosen by `spacing` (`TimestepSpacing::karras()` is EDM's).
    ///
    /// # Errors
    /// [`DdpmError::InvalidSampler`] for a step count outside `1..=T` or a `clip` that fails
    /// [`Clip::validate`].
    pub fn new(
        diffusion: &GaussianDiffusion,
        steps: usize,
        spacing: TimestepSpacing,
        method: EdmMethod,
        clip: Clip,
    ) -> Result<Self, DdpmError> {
        clip.validate()?;
        let levels: Vec<usize> = spacing
            .timesteps(diffusion.schedule(), steps)?
            .into_iter()
            .rev()
            .collect();
        let calls = match method {
            EdmMethod::Euler => levels.clone(),
            EdmMethod::Heun => {
                let mut c = vec![levels[0]];
                for &t in &levels[1..] {
                    c.push(t);
                    c.push(t);
                }
                c
            }
        };
        Ok(Self {
            base: diffusion.clone(),
            levels,
            calls,
            method,
            clip,
            pending: None,
            cursor: Cursor::default(),
        })
    }

    /// `s_t = sqrt((1 - abar_t) / abar_t)` of step level `i`; 0 past the last.
    fn noise_level(&self, i: usize) -> f64 {
        match self.levels.get(i) {
            Some(&t) => {
                let a = self.base.schedule().alphas_cumprod()[t];
                ((1.0 - a) / a).sqrt()
            }
            None => 0.0,
        }
    }

    fn alpha(&self, i: usize) -> f64 {
        self.levels
            .get(i)
            .map_or(1.0, |&t| self.base.schedule().alphas_cumprod()[t].sqrt())
    }

    /// Which step a call belongs to and whether it is Heun's corrector.
    fn role(&self, index: usize) -> (usize, bool) {
        match self.method {
            EdmMethod::Euler => (index, false),
            EdmMethod::Heun => (index / 2, index % 2 == 1),
        }
    }
}

impl<const D: usize> Scheduler<D> for EdmScheduler<D> {
    fn timesteps(&self) -> &[usize] {
        &self.calls
    }
    fn diffusion(&self) -> &GaussianDiffusion {
        &self.base
    }
    fn reset(&mut self) {
        self.pending = None;
        self.cursor.reset();
    }
    /// Starts at a predictor call (an even index for Heun).
    fn start_index(&self, t: usize) -> usize {
        match self.levels.iter().position(|&s| s <= t) {
            Some(i) => match self.method {
                EdmMethod::Euler => i,
                EdmMethod::Heun => 2 * i,
            },
            None => self.calls.len(),
        }
    }

    fn step(
        &mut self,
        model_output: Tensor<D>,
        index: usize,
        x_t: Tensor<D>,
        _rng: &mut NoiseRng,
    ) -> Result<StepOutput<D>, DdpmError> {
        let n = self.calls.len();
        let (i, corrector) = self.role(index);
        if corrector && self.pending.is_none() {
            return Err(DdpmError::InvalidSampler(format!(
                "call {index} is Heun's corrector of step {i}: run its predictor (call {}) first",
                index - 1
            )));
        }
        begin_step(&mut self.cursor, n, index, &model_output, &x_t)?;
        let shape = x_t.dims();
        let t = self.calls[index];
        let ts = vec![t; shape[0]];
        let (_, denoised) = self
            .base
            .split_output(x_t.clone(), &ts, model_output, self.clip);
        let (s_i, s_next) = (self.noise_level(i), self.noise_level(i + 1));
        let dt = s_next - s_i;
        let prev_sample = if corrector {
            // Heun (EDM Algorithm 1, lines 7-8): average of the two slopes from y_i.
            let (y_i, d_i) = self.pending.take().expect("checked above");
            let a_next = self.alpha(i + 1);
            let y_pred = x_t.div_scalar(a_next);
            let d_next = (y_pred - denoised.clone()).div_scalar(s_next);
            let y_next = y_i + (d_i + d_next).mul_scalar(dt / 2.0);
            y_next.mul_scalar(a_next)
        } else {
            // Euler (line 5): y_{i+1} = y_i + (s_{i+1} - s_i) (y_i - D) / s_i.
            let y_i = x_t.div_scalar(self.alpha(i));
            if s_next == 0.0 {
                // To s = 0 the Euler step lands on D itself: return it without 0 * inf.
                denoised.clone()
            } else {
                let d_i = (y_i.clone() - denoised.clone()).div_scalar(s_i);
                let y_next = y_i.clone() + d_i.clone().mul_scalar(dt);
                if self.method == EdmMethod::Heun {
                    self.pending = Some((y_i, d_i));
                }
                y_next.mul_scalar(self.alpha(i + 1))
            }
        };
        Ok(StepOutput {
            prev_sample,
            pred_x0: denoised,
        })
    }
}
