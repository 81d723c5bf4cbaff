//! The variational bound in bits/dim on quantized Gaussian data.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::{GaussianOracle, ZeroPredictor, device};
use ddpm_core::{Clip, DiffusionConfig, GaussianDiffusion, NoiseRng, VarianceType};

const MU: f64 = 0.1;
const S: f64 = 0.3;

/// Standard normal CDF through the complementary error function (Numerical Recipes' erfc,
/// relative error below 1.2e-7).
fn phi(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807
                            + t * (-1.13520398
                                + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

/// Entropy in bits of N(MU, S^2) quantized to the 256 levels of [-1, 1] (edge bins open).
fn quantized_entropy() -> f64 {
    let mut h = 0.0;
    for k in 0..256 {
        let lo = if k == 0 {
            f64::NEG_INFINITY
        } else {
            -1.0 + (2 * k - 1) as f64 / 255.0
        };
        let hi = if k == 255 {
            f64::INFINITY
        } else {
            -1.0 + (2 * k + 1) as f64 / 255.0
        };
        let p = phi((hi - MU) / S) - phi((lo - MU) / S);
        if p > 0.0 {
            h -= p * p.log2();
        }
    }
    h
}

fn quantized_data(n: usize, dim: usize) -> Tensor<2> {
    let mut rng = NoiseRng::new(21);
    let v: Vec<f32> = rng
        .normal_vec(n * dim)
        .into_iter()
        .map(|z| {
            let x = (MU + S * z as f64).clamp(-1.0, 1.0);
            ((((x + 1.0) / 2.0 * 255.0).round() / 255.0) * 2.0 - 1.0) as f32
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [n, dim]), &device())
}

#[test]
fn the_bound_holds_and_separates_good_from_bad_models() {
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let oracle = GaussianOracle {
        mu: MU,
        s: S,
        abar: d.schedule().alphas_cumprod().to_vec(),
    };
    let x0 = quantized_data(400, 16);
    let entropy = quantized_entropy();
    let mut steps = 0;
    let mut count = |_: usize, _: usize| steps += 1;
    let good = d
        .calc_bpd_loop(
            &oracle,
            x0.clone(),
            VarianceType::FixedLarge,
            Clip::None,
            &mut NoiseRng::new(1),
            &mut count,
        )
        .unwrap();
    assert_eq!(steps, 1000);
    let bad = d
        .calc_bpd_loop(
            &ZeroPredictor,
            x0,
            VarianceType::FixedLarge,
            Clip::None,
            &mut NoiseRng::new(1),
            &mut |_, _| {},
        )
        .unwrap();
    println!(
        "entropy {entropy:.4} bits; oracle {:.4} (prior {:.2e}, decoder {:.4}, kl {:.4}); zero {:.4}",
        good.total, good.prior, good.decoder, good.kl_sum, bad.total
    );
    // Terms add up.
    assert!((good.total - (good.prior + good.decoder + good.kl_sum)).abs() < 1e-6);
    // The bound is an upper bound of the NLL, hence above the entropy of the data.
    assert!(
        good.total > entropy,
        "oracle {} <= entropy {entropy}",
        good.total
    );
    // ... and for the exact model, close to it.
    assert!(
        good.total < entropy + 0.5,
        "oracle {} far from entropy {entropy}",
        good.total
    );
    assert!(
        bad.total > good.total + 2.0,
        "zero {} vs oracle {}",
        bad.total,
        good.total
    );
    // The prior term is tiny for the paper's schedule (abar_T ~ 4e-5).
    assert!(
        good.prior > 0.0 && good.prior < 1e-3,
        "prior {}",
        good.prior
    );
}

#[test]
fn normal_kl_and_discretized_likelihood_match_closed_forms() {
    let dev = device();
    let t = |v: f32| Tensor::<1>::from_floats([v], &dev);
    // KL(N(1, e^0) || N(0, e^{ln 4})) = 0.5 (ln 4 - 0 + 1/4 + 1/4 - 1).
    let kl = ddpm_core::normal_kl(t(1.0), t(0.0), t(0.0), t(4f32.ln())).into_scalar::<f32>() as f64;
    let expected = 0.5 * (4f64.ln() + 0.25 + 0.25 - 1.0);
    assert!((kl - expected).abs() < 1e-6, "{kl} vs {expected}");
    // A very narrow Gaussian centred on a bin puts (almost) all its mass in that bin.
    let ll = ddpm_core::discretized_gaussian_log_likelihood(t(0.2), t(0.2), t(-10.0))
        .into_scalar::<f32>();
    assert!(ll.abs() < 1e-5, "{ll}");
    // The edge bins are open: x = -1 gets the whole lower tail.
    let edge = ddpm_core::discretized_gaussian_log_likelihood(t(-1.0), t(-3.0), t(0.0))
        .into_scalar::<f32>();
    assert!(edge > -0.03, "{edge}");
}
