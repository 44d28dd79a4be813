//! The ops the UNet graph (`model`, `blocks`, `resnet`, `attention`, `transformer`) is written
//! over, so one
//! graph runs on the CPU (`cpu::unet::CpuBackend`, the `cpu::*` functions) and on CUDA
//! (`cuda::unet::backend::DeviceBackend`, real or emulated launcher).
//!
//! Activations are `[c][b][h][w]` buffers owned by the backend's arena; weights are the
//! model's host `f32` slices, the matrices a [`Weight`] (f32 or the checkpoint's f16/bf16); a
//! device backend maps each to its uploaded copy.

use super::embeddings::{Conditioning, TimeEmbedding, Timesteps};
use crate::cpu::layer_norm::LayerNormParams;
use crate::cpu::norm::GroupNormParams;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::unet::layout::{Dims, Geometry};
use crate::unet::weights::Weight;

/// One logical input: channel segments `(buffer, channels)` concatenated.
pub type Segs<'a, B> = &'a [(&'a B, usize)];

/// What a convolution's output starts from before the product is added:
/// `out = scale · (bias + bias2 + temb[b] + residual + W × x)`, or with `keep`,
/// `out += scale · W × x` (the rest ignored). See `cpu::conv::Init`.
pub struct Epilogue<'a, B> {
    pub bias: Option<&'a [f32]>,
    pub bias2: Option<&'a [f32]>,
    /// `[b][temb.len() / b]`, its first `cout` columns added to every pixel of sample b.
    pub temb: Option<&'a B>,
    /// Same layout as the output, possibly as channel segments.
    pub residual: Option<Segs<'a, B>>,
    pub keep: bool,
    pub scale: f32,
}

impl<'a, B> Epilogue<'a, B> {
    pub fn bias(bias: &'a [f32]) -> Self {
        Self {
            bias: Some(bias),
            bias2: None,
            temb: None,
            residual: None,
            keep: false,
            scale: 1.0,
        }
    }

    pub fn keep(scale: f32) -> Self {
        Self {
            keep: true,
            scale,
            ..Self::bias(&[])
        }
    }
}

/// An activation: `c` channels over `dims`, in a buffer of the backend's.
pub struct Act<B> {
    pub buf: B,
    pub c: usize,
    pub dims: Dims,
}

impl<B> Act<B> {
    pub fn seg(&self) -> (&B, usize) {
        (&self.buf, self.c)
    }
}

/// What every block reads besides its input.
pub struct Cond<'a, B> {
    /// SiLU(emb), `[b][time_embed_dim]`.
    pub temb: &'a B,
    /// A cross-attention model's context (`encoder_hidden_states`), `[cross_dim][b][tokens]`.
    pub context: Option<&'a Act<B>>,
}

/// One operand of an attention: rows `row..row + heads·dh` of `buf`, a `[rows][b][t]`
/// activation (`t` tokens per sample).
pub struct Tokens<'a, B> {
    pub buf: &'a B,
    pub row: usize,
    pub t: usize,
}

/// The UNet's ops on one device.
pub trait Backend {
    type Buf;

    /// A buffer of `len` f32 with unspecified contents, from the arena.
    fn take(&mut self, len: usize) -> Result<Self::Buf>;
    /// Returns a buffer to the arena.
    fn give(&mut self, b: Self::Buf);

    fn act(&mut self, c: usize, dims: Dims) -> Result<Act<Self::Buf>> {
        Ok(Act {
            buf: self.take(c * dims.n())?,
            c,
            dims,
        })
    }

    /// `out = epilogue(conv(x, w))`; `w` is `[cout][cin][k][k]`.
    #[allow(clippy::too_many_arguments)]
    fn conv2d(
        &mut self,
        x: Segs<'_, Self::Buf>,
        dims: Dims,
        w: &Weight,
        cout: usize,
        g: Geometry,
        e: Epilogue<'_, Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// `out = act(GroupNorm(x) · (1 + scale[b]) + shift[b])`, `scale_shift` `[b][2c]`.
    fn group_norm(
        &mut self,
        x: Segs<'_, Self::Buf>,
        dims: Dims,
        p: GroupNormParams<'_>,
        scale_shift: Option<&Self::Buf>,
        silu: bool,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// `out[r][o] = bias[o] + Σ_i x[r][i] · w[o][i]`, `rows` rows.
    fn linear(
        &mut self,
        x: &Self::Buf,
        rows: usize,
        w: &Weight,
        bias: &[f32],
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Multi-head attention of `b` samples, `heads` heads of `dh` rows: queries `q`, keys `k`
    /// and values `v` (the same tokens) into `out` (`[heads·dh][b][q.t]`).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        q: Tokens<'_, Self::Buf>,
        k: Tokens<'_, Self::Buf>,
        v: Tokens<'_, Self::Buf>,
        b: usize,
        heads: usize,
        dh: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// LayerNorm of each of the `n` columns of `x` (`[γ.len()][n]`) across its rows.
    fn layer_norm(
        &mut self,
        x: &Self::Buf,
        n: usize,
        p: LayerNormParams<'_>,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// GEGLU: `out[i][j] = x[i][j] · GELU(x[inner + i][j])`, `x` `[2·inner][n]`.
    fn geglu(&mut self, x: &Self::Buf, inner: usize, n: usize, out: &mut Self::Buf) -> Result<()>;

    fn upsample2x(&mut self, x: &Self::Buf, c: usize, d: Dims, out: &mut Self::Buf) -> Result<()>;
    fn avg_pool2x(&mut self, x: &Self::Buf, c: usize, d: Dims, out: &mut Self::Buf) -> Result<()>;
    /// `dst = src` (same length).
    fn copy(&mut self, src: &Self::Buf, dst: &mut Self::Buf) -> Result<()>;
    /// Adds `x`, a caller's NCHW tensor of `dst`'s shape on this backend's device (any float
    /// dtype the backend reads), onto `dst`: a ControlNet's or T2I-Adapter's residuals.
    fn add_nchw(&mut self, x: &Tensor, dst: &mut Act<Self::Buf>) -> Result<()>;

    /// SiLU(time embedding + class and added embeddings), `[b][time_embed_dim]`, for
    /// timesteps `ts` (one per sample).
    fn time_embedding(
        &mut self,
        te: &TimeEmbedding,
        ts: Timesteps<'_>,
        cond: &Conditioning<'_>,
    ) -> Result<Self::Buf>;
}
