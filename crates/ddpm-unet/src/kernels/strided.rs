//! Matrix products on the calling thread with strided operands (row-major or read
//! transposed), by gemm: the attention op's four products per head and Winograd's
//! weight-gradient products on CPUs without AVX-512.

use gemm::Parallelism;

use super::flex_tensor::Shared;

/// A row-major or transposed operand of [`mm`]: its values and (row, column) strides.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    /// The values.
    pub(crate) values: &'a [f32],
    /// The step between rows.
    pub(crate) rs: usize,
    /// The step between columns.
    pub(crate) cs: usize,
}

/// `values` read as a row-major `[rows, cols]` matrix.
pub(crate) fn rows(values: &[f32], cols: usize) -> Operand<'_> {
    Operand {
        values,
        rs: cols,
        cs: 1,
    }
}

/// `values`, a row-major `[rows, cols]` matrix, read transposed (`[cols, rows]`).
pub(crate) fn transposed(values: &[f32], cols: usize) -> Operand<'_> {
    Operand {
        values,
        rs: 1,
        cs: cols,
    }
}

/// `dst [m, n] = a [m, k] b [k, n]`, row-major `dst`, by gemm on the calling thread.
///
/// # Panics
/// When an operand or `dst` is too short for its shape and strides.
pub(crate) fn mm(dst: &mut [f32], a: Operand, b: Operand, [m, n, k]: [usize; 3]) {
    assert!(dst.len() >= m * n, "the product's destination is too short");
    // SAFETY: `dst` holds the `m n` values written, a unique borrow (aliasing nothing).
    unsafe { mm_raw(Shared(dst.as_mut_ptr()), n, a, b, [m, n, k]) };
}

/// `dst [m, n] = a [m, k] b [k, n]`, row `r` of `dst` at `dst + r dst_rs`, by gemm on the
/// calling thread.
///
/// # Safety
/// `dst` points to writable memory for rows `r < m` of `n` values at `r dst_rs`, which
/// nothing else reads or writes during the call and which alias neither operand.
///
/// # Panics
/// When an operand is too short for its shape and strides, or a size is 0.
pub(crate) unsafe fn mm_raw(
    dst: Shared,
    dst_rs: usize,
    a: Operand,
    b: Operand,
    [m, n, k]: [usize; 3],
) {
    let last = |o: Operand, r: usize, c: usize| (r - 1) * o.rs + (c - 1) * o.cs;
    assert!(m * n * k > 0, "an empty product");
    assert!(
        a.values.len() > last(a, m, k),
        "the left operand is too short"
    );
    assert!(
        b.values.len() > last(b, k, n),
        "the right operand is too short"
    );
    // SAFETY: the asserts bound every index gemm reads; the caller's contract covers what it
    // writes; gemm does not read `dst` (`read_dst` false).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr(),
            1,
            dst_rs as isize,
            false,
            a.values.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.values.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}
