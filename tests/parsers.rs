//! Property tests for every parser of outside data: IDX files, a checkpoint's `state.json`,
//! optimizer state files and PNG inputs. Random and mutated inputs never panic and never
//! allocate beyond a bound proportional to the input (a counting allocator measures the
//! thread's peak); valid inputs round-trip.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use ddpm::adam::Adam;
use ddpm::checkpoint::{self, CheckpointMeta};
use ddpm::data::{parse_idx_images, parse_idx_labels};
use ddpm::models::ModelSpec;
use ddpm::train::{TrainConfig, TrainState};
use proptest::prelude::*;

/// The system allocator, counting this thread's live bytes and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call forwards to `System` with the same arguments; the bookkeeping touches
// only thread-local cells and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `System.alloc`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `System.alloc_zeroed`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as `System.dealloc`.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `System.realloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most bytes this thread held at once above what
/// it held before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - start).max(0) as usize)
}

/// Flips, overwrites and truncations of `base`, driven by proptest.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len();
    (
        prop::collection::vec((0..len.max(1), any::<u8>()), 0..8),
        prop::option::of((0..len.max(1), any::<u64>())),
        prop::option::of(0..=len),
    )
        .prop_map(move |(flips, word, cut)| {
            let mut b = base.clone();
            for (at, x) in flips {
                if at < b.len() {
                    b[at] ^= x;
                }
            }
            if let Some((at, w)) = word {
                for (k, byte) in w.to_le_bytes().into_iter().enumerate() {
                    if let Some(slot) = b.get_mut(at + k) {
                        *slot = byte;
                    }
                }
            }
            if let Some(cut) = cut {
                b.truncate(cut);
            }
            b
        })
}

fn idx_images(n: u32, r: u32, c: u32, pixels: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [2051u32, n, r, c] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend_from_slice(pixels);
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [2049u32, labels.len() as u32] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend_from_slice(labels);
    v
}

const KIB: usize = 1 << 10;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// Valid IDX files round-trip; anything else parses or is an error, and parsing never
    /// allocates (the header is removed in place).
    #[test]
    fn idx_files_round_trip_and_never_panic(
        (n, r, c) in (0u32..5, 0u32..6, 0u32..6),
        seed in any::<u8>(),
        noise in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let pixels: Vec<u8> = (0..(n * r * c) as usize).map(|i| (i as u8).wrapping_mul(seed)).collect();
        let path = Path::new("crafted");
        let (parsed, peak) = peak_of(|| parse_idx_images(idx_images(n, r, c, &pixels), path));
        let (px, count, rows, cols) = parsed.unwrap();
        prop_assert_eq!((px, count, rows, cols), (pixels.clone(), n as usize, r as usize, c as usize));
        prop_assert!(peak <= KIB, "peak {}", peak);
        let labels: Vec<u8> = pixels.iter().take(n as usize).copied().collect();
        prop_assert_eq!(parse_idx_labels(idx_labels(&labels), path).unwrap(), labels);
        // Random bytes, and random bytes behind a valid magic number.
        let _ = parse_idx_images(noise.clone(), path);
        let _ = parse_idx_labels(noise.clone(), path);
        let mut magic = 2051u32.to_be_bytes().to_vec();
        magic.extend_from_slice(&noise);
        let (r, peak) = peak_of(|| parse_idx_images(magic, path));
        if let Ok((px, n, rows, cols)) = r {
            prop_assert_eq!(px.len(), n * rows * cols);
        }
        prop_assert!(peak <= KIB);
    }

    #[test]
    fn mutated_idx_files_never_panic(bytes in mutated(idx_images(3, 4, 5, &[9; 60]))) {
        let len = bytes.len();
        let (r, peak) = peak_of(|| parse_idx_images(bytes, Path::new("m")));
        if let Ok((px, n, rows, cols)) = r {
            prop_assert_eq!(px.len(), n * rows * cols);
        }
        prop_assert!(peak <= KIB + len, "peak {}", peak);
    }

    #[test]
    fn mutated_label_files_never_panic(bytes in mutated(idx_labels(&[1, 2, 3, 4, 5, 6]))) {
        let (r, peak) = peak_of(|| parse_idx_labels(bytes, Path::new("m")));
        if let Ok(labels) = r {
            prop_assert!(labels.len() <= 64);
        }
        prop_assert!(peak <= KIB);
    }
}

/// A checkpoint folder written by `checkpoint::save` for a tiny module (what a real
/// checkpoint holds, without training).
fn checkpoint_folder(name: &str) -> (PathBuf, Vec<u8>) {
    let run = common::scratch(name);
    let dev = Device::flex();
    let model: Linear = LinearConfig::new(3, 2).init(&dev);
    let mut state = TrainState::new(64, 1);
    state.step = 5;
    let meta = CheckpointMeta {
        format: checkpoint::FORMAT,
        crate_version: env!("CARGO_PKG_VERSION").into(),
        model: ModelSpec::Unet {
            config: common::tiny_unet(),
        },
        diffusion: ddpm::core::DiffusionConfig::default(),
        train: TrainConfig::default(),
        dataset: Some(ddpm::data::Dataset::Mnist),
        data: None,
        num_classes: None,
        state,
        files: Default::default(),
    };
    let dir = checkpoint::save(&run, &model, &model, &Adam::new(1e-8), meta, 1).unwrap();
    let json = std::fs::read(dir.join(checkpoint::META_FILE)).unwrap();
    (dir, json)
}

/// Every JSON value a mutation can put somewhere.
fn hostile_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        Just(serde_json::Value::from(u64::MAX)),
        Just(serde_json::Value::from(1u64 << 40)),
        any::<f64>().prop_map(serde_json::Value::from),
        "[a-z./]{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::json!(["/etc/passwd", {"bytes": 1, "crc32": 2}])),
        Just(serde_json::json!({"/etc/passwd": {"bytes": 1, "crc32": 2}})),
    ]
}

/// Sets the value at path `at` (indices into object keys and arrays, modulo their lengths)
/// of `v` to `new`.
fn set_somewhere(v: &mut serde_json::Value, at: &[usize], new: serde_json::Value) {
    let Some((&k, rest)) = at.split_first() else {
        *v = new;
        return;
    };
    match v {
        serde_json::Value::Object(map) if !map.is_empty() => {
            let key = map.keys().nth(k % map.len()).cloned().unwrap_or_default();
            if let Some(child) = map.get_mut(&key) {
                set_somewhere(child, rest, new);
            }
        }
        serde_json::Value::Array(items) if !items.is_empty() => {
            let n = items.len();
            set_somewhere(&mut items[k % n], rest, new);
        }
        _ => *v = new,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// `state.json` with one value anywhere replaced by a hostile one and re-sealed with its
    /// checksum (so the semantic checks are reached), or with its bytes mangled: reading it
    /// and sizing its model never panic nor allocate beyond a bound, and nothing outside the
    /// folder is named in a checkpoint that opens.
    #[test]
    fn mutated_state_json_never_panics(
        at in prop::collection::vec(any::<usize>(), 1..5),
        new in hostile_value(),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        reseal in any::<bool>(),
    ) {
        let (dir, json) = checkpoint_folder("parsers-checkpoint-mutated");
        let mut value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        set_somewhere(&mut value, &at, new);
        if reseal {
            if let Some(obj) = value.as_object_mut() {
                obj.remove(checkpoint::META_CRC_KEY);
            }
            let crc = checkpoint::meta_checksum(&value);
            if let Some(obj) = value.as_object_mut() {
                obj.insert(checkpoint::META_CRC_KEY.into(), crc.into());
            }
        }
        let mut bytes = serde_json::to_vec(&value).unwrap();
        let len = bytes.len();
        for (i, x) in flips {
            bytes[i % len] ^= x;
        }
        std::fs::write(dir.join(checkpoint::META_FILE), &bytes).unwrap();
        let (opened, peak) = peak_of(|| {
            let opened = checkpoint::open(&dir);
            if let Ok(c) = &opened {
                let _ = c.meta.model.num_params();
                let _ = c.meta.diffusion();
            }
            opened
        });
        prop_assert!(peak <= 64 * len + 256 * KIB, "peak {} for {} bytes", peak, len);
        if let Ok(c) = opened {
            let names: Vec<&str> = c.meta.files.keys().map(String::as_str).collect();
            prop_assert_eq!(names, checkpoint::DATA_FILES.to_vec());
            prop_assert!(c.meta.state.sampler.offset <= c.meta.state.sampler.len);
        }
    }
}

#[test]
fn state_json_round_trips() {
    let (dir, _) = checkpoint_folder("parsers-checkpoint-round-trip");
    let meta = checkpoint::read_meta(&dir).unwrap();
    let again = checkpoint::write_meta(&dir, meta.clone()).unwrap();
    assert_eq!(checkpoint::read_meta(&dir).unwrap(), again);
    assert_eq!(again, meta);
}

/// An optimizer state with moments for a 3 -> 2 linear layer, as bytes.
fn optimizer_state() -> Vec<u8> {
    let dev = Device::flex().autodiff();
    let net: Linear = LinearConfig::new(3, 2).init(&dev);
    let x = Tensor::<2>::from_floats([[0.5, -1.0, 2.0]], &dev);
    let loss = net.forward(x).square().mean();
    let mut adam = Adam::new(1e-8);
    let _ = adam.step(
        1e-2,
        net.clone(),
        GradientsParams::from_grads(loss.backward(), &net),
    );
    let dir = common::scratch("parsers-adam");
    let path = dir.join("optim.bin");
    adam.save(&path).unwrap();
    std::fs::read(path).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn mutated_optimizer_states_never_panic(bytes in mutated(optimizer_state())) {
        let path = std::env::temp_dir().join(format!(
            "ddpm-parsers-optim-{}-{:?}.bin",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, &bytes).unwrap();
        let len = bytes.len();
        let (r, peak) = peak_of(|| Adam::load(&path, &Device::flex()).map(|a| a.num_states()));
        prop_assert!(peak <= 16 * len + 256 * KIB, "peak {} for {} bytes", peak, len);
        if let Ok(n) = r {
            prop_assert!(n <= len);
        }
    }
}

#[test]
fn optimizer_state_round_trips() {
    let bytes = optimizer_state();
    let dir = common::scratch("parsers-adam-rt");
    let path = dir.join("optim.bin");
    std::fs::write(&path, &bytes).unwrap();
    let adam = Adam::load(&path, &Device::flex()).unwrap();
    assert_eq!(adam.num_states(), 2);
    adam.save(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

/// A PNG of `w x h` grey pixels, encoded by the `image` crate.
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 7 + y * 3) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `png` with the size in its header replaced (and the header's CRC recomputed): a small
/// file that announces a huge image.
fn png_announcing(w: u32, h: u32) -> Vec<u8> {
    let mut b = png(28, 28);
    // Signature (8), IHDR length (4), "IHDR" (4), then width and height.
    b[16..20].copy_from_slice(&w.to_be_bytes());
    b[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
}

fn load(bytes: &[u8], c: usize) -> (Result<[usize; 4], String>, usize) {
    let path = std::env::temp_dir().join(format!(
        "ddpm-parsers-png-{}-{:?}.png",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, bytes).unwrap();
    peak_of(|| {
        ddpm::sampling::load_png(&path, [c, 28, 28], &Device::flex())
            .map(|t| t.dims())
            .map_err(|e| e.to_string())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn mutated_pngs_never_panic(bytes in mutated(png(28, 28)), c in prop::sample::select(vec![1usize, 3])) {
        let len = bytes.len();
        let (r, peak) = load(&bytes, c);
        prop_assert!(peak <= 64 * len + 512 * KIB, "peak {} for {} bytes", peak, len);
        if let Ok(dims) = r {
            prop_assert_eq!(dims, [1, c, 28, 28]);
        }
    }
}

/// A 20000 x 20000 PNG announced in a 100-byte file is refused from its header.
#[test]
fn pngs_are_sized_before_they_are_decoded() {
    assert_eq!(load(&png(28, 28), 1).0.unwrap(), [1, 1, 28, 28]);
    assert_eq!(load(&png(28, 28), 3).0.unwrap(), [1, 3, 28, 28]);
    let (r, peak) = load(&png_announcing(20_000, 20_000), 1);
    let e = r.unwrap_err();
    assert!(e.contains("20000x20000"), "{e}");
    assert!(peak < 256 * KIB, "peak {peak}");
    let e = load(&png(14, 28), 1).0.unwrap_err();
    assert!(e.contains("14x28"), "{e}");
}

fn diffusers_fixture(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusers/cifar10-tiny")
        .join(file)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// diffusers' `config.json` with any value anywhere replaced by a hostile one: mapped or
    /// refused, never a panic, and a mapped configuration is a valid U-Net.
    #[test]
    fn mutated_diffusers_configs_never_panic(
        at in prop::collection::vec(any::<usize>(), 1..4),
        new in hostile_value(),
    ) {
        let path = diffusers_fixture("config.json");
        let mut value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        set_somewhere(&mut value, &at, new);
        let (r, peak) = peak_of(|| ddpm::diffusers::unet_config_from_json(&value, &path));
        prop_assert!(peak <= 256 * KIB, "peak {}", peak);
        if let Ok(config) = r {
            prop_assert!(config.validate().is_ok());
            prop_assert!(config.num_params().is_ok());
        }
        let scheduler = diffusers_fixture("scheduler_config.json");
        let mut value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&scheduler).unwrap()).unwrap();
        set_somewhere(&mut value, &at, hostile_value_of(&at));
        let _ = ddpm::diffusers::scheduler_from_json(&value, &scheduler);
    }

    /// A diffusers safetensors file with flipped bytes, overwritten words (the header length
    /// included) or truncated: loaded completely or refused, never a panic.
    #[test]
    fn mutated_diffusers_weights_never_panic(
        bytes in mutated(std::fs::read(diffusers_fixture("diffusion_pytorch_model.safetensors")).unwrap()),
    ) {
        let path = std::env::temp_dir().join(format!(
            "ddpm-parsers-weights-{}-{:?}.safetensors",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, &bytes).unwrap();
        let config = ddpm::diffusers::read_unet_config(&diffusers_fixture("")).unwrap();
        let len = bytes.len();
        let (r, peak) = peak_of(|| ddpm::diffusers::load_unet(&config, &path, &Device::flex()).map(|_| ()));
        prop_assert!(peak <= 16 * len + 16 * (1 << 20), "peak {} for {} bytes", peak, len);
        let _ = r;
    }
}

/// A second hostile value for the scheduler, drawn from the same path.
fn hostile_value_of(at: &[usize]) -> serde_json::Value {
    match at.first().copied().unwrap_or(0) % 4 {
        0 => serde_json::json!(-1),
        1 => serde_json::json!(u64::MAX),
        2 => serde_json::json!("learned"),
        _ => serde_json::json!([f64::MAX, -0.5]),
    }
}
