//! The names and numbers of the checkpoint format: its version, the files of a checkpoint.

/// The metadata format this version writes. 4: typed metadata with checksums of the files and
/// of the metadata itself (`meta_crc32`); 3 (read and resumed): the same without the metadata
/// checksum; 2 (read for sampling and evaluation): the example's untyped description, no
/// checksums.
pub const FORMAT: u32 = 4;
/// The oldest format that can be resumed.
pub const RESUMABLE_FORMAT: u32 = 3;
/// The metadata file of a checkpoint.
pub const META_FILE: &str = "state.json";
/// The weights.
pub const MODEL_FILE: &str = "model.bpk";
/// The EMA of the weights.
pub const EMA_FILE: &str = "ema.bpk";
/// The optimizer state.
pub const OPTIM_FILE: &str = "optim.bin";
/// The lock file of a run directory.
pub const LOCK_FILE: &str = "run.lock";
/// The files besides [`META_FILE`] that every checkpoint of format 3 and later holds and lists
/// with their checksums: no more, no fewer.
pub const DATA_FILES: [&str; 3] = [EMA_FILE, MODEL_FILE, OPTIM_FILE];
/// The key of `state.json` holding the CRC-32 of the rest of the metadata (format 4).
pub const META_CRC_KEY: &str = "meta_crc32";
/// The description beside the weights of a legacy (format 2) `train --devices` run.
pub(super) const LEGACY_PARALLEL_META: &str = "model.json";
