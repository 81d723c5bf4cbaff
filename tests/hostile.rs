//! Hostile and careless inputs: edited checkpoint metadata, resuming against other data, time
//! limits that are not durations, a run directory raced for by eight processes, a lock holder
//! killed with SIGKILL. Each was a panic, an abort, a read outside the run or a silent load
//! before its fix (docs/results.md, "What we tried to break").

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use ddpm::checkpoint::{self, CheckpointError, RunLock};
use ddpm::core::{DiffusionConfig, GaussianDiffusion};
use ddpm::data::{Dataset, ImageSet, Split};
use ddpm::models::{ImagePredictor, ModelError, ModelSpec};
use ddpm::train::{FitOptions, TrainError, Trainer};

fn tiny() -> ModelSpec {
    ModelSpec::Unet {
        config: common::tiny_unet(),
    }
}

/// The first `n` test images of MNIST.
fn images(n: usize) -> ImageSet {
    let all = ImageSet::load(Dataset::Mnist, Split::Test, Some(&common::data_dir())).unwrap();
    all.subset(&(0..n).collect::<Vec<_>>())
}

fn trainer(steps: u64, data: &ImageSet) -> Trainer<ImagePredictor, 4> {
    Trainer::new_images(
        tiny(),
        GaussianDiffusion::new(DiffusionConfig::default()).unwrap(),
        common::train_config(steps, 4, 3, 2, 5),
        data.count,
        &Device::flex(),
    )
    .unwrap()
    .with_dataset(Dataset::Mnist)
}

fn quiet(dir: &Path) -> FitOptions<'static> {
    FitOptions::new(dir).with_progress(false).with_plot(false)
}

/// A run of 2 steps (one checkpoint, step 2) in a fresh scratch folder.
fn run_of_two_steps(name: &str, data: &ImageSet) -> (PathBuf, PathBuf) {
    let dir = common::scratch(name);
    trainer(2, data).fit(data, quiet(&dir)).unwrap();
    let ckpt = checkpoint::resolve(&dir).unwrap().checkpoint.dir;
    (dir, ckpt)
}

fn edit_meta(ckpt: &Path, edit: impl FnOnce(&mut serde_json::Value), reseal: bool) {
    let path = ckpt.join(checkpoint::META_FILE);
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut value);
    if reseal {
        let obj = value.as_object_mut().unwrap();
        obj.remove(checkpoint::META_CRC_KEY);
        let crc = checkpoint::meta_checksum(&value);
        value[checkpoint::META_CRC_KEY] = crc.into();
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}

/// Metadata is protected by its own checksum; the file list is the format's, every file
/// verified; a name outside the checkpoint folder is a foreign checkpoint, never opened.
#[test]
fn edited_metadata_is_damage_or_foreign_and_nothing_outside_is_read() {
    let data = images(64);
    let (_, ckpt) = run_of_two_steps("hostile-meta", &data);
    let original = std::fs::read(ckpt.join(checkpoint::META_FILE)).unwrap();
    let restore = || std::fs::write(ckpt.join(checkpoint::META_FILE), &original).unwrap();

    // One value changed, the checksum not: damage.
    edit_meta(&ckpt, |v| v["train"]["lr"] = 0.5.into(), false);
    let e = checkpoint::open(&ckpt).unwrap_err();
    assert!(matches!(e, CheckpointError::Damaged { .. }), "{e}");
    assert!(e.to_string().contains("state.json changed on disk"), "{e}");
    restore();
    // The checksum removed: damage, not a format-3 file.
    edit_meta(
        &ckpt,
        |v| {
            v.as_object_mut().unwrap().remove(checkpoint::META_CRC_KEY);
        },
        false,
    );
    let e = checkpoint::open(&ckpt).unwrap_err();
    assert!(e.to_string().contains("no 'meta_crc32'"), "{e}");
    restore();

    // A file list naming a file outside the checkpoint: foreign, before anything is opened
    // (the error must not report the outside file's size, as it once did).
    let outside = std::env::temp_dir().join(format!("ddpm-outside-{}", std::process::id()));
    std::fs::write(&outside, vec![7u8; 1234]).unwrap();
    for name in [outside.display().to_string(), "../../loss.csv".into()] {
        edit_meta(
            &ckpt,
            |v| {
                let files = v["files"].as_object_mut().unwrap();
                let sum = files.remove("optim.bin").unwrap();
                files.insert(name.clone(), sum);
            },
            true,
        );
        let e = checkpoint::open(&ckpt).unwrap_err();
        assert!(matches!(e, CheckpointError::Foreign { .. }), "{name}: {e}");
        assert!(
            e.to_string()
                .contains("not a file of the checkpoint format"),
            "{e}"
        );
        assert!(!e.to_string().contains("1234"), "{e}");
        restore();
    }
    let _ = std::fs::remove_file(&outside);

    // An empty file list, then a changed EMA file: damage, not a silent load.
    edit_meta(&ckpt, |v| v["files"] = serde_json::json!({}), true);
    let e = checkpoint::open(&ckpt).unwrap_err();
    assert!(matches!(e, CheckpointError::Damaged { .. }), "{e}");
    assert!(e.to_string().contains("no checksum for ema.bpk"), "{e}");
    restore();
    let ema = ckpt.join(checkpoint::EMA_FILE);
    let bytes = std::fs::read(&ema).unwrap();
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    std::fs::write(&ema, &flipped).unwrap();
    let e = checkpoint::load_predictor(&ckpt, true, &Device::flex()).unwrap_err();
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    std::fs::write(&ema, &bytes).unwrap();

    // T = 2^40 diffusion steps (was an abort: "memory allocation of 8796093022208 bytes
    // failed", found by tests/parsers.rs).
    edit_meta(
        &ckpt,
        |v| v["diffusion"]["schedule"]["num_timesteps"] = (1u64 << 40).into(),
        true,
    );
    let e = checkpoint::open(&ckpt).unwrap_err();
    assert!(e.to_string().contains("more than the 1048576"), "{e}");
    restore();

    // A format number beyond u32 is not read as a smaller one.
    edit_meta(&ckpt, |v| v["format"] = ((1u64 << 32) + 4).into(), true);
    let e = checkpoint::open(&ckpt).unwrap_err();
    assert!(matches!(e, CheckpointError::Foreign { .. }), "{e}");
    restore();
    checkpoint::open(&ckpt).unwrap();
}

/// A U-Net of 2^40 base channels in a (re-sealed) checkpoint is an error before anything is
/// allocated, and so is one whose weights would not fit this machine's memory.
#[test]
fn an_absurd_model_size_is_an_error_not_an_abort() {
    let data = images(64);
    let (_, ckpt) = run_of_two_steps("hostile-size", &data);
    edit_meta(
        &ckpt,
        |v| v["model"]["config"]["ch"] = (1u64 << 40).into(),
        true,
    );
    let e = checkpoint::load_predictor(&ckpt, true, &Device::flex()).unwrap_err();
    assert!(matches!(e, CheckpointError::Model(_)), "{e}");
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = Trainer::resume_images(&ckpt, &Device::flex(), None).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");

    // Within the crate's bounds but beyond this machine: the paper's CIFAR-10 layout at a
    // width whose weights (twice: the template and the loaded copy) exceed the memory.
    let Some(memory) = ddpm::models::machine_memory() else {
        eprintln!("skipped the machine-memory case: no /proc/meminfo");
        return;
    };
    let wide = [512usize, 1024, 1536, 2048, 2560]
        .into_iter()
        .find_map(|ch| {
            let spec = ModelSpec::Unet {
                config: ddpm::unet::UNetConfig::new(3, 3, ch),
            };
            let params = spec.num_params().ok()?;
            (params.saturating_mul(8) > memory).then_some((spec, params))
        });
    let Some((spec, params)) = wide else {
        eprintln!("skipped the machine-memory case: {memory} bytes is more than any tried");
        return;
    };
    let e = spec.init(&Device::flex()).unwrap_err();
    assert!(matches!(e, ModelError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains(&params.to_string()), "{e}");
}

/// Resuming (or fitting) against a data set other than the run's is an error; a position
/// outside the data read from a checkpoint is damage; neither indexes out of range.
#[test]
fn resuming_against_other_data_is_an_error() {
    let data = images(64);
    let (dir, ckpt) = run_of_two_steps("hostile-data", &data);
    let mut t = Trainer::resume_images(&dir, &Device::flex(), Some(4)).unwrap();
    let smaller = images(16);
    let e = t.fit(&smaller, quiet(&dir)).unwrap_err();
    assert!(
        matches!(
            e,
            TrainError::DataMismatch {
                expected: 64,
                actual: 16
            }
        ),
        "{e}"
    );
    let e = t.step(&smaller).unwrap_err();
    assert!(e.to_string().contains("64 examples"), "{e}");
    // The right data still trains.
    t.fit(&data, quiet(&dir)).unwrap();

    // A crafted position: an offset past the data, and a data length of 2^60.
    let ckpt4 = checkpoint::resolve(&dir).unwrap().checkpoint.dir;
    assert_ne!(ckpt4, ckpt);
    edit_meta(
        &ckpt4,
        |v| v["state"]["sampler"]["offset"] = 1000.into(),
        true,
    );
    let e = checkpoint::open(&ckpt4).unwrap_err();
    assert!(e.to_string().contains("outside the data"), "{e}");
    edit_meta(
        &ckpt4,
        |v| {
            v["state"]["sampler"]["offset"] = 0.into();
            v["state"]["sampler"]["len"] = (1u64 << 60).into();
        },
        true,
    );
    let mut t = Trainer::resume_images(&ckpt4, &Device::flex(), Some(6)).unwrap();
    let e = t.step(&data).unwrap_err();
    assert!(matches!(e, TrainError::DataMismatch { .. }), "{e}");
}

/// `fit` given one checkpoint folder continues in its run directory; a run below a later
/// checkpoint of the same directory refuses to interleave two histories.
#[test]
fn a_checkpoint_folder_resumes_into_its_run_and_never_below_a_later_one() {
    let data = images(64);
    let (dir, ckpt2) = run_of_two_steps("hostile-resume-folder", &data);
    let mut t = Trainer::resume_images(&ckpt2, &Device::flex(), Some(4)).unwrap();
    let r = t.fit(&data, quiet(&ckpt2)).unwrap();
    assert_eq!(r.step, 4);
    assert_eq!(checkpoint::run_dir_of(&r.checkpoint), dir);
    assert!(
        !ckpt2.join("checkpoints").exists(),
        "written inside the checkpoint"
    );
    assert_eq!(
        checkpoint::list(&dir)
            .iter()
            .map(|c| c.0)
            .collect::<Vec<_>>(),
        [2, 4]
    );
    // Step 2 again, with step 4 present: refused, nothing deleted.
    let mut t = Trainer::resume_images(&ckpt2, &Device::flex(), Some(6)).unwrap();
    let e = t.fit(&data, quiet(&dir)).unwrap_err();
    assert!(
        matches!(
            e,
            TrainError::NewerCheckpoints {
                step: 2,
                newer: 4,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(checkpoint::list(&dir).len(), 2);
}

#[test]
fn time_limits_must_be_durations() {
    for bad in [f64::NAN, f64::INFINITY, -1.0, 1e300] {
        let e = ddpm::train::minutes_to_duration(bad).unwrap_err();
        assert!(matches!(e, TrainError::TimeLimit(_)), "{bad}: {e}");
        assert!(FitOptions::new("x").with_time_limit_minutes(bad).is_err());
    }
    assert_eq!(
        ddpm::train::minutes_to_duration(1.5).unwrap(),
        Duration::from_secs(90)
    );
    assert_eq!(
        ddpm::train::minutes_to_duration(0.0).unwrap(),
        Duration::ZERO
    );
}

/// The child side of the lock tests: re-run this binary with `DDPM_LOCK_CHILD` set.
///
/// - `fit DIR GO`: wait for file GO, then fit 6 steps in DIR (each step sleeps 0.3 s), exit
///   0 when it trained, 3 when the directory was locked;
/// - `hold DIR`: take the lock, write DIR/held, sleep.
#[test]
#[ignore = "a helper run by the lock tests in a child process"]
fn lock_child() {
    let Ok(args) = std::env::var("DDPM_LOCK_CHILD") else {
        return;
    };
    let args: Vec<&str> = args.split('|').collect();
    let dir = PathBuf::from(args[1]);
    match args[0] {
        "fit" => {
            let go = PathBuf::from(args[2]);
            let data = images(16);
            let mut t = trainer(6, &data);
            std::fs::write(
                dir.with_extension(format!("ready-{}", std::process::id())),
                b"",
            )
            .unwrap();
            while !go.exists() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let opts = quiet(&dir).on_step(|_| std::thread::sleep(Duration::from_millis(300)));
            match t.fit(&data, opts) {
                Ok(_) => std::process::exit(0),
                Err(TrainError::Checkpoint(CheckpointError::Locked { .. })) => {
                    std::process::exit(3)
                }
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1)
                }
            }
        }
        "hold" => {
            let _lock = RunLock::acquire(&dir).unwrap();
            std::fs::write(dir.join("held"), b"").unwrap();
            std::thread::sleep(Duration::from_secs(120));
        }
        other => panic!("unknown child job {other}"),
    }
}

fn child(job: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "lock_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("DDPM_LOCK_CHILD", job)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

/// Eight processes started at once on one run directory holding a stale lock file (a dead
/// holder's pid in it): exactly one trains, seven are told it is in use.
#[test]
fn eight_processes_race_for_a_run_and_exactly_one_trains() {
    let root = common::scratch("hostile-race");
    let dir = root.join("run");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(checkpoint::LOCK_FILE), "pid 999999 on elsewhere").unwrap();
    let go = root.join("go");
    let mut children: Vec<_> = (0..8)
        .map(|_| {
            child(&format!("fit|{}|{}", dir.display(), go.display()))
                .spawn()
                .unwrap()
        })
        .collect();
    // Every child is built and waiting before any is let go.
    let started = Instant::now();
    loop {
        let ready = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("run.ready-"))
            .count();
        if ready == 8 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "children not ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(&go, b"").unwrap();
    let codes: Vec<i32> = children
        .iter_mut()
        .map(|c| c.wait().unwrap().code().unwrap_or(-1))
        .collect();
    let trained = codes.iter().filter(|&&c| c == 0).count();
    let locked = codes.iter().filter(|&&c| c == 3).count();
    assert_eq!((trained, locked), (1, 7), "exit codes {codes:?}");
    assert_eq!(common::newest_step(&dir), 6);
}

/// A holder killed with SIGKILL releases the lock: the next process takes it at once.
#[test]
fn a_killed_holder_releases_the_lock() {
    let dir = common::scratch("hostile-kill");
    let mut holder = child(&format!("hold|{}", dir.display())).spawn().unwrap();
    let started = Instant::now();
    while !dir.join("held").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "holder never locked"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let e = RunLock::acquire(&dir).unwrap_err();
    assert!(
        e.to_string().contains(&format!("pid {}", holder.id())),
        "{e}"
    );
    holder.kill().unwrap(); // SIGKILL
    holder.wait().unwrap();
    let lock = RunLock::acquire(&dir).unwrap();
    let text = std::fs::read_to_string(lock.path()).unwrap();
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
}
