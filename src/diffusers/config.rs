//! diffusers' `UNet2DModel` `config.json` <-> [`UNetConfig`].
//!
//! Every field of the `UNet2DModel` constructor (diffusers 0.42) is either mapped, or must
//! hold the one value this crate's U-Net implements; anything else, and any field this
//! module does not know, is listed in one [`DiffusersError::Unsupported`]. A missing field
//! takes diffusers' default, as `UNet2DModel.from_pretrained` would.

use std::path::Path;

use ddpm_unet::{DownsamplePadding, UNetConfig};
use serde_json::{Map, Value, json};

use super::DiffusersError;

/// The diffusers version whose `UNet2DModel` and `DDPMScheduler` this module was checked
/// against (written as `_diffusers_version` on export).
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// Reads fields of a JSON object with diffusers' defaults, collecting what is unsupported.
pub(super) struct Fields<'a> {
    obj: &'a Map<String, Value>,
    pub(super) problems: Vec<String>,
    seen: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    pub(super) fn new(obj: &'a Map<String, Value>) -> Self {
        Self {
            obj,
            problems: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// The value of `key`, or `default` when absent.
    pub(super) fn get(&mut self, key: &'static str, default: Value) -> Value {
        self.seen.push(key);
        self.obj.get(key).cloned().unwrap_or(default)
    }

    pub(super) fn problem(&mut self, key: &str, value: &Value, why: &str) {
        self.problems.push(format!("{key}: {value} ({why})"));
    }

    /// The value of `key` converted by `read`, or `default` (recording a problem `expected
    /// ...` when the value does not convert).
    fn typed<T: Copy + Into<Value>>(
        &mut self,
        key: &'static str,
        default: T,
        read: impl Fn(&Value) -> Option<T>,
        expected: &str,
    ) -> T {
        let v = self.get(key, default.into());
        read(&v).unwrap_or_else(|| {
            self.problem(key, &v, expected);
            default
        })
    }

    pub(super) fn usize(&mut self, key: &'static str, default: usize) -> usize {
        let read = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
        self.typed(key, default, read, "expected a whole number")
    }

    pub(super) fn f64(&mut self, key: &'static str, default: f64) -> f64 {
        self.typed(key, default, Value::as_f64, "expected a number")
    }

    pub(super) fn bool(&mut self, key: &'static str, default: bool) -> bool {
        self.typed(key, default, Value::as_bool, "expected true or false")
    }

    /// `key` must equal one of `allowed` (the first is diffusers' default).
    pub(super) fn only(&mut self, key: &'static str, allowed: &[Value], why: &str) {
        let v = self.get(key, allowed[0].clone());
        if !allowed.contains(&v) {
            self.problem(key, &v, why);
        }
    }

    /// Every key not read and not starting with `_` is unknown.
    pub(super) fn finish(mut self) -> Vec<String> {
        let mut unknown: Vec<String> = self
            .obj
            .keys()
            .filter(|k| !k.starts_with('_') && !self.seen.contains(&k.as_str()))
            .map(|k| format!("{k}: {} (a field this version does not know)", self.obj[k]))
            .collect();
        self.problems.append(&mut unknown);
        self.problems
    }
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// A `UNet2DModel` configuration (the parsed `config.json`) as a [`UNetConfig`].
///
/// # Errors
/// [`DiffusersError::NotUNet2D`] for another `_class_name`; [`DiffusersError::Unsupported`]
/// listing every field that has no equivalent here (e.g. `resnet_time_scale_shift:
/// "scale_shift"`, a cross-attention block, `time_embedding_type: "fourier"`);
/// [`DiffusersError::Model`] when the result is not a valid U-Net.
pub fn unet_config_from_json(value: &Value, path: &Path) -> Result<UNetConfig, DiffusersError> {
    let obj = value.as_object().ok_or_else(|| DiffusersError::NotUNet2D {
        path: path.to_path_buf(),
        found: "not a JSON object".into(),
    })?;
    match obj.get("_class_name").and_then(Value::as_str) {
        Some("UNet2DModel") => {}
        other => {
            return Err(DiffusersError::NotUNet2D {
                path: path.to_path_buf(),
                found: other.map_or("no _class_name".into(), |c| format!("_class_name {c:?}")),
            });
        }
    }
    let mut f = Fields::new(obj);
    let in_channels = f.usize("in_channels", 3);
    let out_channels = f.usize("out_channels", 3);
    let sample_size = f.get("sample_size", Value::Null);
    let resolution = match &sample_size {
        Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        Value::Array(a) if a.len() == 2 && a[0] == a[1] => {
            a[0].as_u64().and_then(|n| usize::try_from(n).ok())
        }
        _ => None,
    };
    let resolution = resolution.unwrap_or_else(|| {
        f.problem(
            "sample_size",
            &sample_size,
            "a square size is needed to place the attention layers",
        );
        32
    });
    f.only(
        "center_input_sample",
        &[json!(false)],
        "inputs are in [-1, 1] here",
    );
    f.only(
        "time_embedding_type",
        &[json!("positional")],
        "only the sinusoidal embedding is implemented",
    );
    let flip_sin_to_cos = f.bool("flip_sin_to_cos", true);
    let freq_shift = f.f64("freq_shift", 0.0);
    let default_down = json!([
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D"
    ]);
    let default_up = json!([
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D"
    ]);
    let down_v = f.get("down_block_types", default_down);
    let up_v = f.get("up_block_types", default_up);
    let channels_v = f.get("block_out_channels", json!([224, 448, 672, 896]));
    let (down, up) = (
        strings(&down_v).unwrap_or_default(),
        strings(&up_v).unwrap_or_default(),
    );
    let channels: Vec<usize> = channels_v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64().and_then(|n| usize::try_from(n).ok()))
                .collect()
        })
        .unwrap_or_default();
    let levels = channels.len();
    if levels == 0 || channels_v.as_array().map(Vec::len) != Some(levels) {
        f.problem(
            "block_out_channels",
            &channels_v,
            "expected a list of channel counts",
        );
    }
    if down.len() != levels || up.len() != levels {
        f.problem(
            "down_block_types / up_block_types",
            &json!([down_v, up_v]),
            "one down and one up block type per entry of block_out_channels",
        );
    }
    let ch = channels.first().copied().unwrap_or(1).max(1);
    if let Some(bad) = channels.iter().find(|&&c| !c.is_multiple_of(ch) || c == 0) {
        f.problem(
            "block_out_channels",
            &channels_v,
            &format!("{bad} is not a multiple of the first entry {ch}"),
        );
    }
    let mut attn_resolutions = Vec::new();
    for (i, kind) in down.iter().enumerate() {
        let attn = match kind.as_str() {
            "DownBlock2D" => false,
            "AttnDownBlock2D" => true,
            other => {
                f.problem(
                    "down_block_types",
                    &json!(other),
                    "only DownBlock2D and AttnDownBlock2D are implemented",
                );
                false
            }
        };
        let mirror = up.get(levels.saturating_sub(1 + i)).map(String::as_str);
        let up_attn = match mirror {
            Some("UpBlock2D") | None => false,
            Some("AttnUpBlock2D") => true,
            Some(other) => {
                f.problem(
                    "up_block_types",
                    &json!(other),
                    "only UpBlock2D and AttnUpBlock2D are implemented",
                );
                attn
            }
        };
        if attn != up_attn {
            f.problem(
                "up_block_types",
                &up_v,
                &format!(
                    "attention at level {i} on one path only: this U-Net attends at the same \
                     levels on the way down and up"
                ),
            );
        }
        if attn {
            attn_resolutions.push(resolution >> i.min(63));
        }
    }
    let num_res_blocks = f.usize("layers_per_block", 2);
    f.only(
        "mid_block_scale_factor",
        &[json!(1), json!(1.0)],
        "the middle block's output is not rescaled here",
    );
    let downsample_padding = match f.usize("downsample_padding", 1) {
        0 => DownsamplePadding::BottomRight,
        1 => DownsamplePadding::Symmetric,
        n => {
            f.problem(
                "downsample_padding",
                &json!(n),
                "only 0 and 1 are implemented",
            );
            DownsamplePadding::Symmetric
        }
    };
    f.only(
        "downsample_type",
        &[json!("conv")],
        "only strided-convolution downsampling is implemented",
    );
    f.only(
        "upsample_type",
        &[json!("conv")],
        "only nearest upsampling with a convolution is implemented",
    );
    let dropout = f.f64("dropout", 0.0);
    f.only("act_fn", &[json!("silu")], "only SiLU is implemented");
    let head_dim_v = f.get("attention_head_dim", json!(8));
    let attention_head_dim = match &head_dim_v {
        Value::Null => None,
        v => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(d) => Some(d),
            None => {
                f.problem("attention_head_dim", v, "expected null or a whole number");
                None
            }
        },
    };
    let num_groups = f.usize("norm_num_groups", 32);
    let attn_groups = f.get("attn_norm_num_groups", Value::Null);
    if !(attn_groups.is_null() || attn_groups == json!(num_groups)) {
        f.problem(
            "attn_norm_num_groups",
            &attn_groups,
            "attention GroupNorms use norm_num_groups here",
        );
    }
    let norm_eps = f.f64("norm_eps", 1e-5);
    f.only(
        "resnet_time_scale_shift",
        &[json!("default")],
        "only the additive timestep projection is implemented, not scale_shift (AdaGN)",
    );
    f.only(
        "add_attention",
        &[json!(true)],
        "the middle block always attends here",
    );
    f.only(
        "mid_block_type",
        &[json!("UNetMidBlock2D")],
        "only UNetMidBlock2D is implemented",
    );
    f.only(
        "class_embed_type",
        &[Value::Null],
        "class-conditional diffusers models are not supported",
    );
    f.only(
        "num_class_embeds",
        &[Value::Null],
        "class-conditional diffusers models are not supported (their embedding has no null \
         class)",
    );
    let temb = f.get("time_embedding_dim", Value::Null);
    if !(temb.is_null() || temb.as_u64() == Some(4 * ch as u64)) {
        f.problem(
            "time_embedding_dim",
            &temb,
            "the timestep embedding is 4 x block_out_channels[0] wide here",
        );
    }
    // Only read by the learned embedding, which is refused above.
    let _ = f.get("num_train_timesteps", Value::Null);
    let problems = f.finish();
    if !problems.is_empty() {
        return Err(DiffusersError::Unsupported {
            path: path.to_path_buf(),
            fields: problems,
        });
    }
    let config = UNetConfig::new(in_channels, out_channels, ch)
        .with_ch_mult(channels.iter().map(|c| c / ch).collect())
        .with_num_res_blocks(num_res_blocks)
        .with_attn_resolutions(attn_resolutions)
        .with_dropout(dropout)
        .with_resamp_with_conv(true)
        .with_num_groups(num_groups)
        .with_resolution(resolution)
        .with_norm_eps(norm_eps)
        .with_attention_head_dim(attention_head_dim)
        .with_flip_sin_to_cos(flip_sin_to_cos)
        .with_freq_shift(freq_shift)
        .with_downsample_padding(downsample_padding);
    config.validate().map_err(|e| DiffusersError::Model {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(config)
}

/// A [`UNetConfig`] as a `UNet2DModel` `config.json` value (every field written out).
///
/// # Errors
/// [`DiffusersError::NotExportable`] for what `UNet2DModel` cannot express: a
/// class-conditional model (its embedding has a null class row diffusers does not have),
/// resampling without convolutions.
pub fn unet_config_to_json(config: &UNetConfig) -> Result<Value, DiffusersError> {
    config
        .validate()
        .map_err(|e| DiffusersError::NotExportable(e.to_string()))?;
    if let Some(k) = config.num_classes {
        return Err(DiffusersError::NotExportable(format!(
            "the model is class-conditional ({k} classes and a null class for guidance): \
             UNet2DModel's class embedding has no null class"
        )));
    }
    if !config.resamp_with_conv {
        return Err(DiffusersError::NotExportable(
            "resampling without convolutions (resamp_with_conv false) has no UNet2DModel \
             equivalent"
                .into(),
        ));
    }
    let levels = config.levels();
    let attn: Vec<bool> = (0..levels)
        .map(|i| config.attn_resolutions.contains(&(config.resolution >> i)))
        .collect();
    let down: Vec<&str> = attn
        .iter()
        .map(|&a| if a { "AttnDownBlock2D" } else { "DownBlock2D" })
        .collect();
    let up: Vec<&str> = attn
        .iter()
        .rev()
        .map(|&a| if a { "AttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    let channels: Vec<usize> = config.ch_mult.iter().map(|m| config.ch * m).collect();
    Ok(json!({
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "add_attention": true,
        "attention_head_dim": config.attention_head_dim,
        "attn_norm_num_groups": null,
        "block_out_channels": channels,
        "center_input_sample": false,
        "class_embed_type": null,
        "down_block_types": down,
        "downsample_padding": match config.downsample_padding {
            DownsamplePadding::BottomRight => 0,
            DownsamplePadding::Symmetric => 1,
        },
        "downsample_type": "conv",
        "dropout": config.dropout,
        "flip_sin_to_cos": config.flip_sin_to_cos,
        "freq_shift": config.freq_shift,
        "in_channels": config.in_channels,
        "layers_per_block": config.num_res_blocks,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2D",
        "norm_eps": config.norm_eps,
        "norm_num_groups": config.num_groups,
        "num_class_embeds": null,
        "num_train_timesteps": null,
        "out_channels": config.out_channels,
        "resnet_time_scale_shift": "default",
        "sample_size": config.resolution,
        "time_embedding_dim": null,
        "time_embedding_type": "positional",
        "up_block_types": up,
        "upsample_type": "conv",
    }))
}
