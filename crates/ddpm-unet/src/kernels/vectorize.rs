//! Run-time dispatch to the CPU's best instruction set for the kernels' plain loops.

/// Runs `f` compiled for the best instruction set this CPU has (AVX-512, else AVX2 + FMA,
/// else the baseline), detected at run time: the element-wise loops of `f`, inlined into a
/// function with those target features, are vectorised for them. A build for the baseline
/// x86-64 otherwise vectorises with 4-wide SSE only.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    struct Op<F>(F);
    impl<R, F: FnOnce() -> R> pulp::WithSimd for Op<F> {
        type Output = R;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> R {
            (self.0)()
        }
    }
    pulp::Arch::new().dispatch(Op(f))
}
