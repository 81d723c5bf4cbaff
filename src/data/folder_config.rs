//! What a folder of images becomes: [`ImageFolderConfig`] and its options (channels, resize,
//! filter, background, labels), validated before anything is read.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use image::imageops::FilterType;
use serde::{Deserialize, Serialize};

use super::DataError;

/// The largest side [`ImageFolderConfig::size`] may ask for (the paper's largest is 256).
pub const MAX_SIZE: usize = 1024;

/// The most classes a labelled folder may have (labels are held as bytes).
pub const MAX_CLASSES: usize = 256;

/// Colour channels of the loaded images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Channels {
    /// One channel: the luma `(299 R + 587 G + 114 B) / 1000` of the composited colour
    /// (exactly the grey value of a grey image).
    Grey,
    /// Three channels, red, green, blue.
    #[default]
    Rgb,
}

impl Channels {
    /// 1 or 3.
    pub fn count(self) -> usize {
        match self {
            Channels::Grey => 1,
            Channels::Rgb => 3,
        }
    }
}

/// How a picture becomes a `size x size` square.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// The centre square of the picture (its shorter side), resized to `size x size`: the
    /// aspect kept, the longer side cropped (torchvision's `Resize(size)` + `CenterCrop(size)`,
    /// cropping first).
    #[default]
    CropShorter,
    /// Both sides resized to `size` (a non-square picture is stretched).
    Exact,
}

/// The resampling filter (the `image` crate's filters, scaled for downsampling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeFilter {
    /// Nearest neighbour.
    Nearest,
    /// Linear (bilinear; antialiased when shrinking).
    #[default]
    Triangle,
    /// Cubic (Catmull-Rom).
    CatmullRom,
    /// Lanczos with window 3.
    Lanczos3,
}

impl ResizeFilter {
    pub(crate) fn filter_type(self) -> FilterType {
        match self {
            ResizeFilter::Nearest => FilterType::Nearest,
            ResizeFilter::Triangle => FilterType::Triangle,
            ResizeFilter::CatmullRom => FilterType::CatmullRom,
            ResizeFilter::Lanczos3 => FilterType::Lanczos3,
        }
    }
}

/// The colour that transparent pixels are composited onto (alpha is never dropped: a
/// transparent pixel's colour is arbitrary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Background(pub [u8; 3]);

impl Default for Background {
    fn default() -> Self {
        Background([255, 255, 255])
    }
}

/// Parses `white`, `black`, `grey`/`gray`, `#rrggbb` or `r,g,b` (0-255 each).
impl FromStr for Background {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            DataError::Invalid(format!(
                "background '{s}': give white, black, grey, #rrggbb or r,g,b"
            ))
        };
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "white" => return Ok(Background([255; 3])),
            "black" => return Ok(Background([0; 3])),
            "grey" | "gray" => return Ok(Background([128; 3])),
            _ => {}
        }
        if let Some(hex) = t.strip_prefix('#') {
            if hex.len() != 6 || !hex.is_ascii() {
                return Err(bad());
            }
            let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad());
            return Ok(Background([byte(0)?, byte(2)?, byte(4)?]));
        }
        let parts: Vec<&str> = t.split(',').map(str::trim).collect();
        if parts.len() != 3 {
            return Err(bad());
        }
        let byte = |p: &str| p.parse::<u8>().map_err(|_| bad());
        Ok(Background([
            byte(parts[0])?,
            byte(parts[1])?,
            byte(parts[2])?,
        ]))
    }
}

impl fmt::Display for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r, g, b] = self.0;
        write!(f, "#{r:02x}{g:02x}{b:02x}")
    }
}

/// Where the class labels of a folder come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LabelSource {
    /// No labels (every label 0, no class names).
    #[default]
    None,
    /// The first folder level below the root names the class (the ImageFolder convention):
    /// class names sorted, label = index; images directly in the root are left out.
    Folders,
    /// A CSV file with a header row: the column `file` (or the first column) holds paths
    /// relative to the root (or bare file names), `column` the class; class names sorted.
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// The header of the label column.
        column: String,
    },
}

/// A folder of images to train on.
///
/// ```no_run
/// use ddpm::data::{ImageFolderConfig, LabelSource, load_image_folder};
/// let config = ImageFolderConfig::new("my-pictures", 32)
///     .with_labels(LabelSource::Folders);
/// let (set, report) = load_image_folder(&config, Some("runs/mine/data-cache.bin".as_ref()))?;
/// println!("{report}");
/// assert_eq!(set.image_dims(), [3, 32, 32]);
/// # Ok::<(), ddpm::data::DataError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageFolderConfig {
    /// The folder, searched recursively (files ending in `.png`, `.jpg`, `.jpeg` in any case;
    /// other files ignored; symbolic links to folders not followed).
    pub root: PathBuf,
    /// The side of the square images produced (1 to [`MAX_SIZE`]).
    pub size: usize,
    /// Grey or RGB.
    #[serde(default)]
    pub channels: Channels,
    /// Crop or stretch.
    #[serde(default)]
    pub resize: ResizeMode,
    /// The resampling filter.
    #[serde(default)]
    pub filter: ResizeFilter,
    /// The colour under transparent pixels.
    #[serde(default)]
    pub background: Background,
    /// Where labels come from.
    #[serde(default)]
    pub labels: LabelSource,
    /// Leave out files that cannot be decoded (listed in the report) instead of failing.
    #[serde(default)]
    pub skip_bad: bool,
}

impl ImageFolderConfig {
    /// RGB `size x size` images of `root`, shorter side resized then centre-cropped, linear
    /// filter, on white, unlabelled, failing on a bad file.
    pub fn new(root: impl Into<PathBuf>, size: usize) -> Self {
        Self {
            root: root.into(),
            size,
            channels: Channels::default(),
            resize: ResizeMode::default(),
            filter: ResizeFilter::default(),
            background: Background::default(),
            labels: LabelSource::default(),
            skip_bad: false,
        }
    }

    /// With these channels.
    pub fn with_channels(mut self, channels: Channels) -> Self {
        self.channels = channels;
        self
    }

    /// With this resize mode.
    pub fn with_resize(mut self, resize: ResizeMode) -> Self {
        self.resize = resize;
        self
    }

    /// With this filter.
    pub fn with_filter(mut self, filter: ResizeFilter) -> Self {
        self.filter = filter;
        self
    }

    /// On this background.
    pub fn with_background(mut self, background: Background) -> Self {
        self.background = background;
        self
    }

    /// With these labels.
    pub fn with_labels(mut self, labels: LabelSource) -> Self {
        self.labels = labels;
        self
    }

    /// Skipping files that cannot be decoded.
    pub fn with_skip_bad(mut self, skip_bad: bool) -> Self {
        self.skip_bad = skip_bad;
        self
    }

    /// Checks the size.
    ///
    /// # Errors
    /// [`DataError::Invalid`] for a size of 0 or above [`MAX_SIZE`].
    pub fn validate(&self) -> Result<(), DataError> {
        if self.size == 0 || self.size > MAX_SIZE {
            return Err(DataError::Invalid(format!(
                "ImageFolderConfig::size is {}: give a side from 1 to {MAX_SIZE} pixels (32 for \
                 CIFAR-10-sized models)",
                self.size
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backgrounds_parse() {
        assert_eq!("white".parse::<Background>().unwrap().0, [255; 3]);
        assert_eq!("#ff8000".parse::<Background>().unwrap().0, [255, 128, 0]);
        assert_eq!("1, 2,3".parse::<Background>().unwrap().0, [1, 2, 3]);
        for bad in ["", "#ff80", "1,2", "300,0,0", "blue-ish", "#ffé000"] {
            assert!(bad.parse::<Background>().is_err(), "{bad}");
        }
    }
}
