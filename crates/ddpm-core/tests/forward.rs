//! The forward process q and the parameterizations, against closed forms.

mod common;

use burn::tensor::Tensor;
use common::{device, mean_std, to_vec};
use ddpm_core::{DiffusionConfig, GaussianDiffusion, NoiseRng, Objective};

#[test]
fn q_sample_matches_closed_form_moments() {
    let dev = device();
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let n = 100_000;
    let x0_val = 0.7;
    let mut rng = NoiseRng::new(1);
    for t in [0usize, 100, 499, 999] {
        let x0 = Tensor::<2>::full([n, 1], x0_val, &dev);
        let noise = rng.normal([n, 1], &dev);
        let xt = to_vec(d.q_sample(x0, &vec![t; n], noise).unwrap());
        let (m, s) = mean_std(&xt);
        let ab = d.schedule().alphas_cumprod()[t];
        let (em, es) = (ab.sqrt() * x0_val, (1.0 - ab).sqrt());
        // 5 standard errors of the mean and of the standard deviation.
        assert!(
            (m - em).abs() < 5.0 * es / (n as f64).sqrt(),
            "t={t}: mean {m} vs {em}"
        );
        assert!(
            (s - es).abs() < 5.0 * es / (2.0 * n as f64).sqrt() + 1e-6,
            "t={t}: std {s} vs {es}"
        );
    }
}

#[test]
fn q_sample_takes_one_timestep_per_example() {
    let dev = device();
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let x0 = Tensor::<2>::ones([3, 2], &dev);
    let xt = to_vec(
        d.q_sample(x0, &[0, 500, 999], Tensor::zeros([3, 2], &dev))
            .unwrap(),
    );
    let s = d.schedule().sqrt_alphas_cumprod();
    for (row, t) in [0usize, 500, 999].iter().enumerate() {
        assert!((xt[2 * row] - s[*t]).abs() < 1e-6);
        assert!((xt[2 * row + 1] - s[*t]).abs() < 1e-6);
    }
}

#[test]
fn t_markov_steps_match_one_q_sample_in_distribution() {
    let dev = device();
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let n = 50_000;
    let x0_val = -0.4;
    let mut rng = NoiseRng::new(2);
    let mut x = Tensor::<2>::full([n, 1], x0_val, &dev);
    let t_end = 299;
    for t in 0..=t_end {
        let noise = rng.normal([n, 1], &dev);
        x = d.q_step(x, &vec![t; n], noise).unwrap();
    }
    let chain = to_vec(x);
    let one = to_vec(
        d.q_sample(
            Tensor::full([n, 1], x0_val, &dev),
            &vec![t_end; n],
            rng.normal([n, 1], &dev),
        )
        .unwrap(),
    );
    let (m1, s1) = mean_std(&chain);
    let (m2, s2) = mean_std(&one);
    let ab = d.schedule().alphas_cumprod()[t_end];
    let (em, es) = (ab.sqrt() * x0_val, (1.0 - ab).sqrt());
    let tol = 5.0 * es / (n as f64).sqrt();
    assert!(
        (m1 - em).abs() < tol && (m2 - em).abs() < tol,
        "means {m1} {m2} vs {em}"
    );
    assert!(
        (s1 - es).abs() < 0.01 && (s2 - es).abs() < 0.01,
        "stds {s1} {s2} vs {es}"
    );
}

#[test]
fn q_posterior_matches_bayes_rule() {
    let dev = device();
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let s = d.schedule();
    let x0v = [0.3f64, -0.8];
    let xtv = [1.2f64, 0.1];
    for t in [1usize, 2, 50, 500, 999] {
        let x0 = Tensor::<2>::from_floats([[x0v[0] as f32], [x0v[1] as f32]], &dev);
        let xt = Tensor::<2>::from_floats([[xtv[0] as f32], [xtv[1] as f32]], &dev);
        let post = d.q_posterior(x0, xt, &[t, t]).unwrap();
        let means = to_vec(post.mean);
        let var = to_vec(post.variance)[0];
        // Independent computation: prior x_{t-1} | x0 ~ N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}),
        // likelihood x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t); multiply the Gaussians.
        let ab_prev = s.alphas_cumprod()[t - 1];
        let (alpha, beta) = (s.alphas()[t], s.betas()[t]);
        let precision = 1.0 / (1.0 - ab_prev) + alpha / beta;
        let bayes_var = 1.0 / precision;
        assert!(
            (var - bayes_var).abs() / bayes_var < 1e-5,
            "t={t}: var {var} vs {bayes_var}"
        );
        for i in 0..2 {
            let bayes_mean = bayes_var
                * (ab_prev.sqrt() * x0v[i] / (1.0 - ab_prev) + alpha.sqrt() * xtv[i] / beta);
            assert!(
                (means[i] - bayes_mean).abs() < 1e-5,
                "t={t}: mean {} vs {bayes_mean}",
                means[i]
            );
        }
    }
}

#[test]
fn parameterizations_invert_each_other() {
    let dev = device();
    let d = GaussianDiffusion::new(DiffusionConfig::default().with_objective(Objective::Velocity))
        .unwrap();
    let mut rng = NoiseRng::new(3);
    let x0 = rng.normal([4, 5], &dev);
    let eps = rng.normal([4, 5], &dev);
    let t = [3usize, 250, 600, 990];
    let xt = d.q_sample(x0.clone(), &t, eps.clone()).unwrap();
    let close = |a: Tensor<2>, b: Tensor<2>, tol: f64| {
        let (a, b) = (to_vec(a), to_vec(b));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < tol, "{x} vs {y}");
        }
    };
    close(
        d.predict_start_from_noise(xt.clone(), &t, eps.clone()),
        x0.clone(),
        2e-3,
    );
    close(
        d.predict_noise_from_start(xt.clone(), &t, x0.clone()),
        eps.clone(),
        2e-3,
    );
    let v = d.predict_v(x0.clone(), &t, eps.clone());
    close(d.predict_start_from_v(xt.clone(), &t, v.clone()), x0, 1e-4);
    close(d.predict_noise_from_v(xt, &t, v), eps, 1e-4);
}
