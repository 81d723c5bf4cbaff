//! Shapes and errors of the MLP predictor.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use ddpm_core::{DdpmError, DiffusionConfig, GaussianDiffusion, NoiseRng};
use ddpm_mlp::{MlpError, MlpPredictorConfig};

#[test]
fn output_has_the_input_shape() {
    let dev = Device::flex();
    for (dim, batch) in [(2usize, 1usize), (2, 7), (784, 3)] {
        let mlp = MlpPredictorConfig::new(dim)
            .with_depth(2)
            .init(&dev)
            .unwrap();
        let t = Tensor::<1, Int>::from_ints(vec![3i64; batch].as_slice(), &dev);
        let y = mlp.forward(Tensor::zeros([batch, dim], &dev), t).unwrap();
        assert_eq!(y.dims(), [batch, dim]);
    }
}

#[test]
fn bad_configs_and_inputs_are_errors() {
    let dev = Device::flex();
    assert!(matches!(
        MlpPredictorConfig::new(0).init(&dev),
        Err(MlpError::InvalidConfig(_))
    ));
    assert!(matches!(
        MlpPredictorConfig::new(2).with_depth(0).init(&dev),
        Err(MlpError::InvalidConfig(_))
    ));
    let mlp = MlpPredictorConfig::new(2).init(&dev).unwrap();
    let t = Tensor::<1, Int>::from_ints([1, 2], &dev);
    let err = mlp.forward(Tensor::zeros([2, 3], &dev), t).unwrap_err();
    assert_eq!(
        err,
        MlpError::Input {
            expected: 2,
            actual: vec![2, 3]
        }
    );
    let diffusion = GaussianDiffusion::new(DiffusionConfig::default()).unwrap();
    let err = diffusion
        .loss(
            &mlp,
            Tensor::<2>::zeros([4, 5], &dev),
            &mut NoiseRng::new(0),
        )
        .unwrap_err();
    assert!(matches!(err, DdpmError::Predictor(_)));
}

/// The residual layout reaches the identity on `x_t` through its skip scale alone: with the
/// output layer zeroed and the scale set to `s`, the prediction is exactly `s * x`, whatever
/// the hidden layers compute. The plain layout has no such path (its output ignores `x`
/// once the output layer is zero).
#[test]
fn residual_layout_has_an_identity_path_and_plain_has_none() {
    use burn::module::Param;
    use burn::tensor::{Distribution, Tolerance};
    use ddpm_mlp::MlpLayout;

    let dev = Device::flex();
    let x = Tensor::<2>::random([6, 10], Distribution::Normal(0.0, 1.0), &dev);
    let t = Tensor::<1, Int>::from_ints([0, 5, 10, 100, 500, 999], &dev);
    let scale = Tensor::<1>::from_floats([0.5, -1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 3.0, 1.0, 1.0], &dev);
    let zero_output = |mut mlp: ddpm_mlp::MlpPredictor| {
        mlp.output.weight = mlp.output.weight.map(|w| w.zeros_like());
        mlp.output.bias = mlp.output.bias.map(|b| b.map(|b| b.zeros_like()));
        mlp
    };

    let mut residual = zero_output(MlpPredictorConfig::new(10).init(&dev).unwrap());
    // A fresh residual MLP starts with a zero skip scale.
    let fresh = residual
        .skip
        .as_ref()
        .expect("residual layout has a skip")
        .val();
    assert_eq!(fresh.abs().max().into_scalar::<f32>(), 0.0);
    residual.skip = Some(Param::from_tensor(scale.clone()));
    let y = residual.forward(x.clone(), t.clone()).unwrap();
    y.into_data().assert_approx_eq::<f32>(
        &(x.clone() * scale.unsqueeze_dim(0)).into_data(),
        Tolerance::absolute(1e-6),
    );

    let plain = zero_output(
        MlpPredictorConfig::new(10)
            .with_layout(MlpLayout::Plain)
            .init(&dev)
            .unwrap(),
    );
    assert!(plain.skip.is_none());
    let y = plain.forward(x, t).unwrap();
    assert_eq!(y.abs().max().into_scalar::<f32>(), 0.0);
}

/// The parameter count from the configuration equals the built MLP's; absurd sizes are
/// errors before anything is allocated.
#[test]
fn the_parameter_count_is_known_before_building() {
    let device = Device::flex();
    for config in [
        MlpPredictorConfig::new(784),
        MlpPredictorConfig::new(2)
            .with_num_classes(Some(3))
            .with_depth(2),
        MlpPredictorConfig::new(5)
            .with_layout(ddpm_mlp::MlpLayout::Plain)
            .with_hidden(7),
    ] {
        let built = config.init(&device).unwrap().num_params() as u64;
        assert_eq!(config.num_params().unwrap(), built, "{config:?}");
    }
    for config in [
        MlpPredictorConfig::new(1 << 40),
        MlpPredictorConfig::new(2).with_hidden(1 << 40),
        MlpPredictorConfig::new(2).with_depth(1 << 40),
        MlpPredictorConfig::new(2).with_num_classes(Some(usize::MAX)),
    ] {
        let e = config.init(&device).unwrap_err();
        assert!(matches!(e, MlpError::InvalidConfig(_)), "{e}");
    }
}
