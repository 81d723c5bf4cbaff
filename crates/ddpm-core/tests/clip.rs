//! Clipping of the x_0 estimate: exact values of each [`Clip`], the eps re-derived from a
//! clipped x_0, and the errors of bad bounds.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::{device, to_vec};
use ddpm_core::{
    Clip, DdimScheduler, DdpmError, DdpmScheduler, DiffusionConfig, DpmSolverScheduler, EdmMethod,
    EdmScheduler, GaussianDiffusion, Objective, SolverOrder, SolverVariant, TimestepSpacing,
    VarianceType,
};

/// Three samples of shape [1, 2, 2]: one inside [-1, 1], two saturated.
fn batch() -> Tensor<4> {
    let v: Vec<f32> = vec![
        0.5, -0.9, 0.0, 1.0, // inside
        0.5, -3.0, 2.0, 1.5, // |x| sorted: 0.5 1.5 2 3
        -8.0, 4.0, 0.25, -2.0, // |x| sorted: 0.25 2 4 8
    ];
    Tensor::from_data(TensorData::new(v, [3, 1, 2, 2]), &device())
}

fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-6, "element {i}: got {g}, want {w}");
    }
}

#[test]
fn range_and_none_are_exact() {
    assert_close(
        &to_vec(Clip::None.apply(batch())),
        &to_vec(batch()), // unchanged
    );
    assert_close(
        &to_vec(Clip::unit().apply(batch())),
        &[
            0.5, -0.9, 0.0, 1.0, 0.5, -1.0, 1.0, 1.0, -1.0, 1.0, 0.25, -1.0,
        ],
    );
}

#[test]
fn dynamic_thresholding_scales_each_sample_by_its_own_quantile() {
    // Median (index ceil(0.5 * 4) - 1 = 1): s = max(1, 0.9) = 1, 1.5, 2.
    let median = Clip::Dynamic {
        percentile: 0.5,
        max: 10.0,
    };
    let third = 1.0 / 1.5;
    assert_close(
        &to_vec(median.apply(batch())),
        &[
            0.5,
            -0.9,
            0.0,
            1.0, // s = 1: left alone
            0.5 * third,
            -1.0,
            1.0,
            1.0, // s = 1.5
            -1.0,
            1.0,
            0.125,
            -1.0, // s = 2
        ],
    );
    // The 100th percentile is the largest |x|: a pure rescale (s = 1, 3, 8).
    let full = Clip::Dynamic {
        percentile: 1.0,
        max: 10.0,
    };
    assert_close(
        &to_vec(full.apply(batch())),
        &[
            0.5,
            -0.9,
            0.0,
            1.0,
            0.5 / 3.0,
            -1.0,
            2.0 / 3.0,
            0.5,
            -1.0,
            0.5,
            0.03125,
            -0.25,
        ],
    );
    // `max` caps the threshold: s = 1, 3 -> 2.5, 8 -> 2.5.
    let capped = Clip::Dynamic {
        percentile: 1.0,
        max: 2.5,
    };
    assert_close(
        &to_vec(capped.apply(batch())),
        &[
            0.5, -0.9, 0.0, 1.0, 0.2, -1.0, 0.8, 0.6, -1.0, 1.0, 0.1, -0.8,
        ],
    );
    // Every output lies in [-1, 1] whatever the input.
    let big = Tensor::<4>::random(
        [5, 1, 7, 3],
        burn::tensor::Distribution::Normal(0.0, 10.0),
        &device(),
    );
    let out = to_vec(Clip::dynamic(1e6).unwrap().apply(big));
    assert!(out.iter().all(|v| v.abs() <= 1.0 + 1e-6));
}

#[test]
fn clipped_x0_gives_the_eps_that_reproduces_x_t() {
    // With any clipping, eps is re-derived so that x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
    // (eq. 4) holds for the clipped x0.
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    assert_eq!(d.objective(), Objective::Epsilon);
    let t = [10usize, 500, 999];
    let x_t = batch();
    let out = batch().neg() * 0.7;
    for clip in [Clip::unit(), Clip::dynamic(4.0).unwrap()] {
        let (eps, x0) = d.split_output(x_t.clone(), &t, out.clone(), clip);
        let (eps, x0, xt) = (to_vec(eps), to_vec(x0), to_vec(x_t.clone()));
        assert!(x0.iter().all(|v| v.abs() <= 1.0 + 1e-6), "{clip:?}");
        for i in 0..xt.len() {
            let a = d.schedule().alphas_cumprod()[t[i / 4]];
            let back = a.sqrt() * x0[i] + (1.0 - a).sqrt() * eps[i];
            assert!(
                (back - xt[i]).abs() < 1e-3 * (1.0 + xt[i].abs()),
                "{clip:?} element {i}: {back} vs {}",
                xt[i]
            );
        }
    }
}

#[test]
fn bad_bounds_are_errors_naming_the_value() {
    for (clip, needle) in [
        (
            Clip::Range {
                min: 1.0,
                max: -1.0,
            },
            "[1, -1]",
        ),
        (
            Clip::Dynamic {
                percentile: 0.0,
                max: 1.0,
            },
            "percentile 0",
        ),
        (
            Clip::Dynamic {
                percentile: 1.5,
                max: 1.0,
            },
            "percentile 1.5",
        ),
        (
            Clip::Dynamic {
                percentile: f64::NAN,
                max: 1.0,
            },
            "percentile NaN",
        ),
        (
            Clip::Dynamic {
                percentile: 0.995,
                max: 0.5,
            },
            "max 0.5",
        ),
    ] {
        let err = clip.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{clip:?}: {err}");
    }
    assert!(matches!(
        Clip::dynamic(0.9),
        Err(DdpmError::InvalidSampler(_))
    ));
    assert!(Clip::None.validate().is_ok() && Clip::unit().validate().is_ok());

    // Every scheduler checks its clipping when it is built.
    let d = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let bad = Clip::Dynamic {
        percentile: 2.0,
        max: 1.0,
    };
    let sp = TimestepSpacing::Linspace;
    let errs = [
        DdpmScheduler::new(&d, Some(10), sp, VarianceType::FixedLarge, bad).err(),
        DdimScheduler::new(&d, 10, sp, 0.0, bad).err(),
        DpmSolverScheduler::<4>::new(&d, 10, sp, SolverOrder::Second, SolverVariant::Ode, bad)
            .err(),
        EdmScheduler::<4>::new(&d, 10, sp, EdmMethod::Heun, bad).err(),
    ];
    for e in errs {
        assert!(matches!(e, Some(DdpmError::InvalidSampler(m)) if m.contains("percentile 2")));
    }
}

#[test]
fn clip_parses_from_the_command_line_names() {
    for name in ["none", "unit", "dynamic", "dynamic:2.5"] {
        let clip: Clip = name.parse().unwrap();
        assert_eq!(clip.to_string(), name);
        assert!(clip.validate().is_ok());
    }
    assert_eq!(
        "dynamic:2.5".parse::<Clip>().unwrap(),
        Clip::Dynamic {
            percentile: 0.995,
            max: 2.5
        }
    );
    for (bad, needle) in [
        ("clamp", "'clamp'"),
        ("dynamic:x", "'dynamic:x'"),
        ("dynamic:0.5", "max 0.5"),
    ] {
        let err = bad.parse::<Clip>().unwrap_err().to_string();
        assert!(err.contains(needle), "{bad}: {err}");
    }
}
