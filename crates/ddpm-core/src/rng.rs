//! A small seeded random number generator for noise and timesteps.
//!
//! burn's device RNG is global to a backend and shared between threads, so it cannot make one
//! sampling call or one training step reproducible on its own. [`NoiseRng`] is a per-call
//! stream whose whole state is four `u64` words: serialisable, so that training resumes
//! exactly, and independent of the backend, so that flex and wgpu draw the same noise.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// xoshiro256++ (Blackman & Vigna) seeded through SplitMix64, with Box–Muller normals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoiseRng {
    state: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl NoiseRng {
    /// A generator seeded with `seed`; equal seeds give equal streams.
    pub fn new(seed: u64) -> Self {
        let mut s = seed;
        let state = [
            splitmix64(&mut s),
            splitmix64(&mut s),
            splitmix64(&mut s),
            splitmix64(&mut s),
        ];
        Self { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform draw in `[0, 1)` with 53 bits of precision.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "NoiseRng::below needs n > 0");
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return (v % n) as usize;
            }
        }
    }

    /// `count` standard normal draws (Box–Muller, in f64 then rounded to f32).
    pub fn normal_vec(&mut self, count: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(count + 1);
        while out.len() < count {
            // 1 - u lies in (0, 1], so the logarithm is finite.
            let u1 = 1.0 - self.uniform();
            let u2 = self.uniform();
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = std::f64::consts::TAU * u2;
            out.push((r * theta.cos()) as f32);
            out.push((r * theta.sin()) as f32);
        }
        out.truncate(count);
        out
    }

    /// A tensor of standard normal noise, `eps ~ N(0, I)`.
    pub fn normal<const D: usize>(&mut self, shape: [usize; D], device: &Device) -> Tensor<D> {
        let count = shape.iter().product();
        Tensor::from_data(TensorData::new(self.normal_vec(count), shape), device)
    }

    /// `count` timestep indices drawn uniformly from `0..num_timesteps` (Algorithm 1, line 3).
    pub fn timesteps(&mut self, count: usize, num_timesteps: usize) -> Vec<usize> {
        (0..count).map(|_| self.below(num_timesteps)).collect()
    }

    /// Fisher–Yates shuffle of `items`.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_draws_have_unit_moments() {
        let mut rng = NoiseRng::new(7);
        let v = rng.normal_vec(200_000);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        // Standard error of the mean is 1/sqrt(n) ~ 0.0022.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn same_seed_same_stream_and_state_resumes() {
        let mut a = NoiseRng::new(3);
        let mut b = NoiseRng::new(3);
        assert_eq!(a.normal_vec(10), b.normal_vec(10));
        let saved = serde_json::to_string(&a).unwrap();
        let mut c: NoiseRng = serde_json::from_str(&saved).unwrap();
        assert_eq!(a.next_u64(), c.next_u64());
        assert_ne!(NoiseRng::new(4).next_u64(), NoiseRng::new(3).next_u64());
    }

    #[test]
    fn below_is_uniform() {
        let mut rng = NoiseRng::new(11);
        let mut counts = [0usize; 10];
        for _ in 0..100_000 {
            counts[rng.below(10)] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }
}
