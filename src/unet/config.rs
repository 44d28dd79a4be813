//! diffusers' `UNet2DModel` config (`config.json`), with diffusers' defaults for absent keys,
//! resolved into the architecture the graph builds. Unknown keys are ignored, as diffusers
//! does; unsupported values are a `ValueError` naming the key.

use serde::Deserialize;

use super::arch::{
    Arch, AttnSpec, BlockSpec, ClassEmbedding, Resample, TimeEmbeddingType, TimeSpec,
};
use crate::error::{RdiffError, Result};
use crate::value_err;

pub(super) fn d3() -> usize {
    3
}
pub(super) fn d_true() -> bool {
    true
}
pub(super) fn d_one_f() -> f64 {
    1.0
}
pub(super) fn d_one() -> usize {
    1
}
fn d_two() -> usize {
    2
}
pub(super) fn d_positional() -> String {
    "positional".into()
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn d_down() -> Vec<String> {
    [
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_up() -> Vec<String> {
    [
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_channels() -> Vec<usize> {
    vec![224, 448, 672, 896]
}
fn d_conv() -> Option<String> {
    Some("conv".into())
}
pub(super) fn d_silu() -> String {
    "silu".into()
}
fn d_head() -> Option<usize> {
    Some(8)
}
pub(super) fn d_groups() -> Option<usize> {
    Some(32)
}
pub(super) fn d_eps() -> f64 {
    1e-5
}
pub(super) fn d_default() -> String {
    "default".into()
}

/// Bounds on a config's sizes (both UNet classes'), far above any published UNet2DModel (those have at most 4
/// levels of at most 1,280 channels): a config past them is corrupt, and is refused before any
/// allocation sized by it (the weights are then checked against these sizes one by one).
pub(super) const MAX_LEVELS: usize = 16;
pub(super) const MAX_CHANNELS: usize = 1 << 16;
pub(super) const MAX_LAYERS: usize = 64;
pub(super) const MAX_TABLE_ROWS: usize = 1 << 24;

/// The keys of `UNet2DModel.__init__`, with its defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct UNet2DConfig {
    #[serde(default = "d3")]
    pub in_channels: usize,
    #[serde(default = "d3")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_two")]
    pub layers_per_block: usize,
    #[serde(default = "d_one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_one")]
    pub downsample_padding: usize,
    #[serde(default = "d_conv")]
    pub downsample_type: Option<String>,
    #[serde(default = "d_conv")]
    pub upsample_type: Option<String>,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_head")]
    pub attention_head_dim: Option<usize>,
    #[serde(default = "d_groups")]
    pub norm_num_groups: Option<usize>,
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "d_true")]
    pub add_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
}

/// config.json's text as `class`'s config: a JSON object (serde would also fill a struct
/// from an array, field by field), its errors naming the key.
pub(super) fn parse_config<T: serde::de::DeserializeOwned>(text: &str, class: &str) -> Result<T> {
    if !text.trim_start().starts_with('{') {
        return Err(RdiffError::Value(format!(
            "config.json: not a {class} config: expected a JSON object"
        )));
    }
    serde_json::from_str(text).map_err(|e| json_error(text, &e, class))
}

/// A config.json that does not parse as `class`'s config, the error naming the key whose
/// value was being read (serde reports only where: the last key before that place).
fn json_error(text: &str, e: &serde_json::Error, class: &str) -> RdiffError {
    let key = (e.line() > 0)
        .then(|| {
            let line_start: usize = text
                .split_inclusive('\n')
                .take(e.line() - 1)
                .map(str::len)
                .sum();
            // (serde's column may fall inside a multi-byte character)
            let mut end = (line_start + e.column()).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            last_key(&text[..end])
        })
        .flatten();
    match key {
        Some(k) => RdiffError::Value(format!("config.json: not a {class} config: \"{k}\": {e}")),
        None => RdiffError::Value(format!("config.json: not a {class} config: {e}")),
    }
}

/// The last object key (a string followed by `:`) in a JSON prefix.
fn last_key(prefix: &str) -> Option<&str> {
    let (mut key, mut open, mut escaped, mut last) = (None, None, false, None);
    for (i, c) in prefix.char_indices() {
        match (open, c) {
            (Some(_), '\\') if !escaped => escaped = true,
            (Some(start), '"') if !escaped => {
                last = Some(&prefix[start..i]);
                open = None;
            }
            (Some(_), _) => escaped = false,
            (None, '"') => open = Some(i + 1),
            (None, ':') => key = last.take(),
            (None, c) if !c.is_whitespace() => last = None,
            _ => {}
        }
    }
    key
}

impl UNet2DConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        parse_config(text, "UNet2DModel")
    }

    /// Heads and head dimension of an attention block on `channels` channels.
    pub fn heads(&self, channels: usize) -> Result<(usize, usize)> {
        let dh = self.attention_head_dim.unwrap_or(channels);
        if dh == 0 || dh > channels {
            return value_err!(
                "attention_head_dim: {dh} does not fit an attention block of {channels} channels"
            );
        }
        Ok((channels / dh, dh))
    }

    pub fn resolve(self) -> Result<Arch> {
        let c = &self;
        let levels = c.block_out_channels.len();
        if levels == 0 || c.block_out_channels.contains(&0) {
            return value_err!("block_out_channels: must be a non-empty list of positive numbers");
        }
        if c.down_block_types.len() != levels || c.up_block_types.len() != levels {
            return value_err!(
                "down_block_types ({}), up_block_types ({}) and block_out_channels ({levels}) must \
                 have the same length",
                c.down_block_types.len(),
                c.up_block_types.len()
            );
        }
        if c.in_channels == 0 || c.out_channels == 0 || c.layers_per_block == 0 {
            return value_err!("in_channels, out_channels and layers_per_block must be positive");
        }
        if levels > MAX_LEVELS || c.layers_per_block > MAX_LAYERS {
            return value_err!(
                "{levels} levels of {} layers: rdiff's UNet2DModel supports at most \
                 {MAX_LEVELS} levels of {MAX_LAYERS} layers (corrupt config?)",
                c.layers_per_block
            );
        }
        let widths = [
            c.in_channels,
            c.out_channels,
            c.time_embedding_dim.unwrap_or(0),
        ];
        if let Some(&big) = c
            .block_out_channels
            .iter()
            .chain(&widths)
            .find(|&&n| n > MAX_CHANNELS)
        {
            return value_err!(
                "a channel count of {big} is past rdiff's bound of {MAX_CHANNELS} (corrupt config?)"
            );
        }
        for (key, rows) in [
            ("num_class_embeds", c.num_class_embeds),
            ("num_train_timesteps", c.num_train_timesteps),
        ] {
            if rows.is_some_and(|n| n > MAX_TABLE_ROWS) {
                return value_err!(
                    "{key}: {} is past rdiff's bound of {MAX_TABLE_ROWS}",
                    rows.unwrap()
                );
            }
        }
        if !matches!(c.act_fn.as_str(), "silu" | "swish") {
            return value_err!(
                "act_fn: {:?} is not supported by rdiff's UNet (only \"silu\")",
                c.act_fn
            );
        }
        let scale_shift = match c.resnet_time_scale_shift.as_str() {
            "default" => false,
            "scale_shift" => true,
            other => {
                return value_err!(
                    "resnet_time_scale_shift: {other:?} is not supported (\"default\" or \
                     \"scale_shift\")"
                )
            }
        };
        let groups = c.norm_num_groups.ok_or_else(|| {
            RdiffError::Value("norm_num_groups: null is not supported by UNet2DModel".into())
        })?;
        if groups == 0 {
            return value_err!("norm_num_groups: must be positive, got 0");
        }
        let time_embed_dim = c.time_embedding_dim.unwrap_or(4 * c.block_out_channels[0]);
        let (time_embedding, time_input_dim) = match c.time_embedding_type.as_str() {
            "positional" => (TimeEmbeddingType::Positional, c.block_out_channels[0]),
            "fourier" => (TimeEmbeddingType::Fourier, 2 * c.block_out_channels[0]),
            "learned" => {
                if c.num_train_timesteps.is_none() {
                    return value_err!(
                        "time_embedding_type \"learned\" needs num_train_timesteps in the config"
                    );
                }
                (TimeEmbeddingType::Learned, c.block_out_channels[0])
            }
            other => {
                return value_err!(
                    "time_embedding_type: {other:?} is not supported (\"positional\", \
                     \"fourier\" or \"learned\")"
                )
            }
        };
        let class_embedding = match (c.class_embed_type.as_deref(), c.num_class_embeds) {
            (None, Some(n)) => ClassEmbedding::Table(n),
            (None, None) => ClassEmbedding::None,
            (Some("timestep"), _) => ClassEmbedding::Timestep,
            (Some("identity"), _) => ClassEmbedding::Identity,
            (Some(other), _) => {
                return value_err!(
                    "class_embed_type: {other:?} is not supported (null, \"timestep\" or \
                     \"identity\")"
                )
            }
        };
        let kind = |key: &str, t: &Option<String>| -> Result<Resample> {
            match t.as_deref() {
                None | Some("conv") => Ok(Resample::Conv),
                Some("resnet") => Ok(Resample::Resnet),
                Some(other) => {
                    value_err!("{key}: {other:?} is not supported (\"conv\" or \"resnet\")")
                }
            }
        };
        let down_attn_kind = kind("downsample_type", &c.downsample_type)?;
        let up_attn_kind = kind("upsample_type", &c.upsample_type)?;
        let mut down = Vec::new();
        for (i, t) in c.down_block_types.iter().enumerate() {
            let last = i + 1 == levels;
            let name = t.strip_prefix("UNetRes").unwrap_or(t);
            let (attention, resample) = match name {
                "DownBlock2D" => (false, Resample::Conv),
                "AttnDownBlock2D" => (true, down_attn_kind),
                "ResnetDownsampleBlock2D" => (false, Resample::Resnet),
                other => {
                    return value_err!(
                        "down_block_types[{i}]: unknown block type {other:?}; rdiff's UNet2DModel \
                         supports DownBlock2D, AttnDownBlock2D and ResnetDownsampleBlock2D"
                    )
                }
            };
            let resample = if last { Resample::None } else { resample };
            down.push((attention, resample));
        }
        let mut up = Vec::new();
        for (i, t) in c.up_block_types.iter().enumerate() {
            let last = i + 1 == levels;
            let name = t.strip_prefix("UNetRes").unwrap_or(t);
            let (attention, resample) = match name {
                "UpBlock2D" => (false, Resample::Conv),
                "AttnUpBlock2D" => (true, up_attn_kind),
                "ResnetUpsampleBlock2D" => (false, Resample::Resnet),
                other => {
                    return value_err!(
                        "up_block_types[{i}]: unknown block type {other:?}; rdiff's UNet2DModel \
                         supports UpBlock2D, AttnUpBlock2D and ResnetUpsampleBlock2D"
                    )
                }
            };
            let resample = if last { Resample::None } else { resample };
            up.push((attention, resample));
        }
        let mid = match c.mid_block_type.as_deref() {
            None => None,
            Some("UNetMidBlock2D") => Some(c.add_attention),
            Some(other) => {
                return value_err!(
                    "mid_block_type: unknown block type {other:?}; rdiff's UNet2DModel supports \
                     UNetMidBlock2D or null"
                )
            }
        };
        let mid_attn_groups =
            c.attn_norm_num_groups
                .or(if scale_shift { None } else { Some(groups) });
        let spatial = |ch: usize, groups: Option<usize>| -> Result<AttnSpec> {
            let (heads, dh) = c.heads(ch)?;
            Ok(AttnSpec::Spatial { heads, dh, groups })
        };
        for (i, &ch) in c.block_out_channels.iter().enumerate() {
            if ch % groups != 0 {
                return value_err!(
                    "block_out_channels[{i}] = {ch} is not divisible by norm_num_groups = {groups}"
                );
            }
        }
        let down = down
            .into_iter()
            .enumerate()
            .map(|(i, (attention, resample))| {
                Ok(BlockSpec {
                    layers: c.layers_per_block,
                    attention: match attention {
                        true => Some(spatial(c.block_out_channels[i], Some(groups))?),
                        false => None,
                    },
                    resample,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let up = up
            .into_iter()
            .enumerate()
            .map(|(i, (attention, resample))| {
                Ok(BlockSpec {
                    layers: c.layers_per_block + 1,
                    attention: match attention {
                        true => Some(spatial(c.block_out_channels[levels - 1 - i], Some(groups))?),
                        false => None,
                    },
                    resample,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mid = match mid {
            None => None,
            Some(false) => Some(None),
            Some(true) => {
                let ch = *c.block_out_channels.last().unwrap();
                if let Some(g) = mid_attn_groups {
                    if g == 0 || !ch.is_multiple_of(g) {
                        return value_err!(
                            "attn_norm_num_groups = {g} does not divide the mid block's {ch} \
                             channels"
                        );
                    }
                }
                Some(Some(spatial(ch, mid_attn_groups)?))
            }
        };
        let c = self;
        Ok(Arch {
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            center_input_sample: c.center_input_sample,
            downsample_padding: c.downsample_padding,
            mid_block_scale_factor: c.mid_block_scale_factor,
            norm_eps: c.norm_eps,
            time: TimeSpec {
                kind: time_embedding,
                input_dim: time_input_dim,
                embed_dim: time_embed_dim,
                flip_sin_to_cos: c.flip_sin_to_cos,
                freq_shift: c.freq_shift,
                num_train_timesteps: c.num_train_timesteps,
                cond_proj_dim: None,
                class: class_embedding,
                text_time: None,
            },
            scale_shift,
            groups,
            down,
            up,
            mid,
            cross_dim: None,
            block_out_channels: c.block_out_channels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_key() {
        let err = |text: &str| UNet2DConfig::from_json(text).unwrap_err().to_string();
        let e = err(r#"{"sample_size": 8, "layers_per_block": "two"}"#);
        assert!(
            e.contains(r#""layers_per_block": invalid type: string "two""#),
            "{e}"
        );
        let e = err("{\n  \"a\\\":b\": 1,\n  \"block_out_channels\": [8,\n \"x\"]}");
        assert!(e.contains(r#""block_out_channels": invalid type"#), "{e}");
        assert_eq!(last_key(r#"{"k\"": 1, "v": "w:"#), Some("v"));
        // (found by tests/fuzz_unet_loader.rs: a column inside a two-byte character)
        let e = err(r#"{"block_out_channels": [4,Ѯ8]}"#);
        assert!(e.contains(r#""block_out_channels": "#), "{e}");
        for text in [r#""a string""#, "[1, 2]"] {
            let e = err(text);
            assert!(e.ends_with("config: expected a JSON object"), "{e}");
        }
    }
}
