//! Control of generation against closed forms: classifier-free guidance on a two-class
//! Gaussian mixture, RePaint inpainting of a correlated 2-D Gaussian, SDEdit's end points and
//! spherical interpolation.

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use common::{device, mean_std, to_vec};
use ddpm_core::{
    Condition, Conditioned, DiffusionConfig, GaussianDiffusion, Guided, InpaintConfig,
    NoisePredictor, Objective, PredictorError, SampleOptions, SamplerKind, VarianceType, inpaint,
    slerp, timestep_tensor,
};

const MUS: [f64; 2] = [-1.0, 1.0];
const S: f64 = 0.3;

fn diffusion() -> GaussianDiffusion {
    GaussianDiffusion::new(DiffusionConfig::default()).unwrap()
}

fn abar(d: &GaussianDiffusion) -> Vec<f64> {
    d.schedule().alphas_cumprod().to_vec()
}

/// eps of class `c` (N(mu_c, S^2) data) at x_t: sqrt(1 - ab) (x - sqrt(ab) mu) / (ab S^2 + 1 - ab).
fn eps_class(ab: f64, x: f64, c: usize) -> f64 {
    (1.0 - ab).sqrt() * (x - ab.sqrt() * MUS[c]) / (ab * S * S + 1.0 - ab)
}

/// eps of the equal-weight mixture: the responsibilities' average of the classes' eps.
fn eps_mixture(ab: f64, x: f64) -> f64 {
    let v = ab * S * S + 1.0 - ab;
    let w: Vec<f64> = MUS
        .iter()
        .map(|m| (-(x - ab.sqrt() * m).powi(2) / (2.0 * v)).exp())
        .collect();
    let z = w[0] + w[1];
    (w[0] * eps_class(ab, x, 0) + w[1] * eps_class(ab, x, 1)) / z
}

/// The exact predictor of the two-class mixture: classes 0 and 1, null class 2.
struct Mixture {
    abar: Vec<f64>,
}

impl Mixture {
    fn eval(&self, x_t: Tensor<2>, t: Tensor<1, Int>, labels: &[usize]) -> Tensor<2> {
        let ts: Vec<i64> = t.into_data().convert::<i64>().iter::<i64>().collect();
        let device = x_t.device();
        let xs = to_vec(x_t);
        let out: Vec<f32> = xs
            .iter()
            .zip(ts.iter().zip(labels))
            .map(|(&x, (&t, &c))| {
                let ab = self.abar[t as usize];
                (if c == 2 {
                    eps_mixture(ab, x)
                } else {
                    eps_class(ab, x, c)
                }) as f32
            })
            .collect();
        Tensor::from_data(TensorData::new(out, [xs.len(), 1]), &device)
    }
}

impl NoisePredictor<2> for Mixture {
    fn predict(&self, x_t: Tensor<2>, t: Tensor<1, Int>) -> Result<Tensor<2>, PredictorError> {
        let n = x_t.dims()[0];
        Ok(self.eval(x_t, t, &vec![2; n]))
    }
    fn predict_conditional(
        &self,
        x_t: Tensor<2>,
        t: Tensor<1, Int>,
        condition: &Condition,
    ) -> Result<Tensor<2>, PredictorError> {
        match condition {
            Condition::Classes(l) => Ok(self.eval(x_t, t, l)),
            other => Err(format!("unsupported {other:?}").into()),
        }
    }
    fn num_classes(&self) -> Option<usize> {
        Some(2)
    }
}

fn column(values: &[f64]) -> Tensor<2> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, [values.len(), 1]), &device())
}

#[test]
fn the_guided_eps_is_the_hand_computed_combination() {
    let d = diffusion();
    let model = Mixture { abar: abar(&d) };
    let xs = [-2.0, -1.0, -0.3, 0.0, 0.4, 1.1, 2.5];
    for (t, w, c) in [(100, 3.0, 1), (500, 2.0, 0), (900, -0.5, 1), (20, 7.5, 0)] {
        let guided = Guided::new(&model, Condition::Classes(vec![c; xs.len()]), w).unwrap();
        let got = to_vec(
            guided
                .predict(column(&xs), timestep_tensor(&vec![t; xs.len()], &device()))
                .unwrap(),
        );
        let ab = abar(&d)[t];
        for (x, g) in xs.iter().zip(&got) {
            let u = eps_mixture(ab, *x);
            let want = u + w * (eps_class(ab, *x, c) - u);
            assert!((g - want).abs() < 1e-5, "t {t} w {w} x {x}: {g} vs {want}");
        }
    }
}

#[test]
fn guidance_0_is_unconditional_and_guidance_1_conditional_sampling_sample_for_sample() {
    let d = diffusion();
    let model = Mixture { abar: abar(&d) };
    for kind in [SamplerKind::Ddpm, SamplerKind::Ddim] {
        let sampler = kind.with_steps(50);
        let run = |m: &dyn Fn() -> Vec<f64>| m();
        let plain = run(&|| {
            to_vec(
                sampler
                    .sample(&d, &model, [64, 1], &device(), SampleOptions::new(7))
                    .unwrap()
                    .samples,
            )
        });
        let w0 = Guided::new(&model, Condition::Classes(vec![1; 64]), 0.0).unwrap();
        let g0 = to_vec(
            sampler
                .sample(&d, &w0, [64, 1], &device(), SampleOptions::new(7))
                .unwrap()
                .samples,
        );
        assert_eq!(plain, g0, "{kind}: w = 0 is unconditional sampling");
        let cond = Conditioned::new(&model, Condition::Classes(vec![1; 64]));
        let c1 = to_vec(
            sampler
                .sample(&d, &cond, [64, 1], &device(), SampleOptions::new(7))
                .unwrap()
                .samples,
        );
        let w1 = Guided::new(&model, Condition::Classes(vec![1; 64]), 1.0).unwrap();
        let g1 = to_vec(
            sampler
                .sample(&d, &w1, [64, 1], &device(), SampleOptions::new(7))
                .unwrap()
                .samples,
        );
        assert_eq!(c1, g1, "{kind}: w = 1 is conditional sampling");
        assert_ne!(plain, g1);
    }
}

#[test]
fn conditional_samples_have_their_class_moments() {
    let d = diffusion();
    let model = Mixture { abar: abar(&d) };
    let n = 4000;
    for c in [0, 1] {
        let guided = Guided::new(&model, Condition::Classes(vec![c; n]), 1.0).unwrap();
        let out = SamplerKind::DpmSolver2M
            .with_steps(50)
            .sample(&d, &guided, [n, 1], &device(), SampleOptions::new(3))
            .unwrap();
        let (m, s) = mean_std(&to_vec(out.samples));
        println!(
            "class {c}: mean {m:.4} (want {}), std {s:.4} (want {S})",
            MUS[c]
        );
        // Standard errors at n = 4000: 0.005 for the mean, 0.0034 for the std.
        assert!((m - MUS[c]).abs() < 0.02, "class {c}: mean {m}");
        assert!((s - S).abs() < 0.015, "class {c}: std {s}");
    }
    // Unconditional (the null class): both modes, in equal shares.
    let out = SamplerKind::DpmSolver2M
        .with_steps(50)
        .sample(&d, &model, [n, 1], &device(), SampleOptions::new(4))
        .unwrap();
    let v = to_vec(out.samples);
    let right = v.iter().filter(|&&x| x > 0.0).count() as f64 / n as f64;
    assert!(
        (right - 0.5).abs() < 0.03,
        "share of the right mode {right}"
    );
}

/// A conditional predictor whose raw output is an arbitrary affine function of x per class.
struct Affine;
impl NoisePredictor<2> for Affine {
    fn predict(&self, x: Tensor<2>, t: Tensor<1, Int>) -> Result<Tensor<2>, PredictorError> {
        let n = x.dims()[0];
        self.predict_conditional(x, t, &Condition::null(n, 3))
    }
    fn predict_conditional(
        &self,
        x: Tensor<2>,
        _t: Tensor<1, Int>,
        c: &Condition,
    ) -> Result<Tensor<2>, PredictorError> {
        let Condition::Classes(l) = c else {
            return Err("classes only".into());
        };
        let k: Vec<f32> = l.iter().map(|&c| 0.25 * c as f32 - 0.4).collect();
        let k = Tensor::<1>::from_floats(k.as_slice(), &x.device()).unsqueeze_dim(1);
        Ok(x.clone().mul_scalar(0.7) + k.clone() * x.clone() + k)
    }
    fn num_classes(&self) -> Option<usize> {
        Some(3)
    }
}

#[test]
fn guiding_the_output_guides_the_implied_eps_for_every_objective() {
    let xs = [-1.5, -0.2, 0.3, 1.7];
    let n = xs.len();
    let (t, w, c) = (400, 2.5, 1);
    for objective in [Objective::Epsilon, Objective::Sample, Objective::Velocity] {
        let d =
            GaussianDiffusion::new(DiffusionConfig::default().with_objective(objective)).unwrap();
        let to_eps = |out: Tensor<2>| -> Vec<f64> {
            let x = column(&xs);
            let ts = vec![t; n];
            to_vec(match objective {
                Objective::Epsilon => out,
                Objective::Sample => d.predict_noise_from_start(x, &ts, out),
                Objective::Velocity => d.predict_noise_from_v(x, &ts, out),
            })
        };
        let tt = || timestep_tensor(&vec![t; n], &device());
        let guided = Guided::new(&Affine, Condition::Classes(vec![c; n]), w).unwrap();
        let eps_guided = to_eps(guided.predict(column(&xs), tt()).unwrap());
        let cond = Affine
            .predict_conditional(column(&xs), tt(), &Condition::Classes(vec![c; n]))
            .unwrap();
        let uncond = Affine.predict(column(&xs), tt()).unwrap();
        let (ec, eu) = (to_eps(cond), to_eps(uncond));
        for i in 0..n {
            let want = eu[i] + w * (ec[i] - eu[i]);
            assert!(
                (eps_guided[i] - want).abs() < 1e-4,
                "{objective:?}: {} vs {want}",
                eps_guided[i]
            );
        }
    }
}

#[test]
fn bad_guidance_is_a_clear_error() {
    let d = diffusion();
    let model = Mixture { abar: abar(&d) };
    let Err(e) = Guided::new(&model, Condition::Classes(vec![3]), 2.0) else {
        panic!("expected an error")
    };
    assert!(e.to_string().contains("class 3"), "{e}");
    let Err(e) = Guided::new(&model, Condition::Classes(vec![0]), f64::NAN) else {
        panic!("expected an error")
    };
    assert!(e.to_string().contains("finite"), "{e}");
    let Err(e) = Guided::new::<2>(&common::ZeroPredictor, Condition::Classes(vec![0]), 2.0) else {
        panic!("expected an error")
    };
    assert!(e.to_string().contains("unconditional"), "{e}");
    // A condition of 2 labels for a batch of 3.
    let g = Guided::new(&model, Condition::Classes(vec![0, 1]), 2.0).unwrap();
    let e = SamplerKind::Ddim
        .with_steps(5)
        .sample(&d, &g, [3, 1], &device(), SampleOptions::new(0))
        .unwrap_err();
    assert!(e.to_string().contains("2 labels"), "{e}");
    // An unconditional predictor refuses a condition.
    let e = common::ZeroPredictor
        .predict_conditional(
            column(&[0.0]),
            timestep_tensor(&[0], &device()),
            &Condition::Classes(vec![0]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("unconditional"), "{e}");
}

/// The exact predictor of x_0 ~ N(mu, Sigma) in 2-D: eps = sqrt(1 - ab) Sigma_t^-1 (x - sqrt(ab) mu),
/// Sigma_t = ab Sigma + (1 - ab) I.
struct Gaussian2d {
    abar: Vec<f64>,
    mu: [f64; 2],
    sigma: [[f64; 2]; 2],
}

impl NoisePredictor<2> for Gaussian2d {
    fn predict(&self, x_t: Tensor<2>, t: Tensor<1, Int>) -> Result<Tensor<2>, PredictorError> {
        let ts: Vec<i64> = t.into_data().convert::<i64>().iter::<i64>().collect();
        let device = x_t.device();
        let xs = to_vec(x_t);
        let mut out = Vec::with_capacity(xs.len());
        for (row, &t) in xs.chunks(2).zip(&ts) {
            let ab = self.abar[t as usize];
            let a = ab * self.sigma[0][0] + 1.0 - ab;
            let b = ab * self.sigma[0][1];
            let dd = ab * self.sigma[1][1] + 1.0 - ab;
            let det = a * dd - b * b;
            let r0 = row[0] - ab.sqrt() * self.mu[0];
            let r1 = row[1] - ab.sqrt() * self.mu[1];
            let k = (1.0 - ab).sqrt() / det;
            out.push((k * (dd * r0 - b * r1)) as f32);
            out.push((k * (-b * r0 + a * r1)) as f32);
        }
        Ok(Tensor::from_data(
            TensorData::new(out, [ts.len(), 2]),
            &device,
        ))
    }
}

#[test]
fn inpainting_keeps_the_known_pixels_and_draws_the_others_from_their_conditional() {
    let d = diffusion();
    let (s, rho) = (0.5, 0.8);
    let model = Gaussian2d {
        abar: abar(&d),
        mu: [0.5, -0.2],
        sigma: [[s * s, rho * s * s], [rho * s * s, s * s]],
    };
    let n = 2000;
    let known_value = 0.8;
    let known: Vec<f32> = (0..n).flat_map(|_| [known_value as f32, 0.0]).collect();
    let mask: Vec<f32> = (0..n).flat_map(|_| [1.0, 0.0]).collect();
    let known = Tensor::<2>::from_data(TensorData::new(known, [n, 2]), &device());
    let mask = Tensor::<2>::from_data(TensorData::new(mask, [n, 2]), &device());
    // x_2 | x_1 = k ~ N(mu_2 + rho (k - mu_1), s^2 (1 - rho^2)).
    let (want_m, want_s) = (
        -0.2 + rho * (known_value - 0.5),
        s * (1.0 - rho * rho).sqrt(),
    );
    let run = |steps, resample| {
        let config = InpaintConfig {
            steps,
            resample,
            clip: ddpm_core::Clip::None,
            variance: VarianceType::FixedLarge,
        };
        let v = to_vec(inpaint(&d, &model, known.clone(), mask.clone(), config, 5).unwrap());
        assert!(
            v.chunks(2).all(|r| r[0] == known_value as f32 as f64),
            "known pixels changed"
        );
        let (m, sd) = mean_std(&v.chunks(2).map(|r| r[1]).collect::<Vec<_>>());
        println!(
            "RePaint {steps} steps, {resample} resamplings: unknown pixel mean {m:.4} (want \
             {want_m:.4}), std {sd:.4} (want {want_s:.4})"
        );
        (m, sd)
    };
    // Plain replacement (no resampling) hardly passes the correlation on: measured mean
    // -0.058 against 0.040 (the unconditional mean is -0.2). RePaint's resampling fixes it:
    // measured 0.035 and std 0.311 with 9 resamplings of 250 steps (standard errors at
    // n = 2000: 0.007 and 0.005).
    let (m0, _) = run(250, 0);
    assert!((m0 - want_m).abs() > 0.05, "plain replacement: mean {m0}");
    let (m, sd) = run(250, 9);
    assert!((m - want_m).abs() < 0.015, "mean {m} vs {want_m}");
    assert!((sd - want_s).abs() < 0.02, "std {sd} vs {want_s}");
    // A mask of another shape is an error.
    let e = inpaint(
        &d,
        &model,
        known,
        Tensor::<2>::ones([n, 1], &device()),
        InpaintConfig::default(),
        0,
    )
    .unwrap_err();
    assert!(e.to_string().contains("mask"), "{e}");
}

#[test]
fn sdedit_strength_0_is_the_image_and_strength_1_is_plain_sampling() {
    let d = diffusion();
    let model = common::GaussianOracle {
        mu: 0.5,
        s: 0.3,
        abar: abar(&d),
    };
    let image = Tensor::<2>::from_data(
        TensorData::new(vec![0.1f32, -0.4, 0.9, 0.3, -0.7, 0.2], [3, 2]),
        &device(),
    );
    for sampler in [
        SamplerKind::Ddim.with_steps(20),
        SamplerKind::Ddpm.with_steps(50),
        SamplerKind::DpmSolver2M.with_steps(15),
    ] {
        let same = sampler
            .img2img(&d, &model, image.clone(), 0.0, SampleOptions::new(9))
            .unwrap();
        assert_eq!(to_vec(same.samples), to_vec(image.clone()));
        let full = sampler
            .img2img(&d, &model, image.clone(), 1.0, SampleOptions::new(9))
            .unwrap();
        let plain = sampler
            .sample(&d, &model, [3, 2], &device(), SampleOptions::new(9))
            .unwrap();
        assert_eq!(to_vec(full.samples), to_vec(plain.samples));
        // In between: closer to the image at low strength than at high strength.
        let dist = |strength: f64| {
            let out = sampler
                .img2img(&d, &model, image.clone(), strength, SampleOptions::new(9))
                .unwrap();
            let (a, b) = (to_vec(out.samples), to_vec(image.clone()));
            a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>()
        };
        assert!(dist(0.1) < dist(0.9), "{:?}", sampler);
    }
    let e = SamplerKind::Ddim
        .with_steps(5)
        .img2img(&d, &model, image, 1.5, SampleOptions::new(0))
        .unwrap_err();
    assert!(e.to_string().contains("strength"), "{e}");
}

#[test]
fn slerp_keeps_the_norm_and_moves_the_angle_linearly() {
    let a = Tensor::<2>::from_data(
        TensorData::new(vec![3.0f32, 0.0, 0.0, 1.0], [2, 2]),
        &device(),
    );
    let b = Tensor::<2>::from_data(
        TensorData::new(vec![0.0f32, 3.0, 1.0, 1.0], [2, 2]),
        &device(),
    );
    assert_eq!(
        to_vec(slerp(a.clone(), b.clone(), 0.0).unwrap()),
        to_vec(a.clone())
    );
    let end = to_vec(slerp(a.clone(), b.clone(), 1.0).unwrap());
    for (x, y) in end.iter().zip(to_vec(b.clone())) {
        assert!((x - y).abs() < 1e-6);
    }
    // Row 0: orthogonal vectors of norm 3: the norm stays 3 and the angle is alpha * 90 deg.
    for alpha in [0.25, 0.5, 0.8] {
        let v = to_vec(slerp(a.clone(), b.clone(), alpha).unwrap());
        let norm = (v[0] * v[0] + v[1] * v[1]).sqrt();
        assert!((norm - 3.0).abs() < 1e-5, "norm {norm}");
        let angle = v[1].atan2(v[0]);
        assert!((angle - alpha * std::f64::consts::FRAC_PI_2).abs() < 1e-5);
    }
    assert!(slerp(a, Tensor::<2>::zeros([2, 3], &device()), 0.5).is_err());
}
