//! `UNet2D`: diffusers' `UNet2DModel` forward pass on the CPU.
//!
//! The graph (this file, `blocks`, `resnet`, `attention`) only strings together a handful of
//! ops — `conv2d` (with its fused epilogue), `group_norm` (fused affine, scale/shift, SiLU),
//! `self_attention`, `linear`, the two resamplers — on activations in the `[c][b][h][w]`
//! layout, through [`Backend`]: the CPU here, CUDA in `cuda::unet`, each with an arena of its
//! own.
//!
//! Activation memory comes from an [`Arena`] kept with the model: after the first call at a
//! given batch and image size, a call allocates nothing but a few batch-sized vectors for
//! the time embedding.

use std::path::Path;
use std::sync::Mutex;

use super::backend::{Act, Backend, CpuBackend, Epilogue};
use super::blocks::{DownBlock, MidBlock, UpBlock};
use super::config::{Arch, UNet2DConfig};
use super::embeddings::{ClassLabels, TimeEmbedding};
use super::resnet::{Conv, Norm};
use super::weights::{Loader, SafetensorsFile, WeightSource};
use crate::cpu::arena::Arena;
use crate::cpu::conv::{Dims, Geometry};
use crate::cpu::dtype::Elem;
use crate::error::{RdiffError, Result};
use crate::value_err;

pub struct UNet2D {
    pub arch: Arch,
    conv_in: Conv,
    temb: TimeEmbedding,
    down: Vec<DownBlock>,
    mid: Option<MidBlock>,
    up: Vec<UpBlock>,
    norm_out: Norm,
    conv_out: Conv,
    arena: Mutex<Arena>,
    /// The image side must be a multiple of this (2^downsamplers).
    multiple: usize,
}

impl UNet2D {
    /// From a config.json text and weights by diffusers' names.
    pub fn load(config_json: &str, src: &dyn WeightSource) -> Result<Self> {
        let arch = UNet2DConfig::from_json(config_json)?.resolve()?;
        let ld = Loader::new(src);
        let ch = arch.cfg.block_out_channels.clone();
        let c0 = ch[0];
        let conv_in = Conv::load(&ld, "conv_in", arch.cfg.in_channels, c0, 3)?;
        let temb = TimeEmbedding::load(&ld, &arch)?;
        let mut down = Vec::new();
        let mut cin = c0;
        for (i, spec) in arch.down.iter().enumerate() {
            down.push(DownBlock::load(&ld, &arch, i, spec, cin, ch[i])?);
            cin = ch[i];
        }
        let mid = match arch.mid {
            Some(att) => Some(MidBlock::load(&ld, &arch, att)?),
            None => None,
        };
        let mut up = Vec::new();
        for (i, spec) in arch.up.iter().enumerate() {
            up.push(UpBlock::load(&ld, &arch, i, spec)?);
        }
        let norm_out = Norm::load(&ld, "conv_norm_out", c0, arch.groups, arch.cfg.norm_eps)?;
        let conv_out = Conv::load(&ld, "conv_out", c0, arch.cfg.out_channels, 3)?;
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
            arena: Mutex::new(Arena::default()),
            multiple,
        })
    }

    /// From a diffusers folder: `config.json` and the named safetensors file in `dir`.
    pub fn from_dir(dir: &Path, weights_name: &str) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg = std::fs::read_to_string(&cfg_path)
            .map_err(|e| RdiffError::Io(format!("{}: {e}", cfg_path.display())))?;
        let file = SafetensorsFile::open(&dir.join(weights_name))?;
        Self::load(&cfg, &file)
    }

    pub fn in_channels(&self) -> usize {
        self.arch.cfg.in_channels
    }

    pub fn out_channels(&self) -> usize {
        self.arch.cfg.out_channels
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
        if h % self.multiple != 0 || w % self.multiple != 0 {
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

    /// The timesteps of a call, one per sample (a single value is broadcast).
    pub fn per_sample(&self, timesteps: &[f32], b: usize) -> Vec<f32> {
        if timesteps.len() == 1 {
            vec![timesteps[0]; b]
        } else {
            timesteps.to_vec()
        }
    }

    /// Whether the output is divided by the timestep (Fourier-embedded, score-SDE models).
    pub fn divides_by_timestep(&self) -> bool {
        self.arch.time_embedding == super::config::TimeEmbeddingType::Fourier
    }

    /// The graph, on any backend: `xin` is the (centred) input `[in_channels][b][h][w]`,
    /// consumed; returns conv_out's output `[out_channels][b][h][w]` (not yet divided by the
    /// timestep). `ts` has one value per sample.
    pub fn run<B: Backend>(
        &self,
        be: &mut B,
        xin: Act<B::Buf>,
        ts: &[f32],
        class: ClassLabels<'_>,
    ) -> Result<Act<B::Buf>> {
        let dims = xin.dims;
        let temb_act = be.time_embedding(&self.temb, ts, class)?;
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

        let mut stack = vec![h0];
        for d in &self.down {
            d.forward(be, &mut stack, &temb_act)?;
        }
        let top = stack.last().expect("conv_in output");
        let mut hcur = match &self.mid {
            Some(m) => m.forward(be, top, &temb_act)?,
            None => {
                // The up path consumes its input; the skip stays on the stack.
                let mut c = be.act(top.c, top.dims)?;
                be.copy(&top.buf, &mut c.buf)?;
                c
            }
        };
        for u in &self.up {
            hcur = u.forward(be, hcur, &mut stack, &temb_act)?;
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
        Ok(y)
    }

    /// The forward pass on the CPU: `x` is NCHW `[b][in_channels][h][w]`, `out` NCHW
    /// `[b][out_channels][h][w]`, both of element type T (computed in f32).
    pub fn forward<T: Elem>(
        &self,
        x: &[T],
        (b, h, w): (usize, usize, usize),
        timesteps: &[f32],
        class: ClassLabels<'_>,
        out: &mut [T],
    ) -> Result<()> {
        let cin = self.in_channels();
        self.check(b, cin, h, w, timesteps.len())?;
        let ts = self.per_sample(timesteps, b);
        let mut guard = self.arena.lock().unwrap_or_else(|e| e.into_inner());
        let mut be = CpuBackend { arena: &mut guard };
        let dims = Dims { b, h, w };
        let hw = dims.hw();

        // NCHW (any dtype) → [c][b][h][w] f32, centred if the config says so.
        let mut xin = be.act(cin, dims)?;
        let center = self.arch.cfg.center_input_sample;
        for bi in 0..b {
            for ci in 0..cin {
                let dst = &mut xin.buf[(ci * b + bi) * hw..][..hw];
                T::load(&x[(bi * cin + ci) * hw..][..hw], dst);
                if center {
                    for v in dst.iter_mut() {
                        *v = 2.0 * *v - 1.0;
                    }
                }
            }
        }
        let mut y = self.run(&mut be, xin, &ts, class)?;

        // [c][b][h][w] → NCHW, divided by the timestep for Fourier-embedded models.
        let co = self.out_channels();
        let fourier = self.divides_by_timestep();
        for bi in 0..b {
            for ci in 0..co {
                let src = &mut y.buf[(ci * b + bi) * hw..][..hw];
                if fourier {
                    let t = ts[bi];
                    for v in src.iter_mut() {
                        *v /= t;
                    }
                }
                T::store(src, &mut out[(bi * co + ci) * hw..][..hw]);
            }
        }
        be.give(y.buf);
        Ok(())
    }

    /// Bytes the activation arena has allocated so far.
    pub fn arena_bytes(&self) -> usize {
        self.arena.lock().map(|a| a.allocated_bytes()).unwrap_or(0)
    }
}
