//! Integer index tensors: the timesteps a predictor receives, class labels.

use burn::tensor::{Device, Int, Tensor, TensorData};

/// Builds the `[batch]` integer tensor of 0-based timesteps that a [`NoisePredictor`](crate::NoisePredictor) receives.
pub fn timestep_tensor(t: &[usize], device: &Device) -> Tensor<1, Int> {
    let values: Vec<i64> = t.iter().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(values, [t.len()]), device)
}
