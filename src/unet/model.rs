//! `UNet2D`: diffusers' `UNet2DModel` and `UNet2DConditionModel` — their weights and their
//! graph, for any backend.
//!
//! The graph (this file, `blocks`, `resnet`, `attention`, `transformer`) only strings
//! together a handful of ops — `conv2d` (with its fused epilogue), `group_norm` (fused affine,
//! scale/shift, SiLU), `layer_norm`, `attention`, `geglu`, `linear`, the two resamplers — on
//! activations in the `[c][b][h][w]` layout, through [`Backend`]: the CPU here, CUDA in
//! `cuda::unet`, each with an arena of its own.
//!
//! The model holds no activation memory: the runner (`unet::runner`) keeps the state of the
//! backend chosen at load (a CPU arena, or device memory) and calls [`UNet2D::run`].

use super::arch::{Arch, TimeEmbeddingType};
use super::backend::{Act, Backend, Cond, Epilogue};
use super::blocks::{DownBlock, MidBlock, UpBlock};
use super::cond_config::UNet2DConditionConfig;
use super::config::UNet2DConfig;
use super::control::{Controls, Places};
use super::embeddings::{ClassLabels, Conditioning, TimeEmbedding, Timesteps};
use super::resnet::{Conv, Norm};
use super::weights::{
    ComputeDtype, Loader, SafetensorsFile, ShardedSafetensors, Weight, WeightSource,
};
use crate::error::{RdiffError, Result};
use crate::unet::layout::{Dims, Geometry};
use crate::value_err;
use std::path::Path;

pub struct UNet2D {
    pub arch: Arch,
    conv_in: Conv,
    temb: TimeEmbedding,
    down: Vec<DownBlock>,
    mid: Option<MidBlock>,
    up: Vec<UpBlock>,
    norm_out: Norm,
    conv_out: Conv,
    /// The image side must be a multiple of this (2^downsamplers).
    multiple: usize,
    /// Bytes of weights held (a half-precision checkpoint's matrices kept in its dtype).
    pub weight_bytes: usize,
    /// The source's tensors the model does not read (sorted; reported to Python).
    pub unused_weights: Vec<String>,
    /// What the matrix products compute in (the weight matrices are bf16 for bf16).
    pub compute: ComputeDtype,
}

impl UNet2D {
    /// Calls `f` on every matrix a backend multiplies: the convolutions', the linear layers'
    /// (attention projections, feed-forwards, time-embedding projections) and the time
    /// embedding MLP's. Not the host-side embeddings' (a class MLP, `cond_proj`, SDXL's
    /// `add_embedding`): `TimeEmbedding` multiplies those on the host whatever the backend.
    pub fn for_each_matrix(&mut self, f: &mut dyn FnMut(&mut Weight)) {
        self.conv_in.for_each_matrix(f);
        self.temb.mlp.for_each_matrix(f);
        for d in &mut self.down {
            d.for_each_matrix(f);
        }
        if let Some(m) = &mut self.mid {
            m.for_each_matrix(f);
        }
        for u in &mut self.up {
            u.for_each_matrix(f);
        }
        self.conv_out.for_each_matrix(f);
    }

    /// From a config.json text (a `UNet2DModel`'s, or a `UNet2DConditionModel`'s by its
    /// `_class_name`) and weights by diffusers' names.
    pub fn load(config_json: &str, src: &dyn WeightSource) -> Result<Self> {
        Self::load_as(config_json, src, ComputeDtype::F32)
    }

    /// As [`UNet2D::load`], computing in `compute`.
    pub fn load_as(
        config_json: &str,
        src: &dyn WeightSource,
        compute: ComputeDtype,
    ) -> Result<Self> {
        Self::build(Self::arch_of(config_json)?, src, compute)
    }

    /// The architecture a config.json text describes (checked before any weight is read).
    fn arch_of(config_json: &str) -> Result<Arch> {
        let class = serde_json::from_str::<serde_json::Value>(config_json)
            .ok()
            .and_then(|v| v.get("_class_name")?.as_str().map(String::from));
        let arch = match class.as_deref() {
            None | Some("UNet2DModel") => UNet2DConfig::from_json(config_json)?.resolve()?,
            Some("UNet2DConditionModel") => {
                UNet2DConditionConfig::from_json(config_json)?.resolve()?
            }
            Some(other) => {
                return value_err!(
                    "config.json: a {other} config; rdiff runs UNet2DModel and \
                     UNet2DConditionModel"
                )
            }
        };
        arch.check_scalars()?;
        Ok(arch)
    }

    fn build(arch: Arch, src: &dyn WeightSource, compute: ComputeDtype) -> Result<Self> {
        let ld = Loader::new(src, compute);
        let ch = arch.block_out_channels.clone();
        let c0 = ch[0];
        let conv_in = Conv::load(&ld, "conv_in", arch.in_channels, c0, 3)?;
        let temb = TimeEmbedding::load(&ld, &arch)?;
        let mut down = Vec::new();
        let mut cin = c0;
        for (i, spec) in arch.down.iter().enumerate() {
            down.push(DownBlock::load(&ld, &arch, i, spec, cin, ch[i])?);
            cin = ch[i];
        }
        let mid = match &arch.mid {
            Some(att) => Some(MidBlock::load(&ld, &arch, att.as_ref())?),
            None => None,
        };
        let mut up = Vec::new();
        for (i, spec) in arch.up.iter().enumerate() {
            up.push(UpBlock::load(&ld, &arch, i, spec)?);
        }
        let norm_out = Norm::load(&ld, "conv_norm_out", c0, arch.groups, arch.norm_eps)?;
        let conv_out = Conv::load(&ld, "conv_out", c0, arch.out_channels, 3)?;
        let multiple = 1usize << down.iter().filter(|d| d.downsamples()).count();
        Ok(Self {
            arch,
            conv_in,
            temb,
            down,
            mid,
            up,
            norm_out,
            conv_out,
            multiple,
            weight_bytes: ld.bytes(),
            unused_weights: ld.unused(),
            compute,
        })
    }

    /// From a diffusers folder: `config.json` and the named safetensors file in `dir`, or its
    /// shards through `<name>.index.json`.
    pub fn from_dir(dir: &Path, weights_name: &str) -> Result<Self> {
        Self::from_dir_as(dir, weights_name, ComputeDtype::F32)
    }

    /// As [`UNet2D::from_dir`], computing in `compute`.
    pub fn from_dir_as(dir: &Path, weights_name: &str, compute: ComputeDtype) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg = std::fs::read_to_string(&cfg_path)
            .map_err(|e| RdiffError::Io(format!("{}: {e}", cfg_path.display())))?;
        let arch = Self::arch_of(&cfg)?;
        let single = dir.join(weights_name);
        let index = dir.join(format!("{weights_name}.index.json"));
        if !single.exists() && index.exists() {
            return Self::build(arch, &ShardedSafetensors::open(&index)?, compute);
        }
        Self::build(arch, &SafetensorsFile::open(&single)?, compute)
    }

    pub fn in_channels(&self) -> usize {
        self.arch.in_channels
    }

    pub fn out_channels(&self) -> usize {
        self.arch.out_channels
    }

    /// The width of `encoder_hidden_states` a cross-attention model takes.
    pub fn cross_dim(&self) -> Option<usize> {
        self.arch.cross_dim
    }

    /// Checks a call's shapes before any work.
    pub fn check(&self, b: usize, c: usize, h: usize, w: usize, timesteps: usize) -> Result<()> {
        if c != self.in_channels() {
            return value_err!(
                "sample: expected {} input channels, got {c} (shape [{b}, {c}, {h}, {w}])",
                self.in_channels()
            );
        }
        if b == 0 || h == 0 || w == 0 {
            return value_err!("sample: empty shape [{b}, {c}, {h}, {w}]");
        }
        if !h.is_multiple_of(self.multiple) || !w.is_multiple_of(self.multiple) {
            return value_err!(
                "sample: height and width must be multiples of {} for this UNet, got {h}×{w}",
                self.multiple
            );
        }
        if timesteps != b && timesteps != 1 {
            return value_err!("timestep: {timesteps} values for a batch of {b}");
        }
        Ok(())
    }

    /// For a sample of `d` (checked): the skip connections the down path leaves, conv_in's
    /// output first (what a ControlNet's residuals are added to), and where each down block
    /// takes a T2I-Adapter's, as (channels, dims).
    pub fn control_shapes(&self, d: Dims) -> (Places, Places) {
        let mut skips = vec![(self.conv_in.cout, d)];
        let mut slots = Vec::new();
        for block in &self.down {
            let top = skips.last().expect("conv_in's output").1;
            slots.push(block.adapter_slot(top));
            skips.extend(block.pushes(top));
        }
        (skips, slots)
    }

    /// The timesteps of a call, one per sample (a single value is broadcast).
    pub fn per_sample(&self, timesteps: &[f32], b: usize) -> Vec<f32> {
        if timesteps.len() == 1 {
            vec![timesteps[0]; b]
        } else {
            timesteps.to_vec()
        }
    }

    /// Whether the time projection needs nothing but the timesteps (sinusoidal or Fourier;
    /// a call's `timestep_cond` still moves it to the host).
    pub fn time_projection_from_timesteps(&self) -> bool {
        let none = Conditioning::class(ClassLabels::None);
        matches!(self.temb.projects_on_host(&none), Ok(false))
    }

    /// Whether the output is divided by the timestep (Fourier-embedded, score-SDE models).
    pub fn divides_by_timestep(&self) -> bool {
        self.arch.time.kind == TimeEmbeddingType::Fourier
    }

    /// Checks a call's context (`encoder_hidden_states`, `[b][tokens][width]`) against the
    /// model and the batch of `b`.
    pub fn check_context(&self, b: usize, context: Option<&[usize]>) -> Result<()> {
        match (self.arch.cross_dim, context) {
            (None, None) => Ok(()),
            (None, Some(_)) => {
                value_err!("encoder_hidden_states given, but this UNet has no cross-attention")
            }
            (Some(_), None) => value_err!(
                "encoder_hidden_states: this UNet2DConditionModel needs it, \
                 (batch, tokens, cross_attention_dim)"
            ),
            (Some(d), Some(shape)) => match *shape {
                [cb, t, w] if cb == b && t > 0 && w == d => Ok(()),
                [cb, 0, w] if cb == b && w == d => {
                    value_err!("encoder_hidden_states: no tokens (shape {shape:?})")
                }
                [cb, _, w] if w == d => value_err!(
                    "encoder_hidden_states: batch {cb} differs from the sample's batch {b}"
                ),
                [_, _, w] => value_err!(
                    "encoder_hidden_states: width {w}, but this UNet's cross_attention_dim \
                     is {d}"
                ),
                _ => value_err!(
                    "encoder_hidden_states: expected (batch, tokens, {d}), got {shape:?}"
                ),
            },
        }
    }

    /// The graph, on any backend: `xin` is the (centred) input `[in_channels][b][h][w]`,
    /// consumed; `context` (consumed) the `[cross_dim][b][tokens]` context of a
    /// cross-attention model; `controls` a ControlNet's or T2I-Adapter's residuals (checked
    /// against [`UNet2D::control_shapes`]); returns conv_out's output
    /// `[out_channels][b][h][w]` (not yet divided by the timestep). `ts` has one value per
    /// sample.
    pub fn run<B: Backend>(
        &self,
        be: &mut B,
        xin: Act<B::Buf>,
        ts: Timesteps<'_>,
        cond: &Conditioning<'_>,
        context: Option<Act<B::Buf>>,
        controls: Option<&Controls>,
    ) -> Result<Act<B::Buf>> {
        let dims = xin.dims;
        let temb_act = be.time_embedding(&self.temb, ts, cond)?;
        let c0 = self.conv_in.cout;
        let mut h0 = be.act(c0, dims)?;
        be.conv2d(
            &[xin.seg()],
            dims,
            &self.conv_in.w,
            c0,
            Geometry::SAME3,
            Epilogue::bias(&self.conv_in.b),
            &mut h0.buf,
        )?;
        be.give(xin.buf);
        let cond = Cond {
            temb: &temb_act,
            context: context.as_ref(),
        };

        let mut stack = vec![h0];
        let adapter = |i: usize| controls.and_then(|c| c.adapter.get(i));
        for (i, d) in self.down.iter().enumerate() {
            d.forward(be, &mut stack, &cond, adapter(i))?;
        }
        let top = stack.last().expect("conv_in output");
        let mut hcur = match &self.mid {
            Some(m) => m.forward(be, top, &cond)?,
            None => {
                // The up path consumes its input; the skip stays on the stack.
                let mut c = be.act(top.c, top.dims)?;
                be.copy(&top.buf, &mut c.buf)?;
                c
            }
        };
        if let Some(a) = adapter(self.down.len()) {
            be.add_nchw(a, &mut hcur)?;
        }
        if let Some((down, mid)) = controls.and_then(|c| c.controlnet.as_ref()) {
            // As diffusers: the mid block has read the last skip without its residual.
            for (skip, r) in stack.iter_mut().zip(down) {
                be.add_nchw(r, skip)?;
            }
            be.add_nchw(mid, &mut hcur)?;
        }
        for u in &self.up {
            hcur = u.forward(be, hcur, &mut stack, &cond)?;
        }
        debug_assert!(stack.is_empty());

        let mut hn = be.act(c0, hcur.dims)?;
        be.group_norm(
            &[hcur.seg()],
            hcur.dims,
            self.norm_out.params(),
            None,
            true,
            &mut hn.buf,
        )?;
        be.give(hcur.buf);
        let co = self.out_channels();
        let mut y = be.act(co, dims)?;
        be.conv2d(
            &[hn.seg()],
            dims,
            &self.conv_out.w,
            co,
            Geometry::SAME3,
            Epilogue::bias(&self.conv_out.b),
            &mut y.buf,
        )?;
        be.give(hn.buf);
        be.give(temb_act);
        if let Some(c) = context {
            be.give(c.buf);
        }
        Ok(y)
    }
}
