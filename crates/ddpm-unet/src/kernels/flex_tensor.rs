//! Access to flex tensors' values, shared by every kernel: contiguous f32 slices in, new
//! tensors out.

use burn::backend::flex::FlexTensor;
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
