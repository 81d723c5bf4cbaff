//! The order of examples: a fresh permutation per epoch from `(seed, epoch)`.

use ddpm_core::NoiseRng;
use serde::{Deserialize, Serialize};

/// A deterministic stream of shuffled mini-batch indices: every epoch is a fresh permutation
/// drawn from `(seed, epoch)`, so the position `(epoch, offset)` is all the state there is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochSampler {
    /// Number of examples.
    pub len: usize,
    /// Seed of the shuffles.
    pub seed: u64,
    /// Current epoch.
    pub epoch: u64,
    /// Offset inside the epoch.
    pub offset: usize,
    #[serde(skip)]
    perm: Vec<usize>,
}

/// Equal position in the same stream (the cached permutation is derived state).
impl PartialEq for EpochSampler {
    fn eq(&self, other: &Self) -> bool {
        (self.len, self.seed, self.epoch, self.offset)
            == (other.len, other.seed, other.epoch, other.offset)
    }
}

impl Eq for EpochSampler {}

impl EpochSampler {
    /// A sampler over `len` examples.
    pub fn new(len: usize, seed: u64) -> Self {
        Self {
            len,
            seed,
            epoch: 0,
            offset: 0,
            perm: Vec::new(),
        }
    }

    fn permutation(&mut self) {
        let mut perm: Vec<usize> = (0..self.len).collect();
        NoiseRng::new(self.seed ^ self.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .shuffle(&mut perm);
        self.perm = perm;
    }

    /// The next `batch` indices; an epoch ends with the last full batch (the remainder is
    /// dropped, as drop_last does). Empty for a sampler over no examples.
    pub fn next_batch(&mut self, batch: usize) -> Vec<usize> {
        if self.len == 0 {
            return Vec::new();
        }
        let batch = batch.min(self.len).max(1);
        // Saturating: a position read from a damaged file must not overflow.
        if self.offset.saturating_add(batch) > self.len {
            self.epoch += 1;
            self.offset = 0;
            self.perm.clear();
        }
        if self.perm.len() != self.len {
            self.permutation();
        }
        let out = self.perm[self.offset..self.offset + batch].to_vec();
        self.offset += batch;
        out
    }
}
