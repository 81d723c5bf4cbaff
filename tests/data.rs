//! IDX parsing on the real files and on crafted bad ones; locating and downloading.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use burn::tensor::Device;
use ddpm::data::{
    DataError, Dataset, DownloadConfig, EpochSampler, ImageSet, Split, locate_or_download_from,
    locate_or_download_with, parse_idx_images,
};

#[test]
fn real_mnist_has_the_published_sizes_and_mean() {
    let dir = common::data_dir();
    let train = ImageSet::load(Dataset::Mnist, Split::Train, Some(&dir)).unwrap();
    let test = ImageSet::load(Dataset::Mnist, Split::Test, Some(&dir)).unwrap();
    assert_eq!((train.count, train.rows, train.cols), (60_000, 28, 28));
    assert_eq!(test.count, 10_000);
    assert_eq!(train.labels.len(), 60_000);
    assert!(train.labels.iter().all(|&l| l < 10));
    // The well-known normalisation constant of MNIST.
    assert!(
        (train.mean_pixel() - 0.1307).abs() < 5e-5,
        "{}",
        train.mean_pixel()
    );
    let fashion = ImageSet::load(Dataset::FashionMnist, Split::Test, Some(&dir)).unwrap();
    assert_eq!(fashion.count, 10_000);
    // Batches are scaled to [-1, 1].
    let x = train.batch(&[0, 1, 2], &Device::flex());
    assert_eq!(x.dims(), [3, 1, 28, 28]);
    let v: Vec<f32> = x.into_data().convert::<f32>().iter::<f32>().collect();
    assert!(v.iter().all(|p| (-1.0..=1.0).contains(p)));
    assert_eq!(v.iter().cloned().fold(f32::MIN, f32::max), 1.0);
}

fn idx_images(n: u32, r: u32, c: u32, body: usize, magic: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [magic, n, r, c] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.resize(16 + body, 7);
    v
}

fn idx_labels(n: u32, body: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [2049u32, n] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.resize(8 + body, 1);
    v
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn crafted_bad_files_are_named_errors() {
    let dir = common::scratch("bad-idx");
    let labels = write(&dir, "labels", &idx_labels(2, 2));
    let good = write(&dir, "good", &idx_images(2, 2, 2, 8, 2051));
    assert_eq!(ImageSet::from_files(&good, &labels).unwrap().count, 2);

    let wrong_magic = write(&dir, "magic", &idx_images(2, 2, 2, 8, 2049));
    let e = ImageSet::from_files(&wrong_magic, &labels).unwrap_err();
    assert!(
        matches!(e, DataError::Corrupt { ref path, .. } if path == &wrong_magic),
        "{e}"
    );
    assert!(e.to_string().contains("2051"), "{e}");

    let truncated = write(&dir, "truncated", &idx_images(2, 2, 2, 5, 2051));
    let e = ImageSet::from_files(&truncated, &labels).unwrap_err();
    assert!(
        e.to_string().contains("truncated") || e.to_string().contains("holds 5 bytes"),
        "{e}"
    );

    let short = write(&dir, "short", &[0, 0, 8]);
    assert!(matches!(
        ImageSet::from_files(&short, &labels),
        Err(DataError::Corrupt { .. })
    ));

    let three_labels = write(&dir, "labels3", &idx_labels(3, 3));
    let e = ImageSet::from_files(&good, &three_labels).unwrap_err();
    assert!(e.to_string().contains("3 labels for 2 images"), "{e}");

    // A truncated gzip stream.
    let real = common::mnist_dir().join("t10k-labels-idx1-ubyte.gz");
    let bytes = std::fs::read(real).unwrap();
    let cut = write(&dir, "cut.gz", &bytes[..bytes.len() / 2]);
    let e = ImageSet::from_files(&good, &cut).unwrap_err();
    assert!(e.to_string().contains("gzip"), "{e}");

    let missing = dir.join("missing");
    assert!(matches!(
        ImageSet::from_files(&missing, &labels),
        Err(DataError::Io { .. })
    ));
    assert!(parse_idx_images(idx_images(1, 28, 28, 784, 2051), &good).is_ok());
}

#[test]
fn offline_without_files_says_where_to_put_them() {
    let dir = common::scratch("offline");
    // Port 9 (discard) on loopback refuses the connection at once.
    let e = locate_or_download_from(
        Dataset::Mnist,
        std::slice::from_ref(&dir),
        "http://127.0.0.1:9/",
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DataError::NotFound { .. }));
    assert!(
        msg.contains(&dir.join("mnist").display().to_string()),
        "{msg}"
    );
    for f in Dataset::Mnist.files() {
        assert!(msg.contains(f.name), "{msg}");
    }
    assert!(msg.contains("DDPM_DATA_DIR"), "{msg}");
}

/// Serves `files` over HTTP on loopback for a bounded number of requests.
fn serve(files: Vec<(String, Vec<u8>)>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut s = stream.unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            match files.iter().find(|(name, _)| *name == path) {
                Some((_, body)) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes());
                    let _ = s.write_all(body);
                }
                None => {
                    let _ = s.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            }
        }
    });
    format!("http://{addr}/")
}

#[test]
fn downloads_are_verified_and_written_atomically() {
    let src = common::mnist_dir();
    let files: Vec<(String, Vec<u8>)> = Dataset::Mnist
        .files()
        .iter()
        .map(|f| (f.name.to_string(), std::fs::read(src.join(f.name)).unwrap()))
        .collect();

    // A mirror that serves a corrupted copy: checksum error, nothing left behind.
    let mut bad = files.clone();
    bad[0].1[100] ^= 0xff;
    let dir = common::scratch("download-bad");
    let e = locate_or_download_from(Dataset::Mnist, std::slice::from_ref(&dir), &serve(bad, 1))
        .unwrap_err();
    assert!(matches!(e, DataError::Checksum { .. }), "{e}");
    let left: Vec<_> = std::fs::read_dir(dir.join("mnist")).unwrap().collect();
    assert!(left.is_empty(), "a partial file was left: {left:?}");

    // A good mirror: the four files arrive, verified, and load.
    let dir = common::scratch("download-good");
    let paths =
        locate_or_download_from(Dataset::Mnist, std::slice::from_ref(&dir), &serve(files, 4))
            .unwrap();
    assert_eq!(paths.len(), 4);
    let test = ImageSet::from_files(&paths[2], &paths[3]).unwrap();
    assert_eq!(test.count, 10_000);
}

#[test]
fn epoch_sampler_is_a_seeded_permutation() {
    let mut s = EpochSampler::new(10, 3);
    let mut seen: Vec<usize> = (0..3).flat_map(|_| s.next_batch(3)).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 9, "one epoch draws without replacement");
    assert_eq!(s.next_batch(3).len(), 3);
    assert_eq!(s.epoch, 1);
    let mut a = EpochSampler::new(100, 1);
    let mut b = EpochSampler::new(100, 1);
    assert_eq!(a.next_batch(10), b.next_batch(10));
    assert_ne!(
        EpochSampler::new(100, 2).next_batch(10),
        EpochSampler::new(100, 1).next_batch(10)
    );
}

/// A server that answers with headers announcing a body, then `then` with the connection.
fn serve_then(then: impl Fn(std::net::TcpStream) + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        // One connection: the first file's request.
        if let Some(Ok(mut s)) = listener.incoming().next() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            then(s);
        }
    });
    format!("http://{addr}/")
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A server that stalls after the headers fails the download within the read timeout.
#[test]
fn a_stalled_download_times_out() {
    let url = serve_then(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nabc");
        std::thread::sleep(Duration::from_secs(30));
    });
    let dir = common::scratch("download-stall");
    let config = DownloadConfig {
        read_timeout: Duration::from_millis(800),
        ..DownloadConfig::default()
    };
    let started = Instant::now();
    let e = locate_or_download_with(Dataset::Mnist, std::slice::from_ref(&dir), &url, &config)
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, DataError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("sent nothing"), "{e}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// A server streaming without end (no length announced) fails at the size cap, with memory
/// bounded by it; nothing is written.
#[test]
fn an_endless_download_fails_with_bounded_memory() {
    let url = serve_then(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let chunk = vec![0x5au8; 1 << 16];
        // Up to 2 GiB, until the client hangs up.
        for _ in 0..(1 << 15) {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let dir = common::scratch("download-flood");
    let config = DownloadConfig {
        max_bytes: 4 << 20,
        ..DownloadConfig::default()
    };
    let before = peak_rss_kib();
    let e = locate_or_download_with(Dataset::Mnist, std::slice::from_ref(&dir), &url, &config)
        .unwrap_err();
    assert!(e.to_string().contains("more than 4194304 bytes"), "{e}");
    if let (Some(a), Some(b)) = (before, peak_rss_kib()) {
        // Other tests of this binary run alongside: allow them 200 MiB, far below 2 GiB.
        assert!(
            b.saturating_sub(a) < 200 << 10,
            "peak RSS grew by {} KiB",
            b - a
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.join("mnist")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A gzip file found locally is checked against the published MD5 sum; one that expands
/// beyond any IDX file (a gzip bomb) is refused without holding it in memory.
#[test]
fn local_files_are_checked_and_bombs_refused() {
    let src = common::mnist_dir();
    let dir = common::scratch("local-md5");
    for f in Dataset::Mnist.files() {
        std::fs::copy(src.join(f.name), dir.join(f.name)).unwrap();
    }
    let labels = dir.join("t10k-labels-idx1-ubyte.gz");
    let mut bytes = std::fs::read(&labels).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 1;
    std::fs::write(&labels, &bytes).unwrap();
    let e = locate_or_download_from(
        Dataset::Mnist,
        std::slice::from_ref(&dir),
        "http://127.0.0.1:9/",
    )
    .unwrap_err();
    assert!(matches!(e, DataError::LocalChecksum { .. }), "{e}");
    assert!(e.to_string().contains("delete it"), "{e}");

    // 512 MiB of zeros in 0.5 MB of gzip.
    let bomb = dir.join("bomb.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&bomb).unwrap(),
        flate2::Compression::fast(),
    );
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..512 {
        enc.write_all(&zeros).unwrap();
    }
    enc.finish().unwrap();
    let before = peak_rss_kib();
    let e = ImageSet::from_files(&bomb, &src.join("t10k-labels-idx1-ubyte.gz")).unwrap_err();
    assert!(matches!(e, DataError::TooLarge { .. }), "{e}");
    if let (Some(a), Some(b)) = (before, peak_rss_kib()) {
        assert!(
            b.saturating_sub(a) < 400 << 10,
            "peak RSS grew by {} KiB",
            b - a
        );
    }
}
