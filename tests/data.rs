//! IDX parsing on the real files and on crafted bad ones; locating and downloading.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use ddpm::data::{
    DataError, Dataset, EpochSampler, ImageSet, Split, locate_or_download_from, parse_idx_images,
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
