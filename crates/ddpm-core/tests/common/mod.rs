//! Shared test helpers: an exact noise predictor for Gaussian data.
#![allow(dead_code)]

use burn::tensor::{Device, Int, Tensor, TensorData};
use ddpm_core::{NoisePredictor, PredictorError};

pub fn device() -> Device {
    Device::flex()
}

pub fn to_vec<const D: usize>(x: Tensor<D>) -> Vec<f64> {
    x.into_data()
        .convert::<f32>()
        .iter::<f32>()
        .map(|v| v as f64)
        .collect()
}

pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
    (m, var.sqrt())
}

/// The exact noise predictor for data x0 ~ N(mu, s^2) (every coordinate independent):
/// E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar).
pub struct GaussianOracle {
    pub mu: f64,
    pub s: f64,
    pub abar: Vec<f64>,
}

impl<const D: usize> NoisePredictor<D> for GaussianOracle {
    fn predict(&self, x_t: Tensor<D>, t: Tensor<1, Int>) -> Result<Tensor<D>, PredictorError> {
        let ts: Vec<i64> = t.into_data().convert::<i64>().iter::<i64>().collect();
        let batch = ts.len();
        let mut scale = Vec::with_capacity(batch);
        let mut shift = Vec::with_capacity(batch);
        for &t in &ts {
            let ab = self.abar[t as usize];
            let c = (1.0 - ab).sqrt() / (ab * self.s * self.s + 1.0 - ab);
            scale.push(c as f32);
            shift.push((c * ab.sqrt() * self.mu) as f32);
        }
        let mut shape = [1usize; D];
        shape[0] = batch;
        let device = x_t.device();
        let scale = Tensor::<D>::from_data(TensorData::new(scale, shape), &device);
        let shift = Tensor::<D>::from_data(TensorData::new(shift, shape), &device);
        Ok(x_t * scale - shift)
    }
}

/// Always predicts zero noise.
pub struct ZeroPredictor;

impl<const D: usize> NoisePredictor<D> for ZeroPredictor {
    fn predict(&self, x_t: Tensor<D>, _t: Tensor<1, Int>) -> Result<Tensor<D>, PredictorError> {
        Ok(x_t.zeros_like())
    }
}

/// Returns a tensor of the wrong shape.
pub struct WrongShape;

impl NoisePredictor<2> for WrongShape {
    fn predict(&self, x_t: Tensor<2>, _t: Tensor<1, Int>) -> Result<Tensor<2>, PredictorError> {
        let [b, f] = x_t.dims();
        Ok(Tensor::zeros([b, f + 1], &x_t.device()))
    }
}

/// Rejects every input.
pub struct Failing;

impl NoisePredictor<2> for Failing {
    fn predict(&self, _x_t: Tensor<2>, _t: Tensor<1, Int>) -> Result<Tensor<2>, PredictorError> {
        Err("this model refuses".into())
    }
}
