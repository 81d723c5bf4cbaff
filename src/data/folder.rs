//! A folder of your own images as an [`ImageSet`]: every PNG and JPEG under it, decoded in
//! parallel, composited onto a background, resized and cropped to a square, held as bytes;
//! labels from the first folder level or from a CSV column; decoded once into a cache file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{Rgb, RgbImage};
use rayon::prelude::*;

use super::cache;
use super::folder_config::{Channels, ImageFolderConfig, LabelSource, MAX_CLASSES, ResizeMode};
use super::folder_report::{CacheStatus, FolderReport};
use super::listing::{class_names_of, list};
use super::{DataError, ImageSet};

/// The largest source picture decoded (width and height; 256 MiB as RGBA); larger files are
/// bad files.
const MAX_SOURCE_SIDE: u32 = 8192;

/// Images decoded at once (then appended to memory or to the cache file).
const CHUNK: usize = 512;

/// Composites `img` onto `bg`, resizes and crops it to `size`, and appends its channels.
/// Returns whether it had to be enlarged.
fn convert(img: image::DynamicImage, c: &ImageFolderConfig, out: &mut Vec<u8>) -> bool {
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let [br, bgc, bb] = c.background.0.map(u32::from);
    let mut rgb = RgbImage::new(w, h);
    for (dst, src) in rgb.pixels_mut().zip(rgba.pixels()) {
        let [r, g, b, a] = src.0.map(u32::from);
        // Rounded (c a + bg (255 - a)) / 255: exactly bg where a = 0, exactly c where a = 255.
        let mix = |fg: u32, bg: u32| ((fg * a + bg * (255 - a) + 127) / 255) as u8;
        *dst = Rgb([mix(r, br), mix(g, bgc), mix(b, bb)]);
    }
    let size = c.size as u32;
    let filter = c.filter.filter_type();
    let (enlarged, square) = match c.resize {
        ResizeMode::Exact => {
            let enlarged = w < size || h < size;
            let img = if (w, h) == (size, size) {
                rgb
            } else {
                image::imageops::resize(&rgb, size, size, filter)
            };
            (enlarged, img)
        }
        ResizeMode::CropShorter => {
            // The centre square of the picture, then resized: the same pixels as resizing the
            // shorter side and cropping, without ever allocating the resized long side (a
            // 16384 x 1 picture would need 16 million x 1024 pixels).
            let short = w.min(h);
            let (x0, y0) = ((w - short) / 2, (h - short) / 2);
            let square = image::imageops::crop_imm(&rgb, x0, y0, short, short).to_image();
            let img = if short == size {
                square
            } else {
                image::imageops::resize(&square, size, size, filter)
            };
            (short < size, img)
        }
    };
    match c.channels {
        Channels::Rgb => {
            for ch in 0..3 {
                out.extend(square.pixels().map(|p| p.0[ch]));
            }
        }
        Channels::Grey => out.extend(square.pixels().map(|p| {
            let [r, g, b] = p.0.map(u32::from);
            ((r * 299 + g * 587 + b * 114 + 500) / 1000) as u8
        })),
    }
    enlarged
}

/// Loads the images of `config.root`. With `cache` (a file path), the decoded bytes are
/// written there the first time and mapped from there later (seconds, and a set larger than
/// memory still trains); a cache made from other files or options, or damaged, is rebuilt
/// (the report says why).
///
/// # Errors
/// [`DataError::Invalid`] for a bad size, an empty folder, a folder without image files, no
/// labelled image, a CSV without the column, a CSV naming files that are not there, too many
/// classes; [`DataError::BadImage`] naming a file that cannot be decoded (unless
/// `skip_bad`); [`DataError::Io`] for unreadable folders or an unwritable cache.
pub fn load_image_folder(
    config: &ImageFolderConfig,
    cache: Option<&Path>,
) -> Result<(ImageSet, FolderReport), DataError> {
    let started = Instant::now();
    config.validate()?;
    let (listed, ignored) = list(&config.root)?;
    if listed.is_empty() {
        return Err(DataError::Invalid(format!(
            "{} holds no PNG or JPEG files ({ignored} other files): point \
             ImageFolderConfig::root at the folder of your pictures",
            config.root.display()
        )));
    }
    let fingerprint = cache::fingerprint(config, &listed)?;
    let mut status = CacheStatus::Off;
    if let Some(path) = cache {
        match cache::read(path, &fingerprint) {
            Ok((set, mut report)) => {
                report.ignored = ignored;
                report.seconds = started.elapsed().as_secs_f64();
                return Ok((set, report));
            }
            Err(why) => status = why,
        }
    }
    let (names, missing) = class_names_of(&listed, &config.labels)?;
    if !missing.is_empty() {
        return Err(DataError::Invalid(format!(
            "the label CSV names {} files that are not in {} (first: {}): fix the CSV or the \
             folder",
            missing.len(),
            config.root.display(),
            missing[0]
        )));
    }
    let labelled = !matches!(config.labels, LabelSource::None);
    let mut report = FolderReport {
        ignored,
        ..FolderReport::default()
    };
    let mut kept = Vec::with_capacity(listed.len());
    for (f, name) in listed.iter().zip(names) {
        match (labelled, name) {
            (true, None) => report.unlabelled.push(PathBuf::from(&f.rel)),
            (_, name) => kept.push((f, name)),
        }
    }
    if kept.is_empty() {
        return Err(DataError::Invalid(format!(
            "none of the {} images of {} has a label: with LabelSource::Folders put them in \
             one folder per class, with LabelSource::Csv list them in the CSV",
            listed.len(),
            config.root.display()
        )));
    }
    let class_names: Vec<String> = kept
        .iter()
        .filter_map(|(_, n)| n.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if class_names.len() > MAX_CLASSES {
        return Err(DataError::Invalid(format!(
            "{} classes: at most {MAX_CLASSES} are supported",
            class_names.len()
        )));
    }
    let index: BTreeMap<&str, u8> = class_names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u8))
        .collect();
    let per_image = config.channels.count() * config.size * config.size;
    let mut sink = cache::Sink::new(cache, per_image, kept.len())?;
    let mut labels = Vec::with_capacity(kept.len());
    for chunk in kept.chunks(CHUNK) {
        let decoded: Vec<Result<(Vec<u8>, bool), String>> = chunk
            .par_iter()
            .map(|(f, _)| {
                let path = config.root.join(&f.rel);
                let img =
                    crate::images::read_image_bounded(&path, (MAX_SOURCE_SIDE, MAX_SOURCE_SIDE))?;
                let mut out = Vec::with_capacity(per_image);
                let enlarged = convert(img, config, &mut out);
                Ok((out, enlarged))
            })
            .collect();
        for ((f, name), result) in chunk.iter().zip(decoded) {
            match result {
                Ok((bytes, enlarged)) => {
                    sink.push(&bytes)?;
                    report.enlarged += usize::from(enlarged);
                    report.files.push(PathBuf::from(&f.rel));
                    labels.push(name.as_deref().map_or(0, |n| index[n]));
                }
                Err(reason) if config.skip_bad => {
                    report.skipped.push((PathBuf::from(&f.rel), reason));
                }
                Err(reason) => {
                    return Err(DataError::BadImage {
                        path: config.root.join(&f.rel),
                        reason,
                    });
                }
            }
        }
    }
    if report.files.is_empty() {
        return Err(DataError::Invalid(format!(
            "none of the {} image files of {} could be decoded",
            kept.len(),
            config.root.display()
        )));
    }
    let meta = cache::Header {
        fingerprint,
        count: report.files.len(),
        channels: config.channels.count(),
        size: config.size,
        labels,
        class_names,
        files: report
            .files
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
        skipped: report
            .skipped
            .iter()
            .map(|(p, w)| (p.to_string_lossy().into_owned(), w.clone()))
            .collect(),
        unlabelled: report
            .unlabelled
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
        enlarged: report.enlarged,
        pixels_crc32: 0,
    };
    let (set, written) = sink.finish(meta)?;
    report.cache = match (written, status) {
        (false, _) => CacheStatus::Off,
        (true, CacheStatus::Off | CacheStatus::Missing) => CacheStatus::Written,
        (true, CacheStatus::Rebuilt(why)) => CacheStatus::Rebuilt(why),
        (true, other) => other,
    };
    report.seconds = started.elapsed().as_secs_f64();
    Ok((set, report))
}
