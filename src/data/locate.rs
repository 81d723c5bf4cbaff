//! Finding the IDX files of a data set: the search folders, the MD5 check of files found
//! locally, and the download (timeouts, a size cap, MD5-checked, written atomically).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use super::{DataError, Dataset};

/// The MD5 sum of a file, hex.
pub(crate) fn md5_of(path: &Path) -> Result<String, DataError> {
    let mut f = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// The folders searched for a dataset, in order: `explicit` (`--data-dir`), `$DDPM_DATA_DIR`,
/// `./data`.
pub fn search_roots(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(p) = explicit {
        roots.push(p.to_path_buf());
    }
    if let Some(env) = std::env::var_os("DDPM_DATA_DIR").filter(|v| !v.is_empty()) {
        roots.push(PathBuf::from(env));
    }
    roots.push(PathBuf::from("data"));
    roots
}

/// The path of `name` under `root`, in `root/<dataset>/` or directly in `root`, with or without
/// the `.gz` suffix.
fn find_in(root: &Path, dataset: Dataset, name: &str) -> Option<PathBuf> {
    let plain = name.trim_end_matches(".gz");
    [root.join(dataset.dir_name()), root.to_path_buf()]
        .into_iter()
        .flat_map(|dir| [dir.join(name), dir.join(plain)])
        .find(|p| p.is_file())
}

/// Finds the folder that holds all four files of `dataset`, or downloads them into
/// `<first root>/<dataset>/`.
///
/// # Errors
/// [`DataError::NotFound`] when the files are missing and cannot be downloaded (offline), with
/// the folder and file names to use; [`DataError::Checksum`] when a download is corrupt.
pub fn locate_or_download(
    dataset: Dataset,
    explicit: Option<&Path>,
) -> Result<Vec<PathBuf>, DataError> {
    locate_or_download_from(dataset, &search_roots(explicit), dataset.mirror())
}

/// Limits of a download: how long to wait for a connection and for each read (a stalled
/// server fails after `read_timeout` without data), and the most bytes one file may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadConfig {
    /// Time to establish the connection.
    pub connect_timeout: Duration,
    /// Time to wait for the response and for each read of the body.
    pub read_timeout: Duration,
    /// The most bytes one file may have (a server sending more is an error, with memory
    /// bounded by this).
    pub max_bytes: u64,
}

impl Default for DownloadConfig {
    /// 30 s to connect, 60 s per read, 64 MiB per file (the largest file is 30 MB).
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            max_bytes: 64 << 20,
        }
    }
}

/// [`locate_or_download`] with explicit search folders and mirror URL (ending in `/`).
///
/// # Errors
/// As [`locate_or_download`].
pub fn locate_or_download_from(
    dataset: Dataset,
    roots: &[PathBuf],
    mirror: &str,
) -> Result<Vec<PathBuf>, DataError> {
    locate_or_download_with(dataset, roots, mirror, &DownloadConfig::default())
}

/// [`locate_or_download_from`] with the download's limits.
///
/// # Errors
/// As [`locate_or_download`]; a download that stalls or exceeds `config.max_bytes` is a
/// [`DataError::NotFound`] saying so.
pub fn locate_or_download_with(
    dataset: Dataset,
    roots: &[PathBuf],
    mirror: &str,
    config: &DownloadConfig,
) -> Result<Vec<PathBuf>, DataError> {
    if roots.is_empty() {
        return Err(DataError::NotFound {
            dataset,
            dir: PathBuf::from("data").join(dataset.dir_name()),
            files: dataset.files().map(|f| f.name).join("\n  "),
            reason: "no folder to look in".into(),
        });
    }
    for root in roots {
        let found: Option<Vec<PathBuf>> = dataset
            .files()
            .iter()
            .map(|f| find_in(root, dataset, f.name))
            .collect();
        if let Some(paths) = found {
            // The published sums are of the gzip files: those are checked, uncompressed copies
            // only by the parser's size checks.
            for (path, file) in paths.iter().zip(dataset.files()) {
                if path.extension().is_some_and(|e| e == "gz") {
                    let actual = md5_of(path)?;
                    if actual != file.md5 {
                        return Err(DataError::LocalChecksum {
                            path: path.clone(),
                            actual,
                            expected: file.md5.to_string(),
                        });
                    }
                }
            }
            return Ok(paths);
        }
    }
    let dir = roots[0].join(dataset.dir_name());
    download(dataset, &dir, mirror, config).map_err(|reason| DataError::NotFound {
        dataset,
        dir: dir.clone(),
        files: dataset.files().map(|f| f.name).join("\n  "),
        reason,
    })??;
    Ok(dataset.files().iter().map(|f| dir.join(f.name)).collect())
}

/// Without the `download` feature nothing is fetched: the error says where to put the files.
#[cfg(not(feature = "download"))]
fn download(
    _: Dataset,
    _: &Path,
    _: &str,
    _: &DownloadConfig,
) -> Result<Result<(), DataError>, String> {
    Err(NO_DOWNLOADER.into())
}

/// Why nothing is downloaded in a build without the `download` feature.
#[cfg(not(feature = "download"))]
pub(crate) const NO_DOWNLOADER: &str =
    "this build of ddpm has no downloader (feature `download` is off)";

/// Downloads the four files into `dir`; the outer error is a network failure, the inner one a
/// corrupt download.
#[cfg(feature = "download")]
fn download(
    dataset: Dataset,
    dir: &Path,
    mirror: &str,
    config: &DownloadConfig,
) -> Result<Result<(), DataError>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for file in dataset.files() {
        let url = format!("{mirror}{}", file.name);
        if let Err(e) = fetch(&url, &dir.join(file.name), file.md5, config)? {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

/// Downloads `url` to `target` (atomically) unless `target` already has MD5 `md5`; the outer
/// error is a network failure, the inner one a corrupt download or an unwritable target.
#[cfg(feature = "download")]
pub(crate) fn fetch(
    url: &str,
    target: &Path,
    md5: &str,
    config: &DownloadConfig,
) -> Result<Result<(), DataError>, String> {
    if target.is_file() && md5_of(target).is_ok_and(|m| m == md5) {
        return Ok(Ok(()));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(config.connect_timeout))
        .timeout_recv_response(Some(config.read_timeout))
        .timeout_per_read(Some(config.read_timeout))
        .build()
        .into();
    eprintln!("downloading {url}");
    let body = agent
        .get(url)
        .call()
        .map_err(|e| format!("{url}: {e}"))?
        .body_mut()
        .with_config()
        .limit(config.max_bytes)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(n) => {
                format!("{url}: the server sent more than {n} bytes, more than the file can have")
            }
            ureq::Error::Timeout(t) => format!(
                "{url}: the server sent nothing for {:?} ({t} timeout)",
                config.read_timeout
            ),
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => format!(
                "{url}: the server sent nothing for {:?} ({e})",
                config.read_timeout
            ),
            e => format!("{url}: {e}"),
        })?;
    let actual = format!("{:x}", Md5::digest(&body));
    if actual != md5 {
        let name = target
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        return Ok(Err(DataError::Checksum {
            name,
            actual,
            expected: md5.to_string(),
        }));
    }
    if let Err(e) = crate::fsutil::write_atomic(target, &body) {
        return Ok(Err(DataError::Io {
            path: target.to_path_buf(),
            source: e,
        }));
    }
    Ok(Ok(()))
}
