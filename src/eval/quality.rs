//! The MNIST quality report of a folder of samples (classifier FID with its floor,
//! confidence, class histogram, background), and reading sample PNGs.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use super::classifier::{Classifier, check_classifier_set, features_and_probs};
use super::error::EvalError;
use super::frechet::{class_stats, frechet_distance_of};
use crate::data::ImageSet;

/// Sample quality measured by the [`Classifier`]: comparable only with reports of the same
/// classifier and the same sample count.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityReport {
    /// Samples scored.
    pub samples: usize,
    /// Classifier FID of the samples against the test set.
    pub fid: f64,
    /// Classifier FID of as many training images against the test set: the floor at this
    /// sample count.
    pub floor: f64,
    /// Mean max-softmax confidence.
    pub confidence: f64,
    /// Share of samples classified with confidence >= 0.9.
    pub confident_share: f64,
    /// The same share among the test images: the reference for `confident_share` (real
    /// digits are not all unambiguous either).
    pub test_confident_share: f64,
    /// Samples per predicted class.
    pub histogram: Vec<usize>,
    /// KL divergence of the class histogram from uniform (nats).
    pub kl_uniform: f64,
    /// Share of pixels below 0.1 on the [0, 1] scale (clean backgrounds).
    pub near_black_share: f64,
    /// The same share in the test set.
    pub test_near_black_share: f64,
}

impl std::fmt::Display for QualityReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.samples;
        writeln!(
            f,
            "classifier FID (samples vs test set):     {:.3}",
            self.fid
        )?;
        writeln!(
            f,
            "classifier FID floor ({n} train vs test):  {:.3}",
            self.floor
        )?;
        writeln!(
            f,
            "mean max-softmax confidence:              {:.4}",
            self.confidence
        )?;
        writeln!(
            f,
            "share with confidence >= 0.9:             {:.1} % (test set {:.1} %)",
            100.0 * self.confident_share,
            100.0 * self.test_confident_share
        )?;
        writeln!(f, "class histogram: {:?}", self.histogram)?;
        writeln!(
            f,
            "KL(histogram || uniform):                 {:.4} nats",
            self.kl_uniform
        )?;
        writeln!(
            f,
            "near-black pixels (< 0.1):                {:.1} % (test set {:.1} %)",
            100.0 * self.near_black_share,
            100.0 * self.test_near_black_share
        )?;
        write!(
            f,
            "(comparable only with figures of the same classifier and sample count: {n})"
        )
    }
}

/// The share of `samples` (`[n, 1, 28, 28]`) that the classifier assigns to the class each
/// was asked for (`requested[i]` for sample `i`): how well a class-conditional model obeys.
///
/// # Errors
/// [`EvalError::Invalid`] when `requested` does not have one label per sample.
pub fn requested_class_share(
    classifier: &Classifier,
    samples: Tensor<4>,
    requested: &[usize],
) -> Result<f64, EvalError> {
    let n = samples.dims()[0];
    if requested.len() != n || n == 0 {
        return Err(EvalError::Invalid(format!(
            "{} requested classes for {n} samples: give one per sample",
            requested.len()
        )));
    }
    let (_, probs) = features_and_probs(classifier, samples)?;
    let classes = probs.len() / n;
    let hits = probs
        .chunks(classes)
        .zip(requested)
        .filter(|(row, c)| {
            let best = row
                .iter()
                .enumerate()
                .fold((0, f64::MIN), |a, (k, &p)| if p > a.1 { (k, p) } else { a });
            best.0 == **c
        })
        .count();
    Ok(hits as f64 / n as f64)
}

/// Share of values of `images` (in `[-1, 1]`) below 0.1 on the `[0, 1]` scale.
pub fn near_black_share(images: Tensor<4>) -> f64 {
    let values: Vec<f32> = images.into_data().convert::<f32>().iter::<f32>().collect();
    let dark = values.iter().filter(|&&v| (v + 1.0) / 2.0 < 0.1).count();
    dark as f64 / values.len().max(1) as f64
}

/// Scores `samples` (`[n, 1, 28, 28]` in `[-1, 1]`) against the `test` set, with the floor
/// measured on the first `n` images of `train`.
///
/// # Errors
/// [`EvalError::Invalid`] for fewer than 2 samples or images of another size.
pub fn quality(
    classifier: &Classifier,
    samples: Tensor<4>,
    train: &ImageSet,
    test: &ImageSet,
    device: &Device,
) -> Result<QualityReport, EvalError> {
    let dims = samples.dims();
    if dims[0] < 2 || dims[1..] != classifier.input_dims() {
        return Err(EvalError::Invalid(format!(
            "expected at least 2 samples of {:?}, got {dims:?}",
            classifier.input_dims()
        )));
    }
    let (cdims, classes) = (classifier.input_dims(), classifier.num_classes());
    check_classifier_set(train, cdims, classes, "training")?;
    check_classifier_set(test, cdims, classes, "test")?;
    let n = dims[0];
    let d = classifier.fc.weight.dims()[1];
    let all_test: Vec<usize> = (0..test.count).collect();
    let train_idx: Vec<usize> = (0..n.min(train.count)).collect();
    let test_images = test.batch(&all_test, device);
    let test_near_black_share = near_black_share(test_images.clone());
    let (f_test, p_test) = features_and_probs(classifier, test_images)?;
    let (f_train, _) = features_and_probs(classifier, train.batch(&train_idx, device))?;
    let near_black = near_black_share(samples.clone());
    let (f_s, p_s) = features_and_probs(classifier, samples)?;
    let (confidence, histogram, kl_uniform) = class_stats(&p_s, classes);
    let confident_share = |p: &[f64]| {
        let rows = p.len() / classes;
        let sure = p
            .chunks(classes)
            .filter(|row| row.iter().cloned().fold(f64::MIN, f64::max) >= 0.9)
            .count();
        sure as f64 / rows.max(1) as f64
    };
    Ok(QualityReport {
        samples: n,
        fid: frechet_distance_of(&f_s, &f_test, d)?,
        floor: frechet_distance_of(&f_train, &f_test, d)?,
        confidence,
        confident_share: confident_share(&p_s),
        test_confident_share: confident_share(&p_test),
        histogram,
        kl_uniform,
        near_black_share: near_black,
        test_near_black_share,
    })
}

/// The largest side of a sample image [`load_pngs`] reads.
pub const MAX_SAMPLE_SIDE: u32 = 4096;

/// Reads every `*.png` of `dir` (or of `dir/samples` when it exists: a sampling output
/// folder), in name order, as `[n, 1, h, w]` in `[-1, 1]`; all must have the same size.
///
/// # Errors
/// [`EvalError::File`] for an unreadable folder or image, no PNG, or mixed sizes.
pub fn load_pngs(dir: &Path, device: &Device) -> Result<Tensor<4>, EvalError> {
    load_pngs_as(dir, 1, device)
}

/// As [`load_pngs`], as `[n, channels, h, w]`: 1 (grey, the luma) or 3 (RGB).
///
/// # Errors
/// As [`load_pngs`]; [`EvalError::Invalid`] for another channel count.
pub fn load_pngs_as(dir: &Path, channels: usize, device: &Device) -> Result<Tensor<4>, EvalError> {
    if !matches!(channels, 1 | 3) {
        return Err(EvalError::Invalid(format!(
            "{channels} channels: PNG samples are read as 1 (grey) or 3 (RGB)"
        )));
    }
    let dir = if dir.join("samples").is_dir() {
        dir.join("samples")
    } else {
        dir.to_path_buf()
    };
    let fail = |path: &Path, reason: String| EvalError::File {
        path: path.to_path_buf(),
        reason,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| fail(&dir, e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(fail(&dir, "holds no PNG files".into()));
    }
    let mut values = Vec::new();
    let mut size = None;
    for f in &files {
        // The first image sets the size; every later one must match it before it is decoded.
        let max = size.unwrap_or((MAX_SAMPLE_SIDE, MAX_SAMPLE_SIDE));
        let img = crate::images::read_image_bounded(f, max).map_err(|e| fail(f, e))?;
        let dims = (img.width(), img.height());
        if *size.get_or_insert(dims) != dims {
            return Err(fail(
                f,
                format!(
                    "is {dims:?}, the first image was {:?}",
                    size.unwrap_or(dims)
                ),
            ));
        }
        let scale = |v: u8| v as f32 / 127.5 - 1.0;
        if channels == 1 {
            values.extend(img.to_luma8().pixels().map(|p| scale(p.0[0])));
        } else {
            let rgb = img.to_rgb8();
            for c in 0..3 {
                values.extend(rgb.pixels().map(|p| scale(p.0[c])));
            }
        }
    }
    let (w, h) = size.unwrap_or((0, 0));
    Ok(Tensor::from_data(
        TensorData::new(values, [files.len(), channels, h as usize, w as usize]),
        device,
    ))
}
