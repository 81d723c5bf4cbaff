//! Training data: MNIST and Fashion-MNIST (IDX files found, downloaded, verified, parsed),
//! CIFAR-10 (its binary batches), and folders of your own pictures (decoded, composited,
//! resized, cached), all as one [`ImageSet`] of bytes served as shuffled batches in `[-1, 1]`.
//!
//! Files are looked up in `--data-dir`, then `$DDPM_DATA_DIR`, then `./data`; each of those is
//! a folder holding one sub-folder per dataset (`mnist/`, `fashion-mnist/`) or the four files
//! themselves. When none has them, [`locate_or_download`] fetches them from the usual public
//! mirror, checks their MD5 sums and writes them atomically.

use std::fmt;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use thiserror::Error;

mod batches;
mod cache;
mod cifar;
mod epoch;
mod folder;
mod folder_config;
mod folder_report;
mod idx;
mod listing;
mod locate;
mod pixels;
mod source;

pub use batches::{BatchSource, Flattened, Points};
pub use cache::CACHE_MAGIC;
pub use cifar::{CIFAR10_CLASSES, CIFAR10_MD5, cifar10_from_files, load_cifar10};
pub use epoch::EpochSampler;
pub use folder::load_image_folder;
pub use folder_config::{
    Background, Channels, ImageFolderConfig, LabelSource, MAX_CLASSES, MAX_SIZE, ResizeFilter,
    ResizeMode,
};
pub use folder_report::{CacheStatus, FolderReport};
pub use idx::{MAX_IDX_BYTES, parse_idx_images, parse_idx_labels};
use idx::{corrupt, read_maybe_gzip};
pub use locate::{
    DownloadConfig, locate_or_download, locate_or_download_from, locate_or_download_with,
    search_roots,
};
pub use pixels::Pixels;
pub use source::{DataInfo, DataSource, LoadedData};

/// A dataset of 28x28 grayscale images in the IDX format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dataset {
    /// LeCun, Cortes & Burges' handwritten digits.
    Mnist,
    /// Zalando's Fashion-MNIST.
    FashionMnist,
}

/// The training or the test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Split {
    /// 60,000 images.
    Train,
    /// 10,000 images.
    Test,
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

/// Parses `mnist` and `fashion-mnist`.
impl std::str::FromStr for Dataset {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mnist" => Ok(Dataset::Mnist),
            "fashion-mnist" | "fashion_mnist" | "fashionmnist" => Ok(Dataset::FashionMnist),
            other => Err(DataError::Unknown(other.to_string())),
        }
    }
}

/// One file of a dataset: its name and published MD5 sum.
#[derive(Debug, Clone, Copy)]
pub struct DataFile {
    /// File name, e.g. `train-images-idx3-ubyte.gz`.
    pub name: &'static str,
    /// Published MD5 sum of the gzip file.
    pub md5: &'static str,
}

impl Dataset {
    /// Name of the dataset's folder under a data directory.
    pub fn dir_name(self) -> &'static str {
        match self {
            Dataset::Mnist => "mnist",
            Dataset::FashionMnist => "fashion-mnist",
        }
    }

    /// The four files with their published MD5 sums (train images, train labels, test images,
    /// test labels).
    pub fn files(self) -> [DataFile; 4] {
        let f = |name, md5| DataFile { name, md5 };
        match self {
            Dataset::Mnist => [
                f(
                    "train-images-idx3-ubyte.gz",
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                ),
                f(
                    "train-labels-idx1-ubyte.gz",
                    "d53e105ee54ea40749a09fcbcd1e9432",
                ),
                f(
                    "t10k-images-idx3-ubyte.gz",
                    "9fb629c4189551a2d022fa330f9573f3",
                ),
                f(
                    "t10k-labels-idx1-ubyte.gz",
                    "ec29112dd5afa0611ce80d1b7f02629c",
                ),
            ],
            Dataset::FashionMnist => [
                f(
                    "train-images-idx3-ubyte.gz",
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                ),
                f(
                    "train-labels-idx1-ubyte.gz",
                    "25c81989df183df01b3e8a0aad5dffbe",
                ),
                f(
                    "t10k-images-idx3-ubyte.gz",
                    "bef4ecab320f06d8554ea6380940ec79",
                ),
                f(
                    "t10k-labels-idx1-ubyte.gz",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
            ],
        }
    }

    /// The public mirror the files are downloaded from.
    pub fn mirror(self) -> &'static str {
        match self {
            Dataset::Mnist => "https://ossci-datasets.s3.amazonaws.com/mnist/",
            Dataset::FashionMnist => {
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
            }
        }
    }

    fn split_files(self, split: Split) -> (DataFile, DataFile) {
        let [a, b, c, d] = self.files();
        match split {
            Split::Train => (a, b),
            Split::Test => (c, d),
        }
    }
}

/// Everything that can go wrong while finding or reading a dataset.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DataError {
    /// The files are nowhere to be found and could not be downloaded.
    #[error(
        "{dataset} files not found and the download failed ({reason}).\nPut these four files \
         (gzip or uncompressed) in {dir}:\n  {files}\nor point --data-dir or DDPM_DATA_DIR at a \
         folder that holds a '{dataset}' sub-folder with them."
    )]
    NotFound {
        /// The dataset.
        dataset: Dataset,
        /// Where the files were expected.
        dir: PathBuf,
        /// The file names.
        files: String,
        /// Why the download failed.
        reason: String,
    },
    /// A file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a valid IDX file of the expected kind.
    #[error("{path} is not a valid IDX file: {reason}. Delete it and let it be downloaded again")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// CIFAR-10's files are nowhere to be found and could not be downloaded.
    #[error(
        "CIFAR-10 not found and the download failed ({reason}).\nPut data_batch_1.bin ... \
         data_batch_5.bin and test_batch.bin (the binary version), or \
         cifar-10-binary.tar.gz, in {dir}, or point the data folder at one that holds a \
         'cifar10' sub-folder with them."
    )]
    NotFoundCifar {
        /// Where the files were expected.
        dir: PathBuf,
        /// Why the download failed.
        reason: String,
    },
    /// An unknown data set name.
    #[error("unknown data set '{0}': choose mnist, fashion-mnist or cifar10")]
    Unknown(String),
    /// A file found locally does not have the published MD5 sum.
    #[error(
        "{path} has MD5 {actual}, but the published file has {expected}: it is damaged or \
         another file; delete it to download it again, or put the original there"
    )]
    LocalChecksum {
        /// The file.
        path: PathBuf,
        /// Its MD5.
        actual: String,
        /// The published MD5.
        expected: String,
    },
    /// A file decompresses to more than an IDX file of these data sets can be.
    #[error(
        "{path} decompresses to more than {limit} bytes, more than any MNIST-format file: it is \
         not one (delete it)"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// A setting or a file of an image folder is not usable (what and what to do).
    #[error("{0}")]
    Invalid(String),
    /// An image file cannot be decoded.
    #[error(
        "{path} cannot be decoded ({reason}): delete or replace it, or set \
         ImageFolderConfig::skip_bad to leave bad files out"
    )]
    BadImage {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// A downloaded file does not have the published MD5 sum.
    #[error(
        "the download of {name} has MD5 {actual}, expected {expected}: the mirror served a different file; nothing was written"
    )]
    Checksum {
        /// The file name.
        name: String,
        /// Its MD5.
        actual: String,
        /// The published MD5.
        expected: String,
    },
}

/// Images and labels of one split, held once as bytes (in memory, or mapped from a decoded
/// cache file).
///
/// Image `i` is `channels * rows * cols` bytes from `i * channels * rows * cols`, channel by
/// channel, each channel row-major: the layout of a `[count, channels, rows, cols]` tensor.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// Pixels, `count * channels * rows * cols` bytes.
    pub pixels: Pixels,
    /// One label per image (all 0 for unlabelled data).
    pub labels: Vec<u8>,
    /// Number of images.
    pub count: usize,
    /// Colour channels: 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
    /// The name of each class, by label (empty for unlabelled data).
    pub class_names: Vec<String>,
}

impl ImageSet {
    /// Loads one split of `dataset`, searching (and if needed downloading) as
    /// [`locate_or_download`] does.
    ///
    /// # Errors
    /// Missing, unreadable or corrupt files, or images and labels that disagree in count.
    pub fn load(
        dataset: Dataset,
        split: Split,
        data_dir: Option<&Path>,
    ) -> Result<Self, DataError> {
        let paths = locate_or_download(dataset, data_dir)?;
        let (img_file, lbl_file) = dataset.split_files(split);
        let pick = |name: &str| {
            paths
                .iter()
                .find(|p| {
                    p.file_name().is_some_and(|f| {
                        f.to_string_lossy().trim_end_matches(".gz") == name.trim_end_matches(".gz")
                    })
                })
                .cloned()
                .expect("locate returns all four files")
        };
        let mut set = Self::from_files(&pick(img_file.name), &pick(lbl_file.name))?;
        if dataset == Dataset::FashionMnist {
            set.class_names = [
                "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                "bag", "boot",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
        }
        Ok(set)
    }

    /// Parses an image file and a label file (gzip or raw).
    ///
    /// # Errors
    /// Unreadable or corrupt files, or counts that disagree.
    pub fn from_files(images: &Path, labels: &Path) -> Result<Self, DataError> {
        let (pixels, count, rows, cols) = parse_idx_images(read_maybe_gzip(images)?, images)?;
        let labels_v = parse_idx_labels(read_maybe_gzip(labels)?, labels)?;
        if labels_v.len() != count {
            return Err(corrupt(
                labels,
                format!(
                    "{} labels for {count} images in {}",
                    labels_v.len(),
                    images.display()
                ),
            ));
        }
        let names = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
        let class_names = if labels_v.iter().all(|&l| l < 10) {
            names(&["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"])
        } else {
            Vec::new()
        };
        Ok(Self {
            pixels: pixels.into(),
            labels: labels_v,
            count,
            channels: 1,
            rows,
            cols,
            class_names,
        })
    }

    /// Bytes per image: `channels * rows * cols`.
    pub fn image_len(&self) -> usize {
        self.channels * self.rows * self.cols
    }

    /// The `[channels, rows, cols]` of each image.
    pub fn image_dims(&self) -> [usize; 3] {
        [self.channels, self.rows, self.cols]
    }

    /// The label of class `name` (its index in [`class_names`](Self::class_names)).
    pub fn class_index(&self, name: &str) -> Option<usize> {
        self.class_names.iter().position(|n| n == name)
    }

    /// The images `indices` as a new in-memory set (their labels and class names kept).
    pub fn subset(&self, indices: &[usize]) -> Self {
        let len = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * len);
        for &i in indices {
            pixels.extend_from_slice(&self.pixels[i * len..(i + 1) * len]);
        }
        Self {
            pixels: pixels.into(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            count: indices.len(),
            channels: self.channels,
            rows: self.rows,
            cols: self.cols,
            class_names: self.class_names.clone(),
        }
    }

    /// Splits off a held-out share: every `1 / fraction`-th image of each class, so that
    /// each class keeps its share (at least one image of each class with two or more stays
    /// in training). Returns `(train, held_out)`.
    pub fn split_held_out(&self, fraction: f64) -> (Self, Self) {
        let fraction = fraction.clamp(0.0, 1.0);
        let mut seen = std::collections::HashMap::<u8, usize>::new();
        let (mut train, mut held) = (Vec::new(), Vec::new());
        for i in 0..self.count {
            let k = seen.entry(self.labels[i]).or_insert(0);
            *k += 1;
            // Image k of its class is held out when the running share falls behind.
            if fraction > 0.0
                && (*k as f64 * fraction).floor() > ((*k - 1) as f64 * fraction).floor()
            {
                held.push(i);
            } else {
                train.push(i);
            }
        }
        (self.subset(&train), self.subset(&held))
    }

    /// Mean pixel value in `[0, 1]`.
    pub fn mean_pixel(&self) -> f64 {
        self.pixels.iter().map(|&p| p as f64).sum::<f64>() / (self.pixels.len() as f64 * 255.0)
    }

    /// Images `indices` as a `[n, 1, rows, cols]` tensor scaled to `[-1, 1]` (section 4 of the
    /// paper).
    ///
    /// # Shapes
    /// - output: `[indices.len(), channels, rows, cols]`
    pub fn batch(&self, indices: &[usize], device: &Device) -> Tensor<4> {
        self.batch_mirrored(indices, &[], device)
    }

    /// As [`batch`](Self::batch), image `k` mirrored left-right where `mirror[k]` is true
    /// (missing entries: not mirrored). The mirroring is a copy in the other order, exact.
    pub fn batch_mirrored(&self, indices: &[usize], mirror: &[bool], device: &Device) -> Tensor<4> {
        Tensor::from_data(
            TensorData::new(
                self.scaled_mirrored(indices, mirror),
                [indices.len(), self.channels, self.rows, self.cols],
            ),
            device,
        )
    }

    /// Images `indices`, row-major on the host, scaled to `[-1, 1]` as [`ImageSet::batch`]
    /// scales them.
    pub fn scaled(&self, indices: &[usize]) -> Vec<f32> {
        self.scaled_mirrored(indices, &[])
    }

    fn scaled_mirrored(&self, indices: &[usize], mirror: &[bool]) -> Vec<f32> {
        let size = self.image_len();
        let w = self.cols.max(1);
        let scale = |p: &u8| *p as f32 / 127.5 - 1.0;
        let mut values = Vec::with_capacity(indices.len() * size);
        for (k, &i) in indices.iter().enumerate() {
            let image = &self.pixels[i * size..(i + 1) * size];
            if mirror.get(k).copied().unwrap_or(false) {
                for row in image.chunks(w) {
                    values.extend(row.iter().rev().map(scale));
                }
            } else {
                values.extend(image.iter().map(scale));
            }
        }
        values
    }
}
