//! Seeded two-dimensional toy data sets for small predictors and tests.

use burn::tensor::{Device, Tensor, TensorData};

use crate::rng::NoiseRng;

/// Centres of the 8-Gaussian mixture: 8 points evenly spaced on a circle of `radius`.
pub fn eight_gaussians_centers(radius: f64) -> Vec<[f64; 2]> {
    (0..8)
        .map(|k| {
            let a = std::f64::consts::TAU * k as f64 / 8.0;
            [radius * a.cos(), radius * a.sin()]
        })
        .collect()
}

/// `n` points from an equal mixture of 8 Gaussians of standard deviation `std` centred on a
/// circle of `radius`, as a `[n, 2]` tensor. Returns the points and each one's mode.
pub fn eight_gaussians(
    n: usize,
    radius: f64,
    std: f64,
    seed: u64,
    device: &Device,
) -> (Tensor<2>, Vec<usize>) {
    let mut rng = NoiseRng::new(seed);
    let centers = eight_gaussians_centers(radius);
    let mut values = Vec::with_capacity(2 * n);
    let mut modes = Vec::with_capacity(n);
    for _ in 0..n {
        let k = rng.below(8);
        let z = rng.normal_vec(2);
        values.push((centers[k][0] + std * z[0] as f64) as f32);
        values.push((centers[k][1] + std * z[1] as f64) as f32);
        modes.push(k);
    }
    (
        Tensor::from_data(TensorData::new(values, [n, 2]), device),
        modes,
    )
}

/// `n` points of the "two moons" data set (two interleaved half circles) with Gaussian
/// jitter `noise`, as a `[n, 2]` tensor roughly centred on the origin.
pub fn two_moons(n: usize, noise: f64, seed: u64, device: &Device) -> Tensor<2> {
    let mut rng = NoiseRng::new(seed);
    let mut values = Vec::with_capacity(2 * n);
    for i in 0..n {
        let a = std::f64::consts::PI * rng.uniform();
        let (x, y) = if i % 2 == 0 {
            (a.cos(), a.sin())
        } else {
            (1.0 - a.cos(), 0.5 - a.sin())
        };
        let z = rng.normal_vec(2);
        values.push((x - 0.5 + noise * z[0] as f64) as f32);
        values.push((y - 0.25 + noise * z[1] as f64) as f32);
    }
    Tensor::from_data(TensorData::new(values, [n, 2]), device)
}
