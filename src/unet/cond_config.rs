//! diffusers' `UNet2DConditionModel` config (`config.json`: Stable Diffusion 1.x / 2.x, SDXL
//! and their fine-tunes), with diffusers' defaults for absent keys, resolved into the
//! [`Arch`] the graph builds. Keys that select something rdiff does not build (another block
//! type, an image embedding, GLIGEN, ...) are a `ValueError` naming the key, never ignored.

use serde::Deserialize;
use serde_json::Value;

use super::arch::{
    Arch, AttnSpec, BlockSpec, ClassEmbedding, Resample, TextTime, TimeEmbeddingType, TimeSpec,
    TransformerSpec,
};
use super::config::{
    d3, d_default, d_eps, d_groups, d_one, d_one_f, d_positional, d_silu, d_true, parse_config,
    MAX_CHANNELS, MAX_LAYERS, MAX_LEVELS, MAX_TABLE_ROWS,
};
use crate::error::{RdiffError, Result};
use crate::value_err;

fn d4() -> usize {
    4
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_down() -> Vec<String> {
    [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_up() -> Vec<String> {
    [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn d_two_v() -> Value {
    Value::from(2)
}
fn d_false_v() -> Value {
    Value::from(false)
}
fn d_cross() -> Value {
    Value::from(1280)
}
fn d_one_v() -> Value {
    Value::from(1)
}
fn d_head_v() -> Value {
    Value::from(8)
}

/// The keys of `UNet2DConditionModel.__init__`, with its defaults. The int-or-list keys are
/// read as JSON values and resolved per block.
#[derive(Debug, Clone, Deserialize)]
pub struct UNet2DConditionConfig {
    #[serde(default = "d4")]
    pub in_channels: usize,
    #[serde(default = "d4")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_false_v")]
    pub only_cross_attention: Value,
    #[serde(default = "d_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_two_v")]
    pub layers_per_block: Value,
    #[serde(default = "d_one")]
    pub downsample_padding: usize,
    #[serde(default = "d_one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_groups")]
    pub norm_num_groups: Option<usize>,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_cross")]
    pub cross_attention_dim: Value,
    #[serde(default = "d_one_v")]
    pub transformer_layers_per_block: Value,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Value,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    #[serde(default = "d_head_v")]
    pub attention_head_dim: Value,
    #[serde(default)]
    pub num_attention_heads: Value,
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// Read only for completeness: linear or 1×1-conv projections are the same product.
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default = "d_one_f")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default = "d3")]
    pub conv_in_kernel: usize,
    #[serde(default = "d3")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "d_default")]
    pub attention_type: String,
    #[serde(default)]
    pub class_embeddings_concat: bool,
    /// Read only by `UNetMidBlock2DSimpleCrossAttn`, which rdiff refuses.
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
}

/// An int-or-list key, one value per block (`levels` of them).
fn per_block<T: Clone + for<'de> Deserialize<'de>>(
    key: &str,
    v: &Value,
    levels: usize,
) -> Result<Vec<T>> {
    let bad = |e: serde_json::Error| RdiffError::Value(format!("{key}: {e}"));
    match v {
        Value::Array(items) => {
            if items.len() != levels {
                return value_err!(
                    "{key}: {} values for {levels} down blocks (one per block is needed)",
                    items.len()
                );
            }
            items
                .iter()
                .map(|x| serde_json::from_value(x.clone()).map_err(bad))
                .collect()
        }
        other => {
            let one: T = serde_json::from_value(other.clone()).map_err(bad)?;
            Ok(vec![one; levels])
        }
    }
}

/// Transformer layers after each of a block's `resnets` resnets: an int for every one, or a
/// list with one per resnet.
fn layers_per_resnet(key: &str, v: &Value, resnets: usize) -> Result<Vec<usize>> {
    match v {
        Value::Array(items) => {
            let out: Vec<usize> = items
                .iter()
                .map(|x| {
                    x.as_u64().map(|n| n as usize).ok_or_else(|| {
                        RdiffError::Value(format!("{key}: expected integers, got {x}"))
                    })
                })
                .collect::<Result<_>>()?;
            if out.len() < resnets {
                return value_err!(
                    "{key}: {} values for a block of {resnets} resnets",
                    out.len()
                );
            }
            Ok(out[..resnets].to_vec())
        }
        _ => match v.as_u64() {
            Some(n) => Ok(vec![n as usize; resnets]),
            None => value_err!("{key}: expected an integer or a list, got {v}"),
        },
    }
}

impl UNet2DConditionConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        parse_config(text, "UNet2DConditionModel")
    }

    /// Keys whose non-default values select a model rdiff does not build.
    fn refuse_unsupported(&self) -> Result<()> {
        let c = self;
        let refuse = |key: &str, what: String| -> Result<()> {
            value_err!("{key}: {what} is not supported by rdiff's UNet2DConditionModel")
        };
        if c.encoder_hid_dim.is_some() || c.encoder_hid_dim_type.is_some() {
            return refuse("encoder_hid_dim", "an encoder projection".into());
        }
        if c.dual_cross_attention {
            return refuse("dual_cross_attention", "true".into());
        }
        if c.resnet_skip_time_act {
            return refuse("resnet_skip_time_act", "true".into());
        }
        if c.resnet_out_scale_factor != 1.0 {
            return refuse(
                "resnet_out_scale_factor",
                format!("{}", c.resnet_out_scale_factor),
            );
        }
        if c.time_embedding_type != "positional" {
            return refuse(
                "time_embedding_type",
                format!("{:?}", c.time_embedding_type),
            );
        }
        if let Some(a) = &c.time_embedding_act_fn {
            return refuse("time_embedding_act_fn", format!("{a:?}"));
        }
        if let Some(a) = &c.timestep_post_act {
            return refuse("timestep_post_act", format!("{a:?}"));
        }
        if c.conv_in_kernel != 3 {
            return refuse("conv_in_kernel", format!("{}", c.conv_in_kernel));
        }
        if c.conv_out_kernel != 3 {
            return refuse("conv_out_kernel", format!("{}", c.conv_out_kernel));
        }
        if c.attention_type != "default" {
            return refuse("attention_type", format!("{:?}", c.attention_type));
        }
        if c.class_embeddings_concat {
            return refuse("class_embeddings_concat", "true".into());
        }
        if let Some(n) = &c.cross_attention_norm {
            return refuse("cross_attention_norm", format!("{n:?}"));
        }
        if !c.num_attention_heads.is_null() {
            // diffusers itself refuses it (the attention_head_dim naming issue).
            return refuse("num_attention_heads", "a value".into());
        }
        if !matches!(c.act_fn.as_str(), "silu" | "swish") {
            return refuse("act_fn", format!("{:?} (only \"silu\")", c.act_fn));
        }
        Ok(())
    }

    pub fn resolve(self) -> Result<Arch> {
        self.refuse_unsupported()?;
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
        if levels > MAX_LEVELS {
            return value_err!(
                "{levels} levels: rdiff supports at most {MAX_LEVELS} (corrupt config?)"
            );
        }
        if c.in_channels == 0 || c.out_channels == 0 {
            return value_err!("in_channels and out_channels must be positive");
        }
        let layers: Vec<usize> = per_block("layers_per_block", &c.layers_per_block, levels)?;
        let cross: Vec<usize> = per_block("cross_attention_dim", &c.cross_attention_dim, levels)?;
        let heads: Vec<usize> = per_block("attention_head_dim", &c.attention_head_dim, levels)?;
        let only_cross: Vec<bool> =
            per_block("only_cross_attention", &c.only_cross_attention, levels)?;
        // Per block: an int for all its resnets, or a list with one per resnet.
        let tl = &c.transformer_layers_per_block;
        let down_tl: Vec<Value> = match tl {
            Value::Array(items) if items.len() == levels => items.clone(),
            Value::Array(items) => {
                return value_err!(
                    "transformer_layers_per_block: {} values for {levels} blocks",
                    items.len()
                )
            }
            v => vec![v.clone(); levels],
        };
        let nested = down_tl.iter().any(Value::is_array);
        let up_tl: Vec<Value> = match &c.reverse_transformer_layers_per_block {
            Value::Null if nested => {
                return value_err!(
                    "reverse_transformer_layers_per_block: needed when \
                     transformer_layers_per_block has a list per block (as diffusers requires)"
                )
            }
            Value::Null => down_tl.iter().rev().cloned().collect(),
            Value::Array(items) if items.len() == levels => items.clone(),
            other => {
                return value_err!(
                    "reverse_transformer_layers_per_block: expected {levels} lists, got {other}"
                )
            }
        };
        let widths = [
            c.in_channels,
            c.out_channels,
            c.time_embedding_dim.unwrap_or(0),
        ];
        if let Some(&big) = c
            .block_out_channels
            .iter()
            .chain(&widths)
            .chain(&cross)
            .chain(&c.projection_class_embeddings_input_dim)
            .chain(&c.addition_time_embed_dim)
            .chain(&c.time_cond_proj_dim)
            .find(|&&n| n > MAX_CHANNELS)
        {
            return value_err!(
                "a width of {big} is past rdiff's bound of {MAX_CHANNELS} (corrupt config?)"
            );
        }
        if let Some(n) = c.num_class_embeds.filter(|&n| n > MAX_TABLE_ROWS) {
            return value_err!("num_class_embeds: {n} is past rdiff's bound of {MAX_TABLE_ROWS}");
        }
        if layers.iter().any(|&n| n == 0 || n > MAX_LAYERS) {
            return value_err!(
                "layers_per_block: each must be in 1..={MAX_LAYERS}, got {layers:?}"
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
        let groups = match c.norm_num_groups {
            Some(g) if g > 0 => g,
            _ => return value_err!("norm_num_groups: null or 0 is not supported"),
        };
        for (i, &ch) in c.block_out_channels.iter().enumerate() {
            if ch % groups != 0 {
                return value_err!(
                    "block_out_channels[{i}] = {ch} is not divisible by norm_num_groups = {groups}"
                );
            }
        }
        let c0 = c.block_out_channels[0];
        let time_embed_dim = c.time_embedding_dim.unwrap_or(4 * c0);
        let class = match (c.class_embed_type.as_deref(), c.num_class_embeds) {
            (None, Some(n)) => ClassEmbedding::Table(n),
            (None, None) => ClassEmbedding::None,
            (Some("timestep"), _) => ClassEmbedding::Timestep,
            (Some("identity"), _) => ClassEmbedding::Identity,
            (Some("projection"), _) => match c.projection_class_embeddings_input_dim {
                Some(n) if n > 0 => ClassEmbedding::Projection(n),
                _ => {
                    return value_err!(
                        "class_embed_type \"projection\" needs \
                         projection_class_embeddings_input_dim"
                    )
                }
            },
            (Some(other), _) => {
                return value_err!(
                    "class_embed_type: {other:?} is not supported (null, \"timestep\", \
                     \"identity\" or \"projection\")"
                )
            }
        };
        let text_time = match c.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => {
                let (Some(time_dim), Some(input_dim)) = (
                    c.addition_time_embed_dim,
                    c.projection_class_embeddings_input_dim,
                ) else {
                    return value_err!(
                        "addition_embed_type \"text_time\" needs addition_time_embed_dim and \
                         projection_class_embeddings_input_dim"
                    );
                };
                if time_dim == 0 || input_dim == 0 {
                    return value_err!("addition_time_embed_dim: must be positive");
                }
                Some(TextTime {
                    time_dim,
                    input_dim,
                })
            }
            Some(other) => {
                return value_err!(
                    "addition_embed_type: {other:?} is not supported (null or \"text_time\")"
                )
            }
        };
        // The transformer of a block on `ch` channels (diffusers: `attention_head_dim` is the
        // number of heads, each of ch / heads).
        let transformer = |key: &str, ch: usize, h: usize, tl: &Value, n: usize, xd: usize, oc| {
            if h == 0 || h > ch {
                return value_err!("attention_head_dim: {h} heads do not fit {ch} channels");
            }
            let layers = layers_per_resnet(key, tl, n)?;
            if layers.iter().any(|&l| l > MAX_LAYERS) {
                return value_err!("{key}: at most {MAX_LAYERS} layers, got {layers:?}");
            }
            if xd == 0 {
                return value_err!("cross_attention_dim: must be positive");
            }
            Ok(AttnSpec::Transformer(TransformerSpec {
                heads: h,
                dh: ch / h,
                layers,
                cross_dim: xd,
                only_cross: oc,
            }))
        };
        let mut down = Vec::new();
        for (i, t) in c.down_block_types.iter().enumerate() {
            let attention = match t.as_str() {
                "DownBlock2D" => None,
                "CrossAttnDownBlock2D" => Some(transformer(
                    "transformer_layers_per_block",
                    c.block_out_channels[i],
                    heads[i],
                    &down_tl[i],
                    layers[i],
                    cross[i],
                    only_cross[i],
                )?),
                other => {
                    return value_err!(
                        "down_block_types[{i}]: {other:?} is not supported; rdiff's \
                         UNet2DConditionModel builds DownBlock2D and CrossAttnDownBlock2D"
                    )
                }
            };
            let resample = if i + 1 == levels {
                Resample::None
            } else {
                Resample::Conv
            };
            down.push(BlockSpec {
                layers: layers[i],
                attention,
                resample,
            });
        }
        let mut up = Vec::new();
        for (i, t) in c.up_block_types.iter().enumerate() {
            let k = levels - 1 - i;
            let attention = match t.as_str() {
                "UpBlock2D" => None,
                "CrossAttnUpBlock2D" => Some(transformer(
                    "reverse_transformer_layers_per_block",
                    c.block_out_channels[k],
                    heads[k],
                    &up_tl[i],
                    layers[k] + 1,
                    cross[k],
                    only_cross[k],
                )?),
                other => {
                    return value_err!(
                        "up_block_types[{i}]: {other:?} is not supported; rdiff's \
                         UNet2DConditionModel builds UpBlock2D and CrossAttnUpBlock2D"
                    )
                }
            };
            let resample = if i + 1 == levels {
                Resample::None
            } else {
                Resample::Conv
            };
            up.push(BlockSpec {
                layers: layers[k] + 1,
                attention,
                resample,
            });
        }
        let mid = match c.mid_block_type.as_deref() {
            None => None,
            Some("UNetMidBlock2DCrossAttn") => {
                let last = levels - 1;
                // The mid block takes the last block's (first) layer count.
                let tl = match &down_tl[last] {
                    Value::Array(items) => items.first().cloned().unwrap_or(Value::from(1)),
                    v => v.clone(),
                };
                Some(Some(transformer(
                    "transformer_layers_per_block",
                    c.block_out_channels[last],
                    heads[last],
                    &tl,
                    1,
                    cross[last],
                    // UNetMidBlock2DCrossAttn ignores mid_block_only_cross_attention (only the
                    // simple cross-attention mid block reads it).
                    false,
                )?))
            }
            Some(other) => {
                return value_err!(
                    "mid_block_type: {other:?} is not supported; rdiff's UNet2DConditionModel \
                     builds UNetMidBlock2DCrossAttn or none"
                )
            }
        };
        let cross_dim = cross[0];
        if cross.iter().any(|&x| x != cross_dim) {
            return value_err!(
                "cross_attention_dim: one context width per block ({cross:?}) is not supported"
            );
        }
        let c = self;
        Ok(Arch {
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            center_input_sample: c.center_input_sample,
            downsample_padding: c.downsample_padding,
            mid_block_scale_factor: c.mid_block_scale_factor,
            norm_eps: c.norm_eps,
            time: TimeSpec {
                kind: TimeEmbeddingType::Positional,
                input_dim: c0,
                embed_dim: time_embed_dim,
                flip_sin_to_cos: c.flip_sin_to_cos,
                freq_shift: c.freq_shift,
                num_train_timesteps: None,
                cond_proj_dim: c.time_cond_proj_dim,
                class,
                text_time,
            },
            scale_shift,
            groups,
            down,
            up,
            mid,
            cross_dim: Some(cross_dim),
            block_out_channels: c.block_out_channels,
        })
    }
}
