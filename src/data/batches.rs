//! [`BatchSource`]: where a training run gets its batches, and the sources of this crate
//! ([`ImageSet`], [`Points`], [`Flattened`]).

use burn::tensor::{Device, Tensor, TensorData};

use super::ImageSet;

/// A source of training batches of rank `D`, indexed by example.
pub trait BatchSource<const D: usize> {
    /// Number of examples.
    fn len(&self) -> usize;
    /// Whether there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The examples `indices` as one tensor `[indices.len(), ...]`.
    fn batch(&self, indices: &[usize], device: &Device) -> Tensor<D>;
    /// The class labels of examples `indices`, when the data has labels (needed to train a
    /// class-conditional model). `None` by default.
    fn labels(&self, indices: &[usize]) -> Option<Vec<usize>> {
        let _ = indices;
        None
    }
    /// The examples `indices`, example `k` mirrored left-right where `mirror[k]` is true;
    /// `None` (the default) for data that has no left and right.
    fn batch_mirrored(
        &self,
        indices: &[usize],
        mirror: &[bool],
        device: &Device,
    ) -> Option<Tensor<D>> {
        let _ = (indices, mirror, device);
        None
    }
    /// The dims of one example (`[channels, rows, cols]` for images), when known: checked
    /// against the model's input before the first step. `None` by default.
    fn example_dims(&self) -> Option<Vec<usize>> {
        None
    }
}

impl BatchSource<4> for ImageSet {
    fn len(&self) -> usize {
        self.count
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Tensor<4> {
        ImageSet::batch(self, indices, device)
    }
    fn labels(&self, indices: &[usize]) -> Option<Vec<usize>> {
        Some(indices.iter().map(|&i| self.labels[i] as usize).collect())
    }
    fn batch_mirrored(
        &self,
        indices: &[usize],
        mirror: &[bool],
        device: &Device,
    ) -> Option<Tensor<4>> {
        Some(ImageSet::batch_mirrored(self, indices, mirror, device))
    }
    fn example_dims(&self) -> Option<Vec<usize>> {
        Some(self.image_dims().to_vec())
    }
}

/// Points of dimension `dim` held in memory (toy data, flattened images).
#[derive(Debug, Clone, PartialEq)]
pub struct Points {
    /// Row-major values, `len * dim`.
    pub values: Vec<f32>,
    /// Dimension of each point.
    pub dim: usize,
}

impl Points {
    /// Copies a `[n, dim]` tensor to the host.
    pub fn from_tensor(t: Tensor<2>) -> Self {
        let [_, dim] = t.dims();
        let values = t.into_data().convert::<f32>().iter::<f32>().collect();
        Self { values, dim }
    }
}

impl BatchSource<2> for Points {
    fn len(&self) -> usize {
        self.values.len() / self.dim.max(1)
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Tensor<2> {
        let d = self.dim;
        let mut v = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            v.extend_from_slice(&self.values[i * d..(i + 1) * d]);
        }
        Tensor::from_data(TensorData::new(v, [indices.len(), d]), device)
    }
}

/// An image set seen as `[n, rows * cols]` vectors, for predictors of flattened images such as
/// the MLP.
#[derive(Debug, Clone, Copy)]
pub struct Flattened<'a>(pub &'a ImageSet);

impl BatchSource<2> for Flattened<'_> {
    fn len(&self) -> usize {
        self.0.count
    }
    fn labels(&self, indices: &[usize]) -> Option<Vec<usize>> {
        BatchSource::<4>::labels(self.0, indices)
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Tensor<2> {
        let size = self.0.image_len();
        self.0.batch(indices, device).reshape([indices.len(), size])
    }
    fn batch_mirrored(
        &self,
        indices: &[usize],
        mirror: &[bool],
        device: &Device,
    ) -> Option<Tensor<2>> {
        let size = self.0.image_len();
        Some(
            self.0
                .batch_mirrored(indices, mirror, device)
                .reshape([indices.len(), size]),
        )
    }
    fn example_dims(&self) -> Option<Vec<usize>> {
        Some(vec![self.0.image_len()])
    }
}
