//! diffusers' `diffusion_pytorch_model.safetensors` <-> [`UNet`] weights, through
//! `burn-store`: its safetensors store, the PyTorch layout adapters (linear weights
//! transposed, GroupNorm `weight`/`bias` as `gamma`/`beta`), a float cast (f16 and bf16 files
//! load as f32) and a key remapping between diffusers' module names and ours.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{DType, Device};
use burn_store::{
    BurnToPyTorchAdapter, FloatCastAdapter, KeyRemapper, ModuleAdapter, ModuleSnapshot,
    PyTorchToBurnAdapter, SafetensorsStore,
};
use ddpm_unet::{UNet, UNetConfig};

use super::DiffusersError;

/// diffusers' names -> ours, applied in order.
const FROM_DIFFUSERS: &[(&str, &str)] = &[
    (r"^time_embedding\.linear_1\.", "temb.dense0."),
    (r"^time_embedding\.linear_2\.", "temb.dense1."),
    (
        r"^down_blocks\.(\d+)\.resnets\.(\d+)\.",
        "down.$1.blocks.$2.",
    ),
    (
        r"^down_blocks\.(\d+)\.attentions\.(\d+)\.",
        "down.$1.attns.$2.",
    ),
    (
        r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.",
        "down.$1.downsample.conv.",
    ),
    (r"^mid_block\.resnets\.0\.", "mid_block1."),
    (r"^mid_block\.resnets\.1\.", "mid_block2."),
    (r"^mid_block\.attentions\.0\.", "mid_attn."),
    (r"^up_blocks\.(\d+)\.resnets\.(\d+)\.", "up.$1.blocks.$2."),
    (r"^up_blocks\.(\d+)\.attentions\.(\d+)\.", "up.$1.attns.$2."),
    (
        r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.",
        "up.$1.upsample.conv.",
    ),
    (r"^conv_norm_out\.", "norm_out."),
    (r"\.time_emb_proj\.", ".temb_proj."),
    (r"\.conv_shortcut\.", ".shortcut."),
    (r"\.group_norm\.", ".norm."),
    (r"\.to_q\.", ".q."),
    (r"\.to_k\.", ".k."),
    (r"\.to_v\.", ".v."),
    (r"\.to_out\.0\.", ".proj_out."),
];

/// Ours -> diffusers' names, applied in order (after the PyTorch adapter renamed GroupNorm
/// `gamma`/`beta` to `weight`/`bias`).
const TO_DIFFUSERS: &[(&str, &str)] = &[
    (r"^temb\.dense0\.", "time_embedding.linear_1."),
    (r"^temb\.dense1\.", "time_embedding.linear_2."),
    (
        r"^down\.(\d+)\.blocks\.(\d+)\.",
        "down_blocks.$1.resnets.$2.",
    ),
    (
        r"^down\.(\d+)\.attns\.(\d+)\.",
        "down_blocks.$1.attentions.$2.",
    ),
    (
        r"^down\.(\d+)\.downsample\.conv\.",
        "down_blocks.$1.downsamplers.0.conv.",
    ),
    (r"^mid_block1\.", "mid_block.resnets.0."),
    (r"^mid_block2\.", "mid_block.resnets.1."),
    (r"^mid_attn\.", "mid_block.attentions.0."),
    (r"^up\.(\d+)\.blocks\.(\d+)\.", "up_blocks.$1.resnets.$2."),
    (r"^up\.(\d+)\.attns\.(\d+)\.", "up_blocks.$1.attentions.$2."),
    (
        r"^up\.(\d+)\.upsample\.conv\.",
        "up_blocks.$1.upsamplers.0.conv.",
    ),
    (r"^norm_out\.", "conv_norm_out."),
    (r"\.temb_proj\.", ".time_emb_proj."),
    (r"\.shortcut\.", ".conv_shortcut."),
    (r"\.norm\.", ".group_norm."),
    (r"\.q\.", ".to_q."),
    (r"\.k\.", ".to_k."),
    (r"\.v\.", ".to_v."),
    (r"\.proj_out\.", ".to_out.0."),
];

fn remapper(rules: &[(&str, &str)]) -> KeyRemapper {
    rules
        .iter()
        .try_fold(KeyRemapper::new(), |r, (from, to)| {
            r.add_pattern(*from, *to)
        })
        // The patterns are constants of this file, compiled by every test.
        .unwrap_or_default()
}

/// The diffusers name of one of our parameter paths (`down.1.attns.0.q.weight` ->
/// `down_blocks.1.attentions.0.to_q.weight`; GroupNorm `gamma`/`beta` as `weight`/`bias`).
pub fn diffusers_name(path: &str) -> String {
    let mut name = path.to_string();
    if name.contains("norm") {
        if let Some(base) = name.strip_suffix(".gamma") {
            name = format!("{base}.weight");
        } else if let Some(base) = name.strip_suffix(".beta") {
            name = format!("{base}.bias");
        }
    }
    remapper(TO_DIFFUSERS)
        .to_regex_pairs()
        .iter()
        .fold(name, |n, (re, to)| {
            re.replace_all(&n, to.as_str()).into_owned()
        })
}

/// Every tensor `model` holds, by its diffusers name, with its shape in PyTorch's layout:
/// what [`save_unet`] writes (no tensor data is read).
pub fn tensor_manifest(model: &UNet) -> BTreeMap<String, Vec<usize>> {
    model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .map(|t| (diffusers_name(&t.name), t.shape.to_vec()))
        .collect()
}

/// Builds `config`'s U-Net on `device` and loads `file` into it: every tensor of the file
/// must fill one parameter of the same shape, and every parameter must be filled. Float
/// tensors of any precision load as f32.
///
/// # Errors
/// [`DiffusersError::Weights`] for an unreadable or truncated file;
/// [`DiffusersError::Mismatch`] listing every missing, unexpected and mis-shaped tensor (no
/// partial model is returned).
pub fn load_unet(
    config: &UNetConfig,
    file: &Path,
    device: &Device,
) -> Result<UNet, DiffusersError> {
    let mut model = config.init(device).map_err(|e| DiffusersError::Model {
        path: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let meta = std::fs::metadata(file).map_err(|e| DiffusersError::Weights {
        path: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(DiffusersError::Weights {
            path: file.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    let mut store = SafetensorsStore::from_file(file)
        .with_from_adapter(PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32)))
        .remap(remapper(FROM_DIFFUSERS))
        .validate(false)
        .allow_partial(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| DiffusersError::Weights {
            path: file.to_path_buf(),
            reason: e.to_string(),
        })?;
    let mut problems: Vec<String> = Vec::new();
    problems.extend(
        result
            .missing
            .iter()
            .map(|(p, _)| format!("missing: {} (ours: {p})", diffusers_name(p))),
    );
    problems.extend(result.unused.iter().map(|p| {
        format!(
            "unexpected: {} (no parameter of this configuration)",
            diffusers_name(p)
        )
    }));
    problems.extend(result.errors.iter().map(|e| format!("{e}")));
    if !problems.is_empty() {
        return Err(DiffusersError::Mismatch {
            path: file.to_path_buf(),
            problems,
        });
    }
    Ok(model)
}

/// Writes `model`'s weights to `file` in diffusers' names and PyTorch's layout (f32).
///
/// # Errors
/// [`DiffusersError::Weights`] on any I/O or encoding failure.
pub fn save_unet(model: &UNet, file: &Path) -> Result<(), DiffusersError> {
    let mut store = SafetensorsStore::from_file(file)
        .with_to_adapter(BurnToPyTorchAdapter)
        .remap(remapper(TO_DIFFUSERS))
        .overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| DiffusersError::Weights {
            path: file.to_path_buf(),
            reason: e.to_string(),
        })
}
