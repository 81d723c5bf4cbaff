//! Applying f64 schedule tables to tensors: one scalar per step when the whole batch shares a
//! timestep (sampling), a `[batch, 1, ..., 1]` column otherwise (training).

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::DdpmError;

/// The shape `[batch, 1, ..., 1]` of rank `D`, which broadcasts against `[batch, ...]`.
pub(crate) fn column_shape<const D: usize>(batch: usize) -> [usize; D] {
    let mut shape = [1usize; D];
    shape[0] = batch;
    shape
}

/// `table[t_i]` for each example, as a broadcastable `[batch, 1, ..., 1]` tensor.
pub(crate) fn column<const D: usize>(table: &[f64], t: &[usize], device: &Device) -> Tensor<D> {
    let values: Vec<f64> = t.iter().map(|&i| table[i]).collect();
    values_column(&values, device)
}

/// Per-example values as a broadcastable `[batch, 1, ..., 1]` tensor.
pub(crate) fn values_column<const D: usize>(values: &[f64], device: &Device) -> Tensor<D> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, column_shape::<D>(values.len())), device)
}

/// The single timestep shared by the whole batch, if there is one.
pub(crate) fn shared(t: &[usize]) -> Option<usize> {
    let first = *t.first()?;
    t.iter().all(|&v| v == first).then_some(first)
}

/// `x * table[t]`, example by example.
pub(crate) fn scale<const D: usize>(x: Tensor<D>, table: &[f64], t: &[usize]) -> Tensor<D> {
    match shared(t) {
        Some(t0) => x.mul_scalar(table[t0]),
        None => {
            let c = column::<D>(table, t, &x.device());
            x.mul(c)
        }
    }
}

/// Host copy of a float tensor's values.
pub(crate) fn to_vec<const D: usize>(x: Tensor<D>) -> Result<Vec<f32>, DdpmError> {
    x.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| DdpmError::Data(format!("{e:?}")))
}

/// Checks that two shapes agree.
pub(crate) fn same_shape(
    context: &'static str,
    expected: &[usize],
    actual: &[usize],
) -> Result<(), DdpmError> {
    if expected == actual {
        Ok(())
    } else {
        Err(DdpmError::ShapeMismatch {
            context,
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        })
    }
}
