//! The architecture the graph builds, resolved from either diffusers config (`config` for
//! `UNet2DModel`, `cond_config` for `UNet2DConditionModel`) and checked: everything the
//! loaders (`model`, `blocks`, `resnet`, `attention`, `transformer`, `embeddings`) read.

use crate::error::Result;
use crate::value_err;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeEmbeddingType {
    Positional,
    /// `GaussianFourierProjection(log=True)` (score-SDE `UNet2DModel`s).
    Fourier,
    Learned,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassEmbedding {
    None,
    /// `nn.Embedding(num_class_embeds, time_embed_dim)`.
    Table(usize),
    /// The class labels go through the timestep projection and their own MLP.
    Timestep,
    /// The class labels are embeddings already.
    Identity,
    /// The class labels are `[b][n]` vectors through their own MLP (`TimestepEmbedding(n, ·)`).
    Projection(usize),
}

/// How a block changes resolution at its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    None,
    /// A 3×3 convolution (stride 2 down; nearest 2× then 3×3 up).
    Conv,
    /// A ResnetBlock2D with `down=True` / `up=True`.
    Resnet,
}

/// A `Transformer2DModel` after each resnet of a cross-attention block.
#[derive(Clone, Debug)]
pub struct TransformerSpec {
    pub heads: usize,
    pub dh: usize,
    /// `BasicTransformerBlock`s in the transformer after resnet j.
    pub layers: Vec<usize>,
    /// Width of `encoder_hidden_states`.
    pub cross_dim: usize,
    /// Both attentions attend to the context (`only_cross_attention`). (`proj_in` /
    /// `proj_out` as linear layers or 1×1 convolutions is the same product: the loader takes
    /// either weight shape, so `use_linear_projection` needs no field.)
    pub only_cross: bool,
}

/// The attention after each resnet of a block.
#[derive(Clone, Debug)]
pub enum AttnSpec {
    /// `UNet2DModel`'s spatial `Attention`, GroupNorm first when `groups` is set.
    Spatial {
        heads: usize,
        dh: usize,
        groups: Option<usize>,
    },
    Transformer(TransformerSpec),
}

/// One down block or up block, resolved.
#[derive(Clone, Debug)]
pub struct BlockSpec {
    /// Resnets in the block (an up block has one more than its down block).
    pub layers: usize,
    pub attention: Option<AttnSpec>,
    pub resample: Resample,
}

/// SDXL's `addition_embed_type="text_time"`: `time_ids` through a sinusoidal projection of
/// `time_dim`, concatenated after `text_embeds`, through `add_embedding` (an MLP of
/// `input_dim` inputs).
#[derive(Clone, Copy, Debug)]
pub struct TextTime {
    pub time_dim: usize,
    pub input_dim: usize,
}

/// The time (and class / added) embedding.
#[derive(Clone, Debug)]
pub struct TimeSpec {
    pub kind: TimeEmbeddingType,
    /// Width of the projection (`block_out_channels[0]`, doubled for Fourier).
    pub input_dim: usize,
    pub embed_dim: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub num_train_timesteps: Option<usize>,
    /// `time_cond_proj_dim`: `timestep_cond` is projected (no bias) onto the projection.
    pub cond_proj_dim: Option<usize>,
    pub class: ClassEmbedding,
    pub text_time: Option<TextTime>,
}

/// The architecture, checked.
#[derive(Clone, Debug)]
pub struct Arch {
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub block_out_channels: Vec<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub norm_eps: f64,
    pub time: TimeSpec,
    pub scale_shift: bool,
    pub groups: usize,
    pub down: Vec<BlockSpec>,
    pub up: Vec<BlockSpec>,
    /// Mid block present; its attention.
    pub mid: Option<Option<AttnSpec>>,
    /// A cross-attention model: the width of `encoder_hidden_states` it takes.
    pub cross_dim: Option<usize>,
}

impl Arch {
    /// The scalars both config classes share, which no later shape check would catch: a
    /// downsampling padding past 1 (diffusers' own model then fails joining its skip
    /// connections; rdiff's would read past them), and a GroupNorm epsilon or mid-block scale
    /// that is not a positive finite number (every output NaN).
    pub fn check_scalars(&self) -> Result<()> {
        if self.downsample_padding > 1 {
            return value_err!(
                "downsample_padding: {}; a UNet's downsampling convolutions pad by 0 or 1 \
                 (more changes the sizes its skip connections join)",
                self.downsample_padding
            );
        }
        for (name, v) in [
            ("norm_eps", self.norm_eps),
            ("mid_block_scale_factor", self.mid_block_scale_factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return value_err!("{name}: must be a positive finite number, got {v}");
            }
        }
        Ok(())
    }
}
