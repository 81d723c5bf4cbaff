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

use crate::data::{EpochSampler, ImageSet};

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

/// Trains the classifier with Adam (lr 1e-3, batch 128) for `epochs` epochs and returns it
/// with its test accuracy. `on_step(done, total)` reports progress.
pub fn train_classifier(
    train: &ImageSet,
    test: &ImageSet,
    epochs: usize,
    seed: u64,
    device: &Device,
    on_step: &mut dyn FnMut(usize, usize),
) -> (Classifier, f64) {
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
    let acc = accuracy(&model, test, device);
    (model, acc)
}

/// Fraction of `set` classified correctly.
pub fn accuracy(model: &Classifier, set: &ImageSet, device: &Device) -> f64 {
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
    correct as f64 / set.count as f64
}

/// Features and class probabilities of images `[n, 1, 28, 28]` in `[-1, 1]`, computed in
/// batches of 500: `(features n x d, probabilities n x classes)`, row-major f64.
pub fn features_and_probs(model: &Classifier, images: Tensor<4>) -> (Vec<f64>, Vec<f64>) {
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
    (feats, probs)
}

/// Mean and covariance (unbiased) of `n` rows of dimension `d`.
pub fn mean_cov(x: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
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
pub fn frechet_distance(mu1: &[f64], s1: &[f64], mu2: &[f64], s2: &[f64]) -> f64 {
    let d = mu1.len();
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
    mean_term + tr - 2.0 * tr_sqrt
}

/// Fréchet distance between two sets of feature rows of dimension `d`.
pub fn frechet_distance_of(a: &[f64], b: &[f64], d: usize) -> f64 {
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
