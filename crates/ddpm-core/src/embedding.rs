//! The sinusoidal timestep embedding of the paper, shared by every predictor.

use burn::tensor::{Int, Tensor, TensorData};

/// The paper's transformer-style embedding of integer timesteps (`get_timestep_embedding` in
/// the original code): for `half = dim / 2`, frequencies `exp(-ln(10000) i / (half - 1))`,
/// all sines first, then all cosines. An odd `dim` is padded with one zero column.
///
/// This is not burn's `generate_sinusoids`, which interleaves sin and cos with other
/// frequencies.
///
/// # Shapes
/// - `t`: `[batch]`
/// - output: `[batch, dim]`
pub fn sinusoidal_embedding(t: Tensor<1, Int>, dim: usize) -> Tensor<2> {
    sinusoidal_embedding_with(t, dim, false, 1.0)
}

/// [`sinusoidal_embedding`] with the two choices other implementations make differently
/// (diffusers' `get_timestep_embedding`): `flip_sin_to_cos` puts the cosines first, and the
/// frequencies are `exp(-ln(10000) i / (half - freq_shift))`. The paper is `(false, 1.0)`;
/// diffusers' own default is `(true, 0.0)`. A non-positive `half - freq_shift` gives
/// frequency 1 everywhere (no division by zero).
///
/// # Shapes
/// - `t`: `[batch]`
/// - output: `[batch, dim]`
pub fn sinusoidal_embedding_with(
    t: Tensor<1, Int>,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Tensor<2> {
    let device = t.device();
    let ts: Vec<f64> = t
        .into_data()
        .convert::<i64>()
        .iter::<i64>()
        .map(|v| v as f64)
        .collect();
    Tensor::from_data(
        TensorData::new(
            sinusoidal_table(&ts, dim, flip_sin_to_cos, freq_shift),
            [ts.len(), dim],
        ),
        &device,
    )
}

/// The embedding computed in f64 on the CPU and rounded once to f32: the same values on every
/// backend, and exact to f32 precision even for large `t` (f32 products `t * freq` would lose
/// about 1e-6 at t = 500).
fn sinusoidal_table(ts: &[f64], dim: usize, flip: bool, shift: f64) -> Vec<f32> {
    let half = dim / 2;
    let denom = half as f64 - shift;
    let scale = if denom > 0.0 && denom.is_finite() {
        (10000f64).ln() / denom
    } else {
        0.0
    };
    let freqs: Vec<f64> = (0..half).map(|i| (-scale * i as f64).exp()).collect();
    let mut out = Vec::with_capacity(ts.len() * dim);
    for &t in ts {
        let sin = freqs.iter().map(|f| (t * f).sin() as f32);
        let cos = freqs.iter().map(|f| (t * f).cos() as f32);
        if flip {
            out.extend(cos);
            out.extend(sin);
        } else {
            out.extend(sin);
            out.extend(cos);
        }
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn matches_the_papers_reference_values() {
        let device = Device::flex();
        let t = Tensor::<1, Int>::from_ints([0, 1, 500, 999], &device);
        let emb: Vec<f32> = sinusoidal_embedding(t, 8)
            .into_data()
            .convert::<f32>()
            .iter::<f32>()
            .collect();
        let row = |r: usize| &emb[r * 8..(r + 1) * 8];
        let expect0 = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let expect1 = [
            0.8414709848,
            0.0463992235,
            0.0021544330,
            0.0000999999998,
            0.5403023059,
            0.9989229760,
            0.9999976792,
            0.9999999950,
        ];
        let expect500 = [
            -0.4677718053,
            -0.9379933559,
            0.8806428498,
            0.0499791693,
            -0.8838492734,
            -0.3466532335,
            0.4737807205,
            0.9987502604,
        ];
        for (got, want) in [(row(0), &expect0), (row(1), &expect1), (row(2), &expect500)] {
            for (g, w) in got.iter().zip(want.iter()) {
                assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
            }
        }
        // t = 999: sin^2 + cos^2 = 1 for every frequency.
        let r = row(3);
        for i in 0..4 {
            assert!(((r[i] * r[i] + r[i + 4] * r[i + 4]) as f64 - 1.0).abs() < 1e-5);
        }
    }
}
