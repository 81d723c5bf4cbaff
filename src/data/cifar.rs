//! CIFAR-10, the binary version (Krizhevsky 2009): `data_batch_1.bin` ... `data_batch_5.bin`
//! and `test_batch.bin`, records of 3,073 bytes (the label, then 1,024 red, 1,024 green and
//! 1,024 blue bytes, each 32x32 row-major: already the layout of [`ImageSet`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataError, ImageSet, Split, search_roots};

/// The class names, by label.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The published MD5 sum of `cifar-10-binary.tar.gz`.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";

/// The archive's name and where it is published.
const ARCHIVE: &str = "cifar-10-binary.tar.gz";
#[cfg(feature = "download")]
const URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";

/// Bytes of one record: the label and 3 x 32 x 32 pixels.
const RECORD: usize = 1 + 3 * 32 * 32;

/// The most records one file may hold (the published files hold 10,000).
const MAX_RECORDS: usize = 60_000;

/// The folder the archive unpacks into.
const FOLDER: &str = "cifar-10-batches-bin";

fn split_files(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_string()],
    }
}

/// Reads CIFAR-10 binary files into one set (in the order given).
///
/// # Errors
/// [`DataError::Io`] for an unreadable file, [`DataError::Corrupt`] for a size that is not a
/// whole number of records (or too large) or a label above 9.
pub fn cifar10_from_files(files: &[PathBuf]) -> Result<ImageSet, DataError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in files {
        let corrupt = |reason: String| DataError::Corrupt {
            path: path.clone(),
            reason,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| {
                f.take((RECORD * MAX_RECORDS + 1) as u64)
                    .read_to_end(&mut bytes)
            })
            .map_err(|source| DataError::Io {
                path: path.clone(),
                source,
            })?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 || bytes.len() > RECORD * MAX_RECORDS {
            return Err(corrupt(format!(
                "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (at most \
                 {MAX_RECORDS})",
                bytes.len()
            )));
        }
        pixels.reserve(bytes.len() / RECORD * (RECORD - 1));
        for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
            if record[0] >= 10 {
                return Err(corrupt(format!(
                    "record {i} has label {}: CIFAR-10 labels are 0-9",
                    record[0]
                )));
            }
            labels.push(record[0]);
            pixels.extend_from_slice(&record[1..]);
        }
    }
    Ok(ImageSet {
        count: labels.len(),
        pixels: pixels.into(),
        labels,
        channels: 3,
        rows: 32,
        cols: 32,
        class_names: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    })
}

/// The folder of `root` holding all the files of `split`.
fn find(root: &Path, split: Split) -> Option<PathBuf> {
    let names = split_files(split);
    [
        root.join("cifar10").join(FOLDER),
        root.join("cifar10"),
        root.join(FOLDER),
        root.to_path_buf(),
    ]
    .into_iter()
    .find(|dir| names.iter().all(|n| dir.join(n).is_file()))
}

/// Unpacks the six batch files of the archive (MD5-checked first) into `dir/cifar-10-batches-bin`;
/// entries are matched by file name, never written where the archive says.
fn unpack(archive: &Path, dir: &Path) -> Result<PathBuf, DataError> {
    let actual = super::locate::md5_of(archive)?;
    if actual != CIFAR10_MD5 {
        return Err(DataError::LocalChecksum {
            path: archive.to_path_buf(),
            actual,
            expected: CIFAR10_MD5.to_string(),
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let out = dir.join(FOLDER);
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    let wanted: Vec<String> = split_files(Split::Train)
        .into_iter()
        .chain(split_files(Split::Test))
        .collect();
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let entries = tar.entries().map_err(io(archive))?;
    for entry in entries {
        let mut entry = entry.map_err(io(archive))?;
        let name = entry
            .path()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        let Some(name) = name.filter(|n| wanted.contains(n)) else {
            continue;
        };
        let mut bytes = Vec::new();
        (&mut entry)
            .take((RECORD * MAX_RECORDS) as u64)
            .read_to_end(&mut bytes)
            .map_err(io(archive))?;
        let target = out.join(&name);
        crate::fsutil::write_atomic(&target, &bytes).map_err(io(&target))?;
    }
    Ok(out)
}

/// Loads one split of CIFAR-10 from `data_dir`, `$DDPM_DATA_DIR` or `./data` (the batch
/// files in `cifar10/cifar-10-batches-bin/`, `cifar10/`, `cifar-10-batches-bin/` or the root,
/// or the archive `cifar10/cifar-10-binary.tar.gz`, unpacked after its MD5 check); otherwise,
/// with the `download` feature, downloads the archive (MD5-checked) into
/// `<first root>/cifar10/`.
///
/// # Errors
/// [`DataError::NotFoundCifar`] when the files are nowhere and cannot be downloaded; corrupt
/// files as [`cifar10_from_files`].
pub fn load_cifar10(split: Split, data_dir: Option<&Path>) -> Result<ImageSet, DataError> {
    let roots = search_roots(data_dir);
    let paths = |dir: PathBuf| {
        split_files(split)
            .into_iter()
            .map(|n| dir.join(n))
            .collect::<Vec<_>>()
    };
    if let Some(dir) = roots.iter().find_map(|r| find(r, split)) {
        return cifar10_from_files(&paths(dir));
    }
    if let Some(archive) = roots
        .iter()
        .map(|r| r.join("cifar10").join(ARCHIVE))
        .find(|p| p.is_file())
    {
        let dir = archive.parent().unwrap_or(Path::new(".")).to_path_buf();
        return cifar10_from_files(&paths(unpack(&archive, &dir)?));
    }
    let dir = roots
        .first()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("data"))
        .join("cifar10");
    let not_found = |reason: String| DataError::NotFoundCifar {
        dir: dir.clone(),
        reason,
    };
    #[cfg(feature = "download")]
    {
        let archive = dir.join(ARCHIVE);
        std::fs::create_dir_all(&dir).map_err(|e| not_found(e.to_string()))?;
        let config = super::DownloadConfig {
            max_bytes: 200 << 20,
            ..super::DownloadConfig::default()
        };
        super::locate::fetch(URL, &archive, CIFAR10_MD5, &config).map_err(not_found)??;
        cifar10_from_files(&paths(unpack(&archive, &dir)?))
    }
    #[cfg(not(feature = "download"))]
    Err(not_found(super::locate::NO_DOWNLOADER.to_string()))
}
