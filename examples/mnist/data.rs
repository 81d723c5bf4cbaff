//! `train`'s data flags: a built-in data set, or a folder of your own images with its options.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use ddpm::data::{
    Background, Channels, DataSource, ImageFolderConfig, LabelSource, ResizeFilter, ResizeMode,
};

#[derive(Clone, Copy, ValueEnum)]
pub enum ChannelsArg {
    Grey,
    Rgb,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ResizeArg {
    /// Shorter side to --size, then the centre square.
    Crop,
    /// Both sides to --size (stretches non-square pictures).
    Exact,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FilterArg {
    Nearest,
    Linear,
    Cubic,
    Lanczos,
}

#[derive(Args, Clone)]
pub struct DataArgs {
    /// A built-in data set: mnist, fashion-mnist or cifar10 (found in --data-dir,
    /// $DDPM_DATA_DIR or ./data, else downloaded).
    #[arg(long, default_value = "mnist", conflicts_with = "data")]
    dataset: String,
    /// Train on a folder of your own PNG/JPEG pictures (searched recursively) instead.
    #[arg(long, value_name = "FOLDER")]
    data: Option<PathBuf>,
    /// With --data: the side of the square training images, in pixels.
    #[arg(long, default_value_t = 32, requires = "data")]
    size: usize,
    /// With --data: grey (1 channel) or rgb (3).
    #[arg(long, value_enum, default_value = "rgb", requires = "data")]
    channels: ChannelsArg,
    /// With --data: how pictures become squares.
    #[arg(long, value_enum, default_value = "crop", requires = "data")]
    resize: ResizeArg,
    /// With --data: the resampling filter.
    #[arg(long, value_enum, default_value = "linear", requires = "data")]
    filter: FilterArg,
    /// With --data: the colour under transparent pixels (white, black, grey, #rrggbb, r,g,b).
    #[arg(long, default_value = "white", requires = "data")]
    background: Background,
    /// With --data: class labels from `folders` (one sub-folder per class) or from a CSV file
    /// (with --label-column); none by default.
    #[arg(long, value_name = "folders|FILE.csv", requires = "data")]
    labels: Option<String>,
    /// With --labels FILE.csv: the column holding the class (the `file` column, or the
    /// first, names the picture).
    #[arg(long, default_value = "label")]
    label_column: String,
    /// With --data: leave out pictures that cannot be decoded (they are listed) instead of
    /// stopping at the first.
    #[arg(long, requires = "data")]
    skip_bad: bool,
}

impl DataArgs {
    /// The data source these flags describe.
    pub fn source(&self) -> Result<DataSource, ddpm::data::DataError> {
        let Some(root) = &self.data else {
            return DataSource::named(&self.dataset);
        };
        let labels = match self.labels.as_deref() {
            None | Some("none") => LabelSource::None,
            Some("folders") => LabelSource::Folders,
            Some(csv) => LabelSource::Csv {
                path: PathBuf::from(csv),
                column: self.label_column.clone(),
            },
        };
        let config = ImageFolderConfig::new(root, self.size)
            .with_channels(match self.channels {
                ChannelsArg::Grey => Channels::Grey,
                ChannelsArg::Rgb => Channels::Rgb,
            })
            .with_resize(match self.resize {
                ResizeArg::Crop => ResizeMode::CropShorter,
                ResizeArg::Exact => ResizeMode::Exact,
            })
            .with_filter(match self.filter {
                FilterArg::Nearest => ResizeFilter::Nearest,
                FilterArg::Linear => ResizeFilter::Triangle,
                FilterArg::Cubic => ResizeFilter::CatmullRom,
                FilterArg::Lanczos => ResizeFilter::Lanczos3,
            })
            .with_background(self.background)
            .with_labels(labels)
            .with_skip_bad(self.skip_bad);
        config.validate()?;
        Ok(DataSource::Folder { config })
    }
}
