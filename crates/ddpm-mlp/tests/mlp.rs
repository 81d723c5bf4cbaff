//! Shapes and errors of the MLP predictor.

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
