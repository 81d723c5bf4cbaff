//! Sample quality without Inception weights, the MNIST way: a small CNN classifier trained
//! with burn, whose penultimate features give a "classifier FID" (Fréchet distance), and whose
//! softmax gives confidence and class-histogram statistics.
//!
//! These numbers are comparable only with numbers computed the same way (same classifier
//! architecture, seed and training, same number of samples): they are not the Inception FID of
//! the literature.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{log_softmax, relu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use ddpm_core::NoiseRng;

use std::path::{Path, PathBuf};

use crate::data::{Dataset, EpochSampler, ImageSet};

/// Hyper-parameters of the [`Classifier`].
#[derive(Config, Debug, PartialEq)]
pub struct ClassifierConfig {
    /// Width of the penultimate layer: the feature dimension of the Fréchet distance.
    #[config(default = 128)]
    pub features: usize,
    /// Number of classes.
    #[config(default = 10)]
    pub classes: usize,
}

impl ClassifierConfig {
    /// Builds the network.
    pub fn init(&self, device: &Device) -> Classifier {
        let conv = |cin, cout| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Classifier {
            conv1: conv(1, 32),
            conv2: conv(32, 64),
            conv3: conv(64, 64),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc: LinearConfig::new(64 * 7 * 7, self.features).init(device),
            head: LinearConfig::new(self.features, self.classes).init(device),
        }
    }
}

/// conv(32)-conv(64)-pool-conv(64)-pool-dense(128)-dense(10), ReLU activations.
#[derive(Module, Debug)]
pub struct Classifier {
    /// First convolution.
    pub conv1: Conv2d,
    /// Second convolution.
    pub conv2: Conv2d,
    /// Third convolution.
    pub conv3: Conv2d,
    /// 2x2 max pooling.
    pub pool: MaxPool2d,
    /// The penultimate (feature) layer.
    pub fc: Linear,
    /// The class logits.
    pub head: Linear,
}

impl Classifier {
    /// Penultimate features.
    ///
    /// # Shapes
    /// - `x`: `[batch, 1, 28, 28]` in `[-1, 1]`
    /// - output: `[batch, features]`
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let h = relu(self.conv1.forward(x)); // [b, 32, 28, 28]
        let h = self.pool.forward(relu(self.conv2.forward(h))); // [b, 64, 14, 14]
        let h = self.pool.forward(relu(self.conv3.forward(h))); // [b, 64, 7, 7]
        let b = h.dims()[0];
        relu(self.fc.forward(h.reshape([b, 64 * 7 * 7]))) // [b, features]
    }

    /// Class logits, `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.features(x))
    }
}

/// The classifier reads 28x28 grey images with labels 0-9: anything else is an error here,
/// not a shape panic inside the network.
fn check_classifier_set(set: &ImageSet, what: &str) -> Result<(), EvalError> {
    if (set.rows, set.cols) != (28, 28) {
        return Err(EvalError::Invalid(format!(
            "the {what} images are {}x{}: the classifier reads 28x28 images (MNIST, \
             Fashion-MNIST)",
            set.rows, set.cols
        )));
    }
    if set.count == 0 {
        return Err(EvalError::Invalid(format!("the {what} set is empty")));
    }
    if let Some(bad) = set.labels.iter().find(|&&l| l >= 10) {
        return Err(EvalError::Invalid(format!(
            "the {what} set has label {bad}: the classifier knows 10 classes (0-9)"
        )));
    }
    Ok(())
}

/// `images` must be `[n >= 1, 1, 28, 28]`.
fn check_classifier_input(dims: [usize; 4]) -> Result<(), EvalError> {
    if dims[0] == 0 || dims[1..] != [1, 28, 28] {
        return Err(EvalError::Invalid(format!(
            "the classifier reads images of [1, 28, 28], got a batch of {dims:?}"
        )));
    }
    Ok(())
}

/// Trains the classifier with Adam (lr 1e-3, batch 128) for `epochs` epochs and returns it
/// with its test accuracy. `on_step(done, total)` reports progress.
///
/// # Errors
/// [`EvalError::Invalid`] for sets that are not 28x28 images labelled 0-9.
pub fn train_classifier(
    train: &ImageSet,
    test: &ImageSet,
    epochs: usize,
    seed: u64,
    device: &Device,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<(Classifier, f64), EvalError> {
    check_classifier_set(train, "training")?;
    check_classifier_set(test, "test")?;
    let ad = device.clone().autodiff();
    device.seed(seed);
    let mut model = ClassifierConfig::new().init(&ad);
    let mut optim = AdamConfig::new().init();
    let batch = 128;
    let per_epoch = train.count / batch;
    let total = per_epoch * epochs;
    let mut sampler = EpochSampler::new(train.count, seed);
    for step in 0..total {
        let idx = sampler.next_batch(batch);
        let x = train.batch(&idx, &ad);
        let labels: Vec<i64> = idx.iter().map(|&i| train.labels[i] as i64).collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [idx.len()]), &ad);
        let logp = log_softmax(model.forward(x), 1); // [b, 10]
        let loss = logp.gather(1, y.reshape([idx.len(), 1])).mean().neg();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
        on_step(step + 1, total);
    }
    let model = model.valid();
    let acc = accuracy(&model, test, device)?;
    Ok((model, acc))
}

/// Fraction of `set` classified correctly.
///
/// # Errors
/// [`EvalError::Invalid`] for a set that is not 28x28 images labelled 0-9.
pub fn accuracy(model: &Classifier, set: &ImageSet, device: &Device) -> Result<f64, EvalError> {
    check_classifier_set(set, "evaluated")?;
    let mut correct = 0usize;
    for start in (0..set.count).step_by(500) {
        let idx: Vec<usize> = (start..(start + 500).min(set.count)).collect();
        let pred = model.forward(set.batch(&idx, device)).argmax(1); // [b, 1]
        let pred: Vec<i64> = pred.into_data().convert::<i64>().iter::<i64>().collect();
        correct += idx
            .iter()
            .zip(&pred)
            .filter(|(i, p)| set.labels[**i] as i64 == **p)
            .count();
    }
    Ok(correct as f64 / set.count as f64)
}

/// Features and class probabilities of images `[n, 1, 28, 28]` in `[-1, 1]`, computed in
/// batches of 500: `(features n x d, probabilities n x classes)`, row-major f64.
///
/// # Errors
/// [`EvalError::Invalid`] for images of another shape.
pub fn features_and_probs(
    model: &Classifier,
    images: Tensor<4>,
) -> Result<(Vec<f64>, Vec<f64>), EvalError> {
    check_classifier_input(images.dims())?;
    let n = images.dims()[0];
    let (mut feats, mut probs) = (Vec::new(), Vec::new());
    for start in (0..n).step_by(500) {
        let len = 500.min(n - start);
        let x = images.clone().narrow(0, start, len);
        let f = model.features(x);
        let p = softmax(model.head.forward(f.clone()), 1);
        feats.extend(f.into_data().convert::<f32>().iter::<f32>().map(f64::from));
        probs.extend(p.into_data().convert::<f32>().iter::<f32>().map(f64::from));
    }
    Ok((feats, probs))
}

/// Mean and covariance (unbiased) of `n` rows of dimension `d` (empty for `d = 0`).
pub fn mean_cov(x: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    if d == 0 {
        return (Vec::new(), Vec::new());
    }
    let n = x.len() / d;
    let mut mu = vec![0.0; d];
    for row in x.chunks(d) {
        for (m, v) in mu.iter_mut().zip(row) {
            *m += v / n as f64;
        }
    }
    let mut cov = vec![0.0; d * d];
    for row in x.chunks(d) {
        for i in 0..d {
            let a = row[i] - mu[i];
            for j in i..d {
                cov[i * d + j] += a * (row[j] - mu[j]);
            }
        }
    }
    let denom = (n.max(2) - 1) as f64;
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / denom;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    (mu, cov)
}

/// Eigen-decomposition of a symmetric `d x d` matrix by cyclic Jacobi rotations:
/// `(eigenvalues, eigenvectors as columns, row-major)`.
pub fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j].powi(2))
            .sum();
        let scale: f64 = (0..d)
            .map(|i| a[i * d + i].powi(2))
            .sum::<f64>()
            .max(1e-300);
        if off <= 1e-24 * scale {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            if aik != 0.0 {
                for j in 0..d {
                    out[i * d + j] += aik * b[k * d + j];
                }
            }
        }
    }
    out
}

/// Fréchet distance between `N(mu1, s1)` and `N(mu2, s2)`:
/// `|mu1 - mu2|^2 + tr(s1 + s2 - 2 (s1^{1/2} s2 s1^{1/2})^{1/2})`.
///
/// # Errors
/// [`EvalError::Invalid`] for a dimension of 0 or sizes that disagree (`d` means, `d x d`
/// covariances).
pub fn frechet_distance(
    mu1: &[f64],
    s1: &[f64],
    mu2: &[f64],
    s2: &[f64],
) -> Result<f64, EvalError> {
    let d = mu1.len();
    let dd = d.checked_mul(d);
    if d == 0 || mu2.len() != d || dd != Some(s1.len()) || dd != Some(s2.len()) {
        return Err(EvalError::Invalid(format!(
            "a Frechet distance needs two means of one dimension d >= 1 and two d x d \
             covariances, got means of {} and {} and covariances of {} and {} values",
            d,
            mu2.len(),
            s1.len(),
            s2.len()
        )));
    }
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b).powi(2)).sum();
    let (l, v) = symmetric_eigen(s1, d);
    // s1^{1/2} = V diag(sqrt(l)) V^T
    let mut root = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            root[i * d + j] = (0..d)
                .map(|k| v[i * d + k] * l[k].max(0.0).sqrt() * v[j * d + k])
                .sum();
        }
    }
    let m = matmul(&matmul(&root, s2, d), &root, d);
    let sym: Vec<f64> = (0..d * d)
        .map(|ij| 0.5 * (m[ij] + m[(ij % d) * d + ij / d]))
        .collect();
    let (lm, _) = symmetric_eigen(&sym, d);
    let tr_sqrt: f64 = lm.iter().map(|x| x.max(0.0).sqrt()).sum();
    let tr: f64 = (0..d).map(|i| s1[i * d + i] + s2[i * d + i]).sum();
    Ok(mean_term + tr - 2.0 * tr_sqrt)
}

/// Fréchet distance between two sets of feature rows of dimension `d`.
///
/// # Errors
/// [`EvalError::Invalid`] for `d = 0`, a set whose length is not a multiple of `d`, or fewer
/// than 2 rows in a set (no covariance).
pub fn frechet_distance_of(a: &[f64], b: &[f64], d: usize) -> Result<f64, EvalError> {
    for (name, x) in [("first", a), ("second", b)] {
        if d == 0 || !x.len().is_multiple_of(d) || x.len() / d < 2 {
            return Err(EvalError::Invalid(format!(
                "the {name} feature set has {} values: a Frechet distance needs at least 2 \
                 rows of d >= 1 values each (d = {d})",
                x.len()
            )));
        }
    }
    let (m1, s1) = mean_cov(a, d);
    let (m2, s2) = mean_cov(b, d);
    frechet_distance(&m1, &s1, &m2, &s2)
}

/// Statistics of class probabilities (`n x classes`, row-major): mean max-softmax confidence,
/// the histogram of predicted classes, and its KL divergence from uniform (nats).
pub fn class_stats(probs: &[f64], classes: usize) -> (f64, Vec<usize>, f64) {
    let n = probs.len() / classes;
    let mut hist = vec![0usize; classes];
    let mut conf = 0.0;
    for row in probs.chunks(classes) {
        let (k, p) =
            row.iter().enumerate().fold(
                (0, f64::MIN),
                |acc, (k, &p)| if p > acc.1 { (k, p) } else { acc },
            );
        hist[k] += 1;
        conf += p;
    }
    let kl = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            p * (p * classes as f64).ln()
        })
        .sum();
    (conf / n as f64, hist, kl)
}

/// Seeded random rotation helper for tests: a `d x d` orthogonal matrix from Gram–Schmidt.
pub fn random_orthogonal(d: usize, seed: u64) -> Vec<f64> {
    let mut rng = NoiseRng::new(seed);
    let mut q: Vec<Vec<f64>> = Vec::new();
    while q.len() < d {
        let mut v: Vec<f64> = rng.normal_vec(d).into_iter().map(f64::from).collect();
        for u in &q {
            let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-8 {
            q.push(v.into_iter().map(|a| a / norm).collect());
        }
    }
    q.concat()
}

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The model or the diffusion failed.
    #[error(transparent)]
    Ddpm(#[from] ddpm_core::DdpmError),
    /// The data set could not be read.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An invalid setting.
    #[error("invalid evaluation: {0}")]
    Invalid(String),
}

/// The negative log-likelihood bound of a model on test images (Table 1's NLL), in bits/dim.
#[derive(Debug, Clone, PartialEq)]
pub struct NllReport {
    /// Images evaluated.
    pub images: usize,
    /// The bound: prior + decoder + KL terms.
    pub total: f64,
    /// L_T, the prior term.
    pub prior: f64,
    /// L_0, the discretized decoder.
    pub decoder: f64,
    /// The sum of the KL terms L_1 .. L_{T-1}.
    pub kl_sum: f64,
}

impl std::fmt::Display for NllReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "NLL bound on {} test images: {:.4} bits/dim",
            self.images, self.total
        )?;
        writeln!(f, "  prior L_T        {:.6}", self.prior)?;
        writeln!(f, "  decoder L_0      {:.4}", self.decoder)?;
        write!(f, "  sum of KL terms  {:.4}", self.kl_sum)
    }
}

/// Settings of [`nll`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NllOptions {
    /// Test images (the first `num` of the set).
    pub num: usize,
    /// Images per batch.
    pub batch: usize,
    /// Reverse-process variance (`FixedLarge`, as the paper's CIFAR10 NLL).
    pub variance: ddpm_core::VarianceType,
    /// Seed of the noise of each term.
    pub seed: u64,
}

impl Default for NllOptions {
    fn default() -> Self {
        Self {
            num: 256,
            batch: 64,
            variance: ddpm_core::VarianceType::FixedLarge,
            seed: 0,
        }
    }
}

/// The NLL bound in bits/dim of `model` on the first `options.num` images of `set` (all T
/// terms, the decoder and the prior). `on_step(done, total)` counts model calls.
///
/// # Errors
/// [`EvalError::Invalid`] for an empty set, `num` or `batch` of 0; model errors.
pub fn nll<P: ddpm_core::NoisePredictor<4> + ?Sized>(
    diffusion: &ddpm_core::GaussianDiffusion,
    model: &P,
    set: &ImageSet,
    options: NllOptions,
    device: &Device,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<NllReport, EvalError> {
    let num = options.num.min(set.count);
    if num == 0 || options.batch == 0 {
        return Err(EvalError::Invalid(format!(
            "num ({}) and batch ({}) must be at least 1, and the set non-empty ({} images)",
            options.num, options.batch, set.count
        )));
    }
    let batches: Vec<Vec<usize>> = (0..num)
        .collect::<Vec<_>>()
        .chunks(options.batch)
        .map(<[usize]>::to_vec)
        .collect();
    let total_calls = batches.len() * diffusion.num_timesteps();
    let mut rng = NoiseRng::new(options.seed);
    let mut acc = [0.0; 4];
    for (b, idx) in batches.iter().enumerate() {
        let done_before = b * diffusion.num_timesteps();
        let mut progress = |done: usize, _: usize| on_step(done_before + done, total_calls);
        let r = diffusion.calc_bpd_loop(
            model,
            set.batch(idx, device),
            options.variance,
            ddpm_core::Clip::unit(),
            &mut rng,
            &mut progress,
        )?;
        let w = idx.len() as f64 / num as f64;
        for (slot, v) in acc.iter_mut().zip([r.total, r.prior, r.decoder, r.kl_sum]) {
            *slot += w * v;
        }
    }
    Ok(NllReport {
        images: num,
        total: acc[0],
        prior: acc[1],
        decoder: acc[2],
        kl_sum: acc[3],
    })
}

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
            "share with confidence >= 0.9:             {:.1} %",
            100.0 * self.confident_share
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
    if dims[0] < 2 || dims[1..] != [1, 28, 28] {
        return Err(EvalError::Invalid(format!(
            "expected at least 2 samples of [1, 28, 28], got {dims:?}"
        )));
    }
    check_classifier_set(train, "training")?;
    check_classifier_set(test, "test")?;
    let n = dims[0];
    let d = ClassifierConfig::new().features;
    let all_test: Vec<usize> = (0..test.count).collect();
    let train_idx: Vec<usize> = (0..n.min(train.count)).collect();
    let test_images = test.batch(&all_test, device);
    let test_near_black_share = near_black_share(test_images.clone());
    let (f_test, _) = features_and_probs(classifier, test_images)?;
    let (f_train, _) = features_and_probs(classifier, train.batch(&train_idx, device))?;
    let near_black = near_black_share(samples.clone());
    let (f_s, p_s) = features_and_probs(classifier, samples)?;
    let (confidence, histogram, kl_uniform) = class_stats(&p_s, 10);
    let confident = p_s
        .chunks(10)
        .filter(|row| row.iter().cloned().fold(f64::MIN, f64::max) >= 0.9)
        .count();
    Ok(QualityReport {
        samples: n,
        fid: frechet_distance_of(&f_s, &f_test, d)?,
        floor: frechet_distance_of(&f_train, &f_test, d)?,
        confidence,
        confident_share: confident as f64 / n as f64,
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
        let img = crate::images::read_image_bounded(f, max)
            .map_err(|e| fail(f, e))?
            .to_luma8();
        let dims = img.dimensions();
        if *size.get_or_insert(dims) != dims {
            return Err(fail(
                f,
                format!(
                    "is {dims:?}, the first image was {:?}",
                    size.unwrap_or(dims)
                ),
            ));
        }
        values.extend(img.pixels().map(|p| p.0[0] as f32 / 127.5 - 1.0));
    }
    let (w, h) = size.unwrap_or((0, 0));
    Ok(Tensor::from_data(
        TensorData::new(values, [files.len(), 1, h as usize, w as usize]),
        device,
    ))
}

/// Where the classifier of `dataset` trained with `(epochs, seed)` is cached: beside the data
/// set's files when that folder is writable, else under `./data/<dataset>`.
///
/// # Errors
/// [`EvalError::Data`] when the data set cannot be found or downloaded.
pub fn classifier_path(
    dataset: Dataset,
    data_dir: Option<&Path>,
    epochs: usize,
    seed: u64,
) -> Result<PathBuf, EvalError> {
    let files = crate::data::locate_or_download(dataset, data_dir)?;
    let name = format!("classifier-seed{seed}-epochs{epochs}.bpk");
    let beside = files[0].parent().unwrap_or(Path::new(".")).join(&name);
    let writable = beside
        .parent()
        .and_then(|d| std::fs::metadata(d).ok())
        .is_some_and(|m| !m.permissions().readonly());
    Ok(if writable || beside.exists() {
        beside
    } else {
        PathBuf::from("data").join(dataset.dir_name()).join(name)
    })
}

/// The classifier of [`classifier_path`]: loaded when cached (`Ok((model, None))`), else
/// trained, saved atomically and returned with its test accuracy.
///
/// # Errors
/// [`EvalError::File`] for a damaged cache (delete it to retrain) or a failed save.
pub fn cached_classifier(
    dataset: Dataset,
    data_dir: Option<&Path>,
    epochs: usize,
    seed: u64,
    device: &Device,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<(Classifier, Option<f64>), EvalError> {
    let path = classifier_path(dataset, data_dir, epochs, seed)?;
    let template = ClassifierConfig::new().init(device);
    if path.is_file() {
        let model = template.try_load_file(&path).map_err(|e| EvalError::File {
            path: path.clone(),
            reason: format!("{e}; delete it to retrain the classifier"),
        })?;
        return Ok((model, None));
    }
    let train = ImageSet::load(dataset, crate::data::Split::Train, data_dir)?;
    let test = ImageSet::load(dataset, crate::data::Split::Test, data_dir)?;
    let (model, acc) = train_classifier(&train, &test, epochs, seed, device, on_step)?;
    let fail = |e: &dyn std::fmt::Display| EvalError::File {
        path: path.clone(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
    }
    let tmp = path.with_extension("bpk.tmp");
    model.clone().save_file(&tmp).map_err(|e| fail(&e))?;
    std::fs::rename(&tmp, &path).map_err(|e| fail(&e))?;
    Ok((model, Some(acc)))
}
