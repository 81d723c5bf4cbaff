//! Image folders and CIFAR-10: decoding (grey, RGB, RGBA, palette with transparency, grey +
//! alpha, JPEG), compositing, resizing and cropping against hand-computed pixels, labels from
//! folders and CSV files, the decoded cache, MNIST as a PNG folder against the IDX loader,
//! flips that resume exactly, and every bad input as an error.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use ddpm::data::{
    Background, CacheStatus, Channels, DataError, Dataset, ImageFolderConfig, ImageSet,
    LabelSource, ResizeFilter, ResizeMode, Split, load_image_folder,
};
use image::{GrayAlphaImage, GrayImage, LumaA, Rgb, RgbImage, Rgba, RgbaImage};

fn rgb_at(set: &ImageSet, i: usize, y: usize, x: usize) -> [u8; 3] {
    let (h, w) = (set.rows, set.cols);
    let base = i * set.image_len();
    [0, 1, 2].map(|c| set.pixels[base + (c * h + y) * w + x])
}

/// An RGB picture whose pixel (x, y) is (10 x + 1, 20 y + 2, 7 x + 3 y): every pixel distinct.
fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (10 * x + 1) as u8,
            (20 * y + 2) as u8,
            (7 * x + 3 * y) as u8,
        ])
    })
}

/// A 4x4 palette PNG (colour type 3) whose index 0 is fully transparent (tRNS) and whose
/// transparent pixels carry a vivid colour in the palette.
fn write_palette_png(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 4, 4);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_palette(vec![255, 0, 255, 10, 20, 30]);
    enc.set_trns(vec![0, 255]);
    let mut w = enc.write_header().unwrap();
    // Left half transparent magenta (index 0), right half opaque (10, 20, 30) (index 1).
    let data: Vec<u8> = (0..16).map(|i| u8::from(i % 4 >= 2)).collect();
    w.write_image_data(&data).unwrap();
}

#[test]
fn alpha_is_composited_onto_the_chosen_background_exactly() {
    let dir = common::scratch("folder-alpha");
    // RGBA: transparent pixels of arbitrary colour, opaque ones, one half-transparent.
    let rgba = RgbaImage::from_fn(4, 4, |x, y| match (x + y) % 3 {
        0 => Rgba([200, 100, (x * 50) as u8, 0]),
        1 => Rgba([x as u8 * 60, y as u8 * 60, 9, 255]),
        _ => Rgba([255, 255, 255, 128]),
    });
    rgba.save(dir.join("a-rgba.png")).unwrap();
    write_palette_png(&dir.join("b-palette.png"));
    GrayAlphaImage::from_fn(4, 4, |x, _| LumaA([77, if x < 2 { 0 } else { 255 }]))
        .save(dir.join("c-grey-alpha.png"))
        .unwrap();
    let bg = [10, 200, 30];
    let config = ImageFolderConfig::new(&dir, 4).with_background(Background(bg));
    let (set, report) = load_image_folder(&config, None).unwrap();
    assert_eq!(set.count, 3);
    assert_eq!(report.files[0], PathBuf::from("a-rgba.png"));
    for y in 0..4 {
        for x in 0..4 {
            let p = rgba.get_pixel(x, y).0;
            let got = rgb_at(&set, 0, y as usize, x as usize);
            match p[3] {
                0 => assert_eq!(got, bg, "transparent RGBA pixel ({x}, {y})"),
                255 => assert_eq!(got, [p[0], p[1], p[2]], "opaque RGBA pixel ({x}, {y})"),
                // (255 * 128 + bg * 127 + 127) / 255, rounded.
                _ => assert_eq!(
                    got,
                    bg.map(|b| ((255 * 128 + b as u32 * 127 + 127) / 255) as u8)
                ),
            }
            let palette = rgb_at(&set, 1, y as usize, x as usize);
            let grey = rgb_at(&set, 2, y as usize, x as usize);
            if x < 2 {
                assert_eq!(palette, bg, "transparent palette pixel");
                assert_eq!(grey, bg, "transparent grey + alpha pixel");
            } else {
                assert_eq!(palette, [10, 20, 30]);
                assert_eq!(grey, [77, 77, 77]);
            }
        }
    }
    // Grey output is the luma of the composited colour: (299 r + 587 g + 114 b + 500) / 1000.
    let (grey, _) = load_image_folder(&config.clone().with_channels(Channels::Grey), None).unwrap();
    assert_eq!(grey.image_dims(), [1, 4, 4]);
    let luma = |[r, g, b]: [u8; 3]| {
        ((299 * r as u32 + 587 * g as u32 + 114 * b as u32 + 500) / 1000) as u8
    };
    for i in 0..3 {
        for k in 0..16 {
            let (y, x) = (k / 4, k % 4);
            assert_eq!(
                grey.pixels[i * 16 + k],
                luma(rgb_at(&set, i, y, x)),
                "image {i} pixel {k}"
            );
        }
    }
}

#[test]
fn resizing_and_cropping_match_hand_computed_pixels() {
    let dir = common::scratch("folder-resize");
    pattern(6, 4).save(dir.join("landscape.png")).unwrap();
    pattern(2, 6).save(dir.join("portrait.png")).unwrap();
    pattern(2, 2).save(dir.join("small.png")).unwrap();
    // Shorter side already 4: no resampling, the centre 4x4 of the 6x4 is columns 1-4.
    let sub = |name: &str, size| {
        let d = common::scratch(&format!("folder-resize-{name}"));
        std::fs::copy(dir.join(name), d.join(name)).unwrap();
        ImageFolderConfig::new(d, size).with_filter(ResizeFilter::Nearest)
    };
    let (set, report) = load_image_folder(&sub("landscape.png", 4), None).unwrap();
    assert_eq!(report.enlarged, 0);
    for y in 0..4 {
        for x in 0..4 {
            assert_eq!(
                rgb_at(&set, 0, y, x),
                pattern(6, 4).get_pixel(x as u32 + 1, y as u32).0
            );
        }
    }
    // 2x6 at size 2: the centre 2x2 is rows 2-3.
    let (set, _) = load_image_folder(&sub("portrait.png", 2), None).unwrap();
    for y in 0..2 {
        for x in 0..2 {
            assert_eq!(
                rgb_at(&set, 0, y, x),
                pattern(2, 6).get_pixel(x as u32, y as u32 + 2).0
            );
        }
    }
    // 2x2 enlarged to 4x4 by nearest neighbour: each pixel becomes a 2x2 block (and the
    // report says the image was enlarged).
    let config = sub("small.png", 4).with_resize(ResizeMode::Exact);
    let (set, report) = load_image_folder(&config, None).unwrap();
    assert_eq!(report.enlarged, 1);
    assert!(report.to_string().contains("enlarged"), "{report}");
    for y in 0..4 {
        for x in 0..4 {
            assert_eq!(
                rgb_at(&set, 0, y, x),
                pattern(2, 2).get_pixel(x as u32 / 2, y as u32 / 2).0
            );
        }
    }
    // Exact on a 6x4 picture stretches it: every output is 3x3 (and a linear filter averages).
    let (set, _) = load_image_folder(
        &sub("landscape.png", 3).with_resize(ResizeMode::Exact),
        None,
    )
    .unwrap();
    assert_eq!(set.image_dims(), [3, 3, 3]);
    // A JPEG of a flat colour decodes to nearly that colour.
    let jdir = common::scratch("folder-jpeg");
    RgbImage::from_pixel(16, 8, Rgb([40, 120, 200]))
        .save(jdir.join("flat.JPG"))
        .unwrap();
    let (set, _) = load_image_folder(&ImageFolderConfig::new(&jdir, 8), None).unwrap();
    for v in (0..64).map(|k| rgb_at(&set, 0, k / 8, k % 8)) {
        for (got, want) in v.iter().zip([40u8, 120, 200]) {
            assert!(got.abs_diff(want) <= 3, "{v:?}");
        }
    }
}

#[test]
fn labels_come_from_folders_or_a_csv_column() {
    let dir = common::scratch("folder-labels");
    for (class, n) in [("zebra", 2), ("ant", 3)] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..n {
            pattern(4, 4)
                .save(dir.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    pattern(4, 4).save(dir.join("loose.png")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    let config = ImageFolderConfig::new(&dir, 4).with_labels(LabelSource::Folders);
    let (set, report) = load_image_folder(&config, None).unwrap();
    assert_eq!(set.class_names, ["ant", "zebra"]);
    assert_eq!(set.labels, [0, 0, 0, 1, 1]);
    assert_eq!(report.unlabelled, [PathBuf::from("loose.png")]);
    assert_eq!(report.ignored, 1);
    assert_eq!(set.class_index("zebra"), Some(1));

    // A CSV: quoted fields with commas, rows by path or by bare file name.
    let csv = dir.join("labels.csv");
    std::fs::write(
        &csv,
        "file,kind,note\nant/0.png,\"insect, small\",x\n1.png,big,\"a \"\"b\"\"\"\nloose.png,big,\n",
    )
    .unwrap();
    let with_csv = |column: &str| {
        ImageFolderConfig::new(&dir, 4).with_labels(LabelSource::Csv {
            path: csv.clone(),
            column: column.into(),
        })
    };
    let (set, report) = load_image_folder(&with_csv("kind"), None).unwrap();
    assert_eq!(set.class_names, ["big", "insect, small"]);
    // ant/0 (insect), ant/1 and zebra/1 match "1.png" by name: only the first of them takes
    // the row, the other is unlabelled; loose.png is big.
    assert_eq!(report.files[0], PathBuf::from("ant/0.png"));
    assert_eq!(set.labels[0], 1);
    assert!(report.files.contains(&PathBuf::from("loose.png")));
    assert!(!report.unlabelled.is_empty());
    let e = load_image_folder(&with_csv("colour"), None).unwrap_err();
    assert!(
        e.to_string().contains("no column 'colour'") && e.to_string().contains("file, kind, note"),
        "{e}"
    );
    std::fs::write(&csv, "file,kind\nant/0.png,a\nmissing.png,b\n").unwrap();
    let e = load_image_folder(&with_csv("kind"), None).unwrap_err();
    assert!(e.to_string().contains("missing.png"), "{e}");
}

#[test]
fn the_cache_round_trips_and_is_rebuilt_when_anything_changes() {
    let dir = common::scratch("folder-cache-src");
    for i in 0..5u32 {
        pattern(8 + i, 8)
            .save(dir.join(format!("{i}.png")))
            .unwrap();
    }
    let cache = common::scratch("folder-cache")
        .join("run")
        .join("cache.bin");
    let config = ImageFolderConfig::new(&dir, 8);
    let (fresh, _) = load_image_folder(&config, None).unwrap();
    let (first, r1) = load_image_folder(&config, Some(&cache)).unwrap();
    assert_eq!(r1.cache, CacheStatus::Written);
    let (second, r2) = load_image_folder(&config, Some(&cache)).unwrap();
    assert_eq!(r2.cache, CacheStatus::Loaded);
    assert!(second.pixels.is_mapped());
    assert_eq!(*second.pixels, *fresh.pixels, "the cache is byte-identical");
    assert_eq!(
        (second.labels.clone(), second.count),
        (fresh.labels.clone(), 5)
    );
    assert_eq!(r2.files, r1.files);
    drop(first);

    // A changed file (other content, other time) invalidates it.
    pattern(9, 9).save(dir.join("2.png")).unwrap();
    let f = std::fs::File::options()
        .write(true)
        .open(dir.join("2.png"))
        .unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30))
        .unwrap();
    let (changed, r3) = load_image_folder(&config, Some(&cache)).unwrap();
    assert!(
        matches!(&r3.cache, CacheStatus::Rebuilt(w) if w.contains("other files")),
        "{:?}",
        r3.cache
    );
    assert_ne!(*changed.pixels, *fresh.pixels);
    // Other options too.
    let black = config.clone().with_background(Background([0; 3]));
    let (_, r4) = load_image_folder(&black, Some(&cache)).unwrap();
    assert!(matches!(r4.cache, CacheStatus::Rebuilt(_)));
    // A damaged byte is caught by the checksum, and the set decoded again.
    let (_, r5) = load_image_folder(&black, Some(&cache)).unwrap();
    assert_eq!(r5.cache, CacheStatus::Loaded);
    let mut bytes = std::fs::read(&cache).unwrap();
    bytes[4096 + 10] ^= 0xff;
    std::fs::write(&cache, &bytes).unwrap();
    let (again, r6) = load_image_folder(&black, Some(&cache)).unwrap();
    assert!(
        matches!(&r6.cache, CacheStatus::Rebuilt(w) if w.contains("checksum")),
        "{:?}",
        r6.cache
    );
    let (plain, _) = load_image_folder(&black, None).unwrap();
    assert_eq!(*again.pixels, *plain.pixels);
    // A truncated cache and garbage are damaged too, never a panic.
    std::fs::write(&cache, &bytes[..100]).unwrap();
    let (_, r7) = load_image_folder(&black, Some(&cache)).unwrap();
    assert!(
        matches!(&r7.cache, CacheStatus::Rebuilt(w) if w.contains("damaged")),
        "{:?}",
        r7.cache
    );
    std::fs::write(
        &cache,
        b"DDPMIMG1\xff\xff\xff\xff\xff\xff\xff\xff\0\0\0\0\0\0\0\0",
    )
    .unwrap();
    let (_, r8) = load_image_folder(&black, Some(&cache)).unwrap();
    assert!(matches!(r8.cache, CacheStatus::Rebuilt(_)));
}

#[test]
fn mnist_written_as_a_png_folder_loads_identical_to_the_idx_loader() {
    let idx = ImageSet::load(Dataset::Mnist, Split::Test, Some(&common::data_dir())).unwrap();
    let dir = common::scratch("folder-mnist");
    let n = 300;
    for i in 0..n {
        let label = idx.labels[i];
        let sub = dir.join(label.to_string());
        std::fs::create_dir_all(&sub).unwrap();
        let img = GrayImage::from_raw(28, 28, idx.pixels[i * 784..(i + 1) * 784].to_vec()).unwrap();
        img.save(sub.join(format!("{i:05}.png"))).unwrap();
    }
    let config = ImageFolderConfig::new(&dir, 28)
        .with_channels(Channels::Grey)
        .with_labels(LabelSource::Folders);
    let (set, report) = load_image_folder(&config, None).unwrap();
    assert_eq!((set.count, set.image_dims()), (n, [1, 28, 28]));
    for (k, file) in report.files.iter().enumerate() {
        let i: usize = file.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!(
            set.pixels[k * 784..(k + 1) * 784],
            idx.pixels[i * 784..(i + 1) * 784]
        );
        assert_eq!(
            set.class_names[set.labels[k] as usize],
            idx.labels[i].to_string()
        );
    }
}

#[test]
fn bad_folders_and_files_are_errors_that_say_what_to_do() {
    let empty = common::scratch("folder-empty");
    let e = load_image_folder(&ImageFolderConfig::new(&empty, 8), None).unwrap_err();
    assert!(e.to_string().contains("holds no PNG or JPEG files"), "{e}");
    std::fs::write(empty.join("readme.md"), "hi").unwrap();
    let e = load_image_folder(&ImageFolderConfig::new(&empty, 8), None).unwrap_err();
    assert!(e.to_string().contains("1 other files"), "{e}");
    let e =
        load_image_folder(&ImageFolderConfig::new(empty.join("readme.md"), 8), None).unwrap_err();
    assert!(e.to_string().contains("is not a folder"), "{e}");
    let e = load_image_folder(&ImageFolderConfig::new(empty.join("nowhere"), 8), None).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e}");
    for size in [0, 100_000] {
        let e = load_image_folder(&ImageFolderConfig::new(&empty, size), None).unwrap_err();
        assert!(e.to_string().contains("ImageFolderConfig::size"), "{e}");
    }

    let dir = common::scratch("folder-bad");
    pattern(8, 8).save(dir.join("good.png")).unwrap();
    let mut png = Vec::new();
    pattern(8, 8)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(dir.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(dir.join("text.jpg"), "this is no JPEG").unwrap();
    let config = ImageFolderConfig::new(&dir, 8);
    let e = load_image_folder(&config, None).unwrap_err();
    match &e {
        DataError::BadImage { path, .. } => assert!(path.ends_with("text.jpg"), "{e}"),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("skip_bad"), "{e}");
    let (set, report) = load_image_folder(&config.with_skip_bad(true), None).unwrap();
    assert_eq!(set.count, 1);
    let skipped: Vec<_> = report.skipped.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(
        skipped,
        [PathBuf::from("text.jpg"), PathBuf::from("truncated.png")]
    );
    assert!(
        report.to_string().contains("2 bad files left out"),
        "{report}"
    );
    // Only bad files: an error even when skipping.
    let only_bad = common::scratch("folder-only-bad");
    std::fs::write(only_bad.join("x.png"), "nope").unwrap();
    let e = load_image_folder(
        &ImageFolderConfig::new(&only_bad, 8).with_skip_bad(true),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("could be decoded"), "{e}");
    // A very long thin picture is cropped before it is resized (resizing its shorter side
    // first would have allocated 8192 x 1024 x 1024 pixels); one over 8192 wide is a bad file.
    let thin = common::scratch("folder-thin");
    RgbImage::from_pixel(8192, 1, Rgb([9, 8, 7]))
        .save(thin.join("thin.png"))
        .unwrap();
    let (set, report) = load_image_folder(&ImageFolderConfig::new(&thin, 1024), None).unwrap();
    assert_eq!((set.count, report.enlarged), (1, 1));
    assert!(set.pixels.iter().all(|&p| [9, 8, 7].contains(&p)));
    RgbImage::from_pixel(9000, 1, Rgb([0, 0, 0]))
        .save(thin.join("wide.png"))
        .unwrap();
    let e = load_image_folder(&ImageFolderConfig::new(&thin, 8), None).unwrap_err();
    assert!(e.to_string().contains("wide.png"), "{e}");
    // Folder labels without class folders.
    let e = load_image_folder(
        &ImageFolderConfig::new(&dir, 8).with_labels(LabelSource::Folders),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("one folder per class"), "{e}");
}

/// A record of CIFAR-10's binary format: the label, then 1,024 red, green and blue bytes.
fn cifar_record(label: u8, seed: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072u32).map(|k| (k as u8).wrapping_mul(seed).wrapping_add(label)));
    r
}

#[test]
fn cifar10_is_read_from_files_in_its_binary_format() {
    let root = common::scratch("cifar");
    let dir = root.join("cifar10").join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for b in 1..=5u8 {
        let bytes: Vec<u8> = (0..3u8)
            .flat_map(|i| cifar_record((b + i) % 10, b * 3 + i))
            .collect();
        std::fs::write(dir.join(format!("data_batch_{b}.bin")), bytes).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), cifar_record(9, 1)).unwrap();
    let train = ddpm::data::load_cifar10(Split::Train, Some(&root)).unwrap();
    assert_eq!((train.count, train.image_dims()), (15, [3, 32, 32]));
    assert_eq!(train.class_names[3], "cat");
    // Record 4 is batch 2's second: label (2 + 1) % 10, bytes from seed 2 * 3 + 1.
    assert_eq!(train.labels[4], 3);
    assert_eq!(train.pixels[4 * 3072..5 * 3072], cifar_record(3, 7)[1..]);
    let test = ddpm::data::load_cifar10(Split::Test, Some(&root)).unwrap();
    assert_eq!((test.count, test.labels[0]), (1, 9));

    std::fs::write(dir.join("test_batch.bin"), &cifar_record(9, 1)[..3000]).unwrap();
    let e = ddpm::data::load_cifar10(Split::Test, Some(&root)).unwrap_err();
    assert!(e.to_string().contains("3073-byte"), "{e}");
    std::fs::write(dir.join("test_batch.bin"), cifar_record(12, 1)).unwrap();
    let e = ddpm::data::load_cifar10(Split::Test, Some(&root)).unwrap_err();
    assert!(e.to_string().contains("label 12"), "{e}");

    // An archive that is not the published one is refused before it is unpacked.
    let other = common::scratch("cifar-archive");
    std::fs::create_dir_all(other.join("cifar10")).unwrap();
    std::fs::write(
        other.join("cifar10/cifar-10-binary.tar.gz"),
        b"\x1f\x8bnot it",
    )
    .unwrap();
    let e = ddpm::data::load_cifar10(Split::Test, Some(&other)).unwrap_err();
    assert!(matches!(e, DataError::LocalChecksum { .. }), "{e}");
    assert!(!other.join("cifar10/cifar-10-batches-bin").exists());
}

/// Mirroring is an exact reversal of each row of each channel.
#[test]
fn mirrored_batches_reverse_each_row() {
    let dir = common::scratch("folder-mirror");
    pattern(4, 4).save(dir.join("a.png")).unwrap();
    let (set, _) = load_image_folder(&ImageFolderConfig::new(&dir, 4), None).unwrap();
    let dev = Device::flex();
    let plain: Vec<f32> = set.batch(&[0], &dev).into_data().iter::<f32>().collect();
    let mirrored: Vec<f32> = set
        .batch_mirrored(&[0, 0], &[true, false], &dev)
        .into_data()
        .iter::<f32>()
        .collect();
    for c in 0..3 {
        for y in 0..4 {
            for x in 0..4 {
                let k = (c * 4 + y) * 4 + x;
                assert_eq!(mirrored[k], plain[(c * 4 + y) * 4 + 3 - x]);
                assert_eq!(mirrored[48 + k], plain[k]);
            }
        }
    }
}

fn colour_unet() -> ddpm::models::ModelSpec {
    ddpm::models::ModelSpec::Unet {
        config: ddpm::unet::UNetConfig::new(3, 3, 8)
            .with_ch_mult(vec![1, 2])
            .with_num_res_blocks(1)
            .with_attn_resolutions(vec![])
            .with_num_groups(4)
            .with_resolution(8)
            .with_dropout(0.0),
    }
}

fn diffusion() -> ddpm::core::GaussianDiffusion {
    ddpm::core::GaussianDiffusion::new(ddpm::core::DiffusionConfig::new(
        ddpm::core::ScheduleConfig {
            num_timesteps: 50,
            ..Default::default()
        },
    ))
    .unwrap()
}

/// Random flips are drawn from the run's generator: a resumed run mirrors the same images
/// and ends with the same weights as an uninterrupted one; the flips change the run.
#[test]
fn flips_resume_bit_exactly() {
    use ddpm::train::Trainer;
    let src = common::scratch("folder-flip-src");
    for i in 0..6u32 {
        RgbImage::from_fn(8, 8, |x, y| {
            Rgb([(x * 30 + i) as u8, (y * 20) as u8, (x * y) as u8])
        })
        .save(src.join(format!("{i}.png")))
        .unwrap();
    }
    let (data, _) = load_image_folder(&ImageFolderConfig::new(&src, 8), None).unwrap();
    let dev = Device::flex().autodiff();
    let config = |hflip| ddpm::train::TrainConfig {
        hflip,
        ..common::train_config(4, 4, 7, 2, 3)
    };
    // The same initial weights for every run.
    let fresh = |hflip| {
        dev.seed(42);
        Trainer::new_images(colour_unet(), diffusion(), config(hflip), data.count, &dev).unwrap()
    };
    let run = |hflip| {
        let mut t = fresh(hflip);
        let losses: Vec<f64> = (0..4).map(|_| t.step(&data).unwrap().loss).collect();
        (losses, common::weights(t.model()))
    };
    let (flipped, w_straight) = run(true);
    let (plain, _) = run(false);
    assert_ne!(flipped, plain, "hflip changed nothing");

    let dir = common::scratch("folder-flip-run");
    let mut first = fresh(true);
    for _ in 0..2 {
        first.step(&data).unwrap();
    }
    first.save_checkpoint(&dir).unwrap();
    drop(first);
    let mut second = Trainer::resume_images(&dir, &dev, None).unwrap();
    let rest: Vec<f64> = (0..2).map(|_| second.step(&data).unwrap().loss).collect();
    assert_eq!(rest, flipped[2..]);
    assert_eq!(
        common::max_diff(&common::weights(second.model()), &w_straight),
        0.0
    );

    // A grey model on colour data is an error before any step, not a shape panic.
    let grey = ddpm::models::ModelSpec::Unet {
        config: common::tiny_unet(),
    };
    let mut t = Trainer::new_images(grey, diffusion(), config(false), data.count, &dev).unwrap();
    let e = t.step(&data).unwrap_err();
    assert!(e.to_string().contains("[3, 8, 8]"), "{e}");
}
