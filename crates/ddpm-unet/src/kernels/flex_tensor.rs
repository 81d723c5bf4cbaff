//! Access to flex tensors' values, shared by every kernel: contiguous f32 slices in, new
//! tensors out.

use burn::backend::flex::FlexTensor;
use std::mem::MaybeUninit;

use burn::tensor::TensorData;

/// `t` with a contiguous layout (a copy only for strided views).
pub(crate) fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// The f32 values of a contiguous flex tensor (shared by every kernel of this module).
pub(crate) fn f32s(t: &FlexTensor) -> &[f32] {
    // Invariant: the kernels' `forward` functions route only f32 tensors here (checked by
    // `fused_available`), and every input went through `contiguous` or `to_contiguous`.
    t.as_slice::<f32>()
        .expect("fused kernel: f32 contiguous input (checked by the caller)")
}

/// A contiguous flex tensor of `shape` holding `values`.
pub(crate) fn flex_tensor(shape: impl Into<burn::tensor::Shape>, values: Vec<f32>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.into()))
}

/// `n` values for a kernel that writes every one of them before anything reads them: no zero
/// fill (for a large output, zeroing first is a whole extra pass over memory, on one thread).
pub(crate) fn unwritten(n: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: the capacity is `n`, and `MaybeUninit` values need no initialisation.
    unsafe { v.set_len(n) };
    v
}

/// The values of `v` once every one has been written.
///
/// # Safety
/// Every element of `v` has been written.
pub(crate) unsafe fn written(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    let (ptr, len, cap) = (v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity());
    // SAFETY: `MaybeUninit<f32>` has `f32`'s size and alignment, the allocation is `v`'s
    // (not dropped), and the caller guarantees that all `len` values are initialised.
    unsafe { Vec::from_raw_parts(ptr, len, cap) }
}

/// The values of `s` once every one has been written, to read and rewrite in place.
///
/// # Safety
/// Every element of `s` has been written.
pub(crate) unsafe fn initialised(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: same layout; the caller guarantees that every value is initialised.
    unsafe { &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `s` for a kernel that writes through `&mut [MaybeUninit<f32>]` (the tests' buffers).
///
/// # Safety
/// The callee writes only initialised values through the slice (as every writer of this
/// crate does), so that `s` stays initialised.
#[cfg(test)]
pub(crate) unsafe fn writable(s: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; the caller's guarantee keeps the values initialised.
    unsafe { &mut *(s as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// `dst` written with a copy of `src` (of the same length).
///
/// # Panics
/// When the lengths differ.
pub(crate) fn write_copy(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(
        dst.len(),
        src.len(),
        "a copy between slices of different lengths"
    );
    // SAFETY: both are `len` values of the same layout, and a `&mut` slice cannot overlap
    // a shared one.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast(), src.len()) };
}

/// A raw pointer that tasks writing disjoint parts of one buffer share (Winograd's transforms
/// and products, the attention op's query blocks).
#[derive(Clone, Copy)]
pub(crate) struct Shared(pub(crate) *mut f32);
// SAFETY: every task writes a disjoint set of entries (see the callers).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the whole `Shared`, which is `Sync`).
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }

    /// The pointer `offset` values further on.
    ///
    /// # Safety
    /// As `pointer::add`: the result stays within the allocation.
    pub(crate) unsafe fn add(self, offset: usize) -> Self {
        // SAFETY: the caller's contract.
        Self(unsafe { self.0.add(offset) })
    }
}
