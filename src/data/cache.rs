//! The decoded cache of an image folder: the bytes of every image, written once, mapped later.
//!
//! Layout: `DDPMIMG1` (8 bytes), the pixel length and the header length (little-endian
//! `u64` each), zeros up to byte 4096, the pixels (page-aligned, so the map is a straight
//! window), then the header as JSON: the fingerprint of the source (every file's path, size
//! and modification time, the label CSV's, and the options), sizes, labels, class names, the
//! file list and a CRC-32 of the pixels. A cache whose fingerprint, sizes or checksum do not
//! match is rebuilt, never trusted.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::folder_config::{ImageFolderConfig, LabelSource, MAX_CLASSES};
use super::folder_report::{CacheStatus, FolderReport};
use super::listing::Listed;
use super::{DataError, ImageSet, Pixels};

/// The first eight bytes of a cache file.
pub const CACHE_MAGIC: &[u8; 8] = b"DDPMIMG1";

/// Where the pixels start.
const PIXELS_AT: u64 = 4096;

/// The largest header read (labels and file names of millions of images fit).
const MAX_HEADER: u64 = 256 << 20;

/// The header of a cache file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Header {
    pub fingerprint: String,
    pub count: usize,
    pub channels: usize,
    pub size: usize,
    pub labels: Vec<u8>,
    pub class_names: Vec<String>,
    pub files: Vec<String>,
    pub skipped: Vec<(String, String)>,
    pub unlabelled: Vec<String>,
    pub enlarged: usize,
    pub pixels_crc32: u32,
}

impl Header {
    /// The set of these sizes and labels over `pixels`.
    fn into_set(self, pixels: Pixels) -> ImageSet {
        ImageSet {
            pixels,
            labels: self.labels,
            count: self.count,
            channels: self.channels,
            rows: self.size,
            cols: self.size,
            class_names: self.class_names,
        }
    }
}

/// An MD5 of the options and of every source file's path, size and time.
pub(crate) fn fingerprint(
    config: &ImageFolderConfig,
    listed: &[Listed],
) -> Result<String, DataError> {
    let mut h = Md5::new();
    // The root itself is not hashed: a moved folder with the same files keeps its cache.
    let options = ImageFolderConfig {
        root: PathBuf::new(),
        ..config.clone()
    };
    h.update(serde_json::to_vec(&options).unwrap_or_default());
    if let LabelSource::Csv { path, .. } = &config.labels {
        let m = std::fs::metadata(path).map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })?;
        h.update(m.len().to_le_bytes());
        let t = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        h.update(t.to_le_bytes());
    }
    for f in listed {
        h.update(f.rel.as_bytes());
        h.update([0]);
        h.update(f.len.to_le_bytes());
        h.update(f.modified_ns.to_le_bytes());
    }
    Ok(format!("{:x}", h.finalize()))
}

fn rebuilt(why: impl Into<String>) -> CacheStatus {
    CacheStatus::Rebuilt(why.into())
}

/// The cached set, or why the cache cannot be used.
pub(crate) fn read(
    path: &Path,
    fingerprint: &str,
) -> Result<(ImageSet, FolderReport), CacheStatus> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CacheStatus::Missing),
        Err(e) => return Err(rebuilt(format!("could not be read ({e})"))),
    };
    let damaged = |what: &str| rebuilt(format!("was damaged ({what})"));
    let mut head = [0u8; 24];
    file.read_exact(&mut head)
        .map_err(|_| damaged("shorter than its header"))?;
    if &head[..8] != CACHE_MAGIC {
        return Err(damaged("not a ddpm image cache"));
    }
    let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or_default());
    let (pixel_len, header_len) = (word(8), word(16));
    let file_len = file.metadata().map_err(|_| damaged("no size"))?.len();
    let expected = PIXELS_AT
        .checked_add(pixel_len)
        .and_then(|v| v.checked_add(header_len));
    if header_len > MAX_HEADER || expected != Some(file_len) {
        return Err(damaged("its lengths disagree with the file's size"));
    }
    file.seek(SeekFrom::Start(PIXELS_AT + pixel_len))
        .map_err(|_| damaged("seek"))?;
    let mut json = vec![0u8; header_len as usize];
    file.read_exact(&mut json).map_err(|_| damaged("header"))?;
    let mut header: Header =
        serde_json::from_slice(&json).map_err(|_| damaged("its header is not valid"))?;
    if header.fingerprint != fingerprint {
        return Err(rebuilt("was made from other files or options"));
    }
    let per_image = header
        .channels
        .checked_mul(header.size)
        .and_then(|v| v.checked_mul(header.size));
    let total = per_image.and_then(|v| v.checked_mul(header.count));
    let labels_ok = header.labels.len() == header.count
        && header.files.len() == header.count
        && header.class_names.len() <= MAX_CLASSES
        && header
            .labels
            .iter()
            .all(|&l| (l as usize) < header.class_names.len().max(1));
    if total != Some(pixel_len as usize) || !matches!(header.channels, 1 | 3) || !labels_ok {
        return Err(damaged("its sizes or labels disagree"));
    }
    // Safety: the map is read-only and the file is ours (written by `Sink` with an atomic
    // rename); a file truncated under us by another program would fault, as any map would.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| rebuilt(format!("could not be mapped ({e})")))?;
    let map = Arc::new(map);
    let pixels = Pixels::mapped(map, PIXELS_AT as usize, pixel_len as usize)
        .ok_or_else(|| damaged("short"))?;
    if crc32fast::hash(&pixels) != header.pixels_crc32 {
        return Err(damaged("its pixels do not match their checksum"));
    }
    let report = FolderReport {
        files: std::mem::take(&mut header.files)
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        skipped: std::mem::take(&mut header.skipped)
            .into_iter()
            .map(|(p, w)| (PathBuf::from(p), w))
            .collect(),
        unlabelled: std::mem::take(&mut header.unlabelled)
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        ignored: 0,
        enlarged: header.enlarged,
        cache: CacheStatus::Loaded,
        seconds: 0.0,
    };
    Ok((header.into_set(pixels), report))
}

/// Where decoded images go: memory, or a temporary cache file renamed into place at the end.
pub(crate) struct Sink {
    memory: Vec<u8>,
    file: Option<(File, PathBuf, PathBuf)>,
    crc: crc32fast::Hasher,
    len: u64,
}

impl Sink {
    pub fn new(cache: Option<&Path>, per_image: usize, count: usize) -> Result<Self, DataError> {
        let file = match cache {
            None => None,
            Some(path) => {
                let err = |source| DataError::Io {
                    path: path.to_path_buf(),
                    source,
                };
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(err)?;
                }
                let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
                let mut f = File::create(&tmp).map_err(err)?;
                let mut head = vec![0u8; PIXELS_AT as usize];
                head[..8].copy_from_slice(CACHE_MAGIC);
                f.write_all(&head).map_err(err)?;
                Some((f, tmp, path.to_path_buf()))
            }
        };
        let memory = if file.is_none() {
            Vec::with_capacity(per_image.saturating_mul(count))
        } else {
            Vec::new()
        };
        Ok(Self {
            memory,
            file,
            crc: crc32fast::Hasher::new(),
            len: 0,
        })
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<(), DataError> {
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        match &mut self.file {
            None => self.memory.extend_from_slice(bytes),
            Some((f, tmp, _)) => {
                let r = f.write_all(bytes);
                if let Err(source) = r {
                    let _ = std::fs::remove_file(&*tmp);
                    return Err(DataError::Io {
                        path: tmp.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The set, and whether it was written to (and is mapped from) the cache.
    pub fn finish(self, mut header: Header) -> Result<(ImageSet, bool), DataError> {
        header.pixels_crc32 = self.crc.finalize();
        let Some((mut f, tmp, path)) = self.file else {
            return Ok((header.into_set(self.memory.into()), false));
        };
        let mut write = || -> std::io::Result<()> {
            let json = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
            f.write_all(&json)?;
            f.seek(SeekFrom::Start(8))?;
            f.write_all(&self.len.to_le_bytes())?;
            f.write_all(&(json.len() as u64).to_le_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(source) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(DataError::Io { path, source });
        }
        match read(&path, &header.fingerprint) {
            Ok((set, _)) => Ok((set, true)),
            Err(why) => Err(DataError::Invalid(format!(
                "the cache {} just written cannot be read back: {why}",
                path.display()
            ))),
        }
    }
}
