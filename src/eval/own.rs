//! Measures for data that is not MNIST (a folder of your own, CIFAR-10), all offline:
//!
//! - a small classifier trained on the data's own labels (its accuracy on held-out images
//!   stated), whose penultimate features give a Fréchet distance of the samples to the
//!   held-out images, with the floor of as many training images;
//! - the per-class accuracy of class-conditional samples (the classifier's verdict on the
//!   class each sample was asked for), beside the classifier's own per-class accuracy on real
//!   held-out images;
//! - a memorisation check: the share of samples whose nearest training image (in pixels) is
//!   closer than the median nearest distance between distinct training images; held-out real
//!   images give the reference share of data that was not copied.

use std::fmt;

use burn::tensor::{Device, Tensor, TensorData};
use ddpm_core::NoiseRng;

use super::classifier::{features_and_probs, train_classifier};
use super::error::EvalError;
use super::frechet::frechet_distance_of;
use crate::data::ImageSet;

/// Settings of [`evaluate_own_data`].
#[derive(Debug, Clone, PartialEq)]
pub struct OwnDataOptions {
    /// Share of each class held out from the classifier's training (and used as the real
    /// images the samples are compared with).
    pub held_out: f64,
    /// Epochs of the classifier.
    pub classifier_epochs: usize,
    /// Seed of the classifier and of the subsets.
    pub seed: u64,
    /// Training images whose nearest other training image sets the memorisation threshold.
    pub reference_images: usize,
}

impl Default for OwnDataOptions {
    fn default() -> Self {
        Self {
            held_out: 0.1,
            classifier_epochs: 20,
            seed: 0,
            reference_images: 1000,
        }
    }
}

/// Nearest-neighbour distances to the training images, as RMS pixel differences on the
/// `[0, 1]` scale (0: identical; 1/255 is one grey level everywhere).
#[derive(Debug, Clone, PartialEq)]
pub struct MemorisationReport {
    /// The median distance from a training image to its nearest other training image.
    pub threshold: f64,
    /// Share of samples whose nearest training image is closer than `threshold`.
    pub sample_share: f64,
    /// The same share for held-out real images (data that was not copied).
    pub held_out_share: f64,
    /// Median nearest-training-image distance of the samples.
    pub sample_median: f64,
    /// Median nearest-training-image distance of the held-out images.
    pub held_out_median: f64,
    /// Samples within 1/255 of a training image: copies.
    pub copies: usize,
}

/// What [`evaluate_own_data`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnDataReport {
    /// Samples scored.
    pub samples: usize,
    /// The class names, by label.
    pub class_names: Vec<String>,
    /// Held-out real images.
    pub held_out: usize,
    /// The classifier's accuracy on the held-out images (`None`: unlabelled data).
    pub classifier_accuracy: Option<f64>,
    /// Its accuracy per class on the held-out images (NaN for a class with none held out).
    pub held_out_per_class: Vec<f64>,
    /// Fréchet distance of the samples' classifier features to the held-out images'.
    pub fid: Option<f64>,
    /// The same for as many training images as samples (at most the training set): the floor.
    pub floor: Option<f64>,
    /// Per class: samples asked for and the share classified as asked (class-conditional
    /// samples only).
    pub sample_per_class: Vec<(usize, f64)>,
    /// Share of all samples classified as the class they were asked for.
    pub requested_share: Option<f64>,
    /// The memorisation check.
    pub memorisation: MemorisationReport,
}

impl fmt::Display for OwnDataReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |v: f64| 100.0 * v;
        if let Some(acc) = self.classifier_accuracy {
            writeln!(
                f,
                "classifier on the data's own labels: {:.1} % on {} held-out images",
                pct(acc),
                self.held_out
            )?;
        }
        if let (Some(fid), Some(floor)) = (self.fid, self.floor) {
            writeln!(
                f,
                "classifier FID, {} samples vs held-out: {fid:.2} (floor, as many training \
                 images: {floor:.2})",
                self.samples
            )?;
        }
        if let Some(share) = self.requested_share {
            writeln!(
                f,
                "samples classified as the class asked for: {:.1} %",
                pct(share)
            )?;
            writeln!(
                f,
                "  class                       samples  as asked  (real held-out)"
            )?;
            for (k, (n, acc)) in self.sample_per_class.iter().enumerate() {
                if *n == 0 {
                    continue;
                }
                let name = self.class_names.get(k).map_or("?", String::as_str);
                let real = self.held_out_per_class.get(k).copied().unwrap_or(f64::NAN);
                writeln!(
                    f,
                    "  {name:<26} {n:>8}  {:>7.1} %  ({:.1} %)",
                    pct(*acc),
                    pct(real)
                )?;
            }
        }
        let m = &self.memorisation;
        write!(
            f,
            "memorisation: {:.1} % of samples are closer to a training image than the median \
             nearest pair of training images ({:.4} RMS); held-out real images: {:.1} %; median \
             nearest distance, samples {:.4}, held-out {:.4}; copies (< 1/255): {}",
            pct(m.sample_share),
            m.threshold,
            pct(m.held_out_share),
            m.sample_median,
            m.held_out_median,
            m.copies
        )
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// For each row of `queries` (`[n, d]`, values in `[-1, 1]`), the distance to its nearest row
/// of `refs` (`[m, d]`), skipping `skip[i]` for query `i` when given (the query itself), as
/// an RMS difference on the `[0, 1]` scale: `sqrt(|q - r|^2 / d) / 2`. Computed as
/// `|q|^2 + |r|^2 - 2 q.r` in chunks of 256 queries.
///
/// # Errors
/// [`EvalError::Invalid`] for rows of different lengths, no reference, or a `skip` of
/// another length.
pub fn nearest_distances(
    queries: Tensor<2>,
    refs: Tensor<2>,
    skip: Option<&[usize]>,
) -> Result<Vec<f64>, EvalError> {
    let [n, d] = queries.dims();
    let [m, d2] = refs.dims();
    if d != d2 || m == 0 || d == 0 || skip.is_some_and(|s| s.len() != n) {
        return Err(EvalError::Invalid(format!(
            "nearest distances of [{n}, {d}] to [{m}, {d2}]: equal row lengths and at least one \
             reference needed"
        )));
    }
    let r2 = refs.clone().powf_scalar(2.0).sum_dim(1).reshape([1, m]); // [1, m]
    let rt = refs.transpose(); // [d, m]
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(256) {
        let len = 256.min(n - start);
        let q = queries.clone().narrow(0, start, len); // [len, d]
        let q2 = q.clone().powf_scalar(2.0).sum_dim(1); // [len, 1]
        let dist = q2 + r2.clone() - q.matmul(rt.clone()).mul_scalar(2.0); // [len, m]
        let values: Vec<f32> = dist.into_data().convert::<f32>().iter::<f32>().collect();
        for (i, row) in values.chunks(m).enumerate() {
            let own = skip.map(|s| s[start + i]);
            let best = row
                .iter()
                .enumerate()
                .filter(|(j, _)| Some(*j) != own)
                .map(|(_, &v)| f64::from(v).max(0.0))
                .fold(f64::INFINITY, f64::min);
            out.push((best / d as f64).sqrt() / 2.0);
        }
    }
    Ok(out)
}

fn flat(set: &ImageSet, indices: &[usize], device: &Device) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(set.scaled(indices), [indices.len(), set.image_len()]),
        device,
    )
}

/// The memorisation check of `samples` (`[n, c, h, w]` in `[-1, 1]`) against `train`, with
/// `held_out` real images as the reference; the threshold from `reference_images` training
/// images (a seeded subset) and their nearest other training image.
///
/// # Errors
/// [`EvalError::Invalid`] for shapes that disagree or empty sets.
pub fn memorisation(
    samples: Tensor<4>,
    train: &ImageSet,
    held_out: &ImageSet,
    reference_images: usize,
    seed: u64,
    device: &Device,
) -> Result<MemorisationReport, EvalError> {
    let [n, c, h, w] = samples.dims();
    if [c, h, w] != train.image_dims() || held_out.image_dims() != train.image_dims() {
        return Err(EvalError::Invalid(format!(
            "samples of {:?}, training images of {:?}, held-out of {:?}: they must agree",
            [c, h, w],
            train.image_dims(),
            held_out.image_dims()
        )));
    }
    if train.count < 2 || n == 0 {
        return Err(EvalError::Invalid(
            "the memorisation check needs samples and at least 2 training images".into(),
        ));
    }
    let all: Vec<usize> = (0..train.count).collect();
    let refs = flat(train, &all, device);
    let mut subset = all.clone();
    NoiseRng::new(seed ^ 0x6d65_6d6f).shuffle(&mut subset);
    subset.truncate(reference_images.clamp(1, train.count));
    let mut pairs = nearest_distances(flat(train, &subset, device), refs.clone(), Some(&subset))?;
    let threshold = median(&mut pairs);
    let mut s = nearest_distances(samples.reshape([n, c * h * w]), refs.clone(), None)?;
    let held: Vec<usize> = (0..held_out.count).collect();
    let mut r = if held.is_empty() {
        Vec::new()
    } else {
        nearest_distances(flat(held_out, &held, device), refs, None)?
    };
    let share =
        |v: &[f64]| v.iter().filter(|&&x| x < threshold).count() as f64 / v.len().max(1) as f64;
    let copies = s.iter().filter(|&&x| x < 1.0 / 255.0).count();
    Ok(MemorisationReport {
        threshold,
        sample_share: share(&s),
        held_out_share: share(&r),
        sample_median: median(&mut s),
        held_out_median: median(&mut r),
        copies,
    })
}

/// Scores `samples` (`[n, c, h, w]` in `[-1, 1]`) against `data` with the measures of this
/// module; `requested[i]` is the class sample `i` was drawn for (class-conditional samples).
/// The classifier parts need labelled data (two classes or more); the memorisation check
/// runs on any data.
///
/// # Errors
/// [`EvalError::Invalid`] for shapes that disagree, fewer than 2 samples, or `requested` not
/// one per sample.
pub fn evaluate_own_data(
    samples: Tensor<4>,
    requested: Option<&[usize]>,
    data: &ImageSet,
    options: &OwnDataOptions,
    device: &Device,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<OwnDataReport, EvalError> {
    let n = samples.dims()[0];
    if n < 2 {
        return Err(EvalError::Invalid("at least 2 samples are needed".into()));
    }
    if requested.is_some_and(|r| r.len() != n) {
        return Err(EvalError::Invalid(format!(
            "{} requested classes for {n} samples: give one per sample",
            requested.map_or(0, <[usize]>::len)
        )));
    }
    let (train, held) = data.split_held_out(options.held_out);
    let classes = data.class_names.len();
    let mut report = OwnDataReport {
        samples: n,
        class_names: data.class_names.clone(),
        held_out: held.count,
        classifier_accuracy: None,
        held_out_per_class: Vec::new(),
        fid: None,
        floor: None,
        sample_per_class: Vec::new(),
        requested_share: None,
        memorisation: memorisation(
            samples.clone(),
            &train,
            &held,
            options.reference_images,
            options.seed,
            device,
        )?,
    };
    if classes < 2 || held.count < 2 {
        return Ok(report);
    }
    let (clf, acc) = train_classifier(
        &train,
        &held,
        options.classifier_epochs,
        options.seed,
        device,
        on_step,
    )?;
    report.classifier_accuracy = Some(acc);
    let argmax = |row: &[f64]| {
        row.iter()
            .enumerate()
            .fold((0, f64::MIN), |a, (k, &p)| if p > a.1 { (k, p) } else { a })
            .0
    };
    let held_idx: Vec<usize> = (0..held.count).collect();
    let (f_held, p_held) = features_and_probs(&clf, held.batch(&held_idx, device))?;
    let k = clf.num_classes();
    let mut per = vec![(0usize, 0usize); k];
    for (row, &label) in p_held.chunks(k).zip(&held.labels) {
        per[label as usize].0 += 1;
        per[label as usize].1 += usize::from(argmax(row) == label as usize);
    }
    report.held_out_per_class = per
        .iter()
        .map(|&(n, hit)| {
            if n == 0 {
                f64::NAN
            } else {
                hit as f64 / n as f64
            }
        })
        .collect();
    let (f_s, p_s) = features_and_probs(&clf, samples)?;
    let d = f_s.len() / n;
    let mut order: Vec<usize> = (0..train.count).collect();
    NoiseRng::new(options.seed ^ 0x666c_6f6f).shuffle(&mut order);
    order.truncate(n.min(train.count));
    let (f_train, _) = features_and_probs(&clf, train.batch(&order, device))?;
    report.fid = Some(frechet_distance_of(&f_s, &f_held, d)?);
    report.floor = Some(frechet_distance_of(&f_train, &f_held, d)?);
    if let Some(requested) = requested {
        let mut per = vec![(0usize, 0usize); k];
        for (row, &c) in p_s.chunks(k).zip(requested) {
            if c < k {
                per[c].0 += 1;
                per[c].1 += usize::from(argmax(row) == c);
            }
        }
        let hits: usize = per.iter().map(|p| p.1).sum();
        report.requested_share = Some(hits as f64 / n as f64);
        report.sample_per_class = per
            .into_iter()
            .map(|(n, hit)| {
                (
                    n,
                    if n == 0 {
                        f64::NAN
                    } else {
                        hit as f64 / n as f64
                    },
                )
            })
            .collect();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distances against a brute-force loop; the query itself is skipped when asked.
    #[test]
    fn nearest_distances_match_brute_force() {
        let dev = Device::flex();
        let mut rng = NoiseRng::new(3);
        let (n, m, d) = (5, 7, 6);
        let q: Vec<f32> = (0..n * d)
            .map(|_| rng.uniform() as f32 * 2.0 - 1.0)
            .collect();
        let r: Vec<f32> = (0..m * d)
            .map(|_| rng.uniform() as f32 * 2.0 - 1.0)
            .collect();
        let qt = Tensor::<2>::from_data(TensorData::new(q.clone(), [n, d]), &dev);
        let rt = Tensor::<2>::from_data(TensorData::new(r.clone(), [m, d]), &dev);
        let skip = [0, 1, 2, 3, 4];
        let got = nearest_distances(qt, rt, Some(&skip)).unwrap();
        for i in 0..n {
            let want = (0..m)
                .filter(|&j| j != skip[i])
                .map(|j| {
                    let s: f64 = (0..d)
                        .map(|k| (f64::from(q[i * d + k]) - f64::from(r[j * d + k])).powi(2))
                        .sum();
                    (s / d as f64).sqrt() / 2.0
                })
                .fold(f64::INFINITY, f64::min);
            assert!((got[i] - want).abs() < 1e-5, "{i}: {} vs {want}", got[i]);
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
