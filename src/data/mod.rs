//! MNIST and Fashion-MNIST: finding, downloading, verifying and parsing the original IDX files,
//! and turning them into shuffled batches of images in `[-1, 1]`.
//!
//! Files are looked up in `--data-dir`, then `$DDPM_DATA_DIR`, then `./data`; each of those is
//! a folder holding one sub-folder per dataset (`mnist/`, `fashion-mnist/`) or the four files
//! themselves. When none has them, [`locate_or_download`] fetches them from the usual public
//! mirror, checks their MD5 sums and writes them atomically.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use ddpm_core::NoiseRng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

mod locate;

pub use locate::{
    DownloadConfig, locate_or_download, locate_or_download_from, locate_or_download_with,
    search_roots,
};

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
    /// An unknown data set name.
    #[error("unknown data set '{0}': choose mnist or fashion-mnist")]
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

/// Images and labels of one split, held once in memory as bytes.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// Pixels, row-major, `count * rows * cols` bytes.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// Number of images.
    pub count: usize,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
}

fn corrupt(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The largest IDX file read, compressed or not (MNIST's training images are 47 MB).
pub const MAX_IDX_BYTES: u64 = 256 << 20;

/// Reads a file of at most [`MAX_IDX_BYTES`], transparently decompressing gzip to at most as
/// many bytes (a gzip bomb is an error, not an allocation).
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, DataError> {
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let too_large = || DataError::TooLarge {
        path: path.to_path_buf(),
        limit: MAX_IDX_BYTES,
    };
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .map_err(io_err)?
        .take(MAX_IDX_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(io_err)?;
    if raw.len() as u64 > MAX_IDX_BYTES {
        return Err(too_large());
    }
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| corrupt(path, format!("gzip stream is damaged or truncated ({e})")))?;
        if out.len() as u64 > MAX_IDX_BYTES {
            return Err(too_large());
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses an IDX image file (magic 2051): returns `(pixels, count, rows, cols)`.
///
/// # Errors
/// [`DataError::Corrupt`] for a wrong magic number, a short header, or a body whose size
/// disagrees with the header.
/// The header is removed in place: the pixels are not copied.
pub fn parse_idx_images(
    mut bytes: Vec<u8>,
    path: &Path,
) -> Result<(Vec<u8>, usize, usize, usize), DataError> {
    if bytes.len() < 16 {
        return Err(corrupt(
            path,
            format!(
                "{} bytes is too short for an image header (16)",
                bytes.len()
            ),
        ));
    }
    let magic = be_u32(&bytes, 0);
    if magic != 2051 {
        return Err(corrupt(
            path,
            format!("magic number {magic}, expected 2051 for images"),
        ));
    }
    let (n, r, c) = (
        be_u32(&bytes, 4) as usize,
        be_u32(&bytes, 8) as usize,
        be_u32(&bytes, 12) as usize,
    );
    let expected = n
        .checked_mul(r)
        .and_then(|v| v.checked_mul(c))
        .ok_or_else(|| corrupt(path, "header sizes overflow"))?;
    let body = &bytes[16..];
    if body.len() != expected {
        return Err(corrupt(
            path,
            format!(
                "header announces {n} images of {r}x{c} ({expected} bytes) but the file holds {} bytes",
                body.len()
            ),
        ));
    }
    bytes.drain(..16);
    Ok((bytes, n, r, c))
}

/// Parses an IDX label file (magic 2049).
///
/// # Errors
/// [`DataError::Corrupt`] for a wrong magic number or a size that disagrees with the header.
pub fn parse_idx_labels(mut bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>, DataError> {
    if bytes.len() < 8 {
        return Err(corrupt(
            path,
            format!("{} bytes is too short for a label header (8)", bytes.len()),
        ));
    }
    let magic = be_u32(&bytes, 0);
    if magic != 2049 {
        return Err(corrupt(
            path,
            format!("magic number {magic}, expected 2049 for labels"),
        ));
    }
    let n = be_u32(&bytes, 4) as usize;
    let body = &bytes[8..];
    if body.len() != n {
        return Err(corrupt(
            path,
            format!(
                "header announces {n} labels but the file holds {}",
                body.len()
            ),
        ));
    }
    bytes.drain(..8);
    Ok(bytes)
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
        Self::from_files(&pick(img_file.name), &pick(lbl_file.name))
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
        Ok(Self {
            pixels,
            labels: labels_v,
            count,
            rows,
            cols,
        })
    }

    /// Mean pixel value in `[0, 1]`.
    pub fn mean_pixel(&self) -> f64 {
        self.pixels.iter().map(|&p| p as f64).sum::<f64>() / (self.pixels.len() as f64 * 255.0)
    }

    /// Images `indices` as a `[n, 1, rows, cols]` tensor scaled to `[-1, 1]` (section 4 of the
    /// paper).
    pub fn batch(&self, indices: &[usize], device: &Device) -> Tensor<4> {
        Tensor::from_data(
            TensorData::new(
                self.scaled(indices),
                [indices.len(), 1, self.rows, self.cols],
            ),
            device,
        )
    }

    /// Images `indices`, row-major on the host, scaled to `[-1, 1]` as [`ImageSet::batch`]
    /// scales them.
    pub fn scaled(&self, indices: &[usize]) -> Vec<f32> {
        let size = self.rows * self.cols;
        let mut values = Vec::with_capacity(indices.len() * size);
        for &i in indices {
            values.extend(
                self.pixels[i * size..(i + 1) * size]
                    .iter()
                    .map(|&p| p as f32 / 127.5 - 1.0),
            );
        }
        values
    }
}

/// A deterministic stream of shuffled mini-batch indices: every epoch is a fresh permutation
/// drawn from `(seed, epoch)`, so the position `(epoch, offset)` is all the state there is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochSampler {
    /// Number of examples.
    pub len: usize,
    /// Seed of the shuffles.
    pub seed: u64,
    /// Current epoch.
    pub epoch: u64,
    /// Offset inside the epoch.
    pub offset: usize,
    #[serde(skip)]
    perm: Vec<usize>,
}

/// Equal position in the same stream (the cached permutation is derived state).
impl PartialEq for EpochSampler {
    fn eq(&self, other: &Self) -> bool {
        (self.len, self.seed, self.epoch, self.offset)
            == (other.len, other.seed, other.epoch, other.offset)
    }
}

impl Eq for EpochSampler {}

impl EpochSampler {
    /// A sampler over `len` examples.
    pub fn new(len: usize, seed: u64) -> Self {
        Self {
            len,
            seed,
            epoch: 0,
            offset: 0,
            perm: Vec::new(),
        }
    }

    fn permutation(&mut self) {
        let mut perm: Vec<usize> = (0..self.len).collect();
        NoiseRng::new(self.seed ^ self.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .shuffle(&mut perm);
        self.perm = perm;
    }

    /// The next `batch` indices; an epoch ends with the last full batch (the remainder is
    /// dropped, as drop_last does). Empty for a sampler over no examples.
    pub fn next_batch(&mut self, batch: usize) -> Vec<usize> {
        if self.len == 0 {
            return Vec::new();
        }
        let batch = batch.min(self.len).max(1);
        // Saturating: a position read from a damaged file must not overflow.
        if self.offset.saturating_add(batch) > self.len {
            self.epoch += 1;
            self.offset = 0;
            self.perm.clear();
        }
        if self.perm.len() != self.len {
            self.permutation();
        }
        let out = self.perm[self.offset..self.offset + batch].to_vec();
        self.offset += batch;
        out
    }
}
