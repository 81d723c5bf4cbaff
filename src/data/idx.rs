//! The IDX format of MNIST and Fashion-MNIST: gzip or raw files, bounded in size, parsed
//! into bytes and labels.

use std::io::Read;
use std::path::Path;

use super::DataError;

pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The largest IDX file read, compressed or not (MNIST's training images are 47 MB).
pub const MAX_IDX_BYTES: u64 = 256 << 20;

/// Reads a file of at most [`MAX_IDX_BYTES`], transparently decompressing gzip to at most as
/// many bytes (a gzip bomb is an error, not an allocation).
pub(crate) fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, DataError> {
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
