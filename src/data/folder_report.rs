//! What loading a folder did: [`FolderReport`] (files used, skipped, unlabelled, enlarged)
//! and [`CacheStatus`].

use std::fmt;
use std::path::PathBuf;

/// What happened to the decoded cache of a load.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CacheStatus {
    /// No cache file was asked for.
    #[default]
    Off,
    /// There was none yet (an intermediate state; a finished load says `Written`).
    Missing,
    /// Mapped from the cache: nothing decoded.
    Loaded,
    /// Decoded and written to the cache.
    Written,
    /// The cache was from other files or options, or damaged (why): decoded and rewritten.
    Rebuilt(String),
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheStatus::Off => f.write_str("decoded, no cache"),
            CacheStatus::Missing => f.write_str("no cache yet"),
            CacheStatus::Loaded => f.write_str("mapped from the decoded cache"),
            CacheStatus::Written => f.write_str("decoded and cached"),
            CacheStatus::Rebuilt(why) => write!(f, "decoded and re-cached: the cache {why}"),
        }
    }
}

/// What loading a folder did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FolderReport {
    /// The image files used, in the order of the set (relative to the root).
    pub files: Vec<PathBuf>,
    /// Files that could not be decoded and were left out (only with `skip_bad`), and why.
    pub skipped: Vec<(PathBuf, String)>,
    /// Image files left out because they have no label (not in the CSV, or directly in the
    /// root with folder labels).
    pub unlabelled: Vec<PathBuf>,
    /// Files ignored because they are not PNG or JPEG.
    pub ignored: usize,
    /// Images smaller than the size on the side that is resized to it: they were enlarged by
    /// the filter (blurry; a warning, not an error).
    pub enlarged: usize,
    /// Whether the cache was used, written, rebuilt or not asked for.
    pub cache: CacheStatus,
    /// Seconds spent (listing, decoding or mapping, checking).
    pub seconds: f64,
}

impl FolderReport {
    /// Images per second of this load.
    pub fn images_per_s(&self) -> f64 {
        self.files.len() as f64 / self.seconds.max(1e-9)
    }
}

impl fmt::Display for FolderReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} images in {:.2} s ({:.0} images/s, {})",
            self.files.len(),
            self.seconds,
            self.images_per_s(),
            self.cache
        )?;
        if !self.skipped.is_empty() {
            write!(f, "\nwarning: {} bad files left out:", self.skipped.len())?;
            for (p, why) in self.skipped.iter().take(10) {
                write!(f, "\n  {}: {why}", p.display())?;
            }
            if self.skipped.len() > 10 {
                write!(f, "\n  ... and {} more", self.skipped.len() - 10)?;
            }
        }
        if !self.unlabelled.is_empty() {
            write!(
                f,
                "\nwarning: {} images have no label and were left out (first: {})",
                self.unlabelled.len(),
                self.unlabelled[0].display()
            )?;
        }
        if self.enlarged > 0 {
            write!(
                f,
                "\nwarning: {} images were smaller than the size and were enlarged (blurry)",
                self.enlarged
            )?;
        }
        if self.ignored > 0 {
            write!(
                f,
                "\n{} files that are not PNG or JPEG ignored",
                self.ignored
            )?;
        }
        Ok(())
    }
}
