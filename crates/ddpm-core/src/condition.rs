//! Conditioning: what a conditional predictor is told besides `(x_t, t)` (the wrappers that
//! fix or guide a condition are in `guidance.rs`).
//!
//! A predictor opts in by overriding [`NoisePredictor::predict_conditional`] and
//! [`NoisePredictor::num_classes`]; unconditional predictors compile and work unchanged. Class
//! labels are `0..num_classes`, and `num_classes` itself is the null class: the "no condition"
//! that training substitutes with probability `p_uncond`, so that one network learns both
//! `eps(x_t, t, c)` and `eps(x_t, t, null)`.

use burn::tensor::{Int, Tensor};

use crate::error::DdpmError;

/// What a conditional predictor is told besides `(x_t, t)`, one entry per example.
///
/// Non-exhaustive: other kinds of condition (a vector, an image) can join without breaking
/// predictors that match on it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Condition {
    /// One class label per example, in `0..=num_classes` (`num_classes`: the null class).
    Classes(Vec<usize>),
}

impl Condition {
    /// The null condition ("unconditional") of a batch, for a predictor of `num_classes`.
    pub fn null(batch: usize, num_classes: usize) -> Self {
        Condition::Classes(vec![num_classes; batch])
    }

    /// Examples covered.
    pub fn batch(&self) -> usize {
        match self {
            Condition::Classes(l) => l.len(),
        }
    }

    /// The labels as a `[batch]` integer tensor on `device`.
    pub fn labels_tensor(labels: &[usize], device: &burn::tensor::Device) -> Tensor<1, Int> {
        crate::indices::timestep_tensor(labels, device)
    }

    /// Checks a class condition against a predictor of `num_classes` and a batch of `batch`.
    ///
    /// # Errors
    /// [`DdpmError::InvalidConfig`] naming the offending label or size.
    pub fn check(&self, num_classes: usize, batch: usize) -> Result<(), DdpmError> {
        let Condition::Classes(labels) = self;
        check_class_labels(labels, num_classes, batch)
    }

    /// `self` followed by `other` (for a doubled batch).
    pub(crate) fn concat(&self, other: &Condition) -> Condition {
        let (Condition::Classes(a), Condition::Classes(b)) = (self, other);
        Condition::Classes(a.iter().chain(b).copied().collect())
    }
}

/// Checks class labels for a predictor of `num_classes` classes (`num_classes` itself being the
/// null class) and a batch of `batch`: one label per example, none above the null class. The
/// one check behind [`Condition::check`] and the conditional networks of this workspace.
///
/// # Errors
/// [`DdpmError::InvalidConfig`] naming the offending label or count.
pub fn check_class_labels(
    labels: &[usize],
    num_classes: usize,
    batch: usize,
) -> Result<(), DdpmError> {
    if labels.len() != batch {
        return Err(DdpmError::InvalidConfig(format!(
            "{} class labels for a batch of {batch}: give one label per example",
            labels.len()
        )));
    }
    if let Some(bad) = labels.iter().find(|&&c| c > num_classes) {
        return Err(DdpmError::InvalidConfig(format!(
            "class {bad} is out of range: this model has classes 0..{} (and {num_classes} \
             for 'no class')",
            num_classes.saturating_sub(1)
        )));
    }
    Ok(())
}
