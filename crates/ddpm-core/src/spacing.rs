//! Which of the T training timesteps a sampler visits: [`TimestepSpacing`].

use serde::{Deserialize, Serialize};

use crate::error::DdpmError;
use crate::schedule::{NoiseSchedule, space_timesteps};

/// How `steps` timesteps are chosen out of `0..T` (0-based, as the network sees them).
///
/// What the papers used: Ho et al. sample with all T steps (any spacing with `steps = T`);
/// Nichol & Dhariwal's respacing and this crate's [`SamplerConfig::ddpm`](crate::SamplerConfig::ddpm) and
/// [`SamplerConfig::ddim`](crate::SamplerConfig::ddim) use [`Linspace`](Self::Linspace); the DDIM paper's
/// "uniform" skip (`range(0, T, T // S)`) is [`Leading`](Self::Leading); Lin et al. (2024,
/// "Common diffusion noise schedules and sample steps are flawed") argue for
/// [`Trailing`](Self::Trailing); DPM-Solver (Lu et al. 2022) steps uniformly in log-SNR
/// ([`LogSnr`](Self::LogSnr)); EDM (Karras et al. 2022) spaces sigma with rho = 7
/// ([`Karras`](Self::Karras)).
///
/// Every spacing returns distinct timesteps for every `1 <= steps <= T` (the log-SNR and
/// Karras spacings move a step that would round onto its neighbour to the next free
/// timestep), so no solver ever divides by a zero step.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub enum TimestepSpacing {
    /// `round(i (T - 1) / (steps - 1))`: both ends included (diffusers' `linspace`; Nichol &
    /// Dhariwal's `space_timesteps`, [`space_timesteps`]). With one step: `[T - 1]`.
    #[default]
    Linspace,
    /// `i * floor(T / steps)`: starts at 0, may stop short of T - 1 (diffusers' `leading`).
    Leading,
    /// `round(T - i T / steps) - 1`: ends at T - 1, may stop short of 0 (diffusers'
    /// `trailing`).
    Trailing,
    /// Equally spaced in log-SNR `lambda_t = log(sqrt(abar_t) / sqrt(1 - abar_t))` between
    /// `lambda_{T-1}` and `lambda_0`, each rounded to the nearest timestep (DPM-Solver's
    /// `logSNR` skip type).
    LogSnr,
    /// Karras et al. (2022, eq. 5):
    /// `sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`
    /// with `sigma_t = sqrt((1 - abar_t) / abar_t)`, each rounded (in log sigma) to the nearest
    /// timestep.
    Karras {
        /// rho (7 in the paper).
        rho: f64,
    },
}

/// Parses the spacing names: `linspace`, `leading`, `trailing`,
/// `log-snr`, `karras` (rho = 7) or `karras:RHO`.
///
/// ```
/// use ddpm_core::TimestepSpacing;
/// assert_eq!("log-snr".parse::<TimestepSpacing>().unwrap(), TimestepSpacing::LogSnr);
/// assert_eq!("karras:5".parse::<TimestepSpacing>().unwrap(), TimestepSpacing::Karras { rho: 5.0 });
/// assert!("cubic".parse::<TimestepSpacing>().is_err());
/// ```
impl std::str::FromStr for TimestepSpacing {
    type Err = crate::DdpmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            crate::DdpmError::InvalidConfig(format!(
                "unknown spacing '{s}': choose linspace, leading, trailing, log-snr, karras or karras:RHO"
            ))
        };
        match s {
            "linspace" => Ok(Self::Linspace),
            "leading" => Ok(Self::Leading),
            "trailing" => Ok(Self::Trailing),
            "log-snr" | "logsnr" => Ok(Self::LogSnr),
            "karras" => Ok(Self::karras()),
            other => match other.strip_prefix("karras:").map(str::parse::<f64>) {
                Some(Ok(rho)) if rho.is_finite() && rho > 0.0 => Ok(Self::Karras { rho }),
                _ => Err(bad()),
            },
        }
    }
}

impl TimestepSpacing {
    /// EDM's spacing with the paper's rho = 7.
    pub fn karras() -> Self {
        TimestepSpacing::Karras { rho: 7.0 }
    }

    /// The `steps` timesteps of this spacing, **increasing**, distinct, in `0..T`.
    ///
    /// # Errors
    /// [`DdpmError::InvalidSampler`] when `steps` is 0 or above T, or rho is not a positive
    /// number.
    pub fn timesteps(
        &self,
        schedule: &NoiseSchedule,
        steps: usize,
    ) -> Result<Vec<usize>, DdpmError> {
        let t_max = schedule.num_timesteps();
        if steps == 0 || steps > t_max {
            return Err(DdpmError::InvalidSampler(format!(
                "cannot take {steps} sampling steps out of T = {t_max}: choose between 1 and T"
            )));
        }
        let out = match *self {
            TimestepSpacing::Linspace => space_timesteps(t_max, steps)?,
            TimestepSpacing::Leading => {
                let ratio = t_max / steps;
                (0..steps).map(|i| i * ratio).collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = t_max as f64 / steps as f64;
                let mut v: Vec<usize> = (0..steps)
                    .map(|i| ((t_max as f64 - i as f64 * ratio).round() as usize).saturating_sub(1))
                    .collect();
                v.reverse();
                v
            }
            TimestepSpacing::LogSnr => {
                let lambda = log_snr(schedule);
                let (hi, lo) = (lambda[0], lambda[t_max - 1]);
                let targets = even(hi, lo, steps);
                nearest_distinct(&lambda, &targets)
            }
            TimestepSpacing::Karras { rho } => {
                if !(rho.is_finite() && rho > 0.0) {
                    return Err(DdpmError::InvalidSampler(format!(
                        "Karras rho must be a positive number, got {rho} (the paper uses 7)"
                    )));
                }
                let lambda = log_snr(schedule);
                // log sigma = -lambda.
                let (s_min, s_max) = ((-lambda[0]).exp(), (-lambda[t_max - 1]).exp());
                let (a, b) = (s_min.powf(1.0 / rho), s_max.powf(1.0 / rho));
                // From the smallest sigma (t = 0) up: target lambdas, decreasing.
                let targets: Vec<f64> = even(a, b, steps)
                    .into_iter()
                    .map(|r| -(r.powf(rho)).ln())
                    .collect();
                nearest_distinct(&lambda, &targets)
            }
        };
        if out.windows(2).any(|w| w[0] >= w[1]) || out.last().is_some_and(|&t| t >= t_max) {
            return Err(DdpmError::InvalidSampler(format!(
                "spacing {self:?} gave repeated or out-of-range timesteps for {steps} steps of \
                 T = {t_max}: choose another spacing or step count"
            )));
        }
        Ok(out)
    }
}

/// log-SNR `lambda_t = 0.5 ln(abar_t / (1 - abar_t))` of every timestep (strictly decreasing).
pub(crate) fn log_snr(schedule: &NoiseSchedule) -> Vec<f64> {
    schedule
        .alphas_cumprod()
        .iter()
        .map(|&a| 0.5 * (a.ln() - (-a).ln_1p()))
        .collect()
}

/// `n` values from `a` to `b` inclusive, evenly spaced.
fn even(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![b];
    }
    (0..n)
        .map(|i| a + (b - a) * i as f64 / (n - 1) as f64)
        .collect()
}

/// For decreasing `targets` (one per step, from t = 0 upwards) the nearest timestep of the
/// decreasing table `lambda`, moved up to the next free timestep where it would repeat the
/// previous one, and kept low enough to leave room for the steps still to place.
fn nearest_distinct(lambda: &[f64], targets: &[f64]) -> Vec<usize> {
    let t_max = lambda.len();
    let n = targets.len();
    let mut out = Vec::with_capacity(n);
    let mut next_free = 0usize;
    for (i, &target) in targets.iter().enumerate() {
        // lambda is decreasing: the first index whose lambda is <= target, and its neighbour.
        let k = lambda.partition_point(|&l| l > target);
        let nearest = if k == 0 {
            0
        } else if k >= t_max {
            t_max - 1
        } else if (lambda[k - 1] - target).abs() <= (lambda[k] - target).abs() {
            k - 1
        } else {
            k
        };
        let t = nearest.max(next_free).min(t_max - (n - i));
        out.push(t);
        next_free = t + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{BetaSchedule, ScheduleConfig};

    fn linear(t: usize) -> NoiseSchedule {
        ScheduleConfig::new(BetaSchedule::paper(), t)
            .build()
            .unwrap()
    }

    #[test]
    fn diffusers_reference_values() {
        let s = linear(1000);
        // linspace, 10 of 1000: a stride of 111, not 100.
        assert_eq!(
            TimestepSpacing::Linspace.timesteps(&s, 10).unwrap(),
            vec![0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
        );
        assert_eq!(
            TimestepSpacing::Leading.timesteps(&s, 10).unwrap(),
            vec![0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
        );
        assert_eq!(
            TimestepSpacing::Trailing.timesteps(&s, 10).unwrap(),
            vec![99, 199, 299, 399, 499, 599, 699, 799, 899, 999]
        );
        // diffusers, trailing, T = 1000, 3 steps: round([1000, 666.7, 333.3]) - 1.
        assert_eq!(
            TimestepSpacing::Trailing.timesteps(&s, 3).unwrap(),
            vec![332, 666, 999]
        );
    }

    #[test]
    fn no_spacing_ever_repeats_a_timestep() {
        let spacings = [
            TimestepSpacing::Linspace,
            TimestepSpacing::Leading,
            TimestepSpacing::Trailing,
            TimestepSpacing::LogSnr,
            TimestepSpacing::karras(),
        ];
        for t_max in [1usize, 2, 3, 7, 10, 50, 1000] {
            let cosine = ScheduleConfig::new(BetaSchedule::cosine(), t_max)
                .build()
                .unwrap();
            for s in [linear(t_max), cosine] {
                for steps in 1..=t_max.min(60) {
                    for sp in spacings {
                        let v = sp.timesteps(&s, steps).unwrap();
                        assert_eq!(v.len(), steps, "{sp:?} T={t_max} steps={steps}");
                        assert!(v.windows(2).all(|w| w[0] < w[1]), "{sp:?} {v:?}");
                        assert!(*v.last().unwrap() < t_max);
                    }
                }
                // steps = T: every timestep.
                for sp in spacings {
                    let v = sp.timesteps(&s, t_max).unwrap();
                    assert_eq!(v, (0..t_max).collect::<Vec<_>>(), "{sp:?} T={t_max}");
                }
            }
        }
    }

    #[test]
    fn bad_step_counts_and_rho_are_errors() {
        let s = linear(100);
        for steps in [0, 101] {
            let e = TimestepSpacing::LogSnr.timesteps(&s, steps).unwrap_err();
            assert!(e.to_string().contains("between 1 and T"), "{e}");
        }
        let e = TimestepSpacing::Karras { rho: 0.0 }
            .timesteps(&s, 10)
            .unwrap_err();
        assert!(e.to_string().contains("rho"), "{e}");
    }

    #[test]
    fn log_snr_spacing_is_even_in_log_snr() {
        let s = linear(1000);
        let v = TimestepSpacing::LogSnr.timesteps(&s, 20).unwrap();
        let lambda = log_snr(&s);
        assert_eq!((v[0], v[19]), (0, 999));
        // Every gap is within a rounding step of (lambda_0 - lambda_999) / 19.
        let ideal = (lambda[0] - lambda[999]) / 19.0;
        for w in v.windows(2) {
            let gap = lambda[w[0]] - lambda[w[1]];
            assert!(
                (gap - ideal).abs() < 0.45 * ideal,
                "gap {gap} against {ideal}"
            );
        }
    }
}
