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
    pub fn image(&self, i: usize) -> RgbImage {
        let [_, _, h, w] = self.dims;
        RgbImage::from_fn(w as u32, h as u32, |x, y| {
            Rgb(self.pixel(i, y as usize, x as usize))
        })
    }

    /// All images tiled `cols` per row with a `pad`-pixel border, each pixel enlarged `scale`
    /// times.
    pub fn grid(&self, cols: usize, pad: usize, scale: usize) -> RgbImage {
        let [n, _, h, w] = self.dims;
        let cols = cols.clamp(1, n.max(1));
        let rows = n.div_ceil(cols);
        let (cw, ch) = (w * scale + pad, h * scale + pad);
        let mut img = RgbImage::from_pixel(
            (cols * cw + pad) as u32,
            (rows * ch + pad) as u32,
            Rgb([40, 40, 40]),
        );
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
        img
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
    encode_png(&batch.grid(cols, 2, scale).into(), path)
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
            GrayImage::from_fn(w as u32, h as u32, |x, y| {
                Luma([batch.pixel(i, y as usize, x as usize)[0]])
            })
            .into()
        } else {
            batch.image(i).into()
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
            let grid = ImageBatch::from_tensor(f.clone())?.grid(cols, 2, scale);
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
