//! Noise schedules: the fixed variances beta_1..beta_T of the forward process and every table
//! derived from them, computed once in f64 on the CPU.

use serde::{Deserialize, Serialize};

use crate::error::DdpmError;

/// How the betas of the forward process are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BetaSchedule {
    /// Betas spaced linearly from `start` to `end` (Ho et al. 2020, section 4: 1e-4 to 0.02).
    Linear {
        /// beta_1.
        start: f64,
        /// beta_T.
        end: f64,
    },
    /// The cosine schedule of Nichol & Dhariwal (2021), eq. 17:
    /// `abar(t) = f(t) / f(0)`, `f(t) = cos(((t/T + s) / (1 + s)) * pi/2)^2`, betas clipped at
    /// `max_beta`.
    Cosine {
        /// Offset `s` (0.008 in the paper).
        s: f64,
        /// Upper clip of each beta (0.999 in the paper).
        max_beta: f64,
    },
    /// A sigmoid schedule (Jabri et al. 2022, as in lucidrains' `sigmoid_beta_schedule`):
    /// `abar(t)` follows a rescaled `-sigmoid((t (end - start) + start) / tau)`.
    Sigmoid {
        /// Left end of the sigmoid's input range (-3 by default).
        start: f64,
        /// Right end of the sigmoid's input range (3 by default).
        end: f64,
        /// Temperature (1 by default).
        tau: f64,
        /// Upper clip of each beta (0.999).
        max_beta: f64,
    },
    /// Betas given explicitly, one per timestep.
    Custom(Vec<f64>),
}

impl BetaSchedule {
    /// The paper's schedule: linear from 1e-4 to 0.02.
    pub fn paper() -> Self {
        BetaSchedule::Linear {
            start: 1e-4,
            end: 0.02,
        }
    }

    /// The cosine schedule with the parameters of Nichol & Dhariwal (s = 0.008, max 0.999).
    pub fn cosine() -> Self {
        BetaSchedule::Cosine {
            s: 0.008,
            max_beta: 0.999,
        }
    }
}

/// Parses `linear` ([`BetaSchedule::paper`]) and `cosine` ([`BetaSchedule::cosine`]).
impl std::str::FromStr for BetaSchedule {
    type Err = DdpmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "linear" => Ok(Self::paper()),
            "cosine" => Ok(Self::cosine()),
            other => Err(DdpmError::InvalidConfig(format!(
                "unknown beta schedule '{other}': choose linear (the paper's 1e-4..0.02) or \
                 cosine (Nichol & Dhariwal)"
            ))),
        }
    }
}

/// The most diffusion steps T a schedule may have (2^20; the paper uses 1000, continuous-time
/// discretisations rarely more than 10^4).
pub const MAX_TIMESTEPS: usize = 1 << 20;

/// The validated input of a [`NoiseSchedule`]: a [`BetaSchedule`] and the number of steps T.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    /// How the betas are chosen.
    pub beta_schedule: BetaSchedule,
    /// The number of diffusion steps T (1000 in the paper).
    pub num_timesteps: usize,
}

impl Default for ScheduleConfig {
    /// The paper's setting: T = 1000, linear betas from 1e-4 to 0.02.
    fn default() -> Self {
        Self {
            beta_schedule: BetaSchedule::paper(),
            num_timesteps: 1000,
        }
    }
}

impl ScheduleConfig {
    /// A config with the given schedule and T.
    pub fn new(beta_schedule: BetaSchedule, num_timesteps: usize) -> Self {
        Self {
            beta_schedule,
            num_timesteps,
        }
    }

    /// Builds the schedule's tables.
    ///
    /// # Errors
    /// [`DdpmError`] when T = 0 or above [`MAX_TIMESTEPS`], a parameter is NaN or out of
    /// range, linear `start > end`, a custom list is empty or of the wrong length, or any
    /// resulting beta is outside (0, 1).
    pub fn build(&self) -> Result<NoiseSchedule, DdpmError> {
        NoiseSchedule::new(self)
    }

    fn betas(&self) -> Result<Vec<f64>, DdpmError> {
        let t_max = self.num_timesteps;
        let bad = |msg: String| Err(DdpmError::InvalidSchedule(msg));
        if let BetaSchedule::Custom(b) = &self.beta_schedule {
            if b.is_empty() {
                return Err(DdpmError::EmptyCustomSchedule);
            }
            if t_max != 0 && b.len() != t_max {
                return Err(DdpmError::CustomLengthMismatch {
                    len: b.len(),
                    num_timesteps: t_max,
                });
            }
        }
        if t_max == 0 {
            return Err(DdpmError::ZeroTimesteps);
        }
        // Bounded before any table is allocated (each step holds about ten f64s).
        if t_max > MAX_TIMESTEPS {
            return bad(format!(
                "T = {t_max} diffusion steps is more than the {MAX_TIMESTEPS} a schedule may have"
            ));
        }
        let n = t_max as f64;
        match &self.beta_schedule {
            BetaSchedule::Linear { start, end } => {
                if !start.is_finite() || !end.is_finite() {
                    return bad(format!("linear start {start} and end {end} must be finite"));
                }
                if start > end {
                    return bad(format!(
                        "linear start {start} is larger than end {end}: betas must not decrease"
                    ));
                }
                if t_max == 1 {
                    return Ok(vec![*start]);
                }
                Ok((0..t_max)
                    .map(|i| start + (end - start) * i as f64 / (n - 1.0))
                    .collect())
            }
            BetaSchedule::Cosine { s, max_beta } => {
                if !(s.is_finite() && *s >= 0.0) {
                    return bad(format!("cosine offset s = {s} must be finite and >= 0"));
                }
                if !(*max_beta > 0.0 && *max_beta < 1.0) {
                    return bad(format!("cosine max_beta = {max_beta} must lie in (0, 1)"));
                }
                let f = |t: f64| {
                    (((t / n) + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                Ok((0..t_max)
                    .map(|i| (1.0 - f(i as f64 + 1.0) / f(i as f64)).min(*max_beta))
                    .collect())
            }
            BetaSchedule::Sigmoid {
                start,
                end,
                tau,
                max_beta,
            } => {
                if !(start.is_finite() && end.is_finite() && start < end) {
                    return bad(format!(
                        "sigmoid start {start} must be finite and below end {end}"
                    ));
                }
                if !(tau.is_finite() && *tau > 0.0) {
                    return bad(format!("sigmoid tau = {tau} must be finite and > 0"));
                }
                if !(*max_beta > 0.0 && *max_beta < 1.0) {
                    return bad(format!("sigmoid max_beta = {max_beta} must lie in (0, 1)"));
                }
                let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
                let v_start = sigmoid(start / tau);
                let v_end = sigmoid(end / tau);
                let abar = |i: f64| {
                    let t = i / n;
                    (v_end - sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)
                };
                Ok((0..t_max)
                    .map(|i| (1.0 - abar(i as f64 + 1.0) / abar(i as f64)).clamp(0.0, *max_beta))
                    .collect())
            }
            BetaSchedule::Custom(b) => Ok(b.clone()),
        }
    }
}

/// Every table of the forward process, in f64, indexed by the 0-based timestep `t` in `0..T`
/// (index `t` is the paper's step `t + 1`).
///
/// Built with [`ScheduleConfig::build`] or [`NoiseSchedule::new`]; the constructor validates
/// its input, so a `NoiseSchedule` always holds betas in (0, 1).
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alphas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    alphas_cumprod_prev: Vec<f64>,
    sqrt_alphas_cumprod: Vec<f64>,
    sqrt_one_minus_alphas_cumprod: Vec<f64>,
    sqrt_recip_alphas_cumprod: Vec<f64>,
    sqrt_recipm1_alphas_cumprod: Vec<f64>,
    one_minus_alphas_cumprod: Vec<f64>,
    log_one_minus_alphas_cumprod: Vec<f64>,
    sqrt_alphas: Vec<f64>,
    sqrt_betas: Vec<f64>,
    sqrt_snr: Vec<f64>,
    posterior_variance: Vec<f64>,
    posterior_log_variance_clipped: Vec<f64>,
    posterior_mean_coef1: Vec<f64>,
    posterior_mean_coef2: Vec<f64>,
}

impl NoiseSchedule {
    /// Builds and validates the tables of `config`.
    ///
    /// # Errors
    /// See [`ScheduleConfig::build`].
    pub fn new(config: &ScheduleConfig) -> Result<Self, DdpmError> {
        Self::from_betas(config.betas()?)
    }

    /// Builds the tables from explicit betas (each in (0, 1), at least one).
    ///
    /// # Errors
    /// [`DdpmError::EmptyCustomSchedule`] or [`DdpmError::BetaOutOfRange`].
    pub fn from_betas(betas: Vec<f64>) -> Result<Self, DdpmError> {
        if betas.is_empty() {
            return Err(DdpmError::EmptyCustomSchedule);
        }
        if betas.len() > MAX_TIMESTEPS {
            return Err(DdpmError::InvalidSchedule(format!(
                "{} betas is more than the {MAX_TIMESTEPS} steps a schedule may have",
                betas.len()
            )));
        }
        for (index, &value) in betas.iter().enumerate() {
            // `!(0 < b < 1)` also rejects NaN.
            if !(value > 0.0 && value < 1.0) {
                return Err(DdpmError::BetaOutOfRange { index, value });
            }
        }
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = Vec::with_capacity(betas.len());
        let mut acc = 1.0;
        for a in &alphas {
            acc *= a;
            alphas_cumprod.push(acc);
        }
        let alphas_cumprod_prev: Vec<f64> = std::iter::once(1.0)
            .chain(alphas_cumprod[..alphas_cumprod.len() - 1].iter().copied())
            .collect();
        let map = |f: &dyn Fn(usize) -> f64| (0..betas.len()).map(f).collect::<Vec<f64>>();
        let ab = &alphas_cumprod;
        let abp = &alphas_cumprod_prev;
        // Eq. 7: beta tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t.
        let posterior_variance = map(&|t| betas[t] * (1.0 - abp[t]) / (1.0 - ab[t]));
        // The variance is 0 at the first step; as in the original code, its log is clipped by
        // repeating the second value.
        let posterior_log_variance_clipped = map(&|t| {
            let v = if t == 0 && posterior_variance.len() > 1 {
                posterior_variance[1]
            } else {
                posterior_variance[t]
            };
            if v > 0.0 { v.ln() } else { betas[0].ln() }
        });
        Ok(Self {
            sqrt_alphas_cumprod: map(&|t| ab[t].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|t| (1.0 - ab[t]).sqrt()),
            sqrt_recip_alphas_cumprod: map(&|t| (1.0 / ab[t]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|t| (1.0 / ab[t] - 1.0).sqrt()),
            one_minus_alphas_cumprod: map(&|t| 1.0 - ab[t]),
            log_one_minus_alphas_cumprod: map(&|t| (1.0 - ab[t]).ln()),
            sqrt_alphas: map(&|t| alphas[t].sqrt()),
            sqrt_betas: map(&|t| betas[t].sqrt()),
            sqrt_snr: map(&|t| (ab[t] / (1.0 - ab[t])).sqrt()),
            // Eq. 7: mu tilde_t = coef1 x_0 + coef2 x_t.
            posterior_mean_coef1: map(&|t| betas[t] * abp[t].sqrt() / (1.0 - ab[t])),
            posterior_mean_coef2: map(&|t| (1.0 - abp[t]) * alphas[t].sqrt() / (1.0 - ab[t])),
            posterior_variance,
            posterior_log_variance_clipped,
            alphas_cumprod_prev,
            alphas_cumprod,
            alphas,
            betas,
        })
    }

    /// T, the number of diffusion steps.
    pub fn num_timesteps(&self) -> usize {
        self.betas.len()
    }
    /// beta_t, the forward-process variances (eq. 2).
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }
    /// alpha_t = 1 - beta_t.
    pub fn alphas(&self) -> &[f64] {
        &self.alphas
    }
    /// abar_t = prod_{s <= t} alpha_s (eq. 4).
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }
    /// abar_{t-1}, with abar_0 = 1.
    pub fn alphas_cumprod_prev(&self) -> &[f64] {
        &self.alphas_cumprod_prev
    }
    /// sqrt(abar_t), the mean coefficient of q(x_t | x_0) (eq. 4).
    pub fn sqrt_alphas_cumprod(&self) -> &[f64] {
        &self.sqrt_alphas_cumprod
    }
    /// sqrt(1 - abar_t), the standard deviation of q(x_t | x_0) (eq. 4).
    pub fn sqrt_one_minus_alphas_cumprod(&self) -> &[f64] {
        &self.sqrt_one_minus_alphas_cumprod
    }
    /// sqrt(1 / abar_t).
    pub fn sqrt_recip_alphas_cumprod(&self) -> &[f64] {
        &self.sqrt_recip_alphas_cumprod
    }
    /// sqrt(1 / abar_t - 1).
    pub fn sqrt_recipm1_alphas_cumprod(&self) -> &[f64] {
        &self.sqrt_recipm1_alphas_cumprod
    }
    /// 1 - abar_t, the variance of q(x_t | x_0) (eq. 4).
    pub fn one_minus_alphas_cumprod(&self) -> &[f64] {
        &self.one_minus_alphas_cumprod
    }
    /// log(1 - abar_t).
    pub fn log_one_minus_alphas_cumprod(&self) -> &[f64] {
        &self.log_one_minus_alphas_cumprod
    }
    /// sqrt(alpha_t), the mean coefficient of q(x_t | x_{t-1}) (eq. 2).
    pub fn sqrt_alphas(&self) -> &[f64] {
        &self.sqrt_alphas
    }
    /// sqrt(beta_t), the standard deviation of q(x_t | x_{t-1}) (eq. 2).
    pub fn sqrt_betas(&self) -> &[f64] {
        &self.sqrt_betas
    }
    /// beta tilde_t, the variance of q(x_{t-1} | x_t, x_0) (eq. 7).
    pub fn posterior_variance(&self) -> &[f64] {
        &self.posterior_variance
    }
    /// log(beta tilde_t), with the zero at t = 0 replaced by the value at t = 1.
    pub fn posterior_log_variance_clipped(&self) -> &[f64] {
        &self.posterior_log_variance_clipped
    }
    /// The coefficient of x_0 in mu tilde_t (eq. 7).
    pub fn posterior_mean_coef1(&self) -> &[f64] {
        &self.posterior_mean_coef1
    }
    /// The coefficient of x_t in mu tilde_t (eq. 7).
    pub fn posterior_mean_coef2(&self) -> &[f64] {
        &self.posterior_mean_coef2
    }
    /// Signal-to-noise ratio abar_t / (1 - abar_t) (Kingma et al. 2021).
    pub fn snr(&self, t: usize) -> f64 {
        self.sqrt_snr[t].powi(2)
    }
    /// sqrt(abar_t / (1 - abar_t)) = 1 / sqrt(1 / abar_t - 1).
    pub fn sqrt_snr(&self) -> &[f64] {
        &self.sqrt_snr
    }

    /// Checks that `t` is a valid 0-based index.
    ///
    /// # Errors
    /// [`DdpmError::TimestepOutOfRange`].
    pub fn check_timestep(&self, t: usize) -> Result<(), DdpmError> {
        if t < self.num_timesteps() {
            Ok(())
        } else {
            Err(DdpmError::TimestepOutOfRange {
                t,
                num_timesteps: self.num_timesteps(),
            })
        }
    }

    /// The schedule restricted to the (sorted, distinct) timesteps `use_timesteps`, as in
    /// Nichol & Dhariwal (2021), section 4: new betas `1 - abar_{t_i} / abar_{t_{i-1}}` keep
    /// abar identical at the kept steps.
    ///
    /// # Errors
    /// [`DdpmError::InvalidSampler`] when the list is empty, unsorted, repeats a step or leaves
    /// `0..T`.
    pub fn respace(&self, use_timesteps: &[usize]) -> Result<NoiseSchedule, DdpmError> {
        if use_timesteps.is_empty() {
            return Err(DdpmError::InvalidSampler(
                "respacing needs at least one timestep".into(),
            ));
        }
        if use_timesteps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(DdpmError::InvalidSampler(
                "respaced timesteps must be strictly increasing".into(),
            ));
        }
        let last = *use_timesteps.last().expect("non-empty");
        self.check_timestep(last)?;
        let mut last_abar = 1.0;
        let mut betas = Vec::with_capacity(use_timesteps.len());
        for &t in use_timesteps {
            let ab = self.alphas_cumprod[t];
            betas.push(1.0 - ab / last_abar);
            last_abar = ab;
        }
        Self::from_betas(betas)
    }
}

/// `count` timesteps spread evenly over `0..num_timesteps`, always including the first and the
/// last (Nichol & Dhariwal's `space_timesteps` with one section).
///
/// # Errors
/// [`DdpmError::InvalidSampler`] when `count` is 0 or larger than `num_timesteps`.
pub fn space_timesteps(num_timesteps: usize, count: usize) -> Result<Vec<usize>, DdpmError> {
    if count == 0 || count > num_timesteps {
        return Err(DdpmError::InvalidSampler(format!(
            "cannot take {count} steps out of T = {num_timesteps}: choose between 1 and T"
        )));
    }
    if count == 1 {
        return Ok(vec![num_timesteps - 1]);
    }
    let stride = (num_timesteps - 1) as f64 / (count - 1) as f64;
    Ok((0..count)
        .map(|i| (i as f64 * stride).round() as usize)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64) {
        let rel = ((actual - expected) / expected).abs();
        assert!(
            rel < 1e-9,
            "expected {expected:.10e}, got {actual:.10e} (rel. error {rel:e})"
        );
    }

    #[test]
    fn beta_schedules_parse_by_name() {
        assert_eq!(
            "linear".parse::<BetaSchedule>().unwrap(),
            BetaSchedule::paper()
        );
        assert_eq!(
            "cosine".parse::<BetaSchedule>().unwrap(),
            BetaSchedule::cosine()
        );
        let e = "quadratic".parse::<BetaSchedule>().unwrap_err().to_string();
        assert!(e.contains("quadratic") && e.contains("cosine"), "{e}");
    }

    #[test]
    fn linear_reference_values() {
        let s = ScheduleConfig::default().build().unwrap();
        assert_eq!(s.num_timesteps(), 1000);
        close(s.betas()[1], 1.1991991992e-04);
        close(s.alphas_cumprod()[1], 9.9978009207e-01);
        close(s.posterior_variance()[1], 5.4531876613e-05);
        close(s.posterior_mean_coef1()[1], 5.4529149951e-01);
        close(s.posterior_mean_coef2()[1], 4.5470849899e-01);
        close(s.alphas_cumprod()[499], 7.8587242882e-02);
        close(s.posterior_variance()[499], 1.0031355415e-02);
        close(s.alphas_cumprod()[999], 4.0358297654e-05);
        close(s.posterior_variance()[999], 1.9999983527e-02);
    }

    #[test]
    fn cosine_reference_values() {
        let s = ScheduleConfig::new(BetaSchedule::cosine(), 1000)
            .build()
            .unwrap();
        close(s.betas()[0], 4.1284224822e-05);
        close(s.alphas_cumprod()[499], 4.9384359044e-01);
        close(s.betas()[998], 7.4999939290e-01);
        close(s.betas()[999], 0.999);
    }

    #[test]
    fn derived_tables_are_consistent() {
        let s = ScheduleConfig::default().build().unwrap();
        for t in [0, 1, 10, 500, 999] {
            let ab = s.alphas_cumprod()[t];
            close(s.sqrt_alphas_cumprod()[t].powi(2), ab);
            close(s.sqrt_one_minus_alphas_cumprod()[t].powi(2), 1.0 - ab);
            close(s.snr(t), ab / (1.0 - ab));
            close(s.sqrt_alphas()[t].powi(2), s.alphas()[t]);
            close(s.sqrt_betas()[t].powi(2), s.betas()[t]);
            close(s.one_minus_alphas_cumprod()[t], 1.0 - ab);
            close(s.log_one_minus_alphas_cumprod()[t].exp(), 1.0 - ab);
            // The posterior mean coefficients sum the two ways to reach x_{t-1}: with x_t =
            // sqrt(abar) x0, mu tilde = sqrt(abar_prev) x0.
            let mu = s.posterior_mean_coef1()[t] + s.posterior_mean_coef2()[t] * ab.sqrt();
            close(mu, s.alphas_cumprod_prev()[t].sqrt());
        }
        assert_eq!(s.posterior_variance()[0], 0.0);
        close(
            s.posterior_log_variance_clipped()[0],
            s.posterior_variance()[1].ln(),
        );
    }

    #[test]
    fn sigmoid_schedule_is_valid_and_monotone() {
        let cfg = ScheduleConfig::new(
            BetaSchedule::Sigmoid {
                start: -3.0,
                end: 3.0,
                tau: 1.0,
                max_beta: 0.999,
            },
            1000,
        );
        let s = cfg.build().unwrap();
        assert!(s.alphas_cumprod().windows(2).all(|w| w[1] < w[0]));
        assert!(s.alphas_cumprod()[0] > 0.999);
        assert!(s.alphas_cumprod()[999] < 1e-3);
    }

    #[test]
    fn invalid_configs_are_errors() {
        let lin =
            |start, end, t| ScheduleConfig::new(BetaSchedule::Linear { start, end }, t).build();
        assert!(matches!(lin(1e-4, 0.02, 0), Err(DdpmError::ZeroTimesteps)));
        assert!(matches!(
            lin(0.02, 1e-4, 10),
            Err(DdpmError::InvalidSchedule(_))
        ));
        assert!(matches!(
            lin(f64::NAN, 0.02, 10),
            Err(DdpmError::InvalidSchedule(_))
        ));
        assert!(matches!(
            lin(0.0, 0.02, 10),
            Err(DdpmError::BetaOutOfRange { index: 0, .. })
        ));
        assert!(matches!(
            lin(0.5, 1.5, 10),
            Err(DdpmError::BetaOutOfRange { .. })
        ));
        let custom = |b: Vec<f64>, t| ScheduleConfig::new(BetaSchedule::Custom(b), t).build();
        assert!(matches!(
            custom(vec![], 10),
            Err(DdpmError::EmptyCustomSchedule)
        ));
        assert!(matches!(
            custom(vec![0.1, f64::NAN], 2),
            Err(DdpmError::BetaOutOfRange { index: 1, .. })
        ));
        assert!(matches!(
            custom(vec![0.1, 1.0], 2),
            Err(DdpmError::BetaOutOfRange { index: 1, .. })
        ));
        assert!(matches!(
            custom(vec![0.1], 2),
            Err(DdpmError::CustomLengthMismatch { .. })
        ));
        let cos = ScheduleConfig::new(
            BetaSchedule::Cosine {
                s: 0.008,
                max_beta: 1.5,
            },
            10,
        )
        .build();
        assert!(matches!(cos, Err(DdpmError::InvalidSchedule(_))));
        // Messages say what to do.
        let msg = lin(0.02, 1e-4, 10).unwrap_err().to_string();
        assert!(msg.contains("start") && msg.contains("end"), "{msg}");
    }

    #[test]
    fn respacing_keeps_alphas_cumprod() {
        let s = ScheduleConfig::default().build().unwrap();
        let ts = space_timesteps(1000, 100).unwrap();
        assert_eq!(ts.len(), 100);
        assert_eq!((ts[0], ts[99]), (0, 999));
        let r = s.respace(&ts).unwrap();
        for (i, &t) in ts.iter().enumerate() {
            close(r.alphas_cumprod()[i], s.alphas_cumprod()[t]);
        }
        assert!(s.respace(&[5, 3]).is_err());
        assert!(s.respace(&[5, 1000]).is_err());
        assert!(space_timesteps(10, 11).is_err());
        assert!(space_timesteps(10, 0).is_err());
    }
}
