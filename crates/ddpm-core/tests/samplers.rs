//! End-to-end proof of every sampler: with the exact noise predictor of Gaussian data, the
//! samples must follow that Gaussian.

mod common;

use common::{GaussianOracle, device, mean_std, to_vec};
use ddpm_core::SamplerConfig;
use ddpm_core::{Clip, DiffusionConfig, GaussianDiffusion, SampleOptions, VarianceType};

const MU: f64 = 0.5;
const S: f64 = 0.3;
const N: usize = 4000;

fn setup() -> (GaussianDiffusion, GaussianOracle) {
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let oracle = GaussianOracle {
        mu: MU,
        s: S,
        abar: d.schedule().alphas_cumprod().to_vec(),
    };
    (d, oracle)
}

/// Closed-form moments of ancestral sampling on `chain` (possibly respaced).
fn ddpm_moments(chain: &GaussianDiffusion, variance: VarianceType) -> (f64, f64) {
    let s = chain.schedule();
    let large: Vec<f64> = (0..s.num_timesteps())
        .map(|t| {
            if t == 0 && s.num_timesteps() > 1 {
                s.posterior_variance()[1]
            } else {
                s.betas()[t]
            }
        })
        .collect();
    let (mut m, mut v) = (0.0f64, 1.0f64);
    for t in (0..s.num_timesteps()).rev() {
        let a = s.alphas_cumprod()[t];
        let c = (1.0 - a).sqrt() / (a * S * S + 1.0 - a);
        // x0_hat = k0 x + b0 (eq. 15 with the oracle's eps).
        let k0 = (1.0 - (1.0 - a).sqrt() * c) / a.sqrt();
        let b0 = (1.0 - a).sqrt() * c * a.sqrt() * MU / a.sqrt();
        // mean = coef1 x0_hat + coef2 x (eq. 7).
        let k = s.posterior_mean_coef1()[t] * k0 + s.posterior_mean_coef2()[t];
        let b = s.posterior_mean_coef1()[t] * b0;
        let noise = if t == 0 {
            0.0
        } else {
            match variance {
                VarianceType::FixedSmall => s.posterior_variance()[t],
                VarianceType::FixedLarge => large[t],
            }
        };
        m = k * m + b;
        v = k * k * v + noise;
    }
    (m, v.sqrt())
}

/// Closed-form moments of DDIM with `steps` steps and `eta`.
fn ddim_moments(d: &GaussianDiffusion, steps: usize, eta: f64) -> (f64, f64) {
    let abar = d.schedule().alphas_cumprod();
    let kept = ddpm_core::space_timesteps(abar.len(), steps).unwrap();
    let (mut m, mut v) = (0.0f64, 1.0f64);
    for i in (0..kept.len()).rev() {
        let a = abar[kept[i]];
        let ap = if i > 0 { abar[kept[i - 1]] } else { 1.0 };
        let c = (1.0 - a).sqrt() / (a * S * S + 1.0 - a);
        let (ke, be) = (c, -c * a.sqrt() * MU);
        let (k0, b0) = (
            (1.0 - (1.0 - a).sqrt() * ke) / a.sqrt(),
            -(1.0 - a).sqrt() * be / a.sqrt(),
        );
        let sigma = eta * ((1.0 - ap) / (1.0 - a) * (1.0 - a / ap)).sqrt();
        let dir = (1.0 - ap - sigma * sigma).max(0.0).sqrt();
        let (k, b) = (ap.sqrt() * k0 + dir * ke, ap.sqrt() * b0 + dir * be);
        m = k * m + b;
        v = k * k * v + sigma * sigma;
    }
    (m, v.sqrt())
}

/// Samples, then checks them against the chain's closed-form moments (tight: this proves the
/// implementation) and against the data distribution (loose by `data_tol`: this is the
/// discretization error of the chain itself, which the closed form quantifies).
fn check(name: &str, sampler: SamplerConfig, exact: (f64, f64), data_tol: f64) {
    let (d, oracle) = setup();
    let out = sampler
        .sample(&d, &oracle, [N, 1], &device(), SampleOptions::new(5))
        .unwrap();
    let (m, s) = mean_std(&to_vec(out.samples));
    println!(
        "{name}: mean {m:.4} std {s:.4}; closed form {:.4} {:.4}; data {MU} {S}",
        exact.0, exact.1
    );
    // Standard errors: S / sqrt(N) = 0.0047 for the mean, ~1.1% for the std.
    assert!(
        (m - exact.0).abs() < 0.02,
        "{name}: mean {m} vs closed form {}",
        exact.0
    );
    assert!(
        (s - exact.1).abs() / exact.1 < 0.035,
        "{name}: std {s} vs closed form {}",
        exact.1
    );
    assert!((m - MU).abs() < 0.03, "{name}: mean {m} vs data {MU}");
    assert!((s - S).abs() / S < data_tol, "{name}: std {s} vs data {S}");
}

#[test]
fn ddpm_1000_steps_fixed_small_recovers_the_data_distribution() {
    let (d, _) = setup();
    let sampler = SamplerConfig::ddpm(None, VarianceType::FixedSmall);
    check(
        "ddpm-1000-small",
        sampler,
        ddpm_moments(&d, VarianceType::FixedSmall),
        0.04,
    );
}

#[test]
fn ddpm_1000_steps_fixed_large_recovers_the_data_distribution() {
    let (d, _) = setup();
    check(
        "ddpm-1000-large",
        SamplerConfig::ddpm(None, VarianceType::FixedLarge),
        ddpm_moments(&d, VarianceType::FixedLarge),
        0.04,
    );
}

#[test]
fn respaced_ddpm_100_steps_matches_its_closed_form() {
    let (d, _) = setup();
    let sampler = SamplerConfig::ddpm(Some(100), VarianceType::FixedLarge);
    let exact = ddpm_moments(&d.respaced(100).unwrap(), VarianceType::FixedLarge);
    check("ddpm-100-large", sampler, exact, 0.06);
}

#[test]
fn ddim_50_steps_eta_0_matches_its_closed_form() {
    let (d, _) = setup();
    check(
        "ddim-50-eta0",
        SamplerConfig::ddim(50, 0.0),
        ddim_moments(&d, 50, 0.0),
        0.12,
    );
}

#[test]
fn ddim_50_steps_eta_1_matches_its_closed_form() {
    let (d, _) = setup();
    check(
        "ddim-50-eta1",
        SamplerConfig::ddim(50, 1.0),
        ddim_moments(&d, 50, 1.0),
        0.19,
    );
}

#[test]
fn ddim_converges_to_the_data_distribution_as_steps_grow() {
    let (d, _) = setup();
    let errs: Vec<f64> = [50, 100, 250, 1000]
        .iter()
        .map(|&k| (ddim_moments(&d, k, 0.0).1 - S).abs())
        .collect();
    assert!(errs.windows(2).all(|w| w[1] < w[0]), "{errs:?}");
    check(
        "ddim-250-eta0",
        SamplerConfig::ddim(250, 0.0),
        ddim_moments(&d, 250, 0.0),
        0.04,
    );
}

#[test]
fn ddim_uses_the_previous_kept_step_not_t_minus_1() {
    // Data concentrated on a point: deterministic DDIM must land on it from any x_T in few
    // steps. With the t - 1 bug, 10 strided steps leave most of the noise in place.
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let oracle = GaussianOracle {
        mu: -0.25,
        s: 1e-3,
        abar: d.schedule().alphas_cumprod().to_vec(),
    };
    let out = SamplerConfig::ddim(10, 0.0)
        .sample(&d, &oracle, [256, 1], &device(), SampleOptions::new(1))
        .unwrap();
    let (m, s) = mean_std(&to_vec(out.samples));
    assert!((m + 0.25).abs() < 1e-3 && s < 1e-2, "mean {m}, std {s}");
}

#[test]
fn sampling_is_seeded_and_reports_progress_and_trajectory() {
    let (d, oracle) = setup();
    let sampler = SamplerConfig::ddim(20, 1.0).with_clip(Clip::unit());
    let mut calls = Vec::new();
    let mut progress = |done: usize, total: usize| calls.push((done, total));
    let a = sampler
        .sample(
            &d,
            &oracle,
            [8, 3],
            &device(),
            SampleOptions::new(9)
                .with_trajectory(5)
                .with_progress(&mut progress),
        )
        .unwrap();
    assert_eq!(calls.len(), 20);
    assert_eq!(calls.last(), Some(&(20, 20)));
    assert_eq!(a.trajectory.len(), 4);
    assert_eq!(a.trajectory.last().unwrap().t, 0);
    assert!(a.trajectory.windows(2).all(|w| w[0].t > w[1].t));
    let b = sampler
        .sample(&d, &oracle, [8, 3], &device(), SampleOptions::new(9))
        .unwrap();
    let c = sampler
        .sample(&d, &oracle, [8, 3], &device(), SampleOptions::new(10))
        .unwrap();
    let (va, vb, vc) = (to_vec(a.samples), to_vec(b.samples), to_vec(c.samples));
    assert_eq!(va, vb);
    assert_ne!(va, vc);
    // Clipping keeps x_0 inside [-1, 1] and the last DDIM step returns x_0.
    assert!(va.iter().all(|v| (-1.0..=1.0).contains(v)));
}
