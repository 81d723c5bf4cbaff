//! The small CNN whose features and softmax score samples: its layout, training, accuracy,
//! and the cached MNIST one.

use std::path::{Path, PathBuf};

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{log_softmax, relu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::error::EvalError;
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
    /// Channels of the input images (1 grey, 3 RGB).
    #[config(default = 1)]
    pub channels: usize,
    /// Side of the square input images (a multiple of 4: two 2x2 poolings).
    #[config(default = 28)]
    pub size: usize,
}

impl ClassifierConfig {
    /// Builds the network.
    pub fn init(&self, device: &Device) -> Classifier {
        let conv = |cin, cout| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let q = self.size / 4;
        Classifier {
            conv1: conv(self.channels, 32),
            conv2: conv(32, 64),
            conv3: conv(64, 64),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc: LinearConfig::new(64 * q * q, self.features).init(device),
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
    /// - `x`: `[batch, channels, size, size]` in `[-1, 1]` ([`input_dims`](Self::input_dims))
    /// - output: `[batch, features]`
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let h = relu(self.conv1.forward(x)); // [b, 32, s, s]
        let h = self.pool.forward(relu(self.conv2.forward(h))); // [b, 64, s/2, s/2]
        let h = self.pool.forward(relu(self.conv3.forward(h))); // [b, 64, s/4, s/4]
        let [b, c, hh, ww] = h.dims();
        relu(self.fc.forward(h.reshape([b, c * hh * ww]))) // [b, features]
    }

    /// `[channels, size, size]` of the images it reads (from its weights' shapes).
    pub fn input_dims(&self) -> [usize; 3] {
        let channels = self.conv1.weight.dims()[1];
        let q = ((self.fc.weight.dims()[0] / 64) as f64).sqrt().round() as usize;
        [channels, 4 * q, 4 * q]
    }

    /// The number of classes it tells apart.
    pub fn num_classes(&self) -> usize {
        self.head.weight.dims()[1]
    }

    /// Class logits, `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.features(x))
    }
}

/// A set the classifier of `dims` and `classes` can read: anything else is an error here, not
/// a shape panic inside the network.
pub(super) fn check_classifier_set(
    set: &ImageSet,
    dims: [usize; 3],
    classes: usize,
    what: &str,
) -> Result<(), EvalError> {
    if set.image_dims() != dims {
        return Err(EvalError::Invalid(format!(
            "the {what} images are {}x{} with {} channels: the classifier reads {}x{} images \
             with {} channels",
            set.rows, set.cols, set.channels, dims[1], dims[2], dims[0]
        )));
    }
    if set.count == 0 {
        return Err(EvalError::Invalid(format!("the {what} set is empty")));
    }
    if let Some(bad) = set.labels.iter().find(|&&l| l as usize >= classes) {
        return Err(EvalError::Invalid(format!(
            "the {what} set has label {bad}: the classifier knows {classes} classes (0-{})",
            classes - 1
        )));
    }
    Ok(())
}

/// `images` must be `[n >= 1, ...dims]`.
fn check_classifier_input(dims: [usize; 4], expected: [usize; 3]) -> Result<(), EvalError> {
    if dims[0] == 0 || dims[1..] != expected {
        return Err(EvalError::Invalid(format!(
            "the classifier reads images of {expected:?}, got a batch of {dims:?}"
        )));
    }
    Ok(())
}

/// Trains the classifier with Adam (lr 1e-3, batch 128) for `epochs` epochs and returns it
/// with its test accuracy. `on_step(done, total)` reports progress. The network reads the
/// training set's channels and size and tells apart its classes (its class names, else the
/// largest label + 1, at least 2; 10 for MNIST).
///
/// # Errors
/// [`EvalError::Invalid`] for a size that is not a multiple of 4, or sets that disagree in
/// shape.
pub fn train_classifier(
    train: &ImageSet,
    test: &ImageSet,
    epochs: usize,
    seed: u64,
    device: &Device,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<(Classifier, f64), EvalError> {
    let dims = train.image_dims();
    if train.rows != train.cols || !train.rows.is_multiple_of(4) || train.rows == 0 {
        return Err(EvalError::Invalid(format!(
            "the training images are {}x{}: the classifier reads square images whose side is a \
             multiple of 4",
            train.rows, train.cols
        )));
    }
    let max_label = train.labels.iter().copied().max().unwrap_or(0) as usize;
    let classes = train.class_names.len().max(max_label + 1).max(2);
    check_classifier_set(train, dims, classes, "training")?;
    check_classifier_set(test, dims, classes, "test")?;
    let ad = device.clone().autodiff();
    device.seed(seed);
    let mut model = ClassifierConfig::new()
        .with_classes(classes)
        .with_channels(dims[0])
        .with_size(dims[1])
        .init(&ad);
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
        let logp = log_softmax(model.forward(x), 1); // [b, classes]
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
/// [`EvalError::Invalid`] for a set of another shape or with labels the classifier does not
/// know.
pub fn accuracy(model: &Classifier, set: &ImageSet, device: &Device) -> Result<f64, EvalError> {
    check_classifier_set(set, model.input_dims(), model.num_classes(), "evaluated")?;
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

/// Features and class probabilities of images `[n, ...input_dims]` in `[-1, 1]`, computed in
/// batches of 500: `(features n x d, probabilities n x classes)`, row-major f64.
///
/// # Errors
/// [`EvalError::Invalid`] for images of another shape.
pub fn features_and_probs(
    model: &Classifier,
    images: Tensor<4>,
) -> Result<(Vec<f64>, Vec<f64>), EvalError> {
    check_classifier_input(images.dims(), model.input_dims())?;
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
