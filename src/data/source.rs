//! Which data a run trains on, as a value a checkpoint records: a built-in IDX set, CIFAR-10,
//! or a folder with its options; and what a checkpoint remembers of it.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{
    DataError, Dataset, FolderReport, ImageFolderConfig, ImageSet, Split, load_cifar10,
    load_image_folder,
};

/// The data a run trains on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DataSource {
    /// MNIST or Fashion-MNIST (28x28 grey).
    Idx {
        /// Which one.
        dataset: Dataset,
    },
    /// CIFAR-10 (32x32 RGB, 10 classes).
    Cifar10,
    /// A folder of your own images.
    Folder {
        /// The folder and its options.
        config: ImageFolderConfig,
    },
}

/// A loaded split and, for a folder, what loading it did.
#[derive(Debug, Clone)]
pub struct LoadedData {
    /// The images.
    pub set: ImageSet,
    /// The folder's report (files, skipped, cache); `None` for the built-in sets.
    pub report: Option<FolderReport>,
}

impl DataSource {
    /// Parses a built-in data set name: `mnist`, `fashion-mnist` or `cifar10`.
    ///
    /// # Errors
    /// [`DataError::Unknown`] for another name.
    pub fn named(name: &str) -> Result<Self, DataError> {
        match name.to_ascii_lowercase().as_str() {
            "cifar10" | "cifar-10" => Ok(DataSource::Cifar10),
            other => Ok(DataSource::Idx {
                dataset: other.parse()?,
            }),
        }
    }

    /// Loads `split` (a folder has no test split: `Split::Test` is the same images; hold some
    /// out with [`ImageSet::split_held_out`]). The built-in sets are searched in `data_dir`,
    /// `$DDPM_DATA_DIR` and `./data`; a folder's decoded images are cached in `cache` when
    /// given.
    ///
    /// # Errors
    /// As [`ImageSet::load`], [`load_cifar10`] or [`load_image_folder`].
    pub fn load(
        &self,
        split: Split,
        data_dir: Option<&Path>,
        cache: Option<&Path>,
    ) -> Result<LoadedData, DataError> {
        match self {
            DataSource::Idx { dataset } => Ok(LoadedData {
                set: ImageSet::load(*dataset, split, data_dir)?,
                report: None,
            }),
            DataSource::Cifar10 => Ok(LoadedData {
                set: load_cifar10(split, data_dir)?,
                report: None,
            }),
            DataSource::Folder { config } => {
                let (set, report) = load_image_folder(config, cache)?;
                Ok(LoadedData {
                    set,
                    report: Some(report),
                })
            }
        }
    }

    /// The built-in IDX data set, if this is one.
    pub fn dataset(&self) -> Option<Dataset> {
        match self {
            DataSource::Idx { dataset } => Some(*dataset),
            _ => None,
        }
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Idx { dataset } => write!(f, "{dataset}"),
            DataSource::Cifar10 => f.write_str("cifar10"),
            DataSource::Folder { config } => write!(f, "{}", config.root.display()),
        }
    }
}

/// What a checkpoint records of its training data: where it came from, the image shape and
/// the class names (which `sample` uses to draw a class by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// The source, with its options.
    pub source: DataSource,
    /// `[channels, rows, cols]` of each image.
    pub image_dims: [usize; 3],
    /// Number of training images.
    pub count: usize,
    /// The class names, by label (empty: unlabelled).
    pub class_names: Vec<String>,
}

impl DataInfo {
    /// The record of `set` loaded from `source`.
    pub fn of(source: DataSource, set: &ImageSet) -> Self {
        Self {
            source,
            image_dims: set.image_dims(),
            count: set.count,
            class_names: set.class_names.clone(),
        }
    }

    /// The label of class `name`: a class name, or a label number below the class count.
    ///
    /// # Errors
    /// [`DataError::Invalid`] listing the class names.
    pub fn class_index(&self, name: &str) -> Result<usize, DataError> {
        if let Some(i) = self.class_names.iter().position(|n| n == name) {
            return Ok(i);
        }
        match name.parse::<usize>() {
            Ok(i) if i < self.class_names.len() => Ok(i),
            _ => Err(DataError::Invalid(format!(
                "no class '{name}': the classes are {}",
                self.class_names.join(", ")
            ))),
        }
    }
}
