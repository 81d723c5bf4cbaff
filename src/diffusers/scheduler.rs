//! diffusers' `DDPMScheduler` `scheduler_config.json` <-> [`DiffusionConfig`] plus the
//! sampling settings the scheduler carries (its variance and its clipping of x_0).

use std::path::Path;

use ddpm_core::{
    BetaSchedule, Clip, DiffusionConfig, GaussianDiffusion, Objective, ScheduleConfig, VarianceType,
};
use serde_json::{Value, json};

use super::DiffusersError;
use super::config::{DIFFUSERS_VERSION, Fields};

/// What a `DDPMScheduler` configuration says: the diffusion the model was trained for, and
/// how its authors sample from it.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerSettings {
    /// Betas, T and the prediction type.
    pub diffusion: DiffusionConfig,
    /// sigma_t^2 of ancestral sampling (`variance_type`).
    pub variance: VarianceType,
    /// The clipping of the x_0 estimate (`clip_sample`, `thresholding`).
    pub clip: Clip,
}

/// A `DDPMScheduler` configuration (the parsed `scheduler_config.json`).
///
/// # Errors
/// [`DiffusersError::Unsupported`] listing every field without an equivalent (a learned
/// variance, `rescale_betas_zero_snr`, an unknown beta schedule, ...), or another scheduler
/// class.
pub fn scheduler_from_json(
    value: &Value,
    path: &Path,
) -> Result<SchedulerSettings, DiffusersError> {
    let unsupported = |fields: Vec<String>| DiffusersError::Unsupported {
        path: path.to_path_buf(),
        fields,
    };
    let obj = value
        .as_object()
        .ok_or_else(|| unsupported(vec!["the file is not a JSON object".into()]))?;
    match obj.get("_class_name").and_then(Value::as_str) {
        Some("DDPMScheduler") | None => {}
        Some(other) => {
            return Err(unsupported(vec![format!(
                "_class_name: {other:?} (only DDPMScheduler configurations are read)"
            )]));
        }
    }
    let mut f = Fields::new(obj);
    let t = f.usize("num_train_timesteps", 1000);
    let start = f.f64("beta_start", 1e-4);
    let end = f.f64("beta_end", 0.02);
    let schedule_v = f.get("beta_schedule", json!("linear"));
    let trained = f.get("trained_betas", Value::Null);
    let beta_schedule = if !trained.is_null() {
        match trained
            .as_array()
            .and_then(|a| a.iter().map(Value::as_f64).collect())
        {
            Some(betas) => BetaSchedule::Custom(betas),
            None => {
                f.problem("trained_betas", &trained, "expected a list of numbers");
                BetaSchedule::paper()
            }
        }
    } else {
        match schedule_v.as_str() {
            Some("linear") => BetaSchedule::Linear { start, end },
            // linspace(sqrt(start), sqrt(end), T)^2, as diffusers computes it.
            Some("scaled_linear") => {
                let (a, b) = (start.sqrt(), end.sqrt());
                let n = t.max(2) - 1;
                BetaSchedule::Custom(
                    (0..t)
                        .map(|i| (a + (b - a) * i as f64 / n as f64).powi(2))
                        .collect(),
                )
            }
            Some("squaredcos_cap_v2") => BetaSchedule::cosine(),
            _ => {
                f.problem(
                    "beta_schedule",
                    &schedule_v,
                    "linear, scaled_linear and squaredcos_cap_v2 are implemented",
                );
                BetaSchedule::paper()
            }
        }
    };
    let variance_v = f.get("variance_type", json!("fixed_small"));
    let variance = match variance_v.as_str() {
        Some("fixed_small") => VarianceType::FixedSmall,
        Some("fixed_large") => VarianceType::FixedLarge,
        _ => {
            f.problem(
                "variance_type",
                &variance_v,
                "only the fixed variances fixed_small and fixed_large are implemented",
            );
            VarianceType::FixedSmall
        }
    };
    let prediction_v = f.get("prediction_type", json!("epsilon"));
    let objective = match prediction_v.as_str() {
        Some("epsilon") => Objective::Epsilon,
        Some("sample") => Objective::Sample,
        Some("v_prediction") => Objective::Velocity,
        _ => {
            f.problem(
                "prediction_type",
                &prediction_v,
                "epsilon, sample and v_prediction are implemented",
            );
            Objective::Epsilon
        }
    };
    let clip_sample = f.bool("clip_sample", true);
    let range = f.f64("clip_sample_range", 1.0);
    let thresholding = f.bool("thresholding", false);
    let ratio = f.f64("dynamic_thresholding_ratio", 0.995);
    let max = f.f64("sample_max_value", 1.0);
    let clip = match (thresholding, clip_sample) {
        (true, _) => Clip::Dynamic {
            percentile: ratio,
            max,
        },
        (false, true) => Clip::Range {
            min: -range,
            max: range,
        },
        (false, false) => Clip::None,
    };
    f.only(
        "rescale_betas_zero_snr",
        &[json!(false)],
        "zero-terminal-SNR rescaling is not implemented",
    );
    // Sampling-time spacing of diffusers' own loop: ours is chosen per sampler.
    let _ = f.get("timestep_spacing", json!("leading"));
    let _ = f.get("steps_offset", json!(0));
    let problems = f.finish();
    if !problems.is_empty() {
        return Err(unsupported(problems));
    }
    let diffusion =
        DiffusionConfig::new(ScheduleConfig::new(beta_schedule, t)).with_objective(objective);
    GaussianDiffusion::new(diffusion.clone()).map_err(|e| DiffusersError::Model {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(SchedulerSettings {
        diffusion,
        variance,
        clip,
    })
}

/// A `DDPMScheduler` configuration for `settings`.
///
/// # Errors
/// [`DiffusersError::NotExportable`] for a loss weighting diffusers' scheduler cannot record
/// (it only affects training) or a clipping it cannot express.
pub fn scheduler_to_json(settings: &SchedulerSettings) -> Result<Value, DiffusersError> {
    let d = &settings.diffusion;
    let (beta_schedule, start, end, trained) = match &d.schedule.beta_schedule {
        BetaSchedule::Linear { start, end } => ("linear", *start, *end, Value::Null),
        BetaSchedule::Cosine { s, max_beta } if *s == 0.008 && *max_beta == 0.999 => {
            ("squaredcos_cap_v2", 1e-4, 0.02, Value::Null)
        }
        _ => {
            let diffusion = GaussianDiffusion::new(d.clone())
                .map_err(|e| DiffusersError::NotExportable(e.to_string()))?;
            let betas = diffusion.schedule().betas().to_vec();
            ("linear", 1e-4, 0.02, json!(betas))
        }
    };
    let (clip_sample, range, thresholding, ratio, max) = match settings.clip {
        Clip::None => (false, 1.0, false, 0.995, 1.0),
        Clip::Range { min, max } if min == -max => (true, max, false, 0.995, 1.0),
        Clip::Dynamic { percentile, max } => (false, 1.0, true, percentile, max),
        other => {
            return Err(DiffusersError::NotExportable(format!(
                "the clipping {other:?} is not symmetric: DDPMScheduler clips to [-r, r]"
            )));
        }
    };
    Ok(json!({
        "_class_name": "DDPMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_end": end,
        "beta_schedule": beta_schedule,
        "beta_start": start,
        "clip_sample": clip_sample,
        "clip_sample_range": range,
        "dynamic_thresholding_ratio": ratio,
        "num_train_timesteps": d.schedule.num_timesteps,
        "prediction_type": match d.objective {
            Objective::Epsilon => "epsilon",
            Objective::Sample => "sample",
            Objective::Velocity => "v_prediction",
        },
        "rescale_betas_zero_snr": false,
        "sample_max_value": max,
        "steps_offset": 0,
        "thresholding": thresholding,
        "timestep_spacing": "leading",
        "trained_betas": trained,
        "variance_type": match settings.variance {
            VarianceType::FixedSmall => "fixed_small",
            VarianceType::FixedLarge => "fixed_large",
        },
    }))
}
