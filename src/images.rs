//! Pictures of samples: PNG grids, one PNG per sample, animated GIFs of the denoising, and a
//! plot of the loss curve. Every file is written atomically.

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

fn encode_png(img: &image::DynamicImage, path: &Path) -> Result<(), ImageError> {
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

/// Plots `(step, loss)` points (log-scale y) with their moving average to a PNG.
///
/// # Errors
/// Encoding or I/O failures.
pub fn plot_loss(points: &[(u64, f64)], path: &Path) -> Result<(), ImageError> {
    let (w, h, m) = (800u32, 400u32, 40i64);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let pts: Vec<(u64, f64)> = points
        .iter()
        .copied()
        .filter(|p| p.1.is_finite() && p.1 > 0.0)
        .collect();
    let axis = Rgb([0, 0, 0]);
    for x in m..(w as i64 - m) {
        img.put_pixel(x as u32, (h as i64 - m) as u32, axis);
    }
    for y in m..(h as i64 - m) {
        img.put_pixel(m as u32, y as u32, axis);
    }
    if pts.len() >= 2 {
        let (x0, x1) = (pts[0].0 as f64, pts[pts.len() - 1].0 as f64);
        let ly: Vec<f64> = pts.iter().map(|p| p.1.log10()).collect();
        let (lo, hi) = ly
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let hi = if hi - lo < 1e-9 { lo + 1.0 } else { hi };
        let px = |s: f64| m as f64 + (s - x0) / (x1 - x0).max(1.0) * (w as i64 - 2 * m) as f64;
        let py = |v: f64| (h as i64 - m) as f64 - (v - lo) / (hi - lo) * (h as i64 - 2 * m) as f64;
        let mut draw = |pts: &[(f64, f64)], color: Rgb<u8>| {
            for pair in pts.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) as usize).max(1);
                for k in 0..=n {
                    let t = k as f64 / n as f64;
                    let (x, y) = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
                    if x >= 0.0 && y >= 0.0 && (x as u32) < w && (y as u32) < h {
                        img.put_pixel(x as u32, y as u32, color);
                    }
                }
            }
        };
        let raw: Vec<(f64, f64)> = pts
            .iter()
            .zip(&ly)
            .map(|(p, l)| (px(p.0 as f64), py(*l)))
            .collect();
        draw(&raw, Rgb([170, 190, 230]));
        let window = (pts.len() / 50).max(1);
        let smooth: Vec<(f64, f64)> = (0..pts.len())
            .map(|i| {
                let s = i.saturating_sub(window);
                let avg = ly[s..=i].iter().sum::<f64>() / (i - s + 1) as f64;
                (px(pts[i].0 as f64), py(avg))
            })
            .collect();
        draw(&smooth, Rgb([200, 30, 30]));
    }
    encode_png(&img.into(), path)
}
