//! How fast an image folder loads and serves batches: the first load (decoding every file,
//! in parallel), the load from the decoded cache (mapped, nothing decoded), and batches per
//! second drawn from the cached set (shuffled, half mirrored, scaled to [-1, 1], as a tensor
//! on the device), as one JSON line. The training loop asks for one batch per step: compare
//! `batches_per_s` with the steps per second of `train`.
//!
//! `cargo run --release --example loader -- --data FOLDER [--size 32] [--batch 32]
//! [--batches 2000] [--cache /tmp/loader-cache.bin]`

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use clap::Parser;
use ddpm::data::{EpochSampler, ImageFolderConfig, load_image_folder};

#[derive(Parser)]
#[command(about = "How fast an image folder loads and serves batches (one JSON line)")]
struct Args {
    /// A folder of PNG/JPEG pictures.
    #[arg(long)]
    data: PathBuf,
    /// Side of the square images.
    #[arg(long, default_value_t = 32)]
    size: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Batches drawn from the cached set.
    #[arg(long, default_value_t = 2000)]
    batches: usize,
    /// Where the decoded cache is written (removed first).
    #[arg(long, default_value = "target/loader-cache.bin")]
    cache: PathBuf,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        data: root,
        size,
        batch,
        batches,
        cache,
    } = Args::parse();
    let _ = std::fs::remove_file(&cache);
    let config = ImageFolderConfig::new(&root, size);

    let (_, decoded) = load_image_folder(&config, None)?;
    let (_, written) = load_image_folder(&config, Some(&cache))?;
    let (set, cached) = load_image_folder(&config, Some(&cache))?;
    let device = Device::flex();
    let mut sampler = EpochSampler::new(set.count, 0);
    let mut rng = ddpm::core::NoiseRng::new(0);
    let started = Instant::now();
    let mut checksum = 0.0f64;
    for _ in 0..batches {
        let idx = sampler.next_batch(batch);
        let mirror: Vec<bool> = idx.iter().map(|_| rng.uniform() < 0.5).collect();
        let x = set.batch_mirrored(&idx, &mirror, &device);
        checksum += f64::from(x.slice([0..1, 0..1, 0..1, 0..1]).into_scalar::<f32>());
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"images\":{},\"size\":{size},\"threads\":{},\"decode_images_per_s\":{:.0},\
         \"decode_and_cache_images_per_s\":{:.0},\"cached_load_s\":{:.4},\
         \"cached_images_per_s\":{:.0},\"batch\":{batch},\"batches_per_s\":{:.0},\
         \"images_per_s_served\":{:.0},\"checksum\":{checksum:.3}}}",
        set.count,
        rayon::current_num_threads(),
        decoded.images_per_s(),
        written.images_per_s(),
        cached.seconds,
        cached.images_per_s(),
        batches as f64 / seconds,
        (batches * batch) as f64 / seconds,
    );
    Ok(())
}
