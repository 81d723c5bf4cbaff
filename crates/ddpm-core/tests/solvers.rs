//! The stepping schedulers against closed forms: for data x_0 ~ N(mu, s^2) the exact
//! predictor and the exact probability-flow ODE map are known, so every solver's error, its
//! convergence order and the regressions other libraries shipped can be asserted.

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use ddpm_core::{
    BetaSchedule, Clip, DdimScheduler, DdpmScheduler, DiffusionConfig, DpmSolverScheduler,
    EdmMethod, EdmScheduler, GaussianDiffusion, NoisePredictor, NoiseRng, Objective,
    PredictorError, SampleOptions, SamplerConfig, SamplerKind, ScheduleConfig, Scheduler,
    SolverOrder, SolverVariant, TimestepSpacing, VarianceType, denoise,
};

use common::{device, mean_std, to_vec};

const MU: f64 = 0.5;
const S: f64 = 0.3;

/// The exact model for x_0 ~ N(mu, s^2), answering in the objective's terms:
/// `E[x_0 | x_t] = mu + sqrt(abar) s^2 (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar)`.
struct Oracle {
    abar: Vec<f64>,
    objective: Objective,
}

impl Oracle {
    fn new(d: &GaussianDiffusion) -> Self {
        Self {
            abar: d.schedule().alphas_cumprod().to_vec(),
            objective: d.objective(),
        }
    }
    /// The output at one (x_t, t) as `a x_t + b`.
    fn affine(&self, t: usize) -> (f64, f64) {
        let ab = self.abar[t];
        let (a, sg) = (ab.sqrt(), (1.0 - ab).sqrt());
        let var = ab * S * S + 1.0 - ab;
        // x0 = mu + a s^2 (x - a mu) / var = k x + m
        let k = a * S * S / var;
        let m = MU - k * a * MU;
        match self.objective {
            // eps = (x - a x0) / sg
            Objective::Epsilon => ((1.0 - a * k) / sg, -a * m / sg),
            Objective::Sample => (k, m),
            // v = a eps - sg x0
            Objective::Velocity => (a * (1.0 - a * k) / sg - sg * k, -a * a * m / sg - sg * m),
        }
    }
}

impl<const D: usize> NoisePredictor<D> for Oracle {
    fn predict(&self, x_t: Tensor<D>, t: Tensor<1, Int>) -> Result<Tensor<D>, PredictorError> {
        let ts: Vec<i64> = t.into_data().convert::<i64>().iter::<i64>().collect();
        let (a, b) = self.affine(ts[0] as usize);
        assert!(ts.iter().all(|&v| v == ts[0]), "samplers share t");
        Ok(x_t.mul_scalar(a).add_scalar(b))
    }
}

fn linear(objective: Objective) -> GaussianDiffusion {
    GaussianDiffusion::new(DiffusionConfig::default().with_objective(objective)).unwrap()
}

/// A grid of x_T values, as `[n, 1]`.
fn grid() -> Vec<f64> {
    (0..41).map(|i| -3.0 + 6.0 * i as f64 / 40.0).collect()
}

fn column(values: &[f64]) -> Tensor<2> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, [values.len(), 1]), &device())
}

/// Runs `sampler` deterministically from the grid.
fn run(d: &GaussianDiffusion, sampler: SamplerConfig, x_t: &[f64]) -> Vec<f64> {
    let out = sampler
        .sample_from(d, &Oracle::new(d), column(x_t), SampleOptions::new(0))
        .unwrap();
    to_vec(out.samples)
}

/// The exact ODE map from x at timestep `from` to timestep `to` (abar = 1 for `None`):
/// the standardised value `(x - a mu) / sqrt(a^2 s^2 + 1 - a^2)` is invariant.
fn ode_map(abar: &[f64], x: f64, from: usize, to: Option<usize>) -> f64 {
    let ab = abar[from];
    let z = (x - ab.sqrt() * MU) / (ab * S * S + 1.0 - ab).sqrt();
    match to {
        None => MU + S * z,
        Some(t) => {
            let a = abar[t];
            a.sqrt() * MU + (a * S * S + 1.0 - a).sqrt() * z
        }
    }
}

/// Max error of `sampler` against the exact result of the discrete-time model: the exact ODE
/// to the last timestep, then the model's x_0 estimate there (what every sampler's last step
/// returns; its gap to the continuous x_0 is the model's, not the solver's).
fn solver_error(d: &GaussianDiffusion, sampler: SamplerConfig) -> f64 {
    let abar = d.schedule().alphas_cumprod();
    let calls = sampler.build::<2>(d).unwrap().timesteps().to_vec();
    let (first, last) = (calls[0], *calls.last().unwrap());
    let xs = grid();
    let got = run(d, sampler, &xs);
    let o = Oracle {
        abar: abar.to_vec(),
        objective: Objective::Sample,
    };
    let (k, m) = o.affine(last);
    xs.iter()
        .zip(&got)
        .map(|(&x, &y)| (y - (k * ode_map(abar, x, first, Some(last)) + m)).abs())
        .fold(0.0, f64::max)
}

/// Max error against the exact continuous map x_T -> x_0 (the yardstick).
fn map_error(d: &GaussianDiffusion, sampler: SamplerConfig) -> f64 {
    let abar = d.schedule().alphas_cumprod();
    let first = sampler.build::<2>(d).unwrap().timesteps()[0];
    let xs = grid();
    let got = run(d, sampler, &xs);
    xs.iter()
        .zip(&got)
        .map(|(&x, &y)| (y - ode_map(abar, x, first, None)).abs())
        .fold(0.0, f64::max)
}

fn deterministic(kind: &str, steps: usize) -> SamplerConfig {
    kind.parse::<SamplerKind>().unwrap().with_steps(steps)
}

#[test]
fn solvers_converge_at_their_order() {
    let d = linear(Objective::Epsilon);
    // (name, lowest and highest allowed error ratio per doubling of the steps)
    for (kind, lo, hi) in [
        ("ddim", 1.7, 2.3),
        ("euler", 1.7, 2.3),
        ("heun", 3.0, 8.0),
        ("dpm++2m", 3.0, 8.0),
        ("dpm++3m", 3.0, 16.0),
    ] {
        let errors: Vec<f64> = [80, 160, 320]
            .iter()
            .map(|&n| {
                solver_error(
                    &d,
                    deterministic(kind, n).with_spacing(TimestepSpacing::Linspace),
                )
            })
            .collect();
        println!("{kind}: max error at 80/160/320 steps {errors:?}");
        for w in errors.windows(2) {
            let ratio = w[0] / w[1];
            assert!(
                (lo..=hi).contains(&ratio),
                "{kind}: errors {errors:?} fall by {ratio:.2} per doubling, expected {lo}..{hi}"
            );
        }
    }
}

#[test]
fn dpm_solver_2m_at_20_steps_has_a_third_of_ddim_20s_error() {
    let d = linear(Objective::Epsilon);
    let ddim = map_error(&d, deterministic("ddim", 20));
    let dpm = map_error(&d, deterministic("dpm++2m", 20));
    println!(
        "max error of the x_T -> x_0 map at 20 steps: DDIM {ddim:.3e}, DPM-Solver++ 2M {dpm:.3e}"
    );
    assert!(
        dpm <= ddim / 3.0,
        "DPM-Solver++ 2M-20 error {dpm:.3e} against DDIM-20 {ddim:.3e}"
    );
    // And DDIM's error halves with each doubling of its steps (first order).
    let ddim40 = map_error(&d, deterministic("ddim", 40));
    assert!((1.6..2.4).contains(&(ddim / ddim40)), "{ddim} {ddim40}");
}

#[test]
fn the_default_spacing_of_dpm_solver_is_the_most_accurate_at_20_steps() {
    // The table behind the defaults (docs/results.md): max error of the x_T -> x_0 map.
    let d = linear(Objective::Epsilon);
    let spacings = [
        ("linspace", TimestepSpacing::Linspace),
        ("leading", TimestepSpacing::Leading),
        ("trailing", TimestepSpacing::Trailing),
        ("log-snr", TimestepSpacing::LogSnr),
        ("karras", TimestepSpacing::karras()),
    ];
    for kind in ["ddim", "dpm++2m", "dpm++3m", "heun"] {
        for steps in [10, 20, 50] {
            let row: Vec<String> = spacings
                .iter()
                .map(|(name, sp)| {
                    let e = map_error(&d, deterministic(kind, steps).with_spacing(*sp));
                    format!("{name} {e:.2e}")
                })
                .collect();
            println!("| {kind} | {steps} | {} |", row.join(" | "));
        }
    }
    let default = map_error(&d, deterministic("dpm++2m", 20));
    for (name, sp) in spacings {
        let e = map_error(&d, deterministic("dpm++2m", 20).with_spacing(sp));
        assert!(
            default <= e,
            "dpm++2m-20: {name} ({e:.3e}) beats the default ({default:.3e})"
        );
    }
}

#[test]
fn euler_is_ddim_with_eta_0() {
    let d = linear(Objective::Epsilon);
    let xs = grid();
    for spacing in [TimestepSpacing::Linspace, TimestepSpacing::karras()] {
        let a = run(&d, deterministic("euler", 25).with_spacing(spacing), &xs);
        let b = run(&d, deterministic("ddim", 25).with_spacing(spacing), &xs);
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-4, "{spacing:?}: Euler and DDIM differ by {diff}");
    }
}

#[test]
fn x0_and_v_objectives_drive_the_same_updates_as_eps() {
    let xs = grid();
    for kind in ["ddim", "dpm++2m", "dpm++3m", "heun"] {
        let reference = run(&linear(Objective::Epsilon), deterministic(kind, 12), &xs);
        for objective in [Objective::Sample, Objective::Velocity] {
            let got = run(&linear(objective), deterministic(kind, 12), &xs);
            let diff = got
                .iter()
                .zip(&reference)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(diff < 2e-4, "{kind} with {objective:?} differs by {diff}");
        }
    }
}

/// One step of a freshly reset scheduler at `index` (a run may start at any index) with a
/// fixed x_t and model output.
fn one_step(s: &mut dyn Scheduler<2>, index: usize, x: f32, out: f32, seed: u64) -> Vec<f64> {
    let x_t = column(&[x as f64; 3]);
    let o = column(&[out as f64; 3]);
    s.reset();
    let mut rng = NoiseRng::new(seed);
    to_vec(s.step(o, index, x_t, &mut rng).unwrap().prev_sample)
}

#[test]
fn ddim_with_eta_1_is_ddpm_with_the_posterior_variance() {
    let d = linear(Objective::Epsilon);
    let mut ddpm = DdpmScheduler::new(
        &d,
        Some(10),
        TimestepSpacing::Linspace,
        VarianceType::FixedSmall,
        Clip::None,
    )
    .unwrap();
    let mut ddim = DdimScheduler::new(&d, 10, TimestepSpacing::Linspace, 1.0, Clip::None).unwrap();
    assert_eq!(
        Scheduler::<2>::timesteps(&ddpm),
        Scheduler::<2>::timesteps(&ddim)
    );
    for index in 0..10 {
        // The same z (same seed): the same mean and the same sigma give the same sample.
        let a = one_step(&mut ddpm, index, 0.7, -0.4, 3);
        let b = one_step(&mut ddim, index, 0.7, -0.4, 3);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "step {index}: DDPM {x} DDIM {y}");
        }
    }
}

#[test]
fn strided_ddpm_uses_the_beta_of_the_kept_steps() {
    let d = linear(Objective::Epsilon);
    let abar = d.schedule().alphas_cumprod();
    let mut s = DdpmScheduler::new(
        &d,
        Some(10),
        TimestepSpacing::Linspace,
        VarianceType::FixedSmall,
        Clip::None,
    )
    .unwrap();
    // linspace, 10 of 1000: stride 111; call 1 goes from 888 to 777.
    assert_eq!(Scheduler::<2>::timesteps(&s)[..3], [999, 888, 777]);
    let (x, eps) = (0.7f64, -0.4f64);
    let (at, ap) = (abar[888], abar[777]);
    let beta = 1.0 - at / ap; // never beta_887 of the full chain
    let x0 = (x - (1.0 - at).sqrt() * eps) / at.sqrt();
    let mean =
        beta * ap.sqrt() / (1.0 - at) * x0 + (1.0 - ap) * (1.0 - beta).sqrt() / (1.0 - at) * x;
    let std = (beta * (1.0 - ap) / (1.0 - at)).sqrt();
    let z = to_vec(NoiseRng::new(5).normal([3, 1], &device()));
    let got = one_step(&mut s, 1, x as f32, eps as f32, 5);
    for (g, z) in got.iter().zip(&z) {
        let want = mean + std * z;
        assert!((g - want).abs() < 1e-5, "got {g}, want {want}");
    }
}

#[test]
fn the_last_step_returns_the_x0_estimate_without_noise() {
    for objective in [Objective::Epsilon, Objective::Velocity] {
        let d = linear(objective);
        let abar = d.schedule().alphas_cumprod();
        for spacing in [TimestepSpacing::Linspace, TimestepSpacing::Trailing] {
            for kind in [
                "ddpm",
                "ddim",
                "dpm++2m",
                "dpm++2m-sde",
                "dpm++3m",
                "euler",
                "heun",
            ] {
                let cfg = kind
                    .parse::<SamplerKind>()
                    .unwrap()
                    .with_steps(10)
                    .with_spacing(spacing);
                let mut s = cfg.build::<2>(&d).unwrap();
                let last = s.timesteps().len() - 1;
                let t = *s.timesteps().last().unwrap();
                let (x, out) = (0.7f64, -0.4f64);
                let got = one_step(s.as_mut(), last, x as f32, out as f32, 9);
                let (a, sg) = (abar[t].sqrt(), (1.0 - abar[t]).sqrt());
                let x0 = match objective {
                    Objective::Epsilon => (x - sg * out) / a,
                    _ => a * x - sg * out,
                };
                for g in got {
                    assert!(
                        (g - x0).abs() < 1e-4,
                        "{kind} {spacing:?} {objective:?}: last step {g}, x0 estimate {x0}"
                    );
                }
            }
        }
    }
}

#[test]
fn cosine_betas_clipped_at_0999_give_finite_samples() {
    let cfg = DiffusionConfig::new(ScheduleConfig::new(BetaSchedule::cosine(), 1000));
    let d = GaussianDiffusion::new(cfg).unwrap();
    assert!(
        d.schedule()
            .betas()
            .iter()
            .any(|&b| (b - 0.999).abs() < 1e-12)
    );
    for (kind, _) in SamplerKind::ALL {
        for spacing in [
            TimestepSpacing::Linspace,
            TimestepSpacing::LogSnr,
            TimestepSpacing::karras(),
            TimestepSpacing::Trailing,
        ] {
            let cfg = kind.with_steps(20).with_spacing(spacing);
            let out = cfg
                .sample(
                    &d,
                    &Oracle::new(&d),
                    [64, 1],
                    &device(),
                    SampleOptions::new(1),
                )
                .unwrap();
            let v = to_vec(out.samples);
            assert!(
                v.iter().all(|x| x.is_finite()),
                "{kind:?} {spacing:?} gave a non-finite value"
            );
            let (m, _) = mean_std(&v);
            assert!((m - MU).abs() < 0.25, "{kind:?} {spacing:?}: mean {m}");
        }
    }
}

/// Mean and std of x_0 for x_0 ~ N(MU, S^2) data, by propagating the exact Gaussian law of
/// the state `(x_i, m_{i-1})` (x and the previous x_0 estimate) through a sampler whose steps
/// are linear in them: `x' = A x + C m_prev + B + noise_std z`, `m = k x + b`.
struct LinearGaussian {
    mean: [f64; 2],
    cov: [[f64; 2]; 2],
}

impl LinearGaussian {
    fn standard() -> Self {
        Self {
            mean: [0.0, 0.0],
            cov: [[1.0, 0.0], [0.0, 0.0]],
        }
    }
    /// Maps the state to (`row_x . (x, m_prev) + off_x + noise`, `row_m . (x, m_prev) + off_m`).
    fn apply(&mut self, row_x: [f64; 2], off_x: f64, noise_var: f64, row_m: [f64; 2], off_m: f64) {
        let rows = [row_x, row_m];
        let mean = [
            row_x[0] * self.mean[0] + row_x[1] * self.mean[1] + off_x,
            row_m[0] * self.mean[0] + row_m[1] * self.mean[1] + off_m,
        ];
        let mut cov = [[0.0; 2]; 2];
        for i in 0..2 {
            for j in 0..2 {
                for a in 0..2 {
                    for b in 0..2 {
                        cov[i][j] += rows[i][a] * self.cov[a][b] * rows[j][b];
                    }
                }
            }
        }
        cov[0][0] += noise_var;
        self.mean = mean;
        self.cov = cov;
    }
}

/// Closed-form moments of DPM-Solver++ SDE (order 1 or 2M) with the exact x_0 estimate.
fn dpm_sde_moments(d: &GaussianDiffusion, steps: usize, order: usize) -> (f64, f64) {
    let abar = d.schedule().alphas_cumprod();
    let mut ts = TimestepSpacing::LogSnr
        .timesteps(d.schedule(), steps)
        .unwrap();
    ts.reverse();
    let lambda = |t: usize| 0.5 * (abar[t] / (1.0 - abar[t])).ln();
    let x0 = Oracle {
        abar: abar.to_vec(),
        objective: Objective::Sample,
    };
    let mut g = LinearGaussian::standard();
    for i in 0..ts.len() {
        let (s, ls) = (ts[i], lambda(ts[i]));
        let (k, b) = x0.affine(s);
        if i + 1 == ts.len() {
            g.apply([k, 0.0], b, 0.0, [0.0, 0.0], 0.0); // the last step returns m_0
            break;
        }
        let t = ts[i + 1];
        let h = lambda(t) - ls;
        let (at, st, ss) = (
            abar[t].sqrt(),
            (1.0 - abar[t]).sqrt(),
            (1.0 - abar[s]).sqrt(),
        );
        let c0 = 1.0 - (-2.0 * h).exp();
        // Weights of m_0 and m_1 in phi_0 (m_0 + (m_0 - m_1) / (2 r_0)).
        let (w0, w1) = if order == 1 || i == 0 || (ts.len() < 15 && i + 2 == ts.len() && order > 2)
        {
            (1.0, 0.0)
        } else {
            let r0 = (ls - lambda(ts[i - 1])) / h;
            (1.0 + 0.5 / r0, -0.5 / r0)
        };
        let a = st / ss * (-h).exp() + at * c0 * w0 * k;
        g.apply(
            [a, at * c0 * w1],
            at * c0 * w0 * b,
            st * st * c0,
            [k, 0.0],
            b,
        );
    }
    (g.mean[0], g.cov[0][0].sqrt())
}

/// Closed-form moments of DDIM on a spacing (Markov: the 1-D recursion).
fn ddim_moments(
    d: &GaussianDiffusion,
    steps: usize,
    spacing: TimestepSpacing,
    eta: f64,
) -> (f64, f64) {
    let abar = d.schedule().alphas_cumprod();
    let mut ts = spacing.timesteps(d.schedule(), steps).unwrap();
    ts.reverse();
    let x0 = Oracle {
        abar: abar.to_vec(),
        objective: Objective::Sample,
    };
    let mut g = LinearGaussian::standard();
    for i in 0..ts.len() {
        let a = abar[ts[i]];
        let ap = ts.get(i + 1).map_or(1.0, |&t| abar[t]);
        let (k, b) = x0.affine(ts[i]);
        // eps = (x - sqrt(a) x0) / sqrt(1 - a)
        let (ke, be) = (
            (1.0 - a.sqrt() * k) / (1.0 - a).sqrt(),
            -a.sqrt() * b / (1.0 - a).sqrt(),
        );
        let (cx, ce, sigma) = ddpm_core::ddim_coefficients(eta, a, ap);
        g.apply(
            [cx * k + ce * ke, 0.0],
            cx * b + ce * be,
            sigma * sigma,
            [0.0, 0.0],
            0.0,
        );
    }
    (g.mean[0], g.cov[0][0].sqrt())
}

#[test]
fn stochastic_samplers_match_their_closed_form_moments() {
    let d = linear(Objective::Epsilon);
    let n = 20_000;
    let cases: Vec<(SamplerConfig, (f64, f64))> = vec![
        (
            SamplerKind::DpmSolver2MSde.with_steps(50),
            dpm_sde_moments(&d, 50, 2),
        ),
        (
            SamplerKind::DpmSolver2MSde.with_steps(20),
            dpm_sde_moments(&d, 20, 2),
        ),
        (
            SamplerConfig::DpmSolver {
                steps: 30,
                spacing: TimestepSpacing::LogSnr,
                order: SolverOrder::First,
                variant: SolverVariant::Sde,
                clip: Clip::None,
            },
            dpm_sde_moments(&d, 30, 1),
        ),
        (
            SamplerConfig::Ddim {
                steps: 50,
                spacing: TimestepSpacing::Trailing,
                eta: 1.0,
                clip: Clip::None,
            },
            ddim_moments(&d, 50, TimestepSpacing::Trailing, 1.0),
        ),
    ];
    for (cfg, (m_exact, s_exact)) in cases {
        let out = cfg
            .sample(
                &d,
                &Oracle::new(&d),
                [n, 1],
                &device(),
                SampleOptions::new(7),
            )
            .unwrap();
        let (m, s) = mean_std(&to_vec(out.samples));
        println!("{cfg:?}: mean {m:.4} std {s:.4}; closed form {m_exact:.4} {s_exact:.4}");
        // Standard errors at n = 20000: 0.0021 for the mean, 0.5 % for the std.
        assert!((m - m_exact).abs() < 0.01, "{cfg:?}: mean {m} vs {m_exact}");
        assert!(
            (s / s_exact - 1.0).abs() < 0.025,
            "{cfg:?}: std {s} vs {s_exact}"
        );
        // And the closed form itself is near the data (the sampler's own bias is small).
        assert!((m_exact - MU).abs() < 0.01 && (s_exact / S - 1.0).abs() < 0.2);
    }
}

#[test]
fn a_boxed_scheduler_in_a_hand_written_loop_equals_denoise() {
    let d = linear(Objective::Epsilon);
    let oracle = Oracle::new(&d);
    let cfg = deterministic("dpm++3m", 15);
    let x_t = column(&grid());
    let mut boxed: Box<dyn Scheduler<2>> = cfg.build(&d).unwrap();
    let mut rng = NoiseRng::new(0);
    let mut x = x_t.clone();
    let calls = boxed.timesteps().to_vec();
    for (i, &t) in calls.iter().enumerate() {
        let ts = Tensor::<1, Int>::from_ints(vec![t as i64; 41].as_slice(), &device());
        let out = oracle.predict(x.clone(), ts).unwrap();
        x = boxed.step(out, i, x, &mut rng).unwrap().prev_sample;
    }
    let mut again = cfg.build::<2>(&d).unwrap();
    let mut options = SampleOptions::new(0);
    let y = denoise(
        again.as_mut(),
        &oracle,
        x_t,
        &mut NoiseRng::new(0),
        &mut options,
    )
    .unwrap();
    assert_eq!(to_vec(x), to_vec(y.samples));
}

#[test]
fn runs_start_and_stop_where_asked() {
    let d = linear(Objective::Epsilon);
    let abar = d.schedule().alphas_cumprod();
    let cfg = deterministic("dpm++2m", 50);
    let s = cfg.build::<2>(&d).unwrap();
    // img2img at strength 0.3: start at the first call at or below t = 300.
    let start = s.start_index(300);
    let t0 = s.timesteps()[start];
    assert!(t0 <= 300 && s.timesteps()[start - 1] > 300);
    // From the exact ODE state at t0, the rest of the run lands on the exact map, as the
    // whole run from x_T does.
    let xs: Vec<f64> = grid()
        .iter()
        .map(|&x| ode_map(abar, x, 999, Some(t0)))
        .collect();
    let out = cfg
        .sample_from(
            &d,
            &Oracle::new(&d),
            column(&xs),
            SampleOptions::new(0).with_range(start, None),
        )
        .unwrap();
    let full = run(&d, cfg, &grid());
    for ((x, y), f) in grid().iter().zip(to_vec(out.samples)).zip(full) {
        let want = ode_map(abar, *x, 999, None);
        assert!((y - want).abs() < 5e-3, "{y} against {want}");
        assert!((y - f).abs() < 5e-3, "{y} against the full run's {f}");
    }
    // Strength 0 (start past the end) returns the input itself; stopping early returns x at
    // the stop.
    let n = s.timesteps().len();
    let same = cfg
        .sample_from(
            &d,
            &Oracle::new(&d),
            column(&xs),
            SampleOptions::new(0).with_range(n, None),
        )
        .unwrap();
    assert_eq!(to_vec(same.samples), to_vec(column(&xs)));
    let e = cfg
        .sample_from(
            &d,
            &Oracle::new(&d),
            column(&xs),
            SampleOptions::new(0).with_range(3, Some(2)),
        )
        .unwrap_err();
    assert!(e.to_string().contains("cannot run model calls 3..2"), "{e}");
}

#[test]
fn bad_settings_are_errors_that_say_what_is_allowed() {
    let d = linear(Objective::Epsilon);
    for steps in [0usize, 1001] {
        for (kind, _) in SamplerKind::ALL {
            let e = kind.with_steps(steps).build::<2>(&d).err().unwrap();
            assert!(e.to_string().contains("between 1 and T"), "{kind:?}: {e}");
        }
    }
    let e = SolverOrder::try_from(4).unwrap_err();
    assert!(e.to_string().contains("1, 2 or 3"), "{e}");
    let e = "dpm++4m".parse::<SamplerKind>().unwrap_err();
    assert!(e.to_string().contains("dpm++2m"), "{e}");
    // Out-of-order calls, a corrector without its predictor, a wrong-shaped output.
    let mut s = DpmSolverScheduler::<2>::new(
        &d,
        10,
        TimestepSpacing::LogSnr,
        SolverOrder::Second,
        SolverVariant::Ode,
        Clip::None,
    )
    .unwrap();
    let mut rng = NoiseRng::new(0);
    s.step(column(&[0.1]), 0, column(&[0.2]), &mut rng).unwrap();
    let e = s
        .step(column(&[0.1]), 2, column(&[0.2]), &mut rng)
        .unwrap_err();
    assert!(e.to_string().contains("expected 1"), "{e}");
    let mut h = EdmScheduler::<2>::new(&d, 5, TimestepSpacing::LogSnr, EdmMethod::Heun, Clip::None)
        .unwrap();
    let e = h
        .step(column(&[0.1]), 1, column(&[0.2]), &mut rng)
        .unwrap_err();
    assert!(e.to_string().contains("predictor"), "{e}");
    let e = h
        .step(column(&[0.1, 0.2]), 0, column(&[0.2]), &mut rng)
        .unwrap_err();
    assert!(e.to_string().contains("shape"), "{e}");
    // An empty x_T.
    let e = deterministic("heun", 5)
        .sample_from(
            &d,
            &Oracle::new(&d),
            Tensor::<2>::zeros([0, 1], &device()),
            SampleOptions::new(0),
        )
        .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
}

#[test]
fn heun_calls_the_model_twice_per_step_but_the_last() {
    let d = linear(Objective::Epsilon);
    let cfg = deterministic("heun", 10);
    assert_eq!(cfg.model_calls(&d).unwrap(), 19);
    let s = cfg.build::<2>(&d).unwrap();
    let t = s.timesteps();
    assert_eq!(t[1], t[2]);
    assert_eq!(
        s.start_index(t[3]) % 2,
        0,
        "a run starts at a predictor call"
    );
}
