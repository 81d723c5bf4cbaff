//! Helpers of the kernels' tests.

/// Output buffers with guard zones for the kernels' tests: `GUARD` sentinel values before
/// and after the `len` values a kernel may write, checked untouched afterwards (a write past
/// either end of its slice would land there).
pub(crate) mod guard {
    /// Values on each side.
    pub const GUARD: usize = 67;
    /// A value no kernel computes in the tests (a NaN with a payload).
    pub fn sentinel() -> f32 {
        f32::from_bits(0x7fc0_beef)
    }
    /// `GUARD + len + GUARD` values: the sentinel in the guards, `fill` inside.
    pub fn buffer(len: usize, fill: f32) -> Vec<f32> {
        let mut v = vec![sentinel(); len + 2 * GUARD];
        v[GUARD..GUARD + len].fill(fill);
        v
    }
    /// The writable middle of a [`buffer`].
    pub fn inner(v: &mut [f32]) -> &mut [f32] {
        let n = v.len();
        &mut v[GUARD..n - GUARD]
    }
    /// Panics unless both guards hold the sentinel, bit for bit.
    pub fn check(v: &[f32], what: &str) {
        let n = v.len();
        for (i, x) in v[..GUARD].iter().chain(&v[n - GUARD..]).enumerate() {
            assert_eq!(
                x.to_bits(),
                sentinel().to_bits(),
                "{what}: guard value {i} overwritten"
            );
        }
    }
}

/// Runs `f` on a rayon pool of `threads` threads (for the determinism tests).
pub(crate) fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
    pool.expect("a rayon pool").install(f)
}

/// A reproducible pseudo-random vector in roughly [-3, 3].
pub(crate) fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0
        })
        .collect()
}

/// The largest absolute difference of two tensors.
pub(crate) fn max_abs(a: burn::tensor::Tensor<4>, b: burn::tensor::Tensor<4>) -> f32 {
    (a - b).abs().max().into_scalar()
}

/// The largest absolute difference of `a` and `b`, relative to `b`'s largest value (at least 1).
pub(crate) fn rel(a: burn::tensor::Tensor<1>, b: burn::tensor::Tensor<1>) -> f32 {
    let scale: f32 = b.clone().abs().max().into_scalar();
    let diff: f32 = (a - b).abs().max().into_scalar();
    diff / scale.max(1.0)
}
