//! The one matrix product that Winograd's forward passes and the 1x1 convolutions share:
//! row-major operands, gemm on the calling thread.

use gemm::Parallelism;

/// `m [c_out, n] = u [c_out, c_in] v [c_in, n]`, or `m += u v` when `accumulate`, all
/// row-major, by gemm on the calling thread: one of Winograd's per-element products (both
/// tilings' forward passes, `accumulate` false) and a block of a 1x1 convolution's output rows
/// (added to the bias written first).
///
/// # Safety
/// `m`, `u` and `v` point to at least `c_out n`, `c_out c_in` and `c_in n` values; `m`
/// aliases neither, and no other thread reads or writes its values during the call; when
/// `accumulate`, every value of `m` is initialised.
pub(super) unsafe fn product(
    m: *mut f32,
    u: *const f32,
    v: *const f32,
    [c_out, c_in, n]: [usize; 3],
    accumulate: bool,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            c_out,
            n,
            c_in,
            m,
            1,
            n as isize,
            accumulate,
            u,
            1,
            c_in as isize,
            v,
            1,
            n as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}
