//! The sinusoidal timestep embedding of the paper and the MLP that follows it.

use burn::config::Config;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{Int, Tensor};
use ddpm_core::sinusoidal_embedding_with;

use crate::layers::dense;

/// Configuration of [`TimestepEmbedding`].
#[derive(Config, Debug)]
pub struct TimestepEmbeddingConfig {
    /// Width of the sinusoidal embedding (`ch` in the paper).
    pub dim: usize,
    /// Width of the output (`4 ch` in the paper).
    pub out_dim: usize,
    /// Cosines before sines (the paper: false).
    #[config(default = false)]
    pub flip_sin_to_cos: bool,
    /// Frequency shift: frequencies `exp(-ln(10000) i / (dim / 2 - freq_shift))` (the
    /// paper: 1).
    #[config(default = 1.0)]
    pub freq_shift: f64,
}

impl TimestepEmbeddingConfig {
    /// Builds the embedding MLP.
    pub fn init(&self, device: &burn::tensor::Device) -> TimestepEmbedding {
        TimestepEmbedding {
            dense0: dense(self.dim, self.out_dim, false, device),
            dense1: dense(self.out_dim, self.out_dim, false, device),
            dim: self.dim,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
        }
    }
}

/// Sinusoidal embedding, then `Linear(dim, out)`, SiLU, `Linear(out, out)` (Appendix B).
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    /// First dense layer.
    pub dense0: Linear,
    /// Second dense layer.
    pub dense1: Linear,
    /// Width of the sinusoidal embedding.
    pub dim: usize,
    /// Cosines before sines.
    #[module(skip)]
    pub flip_sin_to_cos: bool,
    /// Frequency shift.
    #[module(skip)]
    pub freq_shift: f64,
}

impl TimestepEmbedding {
    /// # Shapes
    /// - `t`: `[batch]`
    /// - output: `[batch, out_dim]`
    pub fn forward(&self, t: Tensor<1, Int>) -> Tensor<2> {
        let emb = sinusoidal_embedding_with(t, self.dim, self.flip_sin_to_cos, self.freq_shift); // [batch, dim]
        self.dense1.forward(silu(self.dense0.forward(emb))) // [batch, out_dim]
    }
}
