//! Pictures of samples: PNG grids, one PNG per sample, animated GIFs of the denoising (the
//! loss plot lives in [`crate::plot`]). Every file is written atomically.

use std::io::Cursor;
use std::path::Path;

use burn::tensor::Tensor;
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, GrayImage, ImageFormat, Luma, Rgb, RgbImage, RgbaImage};
use thiserror::Error;

use crate::fsutil::write_atomic;

/// An image could not be encoded or written.
#[derive(Debug, Error)]
pub enum ImageError {
    /// Encoding failed.
    #[error("cannot encode {path}: {reason}")]
    Encode {
        /// Target file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// Target file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The tensor is not a batch of 1- or 3-channel images.
    #[error("expected images [n, 1 or 3, h, w], got {0:?}")]
    Shape(Vec<usize>),
    /// The picture would be larger than a PNG of this library may be.
    #[error(
        "a picture of {width} x {height} pixels is larger than {MAX_SIDE} pixels a side or \
         {MAX_PIXELS} pixels in all: draw fewer or smaller images"
    )]
    TooLarge {
        /// Width asked for (saturated).
        width: usize,
        /// Height asked for (saturated).
        height: usize,
    },
}

/// The longest side of a picture written or read.
pub const MAX_SIDE: usize = 1 << 15;
/// The most pixels of a picture written or read.
pub const MAX_PIXELS: usize = 1 << 26;

/// `width x height` within [`MAX_SIDE`] and [`MAX_PIXELS`], as `u32`s.
fn picture_size(width: usize, height: usize) -> Result<(u32, u32), ImageError> {
    let fits = width <= MAX_SIDE
        && height <= MAX_SIDE
        && width.checked_mul(height).is_some_and(|p| p <= MAX_PIXELS);
    match (fits, u32::try_from(width), u32::try_from(height)) {
        (true, Ok(w), Ok(h)) => Ok((w, h)),
        _ => Err(ImageError::TooLarge { width, height }),
    }
}

/// Decodes the image file `path` (any format the `image` crate reads here: PNG, GIF),
/// reading its size from the header first: one larger than `max` (width, height) is an error
/// before any pixel is decoded, and the decoder's allocations are bounded too.
///
/// # Errors
/// A message naming what is wrong: unreadable, not an image, or its size.
pub fn read_image_bounded(path: &Path, max: (u32, u32)) -> Result<image::DynamicImage, String> {
    let open = || {
        image::ImageReader::open(path)
            .map_err(|e| e.to_string())?
            .with_guessed_format()
            .map_err(|e| e.to_string())
    };
    let (w, h) = open()?.into_dimensions().map_err(|e| e.to_string())?;
    if w > max.0 || h > max.1 {
        return Err(format!(
            "the image is {w}x{h}, larger than the {}x{} expected here",
            max.0, max.1
        ));
    }
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max.0);
    limits.max_image_height = Some(max.1);
    limits.max_alloc =
        Some((u64::from(max.0) * u64::from(max.1) * 16).clamp(1 << 20, (MAX_PIXELS as u64) * 16));
    reader.limits(limits);
    reader.decode().map_err(|e| e.to_string())
}

/// A batch of images as bytes, `[n, c, h, w]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBatch {
    /// Pixels in `0..=255`.
    pub pixels: Vec<u8>,
    /// `[n, c, h, w]`.
    pub dims: [usize; 4],
}

impl ImageBatch {
    /// Maps a tensor in `[-1, 1]` to bytes (values outside are clamped).
    ///
    /// # Errors
    /// [`ImageError::Shape`] when the channel count is not 1 or 3.
    pub fn from_tensor(x: Tensor<4>) -> Result<Self, ImageError> {
        let dims = x.dims();
        if dims[1] != 1 && dims[1] != 3 {
            return Err(ImageError::Shape(dims.to_vec()));
        }
        let pixels = x
            .into_data()
            .convert::<f32>()
            .iter::<f32>()
            .map(|v| (((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round()) as u8)
            .collect();
        Ok(Self { pixels, dims })
    }

    fn pixel(&self, i: usize, y: usize, x: usize) -> [u8; 3] {
        let [_, c, h, w] = self.dims;
        let at = |ch: usize| self.pixels[((i * c + ch) * h + y) * w + x];
        if c == 1 {
            [at(0); 3]
        } else {
            [at(0), at(1), at(2)]
        }
    }

    /// Image `i` as a picture.
    ///
    /// # Errors
    /// [`ImageError::TooLarge`] beyond [`MAX_SIDE`] or [`MAX_PIXELS`];
    /// [`ImageError::Shape`] for an index outside the batch.
    pub fn image(&self, i: usize) -> Result<RgbImage, ImageError> {
        let [n, _, h, w] = self.dims;
        if i >= n {
            return Err(ImageError::Shape(self.dims.to_vec()));
        }
        let (wu, hu) = picture_size(w, h)?;
        Ok(RgbImage::from_fn(wu, hu, |x, y| {
            Rgb(self.pixel(i, y as usize, x as usize))
        }))
    }

    /// All images tiled `cols` per row with a `pad`-pixel border, each pixel enlarged `scale`
    /// times.
    ///
    /// # Errors
    /// [`ImageError::TooLarge`] when the grid would exceed [`MAX_SIDE`] or [`MAX_PIXELS`].
    pub fn grid(&self, cols: usize, pad: usize, scale: usize) -> Result<RgbImage, ImageError> {
        let [n, _, h, w] = self.dims;
        let cols = cols.clamp(1, n.max(1));
        let rows = n.div_ceil(cols);
        let side = |count: usize, len: usize| {
            len.checked_mul(scale)
                .and_then(|v| v.checked_add(pad))
                .and_then(|cell| Some((cell, count.checked_mul(cell)?.checked_add(pad)?)))
        };
        let (Some((cw, width)), Some((ch, height))) = (side(cols, w), side(rows, h)) else {
            return Err(ImageError::TooLarge {
                width: usize::MAX,
                height: usize::MAX,
            });
        };
        let (wu, hu) = picture_size(width, height)?;
        let mut img = RgbImage::from_pixel(wu, hu, Rgb([40, 40, 40]));
        for i in 0..n {
            let (ox, oy) = (pad + (i % cols) * cw, pad + (i / cols) * ch);
            for y in 0..h * scale {
                for x in 0..w * scale {
                    img.put_pixel(
                        (ox + x) as u32,
                        (oy + y) as u32,
                        Rgb(self.pixel(i, y / scale, x / scale)),
                    );
                }
            }
        }
        Ok(img)
    }
}

pub(crate) fn encode_png(img: &image::DynamicImage, path: &Path) -> Result<(), ImageError> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png)
        .map_err(|e| ImageError::Encode {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    write_atomic(path, buf.get_ref()).map_err(|source| ImageError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Writes a grid of `x` (`[n, c, h, w]` in `[-1, 1]`) to a PNG file.
///
/// # Errors
/// Encoding or I/O failures, or a tensor that is not a batch of images.
pub fn save_grid(x: Tensor<4>, path: &Path, cols: usize, scale: usize) -> Result<(), ImageError> {
    let batch = ImageBatch::from_tensor(x)?;
    encode_png(&batch.grid(cols, 2, scale)?.into(), path)
}

/// Writes every image of `x` to `dir/000000.png`, `dir/000001.png`, ... (grayscale for one
/// channel) and returns how many were written.
///
/// # Errors
/// Encoding or I/O failures.
pub fn save_each(x: Tensor<4>, dir: &Path, first_index: usize) -> Result<usize, ImageError> {
    let batch = ImageBatch::from_tensor(x)?;
    let [n, c, h, w] = batch.dims;
    for i in 0..n {
        let path = dir.join(format!("{:06}.png", first_index + i));
        let img: image::DynamicImage = if c == 1 {
            let (wu, hu) = picture_size(w, h)?;
            GrayImage::from_fn(wu, hu, |x, y| {
                Luma([batch.pixel(i, y as usize, x as usize)[0]])
            })
            .into()
        } else {
            batch.image(i)?.into()
        };
        encode_png(&img, &path)?;
    }
    Ok(n)
}

/// Writes an animated GIF whose frames are grids of each tensor in `frames`, each shown
/// `delay_ms`, the last one held 2 seconds; loops forever.
///
/// # Errors
/// Encoding or I/O failures.
pub fn save_gif(
    frames: &[Tensor<4>],
    path: &Path,
    cols: usize,
    scale: usize,
    delay_ms: u32,
) -> Result<(), ImageError> {
    let enc_err = |e: image::ImageError| ImageError::Encode {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut buf = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut buf, 10);
        encoder.set_repeat(Repeat::Infinite).map_err(enc_err)?;
        for (k, f) in frames.iter().enumerate() {
            let grid = ImageBatch::from_tensor(f.clone())?.grid(cols, 2, scale)?;
            let rgba: RgbaImage = image::DynamicImage::from(grid).into_rgba8();
            let delay = if k + 1 == frames.len() {
                2000
            } else {
                delay_ms
            };
            encoder
                .encode_frame(Frame::from_parts(
                    rgba,
                    0,
                    0,
                    Delay::from_numer_denom_ms(delay, 1),
                ))
                .map_err(enc_err)?;
        }
    }
    write_atomic(path, &buf).map_err(|source| ImageError::Io {
        path: path.display().to_string(),
        source,
    })
}

pub use crate::plot::plot_loss;

#[cfg(test)]
mod tests {
    use super::*;

    /// Pictures beyond the bounds, or whose size overflows, are errors (they were `as u32`
    /// truncations); a picture at the bound is drawn.
    #[test]
    fn oversized_pictures_are_errors() {
        let tall = ImageBatch {
            pixels: vec![0; 40_000],
            dims: [1, 1, 40_000, 1],
        };
        assert!(matches!(
            tall.grid(1, 2, 1),
            Err(ImageError::TooLarge { .. })
        ));
        assert!(matches!(tall.image(0), Err(ImageError::TooLarge { .. })));
        let small = ImageBatch {
            pixels: vec![7; 4],
            dims: [1, 1, 2, 2],
        };
        assert!(matches!(
            small.grid(1, 2, usize::MAX),
            Err(ImageError::TooLarge { .. })
        ));
        assert!(matches!(small.image(1), Err(ImageError::Shape(_))));
        let g = small.grid(1, 2, 3).unwrap();
        assert_eq!(g.dimensions(), (2 * 3 + 4, 2 * 3 + 4));
        assert_eq!(g.get_pixel(2, 2).0, [7, 7, 7]);
    }
}
